"""RecurrentLIF.from_snntorch: an nn.Linear + snntorch.RLeaky pair, looped
over time as in snnTorch's tutorials, and the layer built from it give the
same spikes, membranes and gradients; what cannot be reproduced exactly is
rejected with the reason."""
import warnings

import pytest
import torch
from torch import nn

import torch_ext
from torch_ext import RecurrentLIF

snntorch = pytest.importorskip("snntorch")
from snntorch import surrogate  # noqa: E402

T, B, F, N = 25, 4, 5, 6


def make(dtype=torch.float64, stream=0, **kwargs):
    """nn.Linear(F, N) and RLeaky(**kwargs), default initialisations drawn
    from random stream number `stream`."""
    torch.manual_seed(stream)
    kwargs.setdefault("beta", 0.85)
    if kwargs.get("all_to_all", True):
        kwargs.setdefault("linear_features", N)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # inhibition=True warns
        rleaky = snntorch.RLeaky(**kwargs)
    return nn.Linear(F, N).to(dtype), rleaky.to(dtype)


def snntorch_loop(linear, rleaky, x):
    """The tutorials' loop: spk, mem = rleaky(linear(x[t]), spk, mem) from init_rleaky()."""
    spk, mem = rleaky.init_rleaky()
    spikes, membrane = [], []
    for x_t in x.unbind(0):
        spk, mem = rleaky(linear(x_t), spk, mem)
        spikes.append(spk)
        membrane.append(mem)
    return torch.stack(spikes), torch.stack(membrane)


SURROGATE_CLASSES = {"atan": surrogate.ATan, "fast_sigmoid": surrogate.FastSigmoid,
                     "sigmoid": surrogate.Sigmoid}


def keep_dtype(spike_grad):
    """snnTorch's surrogates return float32 spikes ((v > 0).float()), which its
    own nn.Linear recurrence rejects in float64. This is the same autograd
    Function, snnTorch's backward untouched, with spikes in v's dtype."""
    code = spike_grad.__code__
    name = next(n for n in SURROGATE_CLASSES if getattr(surrogate, n)().__code__ is code)
    cls = SURROGATE_CLASSES[name]
    (k,) = (cell.cell_contents for cell in spike_grad.__closure__)

    class KeepDtype(cls):
        @staticmethod
        def forward(ctx, v, slope):
            return cls.forward(ctx, v, slope).to(v.dtype)

    return lambda v: KeepDtype.apply(v, k)


def mapped(linear, rleaky, layer):
    """(snnTorch tensor, the layer's tensor) pairs whose gradients must agree."""
    pairs = [(linear.weight, layer.w_in), (linear.bias, layer.bias)]
    if rleaky.all_to_all:
        pairs += [(rleaky.recurrent.weight, layer.w_rec), (rleaky.recurrent.bias, layer.bias)]
    else:
        pairs += [(rleaky.recurrent.V, layer.w_rec)]
    pairs += [(rleaky.beta, layer.alpha), (rleaky.threshold, layer.theta)]
    return pairs


CONFIGS = {
    "defaults": dict(),
    "frozen_recurrent": dict(learn_recurrent=False),
    "learnable_per_neuron_fast_sigmoid": dict(
        beta=torch.tensor([0.6, 0.7, 0.8, 0.9, 0.95, 1.05]), learn_beta=True,
        threshold=torch.linspace(0.8, 1.2, N), learn_threshold=True,
        spike_grad=surrogate.fast_sigmoid(slope=5.0)),
    "sigmoid_no_reset_shape_1_beta": dict(
        beta=torch.tensor([0.9]), learn_beta=True, learn_threshold=True,
        reset_mechanism="none", spike_grad=surrogate.sigmoid(slope=4.0)),
    "one_to_one_per_neuron_V": dict(
        all_to_all=False, V=torch.linspace(-0.6, 0.6, N), learn_beta=True,
        spike_grad=surrogate.atan(alpha=3.0)),
    "one_to_one_shared_V": dict(all_to_all=False, V=0.5, threshold=0.9, learn_threshold=True),
    "one_to_one_frozen_V": dict(all_to_all=False, V=torch.full((N,), -0.3),
                                learn_recurrent=False),
}


@pytest.mark.parametrize("config", CONFIGS)
def test_same_spikes_membranes_and_gradients_in_float64(config):
    linear, rleaky = make(**CONFIGS[config])
    layer = RecurrentLIF.from_snntorch(linear, rleaky, return_membrane=True)
    assert layer.w_in.dtype == torch.float64 and layer.detach_reset
    rleaky.spike_grad = keep_dtype(rleaky.spike_grad)  # after the port, which reads it
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(T, B, F, generator=g, dtype=torch.float64) * 1.5).requires_grad_()

    want_spikes, want_membrane = snntorch_loop(linear, rleaky, x)
    spikes, membrane, _ = layer(x)
    # No membrane within rounding of the threshold, so no spike can flip.
    assert (want_membrane - rleaky.threshold).abs().min() > 1e-9
    assert 0.05 < want_spikes.mean() < 0.95
    assert torch.equal(spikes, want_spikes)
    torch.testing.assert_close(membrane, want_membrane, rtol=0, atol=1e-13)

    w_s = torch.randn(T, B, N, generator=g, dtype=torch.float64)
    w_u = torch.randn(T, B, N, generator=g, dtype=torch.float64)
    pairs = [(x, x)] + [(theirs, ours) for theirs, ours in mapped(linear, rleaky, layer)
                        if theirs is not None and theirs.requires_grad]
    for theirs, ours in pairs[1:]:
        assert ours.requires_grad
    frozen = [ours for theirs, ours in mapped(linear, rleaky, layer)
              if theirs is not None and not theirs.requires_grad]
    assert not any(t.requires_grad for t in frozen if t is not layer.bias)
    want = torch.autograd.grad((want_spikes * w_s).sum() + (want_membrane * w_u).sum(),
                               [theirs for theirs, _ in pairs])
    got = torch.autograd.grad((spikes * w_s).sum() + (membrane * w_u).sum(),
                              [ours for _, ours in pairs])
    for (theirs, ours), w, o in zip(pairs, want, got):
        assert o.shape == ours.shape
        o = o.reshape(w.shape)  # a [1] beta is a 0-dim alpha
        assert (o - w).abs().max() <= 1e-10 * w.abs().max(), (config, list(theirs.shape))


def test_same_spikes_and_gradients_in_float32_without_patching():
    """snnTorch exactly as users run it (float32, default atan surrogate)."""
    T_, B_, F_, N_ = 30, 8, 10, 16
    torch.manual_seed(3)
    linear = nn.Linear(F_, N_)
    rleaky = snntorch.RLeaky(beta=0.9, linear_features=N_, learn_beta=True,
                             learn_threshold=True)
    layer = RecurrentLIF.from_snntorch(linear, rleaky, batch_first=True)
    x = torch.randn(T_, B_, F_, generator=torch.Generator().manual_seed(4)) * 1.5
    want_spikes, want_membrane = snntorch_loop(linear, rleaky, x)
    spikes, _ = layer(x.transpose(0, 1))
    spikes = spikes.transpose(0, 1)
    assert (want_membrane - rleaky.threshold).abs().min() > 1e-4
    assert torch.equal(spikes, want_spikes) and want_spikes.dtype == spikes.dtype
    weights = torch.randn(T_, B_, N_, generator=torch.Generator().manual_seed(5))
    pairs = [(a, b) for a, b in mapped(linear, rleaky, layer)]
    want = torch.autograd.grad((want_spikes * weights).sum(), [a for a, _ in pairs])
    got = torch.autograd.grad((spikes * weights).sum(), [b for _, b in pairs])
    # Sums of T*B float32 terms in other orders: agreement relative to each scale.
    for w, o in zip(want, got):
        assert (o.reshape(w.shape) - w).abs().max() <= 1e-4 * w.abs().max()


def test_layer_defaults_spike_alike_but_their_gradients_differ():
    """Why from_snntorch exists: the same weights with this layer's defaults
    (sigmoid surrogate, slope 25, reset not detached) give RLeaky's spikes
    but other gradients, without any error."""
    linear, rleaky = make(dtype=torch.float32)
    exact = RecurrentLIF.from_snntorch(linear, rleaky)
    defaults = RecurrentLIF(F, N)
    defaults.load_state_dict(exact.state_dict())
    x = torch.randn(T, B, F, generator=torch.Generator().manual_seed(1)) * 1.5
    weights = torch.randn(T, B, N, generator=torch.Generator().manual_seed(2))
    (s1, _), (s2, _) = exact(x), defaults(x)
    assert torch.equal(s1, s2)
    g1, = torch.autograd.grad((s1 * weights).sum(), exact.w_in)
    g2, = torch.autograd.grad((s2 * weights).sum(), defaults.w_in)
    assert (g1 - g2).abs().max() > 0.5 * g1.abs().max()


def test_init_hidden_rleaky_is_ported_too():
    linear, rleaky = make(init_hidden=True)
    layer = RecurrentLIF.from_snntorch(linear, rleaky)
    rleaky.spike_grad = keep_dtype(rleaky.spike_grad)
    x = torch.randn(T, B, F, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 1.5
    rleaky.reset_mem()
    want = torch.stack([rleaky(linear(x_t)) for x_t in x.unbind(0)])
    assert torch.equal(layer(x)[0], want)


def test_the_layer_holds_copies():
    linear, rleaky = make(learn_beta=True)
    layer = RecurrentLIF.from_snntorch(linear, rleaky)
    before = linear.weight.clone()
    with torch.no_grad():
        layer.w_in.zero_()
        layer.alpha.fill_(0.1)
    assert torch.equal(linear.weight, before) and rleaky.beta.item() == pytest.approx(0.85)
    layer.reset_parameters()  # alpha and theta back to the ported values
    assert layer.alpha.item() == pytest.approx(0.85) and layer.theta.item() == 1.0


def _graded(rleaky):
    rleaky.graded_spikes_factor = torch.tensor(2.0)


def _learnable_graded(rleaky):
    rleaky.graded_spikes_factor = nn.Parameter(torch.tensor(1.0))


def _nan_beta(rleaky):
    rleaky.beta = torch.tensor(float("nan"))


def _beta_of_wrong_shape(rleaky):
    rleaky.beta = torch.full((2, N), 0.9)


def _custom(v, grad, spikes):
    return grad


REJECTED = [
    (dict(reset_mechanism="zero"), None, "reset_mechanism='zero' is not supported"),
    (dict(reset_delay=False), None, "reset_delay=False"),
    (dict(inhibition=True), None, "inhibition=True"),
    (dict(state_quant=lambda mem: mem), None, "state_quant"),
    (dict(surrogate_disable=True), None, "surrogate_disable=True"),
    (dict(spike_grad=surrogate.triangular()), None, "not this layer's 'triangle'"),
    (dict(spike_grad=surrogate.heaviside()), None, "snntorch.surrogate.heaviside"),
    (dict(spike_grad=surrogate.straight_through_estimator()), None, "straight_through_estimator"),
    (dict(spike_grad=surrogate.spike_rate_escape()), None, "spike_rate_escape"),
    (dict(spike_grad=surrogate.SSO()), None, "its gradient is random"),
    (dict(spike_grad=surrogate.SFS()), None, "cut off below B"),
    (dict(spike_grad=surrogate.custom_surrogate(_custom)), None, "custom_surrogate"),
    (dict(spike_grad=lambda v: (v > 0).float()), None, "is not one of snnTorch's surrogates"),
    (dict(spike_grad=surrogate.atan(alpha=-1.0)), None, "must be positive and finite"),
    (dict(all_to_all=True, linear_features=None, conv2d_channels=2, kernel_size=3), None,
     "not a convolutional one"),
    (dict(linear_features=N + 1), None, "both must be N"),
    (dict(threshold=-0.5), None, "negative threshold"),
    (dict(), _graded, "graded spikes"),
    (dict(), _learnable_graded, "graded spikes"),
    (dict(), _nan_beta, "beta must be finite"),
    (dict(), _beta_of_wrong_shape, "beta must have shape [], [1] or [N] = [6]"),
    (dict(all_to_all=False, V=torch.ones(N + 1)), None, "V must have shape"),
]


@pytest.mark.parametrize("kwargs,modify,message", REJECTED,
                         ids=[r[2].split()[0] + f"-{i}" for i, r in enumerate(REJECTED)])
def test_what_cannot_be_reproduced_exactly_is_rejected(kwargs, modify, message):
    linear, rleaky = make(dtype=torch.float32, **kwargs)
    if modify is not None:
        modify(rleaky)
    with pytest.raises(ValueError, match=__import__("re").escape(message)):
        RecurrentLIF.from_snntorch(linear, rleaky)


def test_a_negative_threshold_is_fine_without_reset():
    linear, rleaky = make(threshold=-0.5, reset_mechanism="none")
    assert RecurrentLIF.from_snntorch(linear, rleaky).theta.item() == -0.5


class _OwnForward(snntorch.RLeaky):
    def forward(self, input_, spk=None, mem=None):
        return super().forward(2 * input_, spk, mem)


def test_wrong_module_types_raise_type_errors():
    linear, rleaky = make()
    with pytest.raises(TypeError, match="'rleaky' must be an snntorch.RLeaky, got Leaky"):
        RecurrentLIF.from_snntorch(linear, snntorch.Leaky(beta=0.9))
    with pytest.raises(TypeError, match="'linear' must be an nn.Linear"):
        RecurrentLIF.from_snntorch(nn.Conv1d(F, N, 1), rleaky)
    with pytest.raises(TypeError, match="with its own forward"):
        RecurrentLIF.from_snntorch(linear, _OwnForward(beta=0.9, linear_features=N))


def test_reachable_from_the_package():
    assert torch_ext.RecurrentLIF.from_snntorch.__doc__
