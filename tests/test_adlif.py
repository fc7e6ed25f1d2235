"""The adaptive (SE-adLIF) layer's own facts: a = b = 0 is the LIF op, and
the RecurrentAdLIF module (the paper's parameterisation, ranges, stacks,
state, errors). The op against its reference over every option, lengths,
the low-memory mode and the errors: tests/test_neurons.py (every model)."""
import copy
import math
import functools
import pickle

import pytest
import torch

import torch_ext
from neurons import RECURRENCES, RESETS, grad_names, run_with_grads
from neurons import make_inputs as make_any_inputs
from torch_ext import RecurrentAdLIF

T, B, F, N = 10, 3, 5, 4
F64 = dict(dtype=torch.float64)
make_inputs = functools.partial(make_any_inputs, "recurrent_adlif")

# ---------------------------------------------------------------------------
# The special case a = b = 0: the LIF op with its input scaled by (1 - alpha)
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("reset", ["zero", "none"])
@pytest.mark.parametrize("detach", [True, False])
@pytest.mark.parametrize("w_in", [True, False])
def test_without_adaptation_it_is_the_lif_op(reset, detach, w_in):
    """With a = b = 0 (and a0 = 0) A stays 0 and V[t] = alpha Q[t] + (1 -
    alpha)(I[t] + rec[t]): the LIF op's U for the input, the recurrent weights
    and the bias scaled by (1 - alpha) (x itself when w_in is None). The
    "subtract" resets differ: LIF subtracts theta R, the adaptive neuron
    alpha theta R. Equal up to rounding, gradients included (through the
    scaling for x, w_in, alpha)."""
    args = make_inputs(w_in=w_in, state=True, params=dict(alpha="neuron", beta="neuron",
                                                        a="float", b="float", theta="neuron"))
    args = args._replace(a=0.0, b=0.0, a0=None)
    options = dict(reset=reset, detach_reset=detach)
    (spikes, membrane, adaptation), grads = run_with_grads(torch_ext.recurrent_adlif, args,
                                                            **options)
    assert not adaptation.any()

    def lif(x, w_in, w_rec, bias, alpha, beta, a, b, theta, v0, a0, s0, **options):
        gain = 1 - alpha
        if w_in is None:
            x = x * gain
        else:
            w_in = w_in * gain[:, None]
        lif_spikes, lif_membrane = torch_ext.recurrent_lif(
            x, w_in, w_rec * gain[:, None], bias * gain, alpha, theta, v0, s0, **options)
        # beta only acts through A, which is 0: a zero term gives beta its zero gradient.
        return lif_spikes, lif_membrane, 0 * lif_membrane * beta

    (lif_spikes, lif_membrane, _), lif_grads = run_with_grads(lif, args, **options)
    assert 0.05 < spikes.mean() < 0.95
    assert torch.equal(spikes, lif_spikes)
    torch.testing.assert_close(membrane, lif_membrane, rtol=1e-12, atol=1e-12)
    for name, got, want in zip(grad_names(args), grads, lif_grads):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10, msg=name)


# ---------------------------------------------------------------------------
# The module
# ---------------------------------------------------------------------------

def make_layer(in_features=F, hidden=N + 2, drive=3.0, seed=0, **kwargs):
    """A float64 RecurrentAdLIF with shorter membrane time constants and a
    weaker adaptation than the defaults (T is short here), input weights
    scaled and a bias near the threshold, so that it spikes at a non-trivial
    rate on randn inputs."""
    torch.manual_seed(seed)
    kwargs.setdefault("tau_u_range", (2.0, 6.0))
    kwargs.setdefault("q", 5.0)
    layer = RecurrentAdLIF(in_features, hidden, dtype=torch.float64, **kwargs)
    with torch.no_grad():
        for name, p in layer.named_parameters():
            if name.startswith("w_in"):
                p.mul_(drive)
            if name.startswith("bias"):
                p.copy_(torch.rand(p.shape, dtype=p.dtype) * 0.6 + 0.8)
    return layer


def randn(*shape, seed=1, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64) * scale


def test_parameters_names_shapes_and_initialisation():
    layer = RecurrentAdLIF(F, 7)
    names = [n for n, _ in layer.named_parameters()]
    assert names == ["w_in", "w_rec", "bias", "tau_u", "tau_w", "a", "b"]
    assert not list(layer.named_buffers())
    assert layer.w_in.shape == (7, F) and layer.w_rec.shape == (7, 7)
    assert all(getattr(layer, n).shape == (7,) for n in ("bias", "tau_u", "tau_w", "a", "b"))
    bound = 1 / math.sqrt(F)
    assert layer.w_in.abs().max() <= bound
    torch.testing.assert_close(layer.w_rec @ layer.w_rec.T, torch.eye(7), rtol=0, atol=1e-5)
    assert not layer.bias.any()
    for name in ("tau_u", "tau_w"):
        assert 0 <= getattr(layer, name).min() and getattr(layer, name).max() <= 1
    assert 0 <= layer.a.min() and layer.a.max() <= 1 and 0 <= layer.b.min() and layer.b.max() <= 2
    assert "RecurrentAdLIF(5, 7" in repr(layer) and "q=120.0" in repr(layer)

    stack = RecurrentAdLIF(F, 7, num_layers=2, recurrent="one_to_one", bias=False)
    names = [n for n, _ in stack.named_parameters()]
    assert names == [f"{p}_l{i}" for i in range(2) for p in ("w_in", "w_rec", "tau_u", "tau_w",
                                                              "a", "b")]
    assert stack.w_in_l1.shape == (7, 7) and stack.w_rec_l0.shape == (7,)
    assert stack.w_rec_l0.abs().max() <= 1
    assert stack.bias_l0 is None
    assert RecurrentAdLIF(F, 7, recurrent="none").w_rec is None


def test_neuron_parameters_are_the_papers_parameterisation():
    layer = RecurrentAdLIF(F, 6, tau_u_range=(4.0, 20.0), tau_w_range=(50.0, 200.0), q=100.0,
                           dt=0.5, **F64)
    alpha, beta, a, b = layer.neuron_parameters()
    tau_u = layer.tau_u * 20.0 + (1 - layer.tau_u) * 4.0
    tau_w = layer.tau_w * 200.0 + (1 - layer.tau_w) * 50.0
    torch.testing.assert_close(alpha, torch.exp(-0.5 / tau_u))
    torch.testing.assert_close(beta, torch.exp(-0.5 / tau_w))
    torch.testing.assert_close(a, 100.0 * layer.a)
    torch.testing.assert_close(b, 100.0 * layer.b)


@pytest.mark.parametrize("reset", RESETS)
@pytest.mark.parametrize("recurrent", RECURRENCES)
def test_fused_and_autograd_backends_agree(reset, recurrent):
    fused = make_layer(reset=reset, recurrent=recurrent, detach_reset=reset != "subtract")
    ref = copy.deepcopy(fused)
    ref.backend = "autograd"
    x = randn(T, B, F)
    results = []
    for layer in (fused, ref):
        spikes, (v, a, s) = layer(x)
        (spikes * randn(*spikes.shape, seed=2)).sum().backward()
        # The final state is differentiable too.
        results.append((spikes, v, a, s, [p.grad for p in layer.parameters()]))
    (s1, v1, a1, st1, g1), (s2, v2, a2, st2, g2) = results
    assert 0.05 < s1.mean() < 0.95
    assert torch.equal(s1, s2) and torch.equal(st1, st2)
    torch.testing.assert_close(v1, v2, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(a1, a2, rtol=1e-10, atol=1e-10)
    for (name, _), a, b in zip(fused.named_parameters(), g1, g2):
        assert a is not None and a.abs().sum() > 0, name
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, msg=name)


def test_module_matches_the_functional():
    layer = make_layer()
    x = randn(T, B, F)
    spikes, (v, a, s) = layer(x)
    alpha, beta, qa, qb = layer.neuron_parameters()
    want = torch_ext.recurrent_adlif(x, layer.w_in, layer.w_rec, layer.bias, alpha, beta, qa, qb,
                                     1.0)
    assert torch.equal(spikes, want[0])
    assert torch.equal(v, want[1][-1]) and torch.equal(a, want[2][-1])
    assert torch.equal(s, want[0][-1])


def test_parameters_are_kept_in_range():
    layer = make_layer()
    x = randn(T, B, F)
    clamped = copy.deepcopy(layer)
    with torch.no_grad():  # an optimiser step pushed them out of range
        layer.tau_u[:3] = 1.7
        layer.tau_u[3:] = -0.4
        layer.tau_w.fill_(2.0)
        layer.a[:2] = 5.0
        layer.a[2:] = -1.0
        layer.b.fill_(-3.0)
        clamped.tau_u[:3] = 1.0
        clamped.tau_u[3:] = 0.0
        clamped.tau_w.fill_(1.0)
        clamped.a[:2] = 1.0
        clamped.a[2:] = 0.0
        clamped.b.fill_(0.0)
    alpha, beta, a, b = layer.neuron_parameters()
    assert 0 <= alpha.min() and alpha.max() <= 1 and 0 <= beta.min() and beta.max() <= 1
    for got, want in zip(layer.neuron_parameters(), clamped.neuron_parameters()):
        assert torch.equal(got, want)
    out, state = layer(x)
    want, want_state = clamped(x)
    assert torch.equal(out, want)
    assert all(torch.equal(g, w) for g, w in zip(state, want_state))
    # Out of range, the clamp passes no gradient (as RecurrentLIF's alpha.clamp).
    layer(x)[0].sum().backward()
    assert not layer.tau_w.grad.any() and not layer.b.grad.any()


def test_batch_first_unbatched_and_continuation():
    layer = make_layer()
    x = randn(T, B, F)
    spikes, state = layer(x)
    first = make_layer(batch_first=True)
    spikes_bf, state_bf = first(x.transpose(0, 1))
    assert torch.equal(spikes_bf, spikes.transpose(0, 1))
    assert all(torch.equal(a, b) for a, b in zip(state_bf, state))
    # Unbatched [T, F], whatever batch_first: the state loses its batch dimension.
    for module in (layer, first):
        one, (v, a, s) = module(x[:, 1])
        assert one.shape == (T, N + 2) and v.shape == a.shape == s.shape == (N + 2,)
        assert torch.equal(one, spikes[:, 1]) and torch.equal(s, state[2][1])
        # Up to rounding: the input product of one row may be summed otherwise.
        torch.testing.assert_close(v, state[0][1], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(a, state[1][1], rtol=1e-12, atol=1e-12)
    # Two calls equal one.
    s1, st1 = layer(x[:4])
    s2, st2 = layer(x[4:], st1)
    assert torch.equal(torch.cat([s1, s2]), spikes)
    for got, want in zip(st2, state):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert 0.05 < spikes.mean() < 0.95


@pytest.mark.parametrize("num_layers", [1, 2])
def test_empty_sequence_returns_zeros_or_the_given_state(num_layers):
    layer = RecurrentAdLIF(F, N, num_layers=num_layers)
    lead = (num_layers,) if num_layers > 1 else ()
    spikes, (v, a, s) = layer(torch.zeros(0, B, F))
    assert spikes.shape == (0, B, N) and v.shape == a.shape == s.shape == lead + (B, N)
    assert not v.any() and not a.any() and not s.any()
    state = (torch.randn(*lead, B, N), torch.randn(*lead, B, N), torch.ones(*lead, B, N))
    _, out = layer(torch.zeros(0, B, F), state)
    assert all(o is g for o, g in zip(out, state))
    _, out = layer(torch.zeros(0, B, F), (None, state[1], None))
    assert out[1] is state[1] and not out[0].any()


def test_stack_equals_chained_single_layers_in_eval_mode():
    stack = make_layer(num_layers=2, dropout=0.5, recurrent="one_to_one", drive=6.0).eval()
    x = randn(T, B, F)
    state = tuple(randn(2, B, N + 2, seed=s, scale=0.5) for s in (3, 4))
    state = (*state, (randn(2, B, N + 2, seed=5) > 0).double())
    spikes, final = stack(x, state)
    layer_input, finals = x, []
    for layer in range(2):
        single = RecurrentAdLIF(F if layer == 0 else N + 2, N + 2, recurrent="one_to_one",
                                tau_u_range=(2.0, 6.0), q=5.0, **F64)
        single.load_state_dict({name: getattr(stack, f"{name}_l{layer}")
                                for name, _ in single.named_parameters()})
        layer_input, st = single(layer_input, tuple(s[layer] for s in state))
        finals.append(st)
    assert torch.equal(spikes, layer_input) and 0.05 < spikes.mean() < 0.95
    for got, want in zip(final, zip(*finals)):
        assert torch.equal(got, torch.stack(want))
    stack.train()  # dropout between the layers, in training mode only
    assert not torch.equal(stack(x, state)[0], spikes)


def test_lengths_state_is_the_one_after_each_rows_last_step():
    layer = make_layer(num_layers=2)
    x = randn(9, B, F)
    lengths = torch.tensor([9, 4, 0])
    state = tuple(randn(2, B, N + 2, seed=s, scale=0.5) for s in (3, 4, 5))
    spikes, final = layer(x, state, lengths=lengths)
    for row, length in enumerate(lengths.tolist()):
        if length == 0:
            assert all(torch.equal(f[:, row], s[:, row]) for f, s in zip(final, state))
            assert not spikes[:, row].any()
            continue
        alone, want = layer(x[:length, row:row + 1], tuple(s[:, row:row + 1] for s in state))
        assert torch.equal(spikes[:length, row:row + 1], alone)
        assert not spikes[length:, row].any()
        for got, w in zip(final, want):
            torch.testing.assert_close(got[:, row:row + 1], w, rtol=1e-12, atol=1e-12)
    autograd = copy.deepcopy(layer)
    autograd.backend = "autograd"
    spikes_ref, final_ref = autograd(x, state, lengths=lengths)
    assert torch.equal(spikes, spikes_ref)
    for got, want in zip(final, final_ref):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_state_dict_deepcopy_pickle_and_to():
    layer = RecurrentAdLIF(F, N, num_layers=2)
    other = RecurrentAdLIF(F, N, num_layers=2)
    other.load_state_dict(layer.state_dict())
    x = torch.randn(T, B, F)
    assert torch.equal(layer(x)[0], other(x)[0])
    assert torch.equal(copy.deepcopy(layer)(x)[0], layer(x)[0])
    assert torch.equal(pickle.loads(pickle.dumps(layer))(x)[0], layer(x)[0])
    layer64 = layer.to(torch.float64)
    assert layer64.tau_u_l1.dtype == torch.float64
    spikes, (v, a, s) = layer64(x.double())
    assert spikes.dtype == v.dtype == a.dtype == torch.float64



@pytest.mark.parametrize("device", ["cpu", "meta"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_modules_build(dtype, device):
    """nn.init.orthogonal_ has no bfloat16/float16 QR: w_rec is initialised
    in float32 and cast, on every device, to the values a float32 module
    with the same seed gets, rounded."""
    torch.manual_seed(0)
    layer = RecurrentAdLIF(F, N, num_layers=2, dtype=dtype, device=device)
    assert all(t.dtype == dtype and t.device.type == device
               for t in layer.state_dict().values())
    if device == "meta":
        return
    torch.manual_seed(0)
    reference = RecurrentAdLIF(F, N, num_layers=2)
    assert torch.equal(layer.w_rec_l1, reference.w_rec_l1.to(dtype))
    spikes, (v, a, s) = layer(torch.randn(T, B, F, dtype=dtype))
    assert spikes.dtype == dtype and v.dtype == torch.float32
    spikes.float().sum().add(v.sum()).backward()
    assert all(p.grad is not None and p.grad.dtype == dtype for p in layer.parameters())

def test_state_errors_say_what_is_expected():
    layer = RecurrentAdLIF(F, N)
    x = torch.randn(T, B, F)
    with pytest.raises(TypeError, match=r"'state' must be None or a triple \(v, a, s\)"):
        layer(x, (torch.zeros(B, N), torch.zeros(B, N)))
    with pytest.raises(TypeError, match="nn.RNN's h0 is one tensor; an adaptive LIF"):
        layer(x, torch.zeros(1, B, N))
    with pytest.raises(ValueError, match=r"a must have shape \[B, N\] = \[3, 4\].*pass a\[0\]"):
        layer(x, (None, torch.zeros(1, B, N), None))
    with pytest.raises(ValueError, match="'x'"):
        layer(torch.zeros(T))


@pytest.mark.parametrize("kwargs,exc,name", [
    (dict(tau_u_range=(0.0, 5.0)), ValueError, "tau_u_range"),
    (dict(tau_w_range=(300.0, 60.0)), ValueError, "tau_w_range"),
    (dict(tau_w_range=60.0), TypeError, "tau_w_range"),
    (dict(a_range=(0.0, math.inf)), ValueError, "a_range"),
    (dict(b_range=(1.0, 0.0)), ValueError, "b_range"),
    (dict(q=math.nan), ValueError, "q"),
    (dict(dt=0.0), ValueError, "dt"),
    (dict(theta=torch.tensor(1.0)), TypeError, "theta"),
    (dict(theta=math.inf), ValueError, "theta"),
    (dict(backend="cuda"), ValueError, "backend"),
    (dict(recurrent="dense"), ValueError, "recurrent"),
    (dict(batch_first=1), TypeError, "batch_first"),
    (dict(dropout=2.0), ValueError, "dropout"),
])
def test_module_bad_arguments(kwargs, exc, name):
    with pytest.raises(exc, match=f"RecurrentAdLIF: argument '{name}'"):
        RecurrentAdLIF(F, N, **kwargs)


@pytest.mark.parametrize("kwargs,exc,name", [
    (dict(surrogate="relu"), ValueError, "surrogate"),
    (dict(reset="hard"), ValueError, "reset"),
    (dict(slope=-1.0), ValueError, "slope"),
    (dict(detach_reset="yes"), TypeError, "detach_reset"),
])
def test_module_checks_the_options_as_the_op(kwargs, exc, name):
    with pytest.raises(exc, match=f"'{name}'"):
        RecurrentAdLIF(F, N, **kwargs)


def test_module_passes_on_the_ops_errors():
    layer = RecurrentAdLIF(F, N)
    with pytest.raises(ValueError, match="'w_in'"):  # the op's own check: the feature size
        layer(torch.randn(T, B, F + 1))
    with pytest.raises(ValueError, match="'lengths'"):
        layer(torch.randn(T, B, F), lengths=torch.tensor([T + 1, 1, 1]))


def test_trains():
    """A few Adam steps lower the loss of a small task (and keep the
    parameters usable: the forward clamps them)."""
    torch.manual_seed(0)
    layer = RecurrentAdLIF(2, 16)
    readout = torch.nn.Linear(16, 2)
    x = torch.randn(20, 32, 2)
    y = (x[:5, :, 0].sum(0) > 0).long()  # a label from the first steps: needs memory
    optimizer = torch.optim.Adam([*layer.parameters(), *readout.parameters()], lr=2e-2)
    losses = []
    for _ in range(15):
        spikes, _ = layer(x)
        loss = torch.nn.functional.cross_entropy(readout(spikes.mean(0)), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
