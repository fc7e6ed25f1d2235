"""The adaptive (SE-adLIF) layer: the fused op recurrent_adlif against its
plain-autograd reference in float64 over every option, its special cases
(a = b = 0 is the LIF op), chunking, lengths, the low-memory mode, the errors,
and the RecurrentAdLIF module."""
import copy
import itertools
import math
import pickle
from typing import NamedTuple, Optional, Union

import pytest
import torch

import torch_ext
from torch_ext import RecurrentAdLIF

T, B, F, N = 10, 3, 5, 4
F64 = dict(dtype=torch.float64)
PARAMS = ("alpha", "beta", "a", "b", "theta")
# Where each parameter's random values lie: decays in [0, 1], a and b of
# either sign (the op takes any finite value), theta around 1.
PARAM_RANGES = dict(alpha=(0.45, 0.85), beta=(0.6, 0.95), a=(-0.3, 0.6), b=(0.2, 1.2),
                    theta=(0.8, 1.2))
PARAM_FLOATS = dict(alpha=0.6, beta=0.85, a=0.3, b=0.4, theta=1.0)

needs_op = pytest.mark.skipif(not hasattr(torch.ops.torch_ext, "recurrent_adlif"),
                              reason="the extension is built without the recurrent_adlif op")
pytestmark = needs_op


class AdLIFArgs(NamedTuple):
    """The positional arguments of recurrent_adlif, in order."""
    x: torch.Tensor
    w_in: Optional[torch.Tensor]
    w_rec: Optional[torch.Tensor]
    bias: Optional[torch.Tensor]
    alpha: Union[torch.Tensor, float]
    beta: Union[torch.Tensor, float]
    a: Union[torch.Tensor, float]
    b: Union[torch.Tensor, float]
    theta: Union[torch.Tensor, float]
    v0: Optional[torch.Tensor]
    a0: Optional[torch.Tensor]
    s0: Optional[torch.Tensor]


def make_inputs(T=T, B=B, F=F, N=N, *, dtype=torch.float64, w_in=True, recurrent="all_to_all",
                bias=True, params="neuron", state=False, requires_grad=True, seed=0):
    """Random inputs giving a non-trivial spike rate. params: "neuron" (each
    parameter an [N] tensor), "scalar" (0-dim tensors), "float" (Python
    floats), or a dict name -> one of those."""
    g = torch.Generator().manual_seed(seed)

    def leaf(t):
        return t.to(dtype).requires_grad_(requires_grad)

    def randn(*shape, scale=1.0, shift=0.0):
        return leaf(torch.randn(shape, generator=g, dtype=torch.float64) * scale + shift)

    def uniform(shape, low, high):
        return leaf(torch.rand(shape, generator=g, dtype=torch.float64) * (high - low) + low)

    F = F if w_in else N
    x = randn(T, B, F, scale=1.5, shift=0.6)
    w_in = randn(N, F, scale=2.0 / F ** 0.5) if w_in else None
    w_rec = {"all_to_all": lambda: randn(N, N, scale=1.0 / N ** 0.5),
             "one_to_one": lambda: randn(N, scale=0.8), "none": lambda: None}[recurrent]()
    bias = randn(N, scale=0.5, shift=0.8) if bias else None
    kinds = params if isinstance(params, dict) else dict.fromkeys(PARAMS, params)
    values = {}
    for name in PARAMS:
        low, high = PARAM_RANGES[name]
        kind = kinds[name]
        values[name] = (PARAM_FLOATS[name] if kind == "float"
                        else uniform((N,) if kind == "neuron" else (), low, high))
    v0 = a0 = s0 = None
    if state:
        v0 = randn(B, N, scale=0.8)
        a0 = randn(B, N, scale=0.5)
        # binary previous spikes, as a continued sequence would pass them
        s0 = leaf((torch.rand(B, N, generator=g) > 0.5).double())
    return AdLIFArgs(x, w_in, w_rec, bias, **values, v0=v0, a0=a0, s0=s0)


def grad_inputs(args):
    return [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]


def run_with_grads(fn, args, seed=1, **options):
    """The three outputs and the gradients of a random linear function of all of them."""
    outputs = fn(*args, **options)
    g = torch.Generator().manual_seed(seed)
    compute = outputs[1].dtype
    loss = sum((out.to(compute) * torch.randn(out.shape, generator=g, dtype=torch.float64)
                .to(compute)).sum() for out in outputs)
    inputs = grad_inputs(args)
    if not loss.requires_grad:  # the reference's empty outputs (T = 0) have no graph
        return outputs, [torch.zeros_like(a) for a in inputs]
    grads = torch.autograd.grad(loss, inputs, allow_unused=True)
    return outputs, [torch.zeros_like(a) if g is None else g for a, g in zip(inputs, grads)]


def grad_names(args):
    return [name for name, a in zip(args._fields, args)
            if isinstance(a, torch.Tensor) and a.requires_grad]


def assert_matches_reference(args, rtol=1e-10, atol=1e-10, **options):
    """The fused op and the reference: the same spikes, membrane, adaptation
    and gradient of every tensor argument, in float64 (up to rounding)."""
    (s_f, v_f, a_f), g_f = run_with_grads(torch_ext.recurrent_adlif, args, **options)
    (s_r, v_r, a_r), g_r = run_with_grads(torch_ext.recurrent_adlif_ref, args, **options)
    theta = args.theta.detach() if isinstance(args.theta, torch.Tensor) else args.theta
    # No membrane within rounding of the threshold, where the two could differ by a spike.
    assert (v_r.detach() - theta).abs().min() > 1e-8, "pick inputs without near-ties"
    assert torch.equal(s_f, s_r)
    torch.testing.assert_close(v_f, v_r, rtol=rtol, atol=atol, msg="membrane")
    torch.testing.assert_close(a_f, a_r, rtol=rtol, atol=atol, msg="adaptation")
    for name, got, want in zip(grad_names(args), g_f, g_r):
        torch.testing.assert_close(got, want, rtol=rtol, atol=atol,
                                   msg=lambda m, name=name: f"gradient of {name}: {m}")
    return s_f


# ---------------------------------------------------------------------------
# The op against the reference
# ---------------------------------------------------------------------------

RESETS = ["zero", "subtract", "none"]
SURROGATES = ["sigmoid", "fast_sigmoid", "atan", "triangle"]
RECURRENCES = ["all_to_all", "one_to_one", "none"]
OPTION_GRID = list(itertools.product(RESETS, [True, False], SURROGATES, RECURRENCES, [True, False]))


@pytest.mark.parametrize("reset,detach,surrogate,recurrent,w_in", OPTION_GRID)
def test_matches_reference_float64(reset, detach, surrogate, recurrent, w_in):
    # Per-neuron parameters and an initial state: all twelve gradients.
    args = make_inputs(w_in=w_in, recurrent=recurrent, state=True)
    spikes = assert_matches_reference(args, reset=reset, detach_reset=detach, surrogate=surrogate)
    assert 0.05 < spikes.mean().item() < 0.95, "inputs must give a non-trivial spike rate"


PARAM_KINDS = ["neuron", "scalar", "float",
               dict(alpha="neuron", beta="scalar", a="float", b="neuron", theta="scalar"),
               dict(alpha="float", beta="neuron", a="scalar", b="float", theta="neuron")]


@pytest.mark.parametrize("params", PARAM_KINDS,
                         ids=["neuron", "scalar", "float", "mixed1", "mixed2"])
@pytest.mark.parametrize("state", [False, True])
@pytest.mark.parametrize("reset", RESETS)
@pytest.mark.parametrize("recurrent", ["all_to_all", "one_to_one"])
def test_parameter_kinds_and_initial_state(params, state, reset, recurrent):
    args = make_inputs(params=params, state=state, recurrent=recurrent, seed=2)
    spikes = assert_matches_reference(args, reset=reset, detach_reset=reset != "none")
    assert 0.05 < spikes.mean().item() < 0.95


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("slope", [None, 3.0])
def test_bias_and_slope(bias, slope):
    args = make_inputs(bias=bias, state=True, seed=3)
    assert_matches_reference(args, slope=slope, detach_reset=False)


def test_defaults_are_the_documented_ones():
    args = make_inputs(requires_grad=False)
    x, w_in, w_rec, bias = args[:4]
    got = torch_ext.recurrent_adlif(x, w_in, w_rec, bias)
    want = torch_ext.recurrent_adlif(x, w_in, w_rec, bias, 0.95, 0.99, 0.5, 1.0, 1.0,
                                     reset="zero", detach_reset=True, surrogate="sigmoid")
    ref = torch_ext.recurrent_adlif_ref(x, w_in, w_rec, bias)
    for g, w, r in zip(got, want, ref):
        assert torch.equal(g, w)
        torch.testing.assert_close(g, r, rtol=1e-12, atol=1e-12)


def test_all_twelve_gradients_present():
    args = make_inputs(state=True)
    for detach in (True, False):
        _, grads = run_with_grads(torch_ext.recurrent_adlif, args, detach_reset=detach)
        assert len(grads) == 12
        for name, g in zip(grad_names(args), grads):
            assert g.abs().sum() > 0, f"no gradient reaches {name}"


def test_python_float_parameters_get_no_gradient():
    args = make_inputs(params="float")
    assert all(isinstance(getattr(args, p), float) for p in PARAMS)
    assert len(grad_inputs(args)) == 4  # x, w_in, w_rec, bias


def test_outputs_shapes_dtypes_and_spikes_binary():
    args = make_inputs(requires_grad=False)
    spikes, membrane, adaptation = torch_ext.recurrent_adlif(*args)
    assert spikes.shape == membrane.shape == adaptation.shape == (T, B, N)
    assert set(spikes.unique().tolist()) <= {0.0, 1.0}
    # S[t] = H(V[t] - theta), strict: V == theta does not fire.
    assert torch.equal(spikes, (membrane > args.theta).double())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_low_precision_dtypes(dtype):
    args = make_inputs(dtype=dtype, state=True, requires_grad=False)
    spikes, membrane, adaptation = torch_ext.recurrent_adlif(*args)
    assert spikes.dtype == dtype
    assert membrane.dtype == adaptation.dtype == torch.float32
    ref = torch_ext.recurrent_adlif_ref(*args)
    assert [r.dtype for r in ref] == [dtype, torch.float32, torch.float32]


@pytest.mark.parametrize("T,B", [(0, 3), (5, 0), (0, 0)])
def test_empty_time_or_batch(T, B):
    args = make_inputs(T=T, B=B, state=True)
    for fn in (torch_ext.recurrent_adlif, torch_ext.recurrent_adlif_ref):
        outputs = fn(*args)
        assert all(out.shape == (T, B, N) for out in outputs)


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
# Continuation, lengths, the low-memory mode
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("reset", RESETS)
@pytest.mark.parametrize("recurrent", RECURRENCES)
def test_two_calls_equal_one(reset, recurrent):
    args = make_inputs(T=12, state=True, recurrent=recurrent)
    options = dict(reset=reset, detach_reset=reset == "zero")
    (s_all, v_all, a_all), g_all = run_with_grads(torch_ext.recurrent_adlif, args, **options)

    def chained(*a, **kw):
        a = AdLIFArgs(*a)
        s1, v1, a1 = torch_ext.recurrent_adlif(*a._replace(x=a.x[:5]), **kw)
        s2, v2, a2 = torch_ext.recurrent_adlif(
            *a._replace(x=a.x[5:], v0=v1[-1], a0=a1[-1], s0=s1[-1]), **kw)
        return torch.cat([s1, s2]), torch.cat([v1, v2]), torch.cat([a1, a2])

    (s_ch, v_ch, a_ch), g_ch = run_with_grads(chained, args, **options)
    assert torch.equal(s_all, s_ch)
    torch.testing.assert_close(v_ch, v_all, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(a_ch, a_all, rtol=1e-12, atol=1e-12)
    for name, got, want in zip(grad_names(args), g_ch, g_all):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10, msg=name)


LENGTHS = [10, 6, 0]  # T = 10, B = 3


@pytest.mark.parametrize("fn", [torch_ext.recurrent_adlif, torch_ext.recurrent_adlif_ref],
                         ids=["fused", "reference"])
@pytest.mark.parametrize("options", [dict(), dict(reset="subtract", detach_reset=False),
                                     dict(reset="none", save_state=False)])
def test_each_row_as_if_run_alone(fn, options):
    args = make_inputs(state=True)
    lengths = torch.tensor(LENGTHS)
    g = torch.Generator().manual_seed(5)
    weights = [torch.randn(T, B, N, generator=g, dtype=torch.float64) for _ in range(3)]

    def loss_of(outputs, weights):
        return sum((out * w).sum() for out, w in zip(outputs, weights))

    outputs = fn(*args, lengths=lengths, **options)
    params = [args.w_in, args.w_rec, args.bias, *(getattr(args, p) for p in PARAMS)]
    state = [args.x, args.v0, args.a0, args.s0]
    grads = torch.autograd.grad(loss_of(outputs, weights), state + params)
    want_params = [torch.zeros_like(p) for p in params]
    for row, length in enumerate(LENGTHS):
        assert not any(out[length:, row].any() for out in outputs)
        if length == 0:
            assert not any(g[:, row].any() if i == 0 else g[row].any()
                           for i, g in enumerate(grads[:4]))
            continue
        one = args._replace(x=args.x[:length, row:row + 1], v0=args.v0[row:row + 1],
                            a0=args.a0[row:row + 1], s0=args.s0[row:row + 1])
        alone = fn(*one, **options)
        assert torch.equal(outputs[0][:length, row:row + 1], alone[0])
        for got, want in zip(outputs[1:], alone[1:]):
            torch.testing.assert_close(got[:length, row:row + 1], want, rtol=1e-12, atol=1e-12)
        g_row = torch.autograd.grad(
            loss_of(alone, [w[:length, row:row + 1] for w in weights]),
            [one.x, one.v0, one.a0, one.s0] + params)
        torch.testing.assert_close(grads[0][:length, row:row + 1], g_row[0], rtol=1e-10,
                                   atol=1e-12)
        assert not grads[0][length:, row].any()
        for got, want in zip(grads[1:4], g_row[1:4]):
            torch.testing.assert_close(got[row:row + 1], want, rtol=1e-10, atol=1e-12)
        want_params = [w + gr for w, gr in zip(want_params, g_row[4:])]
    for got, want in zip(grads[4:], want_params):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_full_lengths_equal_no_lengths():
    args = make_inputs(state=True)
    one = torch_ext.recurrent_adlif(*args)
    other = torch_ext.recurrent_adlif(*args, lengths=torch.full((B,), T))
    assert all(torch.equal(a, b) for a, b in zip(one, other))


LOW_MEMORY_GRID = list(itertools.product(RESETS, [True, False], SURROGATES, RECURRENCES))


@pytest.mark.parametrize("reset,detach,surrogate,recurrent", LOW_MEMORY_GRID)
def test_low_memory_mode_bitwise_equal(reset, detach, surrogate, recurrent):
    options = dict(reset=reset, detach_reset=detach, surrogate=surrogate)
    for dtype in (torch.float64, torch.float32):
        args = make_inputs(dtype=dtype, state=True, recurrent=recurrent)
        out1, g1 = run_with_grads(torch_ext.recurrent_adlif, args, **options)
        out2, g2 = run_with_grads(torch_ext.recurrent_adlif, args, save_state=False, **options)
        for a, b in zip(out1, out2):
            assert torch.equal(a, b)
        for name, a, b in zip(grad_names(args), g1, g2):
            assert torch.equal(a, b), f"{dtype}: gradient of {name}"


def test_low_memory_mode_with_lengths_and_without_projection():
    for w_in in (True, False):
        args = make_inputs(w_in=w_in, state=True)
        lengths = torch.tensor(LENGTHS)
        out1, g1 = run_with_grads(torch_ext.recurrent_adlif, args, lengths=lengths)
        out2, g2 = run_with_grads(torch_ext.recurrent_adlif, args, lengths=lengths,
                                  save_state=False)
        assert all(torch.equal(a, b) for a, b in zip(out1, out2))
        assert all(torch.equal(a, b) for a, b in zip(g1, g2))


# ---------------------------------------------------------------------------
# Errors: Python-side and the op's own, naming the argument; the reference
# raises what the op raises
# ---------------------------------------------------------------------------

def _bad(**replace):
    return make_inputs(state=True, requires_grad=False)._replace(**replace)


def _t(*values):
    return torch.tensor(values, dtype=torch.float64)


ERROR_CASES = [
    (dict(beta=1.5), {}, ValueError, "beta"),
    (dict(beta=-0.1), {}, ValueError, "beta"),
    (dict(beta=math.nan), {}, ValueError, "beta"),
    (dict(beta="0.9"), {}, TypeError, "beta"),
    (dict(beta=_t(0.5, 1.2, 0.5, 0.5)), {}, ValueError, "beta"),
    (dict(beta=torch.full((N + 1,), 0.5, dtype=torch.float64)), {}, ValueError, "beta"),
    (dict(alpha=2.0), {}, ValueError, "alpha"),
    (dict(alpha=_t(0.5, -0.2, 0.5, 0.5)), {}, ValueError, "alpha"),
    (dict(a=math.inf), {}, ValueError, "a"),
    (dict(a=math.nan), {}, ValueError, "a"),
    (dict(a=True), {}, TypeError, "a"),
    (dict(a=torch.full((N + 1,), 0.5, dtype=torch.float64)), {}, ValueError, "a"),
    (dict(a=torch.full((1, N), 0.5, dtype=torch.float64)), {}, ValueError, "a"),
    (dict(a=torch.zeros((), dtype=torch.int64)), {}, TypeError, "a"),
    (dict(b=-math.inf), {}, ValueError, "b"),
    (dict(b=torch.ones(2, dtype=torch.float64)), {}, ValueError, "b"),
    (dict(b=[1.0]), {}, TypeError, "b"),
    (dict(theta=math.nan), {}, ValueError, "theta"),
    (dict(theta=torch.ones(N + 2, dtype=torch.float64)), {}, ValueError, "theta"),
    (dict(x=torch.zeros(T, B)), {}, ValueError, "x"),
    (dict(x=torch.zeros(T, B, F, dtype=torch.int64)), {}, TypeError, "x"),
    (dict(w_in=torch.zeros(N, F + 1, dtype=torch.float64)), {}, ValueError, "w_in"),
    (dict(w_in=None, w_rec=torch.zeros(N, N, dtype=torch.float64)), {}, ValueError, "w_rec"),
    (dict(w_rec=torch.zeros(N + 1, dtype=torch.float64)), {}, ValueError, "w_rec"),
    (dict(bias=torch.zeros(N + 1, dtype=torch.float64)), {}, ValueError, "bias"),
    (dict(v0=torch.zeros(B + 1, N, dtype=torch.float64)), {}, ValueError, "v0"),
    (dict(a0=torch.zeros(B, N + 1, dtype=torch.float64)), {}, ValueError, "a0"),
    (dict(a0=torch.zeros(B, N, dtype=torch.float16)), {}, TypeError, "a0"),
    (dict(a0=[[0.0]]), {}, TypeError, "a0"),
    (dict(s0=torch.zeros(B, N + 1, dtype=torch.float64)), {}, ValueError, "s0"),
    ({}, dict(reset="hard"), ValueError, "reset"),
    ({}, dict(surrogate="relu"), ValueError, "surrogate"),
    ({}, dict(slope=-1.0), ValueError, "slope"),
    ({}, dict(detach_reset=1), TypeError, "detach_reset"),
    ({}, dict(save_state="no"), TypeError, "save_state"),
    ({}, dict(lengths=torch.tensor([T + 1, 1, 1])), ValueError, "lengths"),
    ({}, dict(lengths=torch.tensor([1.0, 2.0, 3.0])), TypeError, "lengths"),
]


@pytest.mark.parametrize("replace,options,exc,name", ERROR_CASES)
def test_bad_input_names_the_argument(replace, options, exc, name):
    args = _bad(**replace)
    with pytest.raises(exc, match=f"'{name}'") as from_op:
        torch_ext.recurrent_adlif(*args, **options)
    with pytest.raises(exc, match=f"'{name}'") as from_reference:
        torch_ext.recurrent_adlif_ref(*args, **options)
    assert str(from_reference.value).split("\n")[0] == str(from_op.value).split("\n")[0]


def test_python_checks_name_the_op():
    with pytest.raises(ValueError, match="recurrent_adlif: argument 'beta' must lie in"):
        torch_ext.recurrent_adlif(*_bad(beta=1.5))
    with pytest.raises(ValueError, match="recurrent_adlif: argument 'a' must be finite"):
        torch_ext.recurrent_adlif(*_bad(a=math.inf))


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


def test_padding_past_lengths_takes_no_part_in_the_gradients():
    """NaN padding past a row's length (what a padded batch may hold) reaches
    no gradient: alpha's term from the input current and the products over
    x mask the steps a row does not take."""
    args = make_inputs(recurrent="all_to_all", state=True)
    x = args.x.detach().clone()
    x[T - 3:, 1] = float("nan")
    args = args._replace(x=x.requires_grad_())
    _, grads = run_with_grads(torch_ext.recurrent_adlif, args,
                              lengths=torch.tensor([T, T - 3, 2][:B]))
    for name, grad in zip(grad_names(args), grads):
        assert torch.isfinite(grad).all(), name
