"""from_snntorch: an nn.Linear + snntorch.RLeaky pair (RecurrentLIF) or an
nn.Linear + snntorch.RSynaptic pair (RecurrentCubaLIF), looped over time as
in snnTorch's tutorials, and the layer built from it give the same spikes,
membranes and gradients; what cannot be reproduced exactly is rejected with
the reason. Each test runs for both neuron kinds where it applies."""
import re
import warnings

import pytest
import torch
from torch import nn

import torch_ext
from torch_ext import RecurrentCubaLIF, RecurrentLIF

snntorch = pytest.importorskip("snntorch")
from snntorch import surrogate  # noqa: E402

T, B, F, N = 25, 4, 5, 6

# The snnTorch class, the layer it ports to, and the mapping of the neuron's
# parameters: (snnTorch attribute, the layer's parameter).
KINDS = {
    "RLeaky": (RecurrentLIF, (("beta", "alpha"), ("threshold", "theta"))),
    "RSynaptic": (RecurrentCubaLIF,
                  (("alpha", "alpha_syn"), ("beta", "alpha"), ("threshold", "theta"))),
}


def layer_class(neuron):
    return KINDS[type(neuron).__name__][0]


def make(dtype=torch.float64, stream=0, kind="RLeaky", **kwargs):
    """nn.Linear(F, N) and snntorch.<kind>(**kwargs) (RLeaky or RSynaptic),
    default initialisations drawn from random stream number `stream`."""
    torch.manual_seed(stream)
    kwargs.setdefault("beta", 0.85)
    if kind == "RSynaptic":
        kwargs.setdefault("alpha", 0.6)
    if kwargs.get("all_to_all", True):
        kwargs.setdefault("linear_features", N)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # inhibition=True warns
        neuron = getattr(snntorch, kind)(**kwargs)
    return nn.Linear(F, N).to(dtype), neuron.to(dtype)


def snntorch_loop(linear, neuron, x):
    """The tutorials' loop, spk, mem = rleaky(linear(x[t]), spk, mem) from
    init_rleaky(), or spk, syn, mem = rsynaptic(linear(x[t]), spk, syn, mem)
    from reset_mem(): the stacked spikes and membranes, and the synaptic
    currents (None for RLeaky)."""
    synaptic = isinstance(neuron, snntorch.RSynaptic)
    state = neuron.reset_mem() if synaptic else neuron.init_rleaky()
    steps = []
    for x_t in x.unbind(0):
        state = neuron(linear(x_t), *state)
        steps.append(state)
    spikes, *rest = (torch.stack(s) for s in zip(*steps))
    return (spikes, rest[1], rest[0]) if synaptic else (spikes, rest[0], None)


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


def mapped(linear, neuron, layer):
    """(snnTorch tensor, the layer's tensor) pairs whose gradients must agree."""
    pairs = [(linear.weight, layer.w_in), (linear.bias, layer.bias)]
    if neuron.all_to_all:
        pairs += [(neuron.recurrent.weight, layer.w_rec), (neuron.recurrent.bias, layer.bias)]
    else:
        pairs += [(neuron.recurrent.V, layer.w_rec)]
    pairs += [(getattr(neuron, theirs), getattr(layer, ours))
              for theirs, ours in KINDS[type(neuron).__name__][1]]
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
# RSynaptic's synaptic decay alpha in each of CONFIGS (default: make's 0.6),
# and configurations of RSynaptic's own.
SYNAPTIC_ALPHA = {
    "learnable_per_neuron_fast_sigmoid": dict(
        alpha=torch.tensor([0.3, 0.5, 0.7, 0.8, 1.02, -0.05]), learn_alpha=True),
    "sigmoid_no_reset_shape_1_beta": dict(alpha=torch.tensor([0.7]), learn_alpha=True),
    "one_to_one_per_neuron_V": dict(alpha=0.8, learn_alpha=True),
    "one_to_one_shared_V": dict(alpha=torch.linspace(0.4, 0.8, N)),
}
SYNAPTIC_CONFIGS = {
    "learnable_scalar_alpha_frozen_beta_sigmoid": dict(
        alpha=0.75, learn_alpha=True, beta=0.8, spike_grad=surrogate.sigmoid(slope=10.0)),
    "no_reset_per_neuron_alpha_and_beta_atan": dict(
        alpha=torch.linspace(0.5, 0.9, N), beta=torch.linspace(0.9, 0.6, N), learn_alpha=True,
        learn_beta=True, learn_threshold=True, reset_mechanism="none"),
    "one_to_one_shared_V_learnable_everything_fast_sigmoid": dict(
        all_to_all=False, V=-0.4, alpha=0.7, learn_alpha=True, learn_beta=True,
        threshold=1.1, learn_threshold=True, spike_grad=surrogate.fast_sigmoid(slope=8.0)),
    "one_to_one_frozen_V_no_reset_sigmoid": dict(
        all_to_all=False, V=torch.linspace(0.2, -0.2, N), learn_recurrent=False,
        alpha=torch.tensor([0.5]), learn_alpha=True, reset_mechanism="none",
        spike_grad=surrogate.sigmoid()),
}
EQUIVALENT = ([("RLeaky", c, CONFIGS[c]) for c in CONFIGS]
              + [("RSynaptic", c, {**CONFIGS[c], **SYNAPTIC_ALPHA.get(c, {})}) for c in CONFIGS]
              + [("RSynaptic", c, kwargs) for c, kwargs in SYNAPTIC_CONFIGS.items()])


@pytest.mark.parametrize("kind,config,kwargs", EQUIVALENT,
                         ids=[f"{k}-{c}" for k, c, _ in EQUIVALENT])
def test_same_spikes_membranes_and_gradients_in_float64(kind, config, kwargs):
    linear, neuron = make(kind=kind, **kwargs)
    layer = layer_class(neuron).from_snntorch(linear, neuron, return_membrane=True)
    assert layer.w_in.dtype == torch.float64 and layer.detach_reset
    neuron.spike_grad = keep_dtype(neuron.spike_grad)  # after the port, which reads it
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(T, B, F, generator=g, dtype=torch.float64) * 1.5).requires_grad_()

    want_spikes, want_membrane, want_current = snntorch_loop(linear, neuron, x)
    spikes, membrane, final = layer(x)
    # No membrane within rounding of the threshold, so no spike can flip.
    assert (want_membrane - neuron.threshold).abs().min() > 1e-9
    assert 0.05 < want_spikes.mean() < 0.95
    assert torch.equal(spikes, want_spikes)
    torch.testing.assert_close(membrane, want_membrane, rtol=0, atol=1e-13)
    if want_current is not None:  # RSynaptic's syn is the layer's J
        torch.testing.assert_close(final[1], want_current[-1], rtol=0, atol=1e-13)

    w_s = torch.randn(T, B, N, generator=g, dtype=torch.float64)
    w_u = torch.randn(T, B, N, generator=g, dtype=torch.float64)
    pairs = [(x, x)] + [(theirs, ours) for theirs, ours in mapped(linear, neuron, layer)
                        if theirs is not None and theirs.requires_grad]
    for theirs, ours in pairs[1:]:
        assert ours.requires_grad
    frozen = [ours for theirs, ours in mapped(linear, neuron, layer)
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


FLOAT32 = {"RLeaky": dict(beta=0.9, learn_beta=True, learn_threshold=True),
           "RSynaptic": dict(alpha=0.8, beta=0.9, learn_alpha=True, learn_beta=True,
                             learn_threshold=True)}


@pytest.mark.parametrize("kind", KINDS)
def test_same_spikes_and_gradients_in_float32_without_patching(kind):
    """snnTorch exactly as users run it (float32, default atan surrogate)."""
    T_, B_, F_, N_ = 30, 8, 10, 16
    torch.manual_seed(3)
    linear = nn.Linear(F_, N_)
    neuron = getattr(snntorch, kind)(linear_features=N_, **FLOAT32[kind])
    layer = KINDS[kind][0].from_snntorch(linear, neuron, batch_first=True)
    x = torch.randn(T_, B_, F_, generator=torch.Generator().manual_seed(4)) * 1.5
    want_spikes, want_membrane, _ = snntorch_loop(linear, neuron, x)
    spikes, _ = layer(x.transpose(0, 1))
    spikes = spikes.transpose(0, 1)
    assert (want_membrane - neuron.threshold).abs().min() > 1e-4
    assert torch.equal(spikes, want_spikes) and want_spikes.dtype == spikes.dtype
    weights = torch.randn(T_, B_, N_, generator=torch.Generator().manual_seed(5))
    pairs = [(a, b) for a, b in mapped(linear, neuron, layer)]
    want = torch.autograd.grad((want_spikes * weights).sum(), [a for a, _ in pairs])
    got = torch.autograd.grad((spikes * weights).sum(), [b for _, b in pairs])
    # Sums of T*B float32 terms in other orders: agreement relative to each scale.
    for w, o in zip(want, got):
        assert (o.reshape(w.shape) - w).abs().max() <= 1e-4 * w.abs().max()


@pytest.mark.parametrize("kind", KINDS)
def test_layer_defaults_spike_alike_but_their_gradients_differ(kind):
    """Why from_snntorch exists: the same weights with this layer's defaults
    (sigmoid surrogate, slope 25, reset not detached) give snnTorch's spikes
    but other gradients, without any error."""
    linear, neuron = make(dtype=torch.float32, kind=kind)
    exact = layer_class(neuron).from_snntorch(linear, neuron)
    defaults = layer_class(neuron)(F, N)
    defaults.load_state_dict(exact.state_dict())
    x = torch.randn(T, B, F, generator=torch.Generator().manual_seed(1)) * 1.5
    weights = torch.randn(T, B, N, generator=torch.Generator().manual_seed(2))
    (s1, _), (s2, _) = exact(x), defaults(x)
    assert torch.equal(s1, s2)
    g1, = torch.autograd.grad((s1 * weights).sum(), exact.w_in)
    g2, = torch.autograd.grad((s2 * weights).sum(), defaults.w_in)
    assert (g1 - g2).abs().max() > 0.5 * g1.abs().max()


@pytest.mark.parametrize("kind", KINDS)
def test_init_hidden_neuron_is_ported_too(kind):
    linear, neuron = make(init_hidden=True, kind=kind)
    layer = layer_class(neuron).from_snntorch(linear, neuron)
    neuron.spike_grad = keep_dtype(neuron.spike_grad)
    x = torch.randn(T, B, F, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 1.5
    neuron.reset_mem()
    want = torch.stack([neuron(linear(x_t)) for x_t in x.unbind(0)])
    assert 0.05 < want.mean() < 0.95
    assert torch.equal(layer(x)[0], want)


@pytest.mark.parametrize("kind", KINDS)
def test_the_layer_holds_copies(kind):
    linear, neuron = make(learn_beta=True, kind=kind)
    layer = layer_class(neuron).from_snntorch(linear, neuron)
    before = linear.weight.clone()
    with torch.no_grad():
        layer.w_in.zero_()
        layer.alpha.fill_(0.1)
    assert torch.equal(linear.weight, before) and neuron.beta.item() == pytest.approx(0.85)
    layer.reset_parameters()  # the neuron's parameters back to the ported values
    assert layer.alpha.item() == pytest.approx(0.85) and layer.theta.item() == 1.0
    if kind == "RSynaptic":
        assert layer.alpha_syn.item() == pytest.approx(0.6)


@pytest.mark.parametrize("kind", KINDS)
def test_reset_parameters_restores_decays_outside_0_1_as_ported(kind):
    """Both clamp their decays in the forward only: a ported 1.05 stays 1.05
    (its gradient through the clamp is 0), also after reset_parameters."""
    decays = dict(beta=torch.tensor([0.6, 0.7, 0.8, 0.9, 0.95, 1.05]), learn_beta=True)
    if kind == "RSynaptic":
        decays.update(alpha=torch.tensor(-0.1), learn_alpha=True)
    linear, neuron = make(kind=kind, **decays)
    layer = layer_class(neuron).from_snntorch(linear, neuron)
    for theirs, ours in KINDS[kind][1]:
        with torch.no_grad():
            getattr(layer, ours).fill_(0.5)
    layer.reset_parameters()
    for theirs, ours in KINDS[kind][1]:
        assert torch.equal(getattr(layer, ours), getattr(neuron, theirs).detach()), ours


@pytest.mark.parametrize("kind", KINDS)
def test_snntorchs_zero_reset_zeroes_the_whole_membrane(kind):
    """Why reset_mechanism='zero' is refused: after a spike snnTorch's next
    membrane is exactly 0, the input of that step dropped too, where this
    layer's reset='zero' keeps the step's input (I[t], or J[t])."""
    linear, neuron = make(kind=kind, reset_mechanism="zero")
    neuron.spike_grad = keep_dtype(neuron.spike_grad)
    x = torch.randn(T, B, F, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 1.5
    with torch.no_grad():
        spikes, membrane, _ = snntorch_loop(linear, neuron, x)
    after_spike = spikes[:-1].bool()
    assert after_spike.sum() > 10
    assert bool((membrane[1:][after_spike] == 0).all())
    assert bool((membrane[1:][~after_spike] != 0).all())


def _graded(neuron):
    neuron.graded_spikes_factor = torch.tensor(2.0)


def _learnable_graded(neuron):
    neuron.graded_spikes_factor = nn.Parameter(torch.tensor(1.0))


def _nan_beta(neuron):
    neuron.beta = torch.tensor(float("nan"))


def _beta_of_wrong_shape(neuron):
    neuron.beta = torch.full((2, N), 0.9)


def _infinite_alpha(neuron):
    neuron.alpha = torch.tensor(float("inf"))


def _alpha_of_wrong_shape(neuron):
    neuron.alpha = torch.full((N + 1,), 0.5)


def _foreign_state_function(neuron):
    neuron.state_function = neuron._base_state_function


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
# Besides REJECTED, which RSynaptic refuses too: the reasons that name its
# own parameters or formulas.
REJECTED_SYNAPTIC = [
    (dict(reset_mechanism="zero"), None,
     "RSynaptic's 'zero' sets the whole new membrane to zero, U[t+1] = (1 - R) * (beta * U[t] "
     "+ J[t+1])"),
    (dict(), _infinite_alpha, "the RSynaptic's alpha must be finite"),
    (dict(), _alpha_of_wrong_shape, "alpha must have shape [], [1] or [N] = [6]"),
    (dict(spike_grad=surrogate.heaviside()), None, "the RSynaptic's spike_grad"),
    (dict(linear_features=N + 1), None, "the RSynaptic's recurrent nn.Linear is 7 -> 7"),
]
REJECTIONS = ([("RLeaky", *r) for r in REJECTED] + [("RSynaptic", *r) for r in REJECTED]
              + [("RSynaptic", *r) for r in REJECTED_SYNAPTIC]
              + [(k, dict(), _foreign_state_function, f"is not one of {k}'s own") for k in KINDS])


@pytest.mark.parametrize("kind,kwargs,modify,message", REJECTIONS,
                         ids=[f"{r[0]}-{r[3].split()[0]}-{i}" for i, r in enumerate(REJECTIONS)])
def test_what_cannot_be_reproduced_exactly_is_rejected(kind, kwargs, modify, message):
    linear, neuron = make(dtype=torch.float32, kind=kind, **kwargs)
    if modify is not None:
        modify(neuron)
    with pytest.raises(ValueError, match=re.escape(message)) as error:
        layer_class(neuron).from_snntorch(linear, neuron)
    assert str(error.value).startswith(f"{layer_class(neuron).__name__}.from_snntorch: ")
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("kind", KINDS)
def test_an_uninitialised_lazy_linear_is_rejected(kind):
    _, neuron = make(kind=kind)
    with pytest.raises(ValueError, match="uninitialised LazyLinear"):
        layer_class(neuron).from_snntorch(nn.LazyLinear(N), neuron)


@pytest.mark.parametrize("kind", KINDS)
def test_a_negative_threshold_is_fine_without_reset(kind):
    linear, neuron = make(threshold=-0.5, reset_mechanism="none", kind=kind)
    assert layer_class(neuron).from_snntorch(linear, neuron).theta.item() == -0.5


class _OwnForward(snntorch.RLeaky):
    def forward(self, input_, spk=None, mem=None):
        return super().forward(2 * input_, spk, mem)


class _SynapticOwnForward(snntorch.RSynaptic):
    def forward(self, input_, spk=None, syn=None, mem=None):
        return super().forward(2 * input_, spk, syn, mem)


class _SynapticOwnStateFunction(snntorch.RSynaptic):
    def _base_state_function(self, input_):
        return super()._base_state_function(2 * input_)


class _SynapticOwnReset(snntorch.RSynaptic):
    def mem_reset(self, mem):
        return super().mem_reset(mem) * 0


class _LeakyOwnFire(snntorch.RLeaky):
    def fire(self, mem):
        return super().fire(2 * mem)


class _PlainSubclass(snntorch.RSynaptic):
    """Adds nothing to the step: ported like an RSynaptic."""


def test_wrong_module_types_raise_type_errors():
    linear, rleaky = make()
    with pytest.raises(TypeError, match="'rleaky' must be an snntorch.RLeaky, got Leaky"):
        RecurrentLIF.from_snntorch(linear, snntorch.Leaky(beta=0.9))
    with pytest.raises(TypeError, match="'linear' must be an nn.Linear"):
        RecurrentLIF.from_snntorch(nn.Conv1d(F, N, 1), rleaky)
    with pytest.raises(TypeError, match="with its own forward"):
        RecurrentLIF.from_snntorch(linear, _OwnForward(beta=0.9, linear_features=N))


def test_each_method_takes_only_its_own_neuron_and_names_the_other():
    linear, rleaky = make()
    _, rsynaptic = make(kind="RSynaptic")
    with pytest.raises(TypeError, match=re.escape(
            "RecurrentLIF.from_snntorch: argument 'rleaky' must be an snntorch.RLeaky, got "
            "RSynaptic; for an snntorch.RSynaptic use RecurrentCubaLIF.from_snntorch")):
        RecurrentLIF.from_snntorch(linear, rsynaptic)
    with pytest.raises(TypeError, match=re.escape(
            "RecurrentCubaLIF.from_snntorch: argument 'rsynaptic' must be an snntorch.RSynaptic, "
            "got RLeaky; for an snntorch.RLeaky use RecurrentLIF.from_snntorch")):
        RecurrentCubaLIF.from_snntorch(linear, rleaky)
    with pytest.raises(TypeError, match=re.escape(
            "argument 'rsynaptic' must be an snntorch.RSynaptic, got Synaptic")):
        RecurrentCubaLIF.from_snntorch(linear, snntorch.Synaptic(alpha=0.8, beta=0.9))
    with pytest.raises(TypeError, match="RecurrentCubaLIF.from_snntorch: argument 'linear'"):
        RecurrentCubaLIF.from_snntorch(nn.Conv1d(F, N, 1), rsynaptic)


@pytest.mark.parametrize("subclass,method", [
    (_SynapticOwnForward, "forward"), (_SynapticOwnStateFunction, "_base_state_function"),
    (_SynapticOwnReset, "mem_reset"), (_LeakyOwnFire, "fire")])
def test_subclasses_that_change_the_step_are_refused(subclass, method):
    linear, _ = make()
    kwargs = dict(beta=0.9, linear_features=N)
    if issubclass(subclass, snntorch.RSynaptic):
        kwargs["alpha"] = 0.8
    neuron = subclass(**kwargs)
    base = "RSynaptic" if isinstance(neuron, snntorch.RSynaptic) else "RLeaky"
    with pytest.raises(TypeError, match=re.escape(
            f"is a subclass of snntorch.{base} ({subclass.__qualname__}) with its own {method}")):
        KINDS[base][0].from_snntorch(linear.float(), neuron)


def test_a_subclass_that_keeps_the_step_is_ported():
    linear, _ = make(dtype=torch.float32)
    neuron = _PlainSubclass(alpha=0.6, beta=0.85, linear_features=N)
    layer = RecurrentCubaLIF.from_snntorch(linear, neuron)
    x = torch.randn(T, B, F, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(layer(x)[0], snntorch_loop(linear, neuron, x)[0])


def test_reachable_from_the_package():
    assert torch_ext.RecurrentLIF.from_snntorch.__doc__
    assert torch_ext.RecurrentCubaLIF.from_snntorch.__doc__
