"""Adversarial tests of the current-based (CUBA) layer, as a hostile user
would call it: torch_ext.recurrent_cubalif (the fused op), its reference
recurrent_cubalif_ref, the RecurrentCubaLIF module, its from_snntorch port
of snntorch.RSynaptic, and NIR CubaLIF export/import.

The rule everywhere: the right result, or a clear error naming the argument
(or the NIR node, or the layer); never a crash, a hang or a silently wrong
number. (Four defects this suite found are fixed: a length-0 row's NaN s0
reaching grad_w_rec, edited metadata of the wrong shape or type, a NIR
layer of no neurons, a meta initial value for a CPU module.)

Time-major model: J[t] = alpha_syn J[t-1] + x[t] @ w_in.T + bias + S[t-1] @
w_rec.T; U[t] = alpha U[t-1] + J[t] - theta R[t-1] (reset "subtract"; "zero":
alpha U (1 - R) + J; "none": alpha U + J); S = H(U - theta), strictly."""
import copy
import io
import math
import re

import numpy as np
import pytest
import torch
from torch import nn

import torch_ext
from test_nir_cuba import _cuba as cubalif_node
from torch_ext import RecurrentCubaLIF, RecurrentLIF, recurrent_cubalif, recurrent_cubalif_ref

T, B, F, N = 6, 3, 4, 5
F64 = torch.float64
FNS = {"fused": recurrent_cubalif, "reference": recurrent_cubalif_ref}
OP = "recurrent_cubalif"
TENSOR_NAMES = ("x", "w_in", "w_rec", "bias", "alpha", "alpha_syn", "theta", "u0", "j0", "s0")
STATE_NAMES = ("u0", "j0", "s0")


def make_args(recurrent="all_to_all", dtype=F64, requires_grad=True, seed=0, T=T, B=B, F=F, N=N):
    """Every tensor argument of the op, by name, random with a non-trivial
    spike rate: per-neuron decays and threshold, a random initial state."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0, shift=0.0):
        return torch.randn(shape, generator=g, dtype=F64) * scale + shift

    def uniform(low, high):
        return torch.rand(N, generator=g, dtype=F64) * (high - low) + low

    w_rec = {"all_to_all": lambda: rand(N, N, scale=0.3), "one_to_one": lambda: rand(N, scale=0.3),
             "none": lambda: None}[recurrent]()
    args = dict(x=rand(T, B, F, scale=0.8, shift=0.3), w_in=rand(N, F, scale=0.6), w_rec=w_rec,
                bias=rand(N, scale=0.2), alpha=uniform(0.5, 0.9), alpha_syn=uniform(0.3, 0.7),
                theta=uniform(0.8, 1.2), u0=rand(B, N, scale=0.5), j0=rand(B, N, scale=0.5),
                s0=(torch.rand(B, N, generator=g) > 0.5).double())
    return {k: None if v is None else v.to(dtype).requires_grad_(requires_grad)
            for k, v in args.items()}


def outputs_and_grads(fn, args, loss="all", **options):
    """fn's outputs and the gradient of every tensor argument that requires
    one (zeros where autograd gives None) of the sum of the chosen outputs."""
    outputs = fn(**args, **options)
    total = {"all": sum(o.sum() for o in outputs), "spikes": outputs[0].sum(),
             "membrane": outputs[1].sum()}[loss]
    inputs = {k: v for k, v in args.items() if isinstance(v, torch.Tensor) and v.requires_grad}
    if not total.requires_grad:
        return outputs, {k: torch.zeros_like(v) for k, v in inputs.items()}
    grads = torch.autograd.grad(total, list(inputs.values()), allow_unused=True)
    return outputs, {k: torch.zeros_like(v) if g is None else g
                     for (k, v), g in zip(inputs.items(), grads)}


def same_pattern(a, b):
    """The same NaN, +inf and -inf positions."""
    return (torch.equal(a.isnan(), b.isnan()) and torch.equal(a.isposinf(), b.isposinf())
            and torch.equal(a.isneginf(), b.isneginf()))


def with_value(args, name, value, where=0):
    """args with one element of `name` set to value (a fresh leaf)."""
    args = dict(args)
    t = args[name].detach().clone()
    t.view(-1)[where % t.numel()] = value
    args[name] = t.requires_grad_()
    return args


def one_line(message):
    assert "\n" not in message and len(message) < 600, message
    return message


# ---------------------------------------------------------------- devices


@pytest.mark.parametrize("name", ["fused", "reference"])
@pytest.mark.parametrize("lengths", [False, True])
def test_meta_tensors_everywhere_give_shapes_and_dtypes(name, lengths):
    """Every input on the meta device (parameters as [N] meta tensors, the
    whole initial state, lengths): outputs and gradients come back as meta
    tensors of the right shapes and dtypes, forward and backward."""
    args = {k: v.detach().to("meta").requires_grad_() for k, v in make_args().items()}
    options = dict(lengths=torch.tensor([T, 2, 0], device="meta")) if lengths else {}
    outputs, grads = outputs_and_grads(FNS[name], args, **options)
    assert all(o.device.type == "meta" and o.shape == (T, B, N) and o.dtype == F64
               for o in outputs)
    for key, grad in grads.items():
        assert grad.device.type == "meta" and grad.shape == args[key].shape, key


def test_meta_op_and_low_memory_backward():
    """The raw op on meta tensors (Python-number parameters as 0-dim meta
    tensors) and the low-memory backward on meta."""
    args = {k: v.detach().to("meta") for k, v in make_args().items()}
    scalar = lambda v: torch.full((), v, dtype=F64, device="meta")  # noqa: E731
    outputs = torch.ops.torch_ext.recurrent_cubalif(
        args["x"], args["w_in"], args["w_rec"], args["bias"], scalar(0.9), scalar(0.8),
        scalar(1.0), None, None, None, "subtract", False, "sigmoid", 25.0, True, None)
    assert [o.shape for o in outputs] == [(T, B, N)] * 3
    x = args["x"].requires_grad_()
    spikes = recurrent_cubalif(x, args["w_in"], args["w_rec"], save_state=False)[0]
    (grad,) = torch.autograd.grad(spikes.sum(), [x])
    assert grad.device.type == "meta" and grad.shape == x.shape


@pytest.mark.parametrize("kw", [dict(), dict(num_layers=2, recurrent="one_to_one"),
                                dict(backend="autograd", batch_first=True)],
                         ids=["one_layer", "stack_one_to_one", "autograd_batch_first"])
def test_module_to_meta_runs_on_meta(kw):
    """module.to("meta") (and device="meta") forward, with a state and lengths."""
    for module in (RecurrentCubaLIF(F, N, **kw).to("meta"), RecurrentCubaLIF(F, N, device="meta",
                                                                              **kw)):
        state_shape = (2, B, N) if kw.get("num_layers") == 2 else (B, N)
        state = tuple(torch.zeros(state_shape, device="meta") for _ in range(3))
        x = torch.randn((B, T, F) if kw.get("batch_first") else (T, B, F), device="meta")
        spikes, final = module(x, state, lengths=torch.tensor([T, 1, 0], device="meta"))
        assert spikes.device.type == "meta" and spikes.shape == x.shape[:2] + (N,)
        assert all(s.device.type == "meta" and s.shape == state_shape for s in final)


@pytest.mark.parametrize("fn", ["fused", "reference"])
@pytest.mark.parametrize("name", TENSOR_NAMES + ("lengths",))
def test_a_meta_tensor_among_cpu_ones_names_the_argument(fn, name):
    """One argument on meta, the rest on the CPU (x on meta, the rest on the
    CPU, for x): one line naming the argument and 'one device'."""
    args = make_args(requires_grad=False)
    lengths = torch.tensor([T, 2, 0])
    if name == "lengths":
        lengths = lengths.to("meta")
    else:
        args[name] = args[name].to("meta")
    culprit = "w_in" if name == "x" else name
    with pytest.raises(ValueError, match=f"{OP}: argument '{culprit}' is on .*all tensors must "
                                         "be on one device") as error:
        FNS[fn](**args, lengths=lengths)
    one_line(str(error.value))


@pytest.mark.parametrize("where", ["x", "state", "lengths"])
def test_module_device_mismatch_names_the_argument(where):
    """A meta module fed CPU x, a CPU state or CPU lengths; a CPU module fed meta x."""
    meta = RecurrentCubaLIF(F, N).to("meta")
    x = torch.randn(T, B, F, device="meta")
    if where == "x":
        call, name = (lambda: meta(torch.randn(T, B, F))), "w_in"
    elif where == "state":
        call, name = (lambda: meta(x, (torch.zeros(B, N), None, None))), "u0"
    else:
        call, name = (lambda: meta(x, lengths=torch.tensor([T, 1, 0]))), "lengths"
    with pytest.raises(ValueError, match=f"argument '{name}' is on .*one device"):
        call()
    with pytest.raises(ValueError, match="argument 'w_in' is on cpu but x is on meta"):
        RecurrentCubaLIF(F, N)(x)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", ["x", "w_rec", "theta", "s0"])
def test_cuda_non_finite_values_match_the_cpu_op(name):
    """On CUDA: a NaN in an input gives the CPU op's spikes and NaN pattern."""
    args = with_value(make_args(), name, math.nan, where=3)
    cpu, g_cpu = outputs_and_grads(recurrent_cubalif, args)
    cuda_args = {k: v.detach().cuda().requires_grad_() for k, v in args.items()}
    gpu, g_gpu = outputs_and_grads(recurrent_cubalif, cuda_args)
    assert torch.equal(cpu[0], gpu[0].cpu())
    assert all(same_pattern(a, b.cpu()) for a, b in zip(cpu[1:], gpu[1:]))
    assert all(same_pattern(g_cpu[k], g_gpu[k].cpu()) for k in g_cpu)


# ---------------------------------------------------------------- non-finite values

NON_FINITE = [math.nan, math.inf, -math.inf]
NON_FINITE_IDS = ["nan", "inf", "-inf"]


@pytest.mark.parametrize("reset", ["subtract", "zero", "none"])
@pytest.mark.parametrize("value", NON_FINITE, ids=NON_FINITE_IDS)
@pytest.mark.parametrize("name", ["x", "w_in", "w_rec", "bias", "theta", "u0", "j0", "s0"])
def test_non_finite_input_matches_the_reference(name, value, reset):
    """A NaN/+inf/-inf in one element of an unchecked input (theta's tensor
    values and s0 included: the op does not check them): the fused op gives
    the reference's spikes, the same NaN/inf pattern in U and J, the same
    finite values, and its gradients are non-finite exactly where autograd's
    are (detach_reset on for "zero", off otherwise; one-to-one w_rec for
    "none")."""
    recurrent = "one_to_one" if reset == "none" else "all_to_all"
    args = with_value(make_args(recurrent), name, value, where=2)
    options = dict(reset=reset, detach_reset=reset == "zero")
    (fused, g_fused), (ref, g_ref) = (outputs_and_grads(fn, args, **options)
                                      for fn in FNS.values())
    assert torch.equal(fused[0], ref[0])
    for got, want in zip(fused[1:], ref[1:]):
        assert same_pattern(got, want)
        finite = want.isfinite()
        torch.testing.assert_close(got[finite], want[finite], rtol=1e-10, atol=1e-10)
    for key in g_ref:
        assert torch.equal(g_fused[key].isfinite(), g_ref[key].isfinite()), key


@pytest.mark.parametrize("value", NON_FINITE, ids=NON_FINITE_IDS)
@pytest.mark.parametrize("name", ["x", "w_in", "w_rec", "bias", "theta", "u0", "j0"])
def test_non_finite_input_with_lengths_no_worse_than_autograd(name, value):
    """With lengths [T, 2, 0]: the same spikes and state patterns as the
    reference, and the fused gradients are finite wherever the reference's
    are (the fused op masks the padding; the reference may leak 0 * NaN)."""
    args = with_value(make_args(), name, value, where=7)
    lengths = torch.tensor([T, 2, 0])
    (fused, g_fused), (ref, g_ref) = (outputs_and_grads(fn, args, lengths=lengths)
                                      for fn in FNS.values())
    assert torch.equal(fused[0], ref[0])
    assert all(same_pattern(a, b) for a, b in zip(fused[1:], ref[1:]))
    for key in g_ref:
        assert not (~g_fused[key].isfinite() & g_ref[key].isfinite()).any(), key


@pytest.mark.parametrize("fn", ["fused", "reference"])
@pytest.mark.parametrize("value", NON_FINITE, ids=NON_FINITE_IDS)
@pytest.mark.parametrize("name", ["alpha", "alpha_syn"])
@pytest.mark.parametrize("form", ["tensor", "float"])
def test_non_finite_decay_is_a_value_error_naming_it(fn, value, name, form):
    """A decay (alpha, alpha_syn) NaN or +-inf, as one element of an [N]
    CPU tensor or as a Python float: ValueError naming it, before any work."""
    args = make_args(requires_grad=False)
    args[name] = with_value(args, name, value)[name] if form == "tensor" else value
    with pytest.raises(ValueError, match=f"{OP}: argument '{name}' must lie in \\[0, 1\\]"):
        FNS[fn](**args)


@pytest.mark.parametrize("fn", ["fused"])
def test_zero_length_row_with_non_finite_s0_leaves_grad_w_rec_finite(fn):
    """lengths [T, 2, 0] and s0 of the last row NaN: each row's gradients
    must be those of running it alone, so the length-0 row adds nothing.
    (The reference, plain autograd, gives NaN: 0 * NaN in its outer product.)"""
    args = make_args()
    s0 = args["s0"].detach().clone()
    s0[2] = math.nan
    args["s0"] = s0
    _, grads = outputs_and_grads(FNS[fn], args, lengths=torch.tensor([T, 2, 0]))
    assert torch.isfinite(grads["w_rec"]).all()


# ---------------------------------------------------------------- empty dimensions

EMPTY = [(0, B, F, N), (T, 0, F, N), (T, B, 0, N), (T, B, F, 0), (0, 0, 0, 0), (0, B, 0, N),
         (T, 0, 0, 0)]


@pytest.mark.parametrize("shape", EMPTY, ids=["T0", "B0", "F0", "N0", "all0", "T0F0", "B0F0N0"])
@pytest.mark.parametrize("recurrent", ["all_to_all", "one_to_one"])
@pytest.mark.parametrize("state,lengths", [(False, False), (True, True)],
                         ids=["plain", "state_and_lengths"])
def test_empty_dimensions_match_the_reference(shape, recurrent, state, lengths):
    """T, B, F or N zero, with or without an initial state and lengths:
    outputs [T, B, N] (zeros or empty), gradients of the inputs' shapes,
    equal to the reference's, no crash."""
    t, b, f, n = shape
    args = make_args(recurrent, T=t, B=b, F=f, N=n)
    if not state:
        for key in STATE_NAMES:
            args[key] = None
    options = dict(lengths=torch.full((b,), t)) if lengths else {}
    (fused, g_fused), (ref, g_ref) = (outputs_and_grads(fn, args, **options)
                                      for fn in FNS.values())
    for got, want in zip(fused, ref):
        assert got.shape == want.shape == (t, b, n)
        torch.testing.assert_close(got, want)
    for key in g_ref:
        assert g_fused[key].shape == args[key].shape
        torch.testing.assert_close(g_fused[key], g_ref[key])


def test_module_with_no_steps_returns_the_given_state():
    """T = 0: the given state tensors themselves (any missing one as zeros),
    unbatched and stacked too; all-zero lengths give the state back too."""
    layer = RecurrentCubaLIF(F, N)
    state = (torch.randn(B, N), torch.randn(B, N), torch.ones(B, N))
    spikes, final = layer(torch.randn(0, B, F), state)
    assert spikes.shape == (0, B, N) and all(a is b for a, b in zip(final, state))
    _, final = layer(torch.randn(0, B, F), (state[0], None, state[2]))
    assert final[0] is state[0] and final[2] is state[2] and not final[1].any()
    _, final = layer(torch.randn(0, F), tuple(s[0] for s in state))
    assert [f.shape for f in final] == [(N,)] * 3
    stack = RecurrentCubaLIF(F, N, num_layers=2, batch_first=True)
    stacked = tuple(torch.randn(2, B, N) for _ in range(3))
    spikes, final = stack(torch.randn(B, 0, F), stacked)
    assert spikes.shape == (B, 0, N) and all(a is b for a, b in zip(final, stacked))
    spikes, final = layer(torch.randn(T, B, F), state, lengths=torch.zeros(B, dtype=torch.long))
    assert not spikes.any() and all(torch.equal(a, b) for a, b in zip(final, state))


@pytest.mark.parametrize("size", ["in_features", "hidden_size"])
def test_module_zero_size_names_the_argument(size):
    sizes = {**dict(in_features=F, hidden_size=N), size: 0}
    with pytest.raises(ValueError, match=f"argument '{size}' must be a positive int"):
        RecurrentCubaLIF(**sizes)


# ---------------------------------------------------------------- option types and values

BAD_OPTIONS = [
    (dict(reset="Subtract"), ValueError, "reset"), (dict(reset="zero "), ValueError, "reset"),
    (dict(reset=None), TypeError, "reset"), (dict(reset=b"zero"), TypeError, "reset"),
    (dict(surrogate="Sigmoid"), ValueError, "surrogate"),
    (dict(surrogate=None), ValueError, "surrogate"),
    (dict(surrogate=torch.sigmoid), ValueError, "surrogate"),
    (dict(slope=0.0), ValueError, "slope"), (dict(slope=-2.0), ValueError, "slope"),
    (dict(slope=math.inf), ValueError, "slope"), (dict(slope=math.nan), ValueError, "slope"),
    (dict(slope=True), TypeError, "slope"), (dict(slope="2"), TypeError, "slope"),
    (dict(slope=torch.tensor(2.0)), TypeError, "slope"),
    (dict(slope=10 ** 400), ValueError, "slope"),
    (dict(detach_reset=1), TypeError, "detach_reset"),
    (dict(detach_reset=np.bool_(True)), TypeError, "detach_reset"),
    (dict(detach_reset=torch.tensor(True)), TypeError, "detach_reset"),
    (dict(save_state=0), TypeError, "save_state"),
    (dict(save_state="False"), TypeError, "save_state"),
    (dict(save_state=None), TypeError, "save_state"),
    (dict(alpha_syn=True), TypeError, "alpha_syn"),
    (dict(alpha_syn=0.5j), TypeError, "alpha_syn"),
    (dict(alpha_syn=[0.5]), TypeError, "alpha_syn"),
    (dict(alpha_syn=2), ValueError, "alpha_syn"),
    (dict(alpha_syn=-1e-300), ValueError, "alpha_syn"),
    (dict(alpha_syn=np.float64(1.5)), ValueError, "alpha_syn"),
    (dict(alpha_syn=torch.tensor(1)), TypeError, "alpha_syn"),
    (dict(alpha_syn=torch.tensor(True)), TypeError, "alpha_syn"),
    (dict(alpha_syn=torch.tensor(0.5 + 0j)), TypeError, "alpha_syn"),
    (dict(alpha_syn=torch.full((N + 1,), 0.5, dtype=F64)), ValueError, "alpha_syn"),
    (dict(alpha_syn=torch.full((1, N), 0.5, dtype=F64)), ValueError, "alpha_syn"),
    (dict(alpha_syn=torch.tensor(0.5, dtype=torch.float16)), TypeError, "alpha_syn"),
    (dict(alpha_syn=torch.tensor(0.5, dtype=torch.float32)), TypeError, "alpha_syn"),
    (dict(alpha_syn=torch.tensor(1.5, dtype=F64)), ValueError, "alpha_syn"),
]


def _option_id(case):
    (key, value), = case[0].items()
    return re.sub(r"\s+", "", f"{key}={value!r}")[:40]


@pytest.mark.parametrize("fn", ["fused", "reference"])
@pytest.mark.parametrize("kwargs,exc,name", BAD_OPTIONS, ids=[_option_id(c) for c in BAD_OPTIONS])
def test_bad_option_names_the_argument(fn, kwargs, exc, name):
    """Wrong option types and values (float64 x): the exception type and a
    one-line message naming the op and the argument, fused and reference alike."""
    args = make_args(requires_grad=False)
    args.update({k: v for k, v in kwargs.items() if k in args})
    options = {k: v for k, v in kwargs.items() if k not in args}
    with pytest.raises(exc, match=f"{OP}: argument '{name}'") as error:
        FNS[fn](**args, **options)
    one_line(str(error.value))


@pytest.mark.parametrize("value", [1, 0, np.float64(0.5), np.float32(0.5), np.int64(1), -0.0,
                                   1e-320, torch.tensor(0.5, dtype=F64)],
                         ids=["int1", "int0", "np64", "np32", "npint", "neg0", "denormal",
                              "0dim"])
def test_accepted_alpha_syn_forms_equal_the_float(value):
    """An int, numpy scalars, -0.0, a denormal, a 0-dim float64 tensor: the
    same outputs as the equal Python float."""
    args = make_args(requires_grad=False)
    args["alpha_syn"] = value
    got = recurrent_cubalif(**args)
    args["alpha_syn"] = float(value)
    want = recurrent_cubalif(**args)
    assert all(torch.equal(a, b) for a, b in zip(got, want))


@pytest.mark.parametrize("x_dtype,p_dtype,ok", [
    (torch.bfloat16, torch.float32, True), (torch.float16, torch.float16, True),
    (torch.bfloat16, torch.float16, False), (torch.float16, torch.bfloat16, False),
    (torch.float32, torch.float64, False), (torch.float16, F64, False)])
def test_alpha_syn_dtype_against_x_dtype(x_dtype, p_dtype, ok):
    """Half inputs take their own dtype or float32 for alpha_syn; anything
    else is a TypeError naming alpha_syn."""
    x, w = torch.randn(T, B, F, dtype=x_dtype), torch.randn(N, F, dtype=x_dtype)
    alpha_syn = torch.tensor(0.5, dtype=p_dtype)
    for fn in FNS.values():
        if ok:
            spikes, u, j = fn(x, w, None, alpha_syn=alpha_syn)
            assert spikes.dtype == x_dtype and u.dtype == j.dtype == torch.float32
        else:
            with pytest.raises(TypeError, match="argument 'alpha_syn' has dtype"):
                fn(x, w, None, alpha_syn=alpha_syn)


def test_slope_out_of_range_for_float32_names_the_slope():
    """slope = 1e300 is fine in float64, but too large for float32: the
    functional and the module's forward (after .float()) name it."""
    x = torch.randn(T, B, F)
    with pytest.raises(ValueError, match="argument 'slope' .*the largest Float"):
        recurrent_cubalif(x, torch.randn(N, F), None, slope=1e300)
    layer = RecurrentCubaLIF(F, N, slope=1e300, dtype=F64)
    layer(x.double())
    with pytest.raises(ValueError, match="argument 'slope' .*the largest Float"):
        layer.float()(x)


# ---------------------------------------------------------------- state and lengths


def _z(*shape):
    return torch.zeros(shape)


BAD_STATES = [
    ((_z(B, N), _z(B, N)), TypeError, r"must be None or a triple \(u, j, s\).*got a tuple of 2"),
    (_z(B, N), TypeError, "got a single tensor of shape"),
    ((_z(B, N),) * 4, TypeError, "got a tuple of 4"),
    ("ujs", TypeError, "got str"),
    ((np.zeros((B, N)), None, None), TypeError, "u must be a tensor"),
    ((_z(1, B, N), None, None), ValueError, "unlike nn.RNN's h0: pass u\\[0\\]"),
    ((None, _z(1, B, N), None), ValueError, "pass j\\[0\\]"),
    ((_z(2, B, N), None, None), ValueError, "u must have shape \\[B, N\\]"),
    ((None, None, _z(B, N + 1)), ValueError, "s must have shape"),
    ((_z(N), None, None), ValueError, "u must have shape \\[B, N\\]"),
    ((_z(B, N).double(), None, None), TypeError, "argument 'u0' has dtype Double"),
    ((None, torch.zeros(B, N, dtype=torch.long), None), TypeError, "argument 'j0' has dtype Long"),
]


@pytest.mark.parametrize("state,exc,pattern", BAD_STATES,
                         ids=["pair", "tensor", "4-tuple", "str", "numpy", "rnn_u", "rnn_j",
                              "stacked", "wrong_N", "unbatched", "float64", "int"])
def test_module_bad_state_names_what_is_wrong(state, exc, pattern):
    """Wrong state containers, shapes and dtypes for a one-layer module on
    batched float32 input."""
    with pytest.raises(exc, match=pattern):
        RecurrentCubaLIF(F, N)(torch.randn(T, B, F), state)


def test_module_state_layouts_of_stacks_and_unbatched_input():
    """A one-layer state for a stack, a batched state for unbatched input,
    an [1, N] state for unbatched input: ValueError giving the shape."""
    stack = RecurrentCubaLIF(F, N, num_layers=2)
    with pytest.raises(ValueError, match=r"\[L, B, N\] = \[2, 3, 5\] \(num_layers=2"):
        stack(torch.randn(T, B, F), (_z(B, N),) * 3)
    layer = RecurrentCubaLIF(F, N)
    with pytest.raises(ValueError, match=r"\[N\] = \[5\] \(one layer, unbatched input\)"):
        layer(torch.randn(T, F), (_z(B, N), None, None))
    with pytest.raises(ValueError, match=r"pass u\[0\]"):
        layer(torch.randn(T, F), (_z(1, N), None, None))


def test_functional_initial_state_shapes_are_not_broadcast():
    """j0 of shape [N], [1, N], [1, B, N] or [B, N + 1]: ValueError naming j0."""
    args = make_args(requires_grad=False)
    for shape in [(N,), (1, N), (1, B, N), (B, N + 1)]:
        args["j0"] = torch.zeros(shape, dtype=F64)
        for fn in FNS.values():
            with pytest.raises(ValueError, match=f"{OP}: argument 'j0' must have shape"):
                fn(**args)


BAD_LENGTHS = [
    (torch.tensor([T, 2.0, 0.0]), TypeError, "must hold integers"),
    (torch.tensor([True, False, True]), TypeError, "must hold integers"),
    (torch.tensor([[T], [2], [0]]), ValueError, "must have shape"),
    (torch.tensor(2), ValueError, "must have shape"),
    (torch.tensor([T, 2]), ValueError, "must have shape"),
    (torch.tensor([T + 1, 2, 0]), ValueError, r"must lie in \[0, T\]"),
    (torch.tensor([-1, 2, 0]), ValueError, r"must lie in \[0, T\]"),
    (torch.tensor([2 ** 40, 2, 0]), ValueError, r"must lie in \[0, T\]"),
    ([T, 2, 0], TypeError, "must be a tensor or None"),
    (np.array([T, 2, 0]), TypeError, "must be a tensor or None"),
]


@pytest.mark.parametrize("lengths,exc,pattern", BAD_LENGTHS,
                         ids=["float", "bool", "B1", "0dim", "short", "above_T", "negative",
                              "huge", "list", "numpy"])
def test_bad_lengths_name_lengths(lengths, exc, pattern):
    """Wrong lengths: the functional, the reference and the module name 'lengths'."""
    args = make_args(requires_grad=False)
    for fn in FNS.values():
        with pytest.raises(exc, match=f"argument 'lengths' {pattern}"):
            fn(**args, lengths=lengths)
    with pytest.raises(exc, match=f"argument 'lengths' {pattern}"):
        RecurrentCubaLIF(F, N)(torch.randn(T, B, F), lengths=lengths)


@pytest.mark.parametrize("dtype", [torch.int8, torch.uint8, torch.int16, torch.int32])
def test_lengths_of_any_integer_dtype_and_strides(dtype):
    """Every integer dtype and a strided lengths tensor give int64's results."""
    args = make_args(requires_grad=False)
    want = recurrent_cubalif(**args, lengths=torch.tensor([T, 2, 0]))
    strided = torch.tensor([[T, 9], [2, 9], [0, 9]], dtype=dtype)[:, 0]
    for lengths in (torch.tensor([T, 2, 0], dtype=dtype), strided):
        got = recurrent_cubalif(**args, lengths=lengths)
        assert all(torch.equal(a, b) for a, b in zip(got, want))


MODULE_KWARGS = [dict(), dict(num_layers=2), dict(reset="zero", recurrent="one_to_one",
                                                  num_layers=3),
                 dict(reset="none", recurrent="none")]
MODULE_IDS = ["one_layer", "stack", "zero_one_to_one_stack3", "none_no_recurrence"]


@pytest.mark.parametrize("kw", MODULE_KWARGS, ids=MODULE_IDS)
def test_module_two_calls_equal_one_and_lengths_layouts(kw):
    """float64: a sequence split in two calls (the first call's final state
    passed on) equals one call; unbatched input equals its batch row;
    batch_first with lengths equals time-major; the final state with lengths
    is each row's state after its own last step."""
    torch.manual_seed(0)
    layer = RecurrentCubaLIF(F, N, dtype=F64, return_membrane=True, **kw)
    x = torch.randn(10, B, F, dtype=F64) * 2
    spikes, membrane, final = layer(x)
    assert spikes.any()
    s1, u1, state = layer(x[:4])
    s2, u2, final2 = layer(x[4:], state)
    assert torch.equal(spikes, torch.cat([s1, s2]))
    torch.testing.assert_close(membrane, torch.cat([u1, u2]), rtol=1e-12, atol=1e-12)
    for a, b in zip(final, final2):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    alone, _, _ = layer(x[:, 1])
    assert torch.equal(alone, spikes[:, 1])
    first = RecurrentCubaLIF(F, N, dtype=F64, return_membrane=True, batch_first=True, **kw)
    first.load_state_dict(layer.state_dict())
    lengths = torch.tensor([10, 6, 0])
    tm, bf = layer(x, lengths=lengths), first(x.transpose(0, 1), lengths=lengths)
    assert torch.equal(tm[0], bf[0].transpose(0, 1)) and torch.equal(tm[1], bf[1].transpose(0, 1))
    assert all(torch.equal(a, b) for a, b in zip(tm[2], bf[2]))
    _, _, row = layer(x[:6, 1:2])
    for got, want in zip(tm[2], row):
        torch.testing.assert_close(got[..., 1:2, :], want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kw", MODULE_KWARGS, ids=MODULE_IDS)
def test_module_low_memory_is_bitwise_with_lengths(kw):
    """save_state=False with lengths [10, 6, 0]: bitwise the same outputs,
    final state, gradient of x and of every parameter."""
    torch.manual_seed(0)
    layers = [RecurrentCubaLIF(F, N, dtype=F64, return_membrane=True, save_state=save, **kw)
              for save in (True, False)]
    layers[1].load_state_dict(layers[0].state_dict())
    x = (torch.randn(10, B, F, dtype=F64) * 2).requires_grad_()
    results = []
    for layer in layers:
        spikes, membrane, final = layer(x, lengths=torch.tensor([10, 6, 0]))
        loss = 0.3 * spikes.sum() + membrane.sum() + sum(f.sum() for f in final)
        params = list(layer.parameters())
        results.append(([spikes, membrane, *final],
                        torch.autograd.grad(loss, [x] + params)))
    (o1, g1), (o2, g2) = results
    assert all(torch.equal(a, b) for a, b in zip(o1, o2))
    assert all(torch.equal(a, b) for a, b in zip(g1, g2))


@pytest.mark.parametrize("save", [True, False])
def test_inputs_edited_in_place_after_forward_make_backward_raise(save):
    """Every tensor input edited in place between forward and backward (in
    both modes, the low-memory one recomputing from the inputs): autograd's
    in-place error, never gradients of the edited values."""
    for name in TENSOR_NAMES:
        args = make_args()
        outputs = recurrent_cubalif(**args, save_state=save)
        with torch.no_grad():
            args[name].mul_(0.5)
        with pytest.raises(RuntimeError, match="inplace"):
            torch.autograd.grad(sum(o.sum() for o in outputs), list(args.values()))


def test_aliased_inputs_match_the_reference():
    """One tensor passed as u0, j0 and s0, and one as w_in, w_rec (and bias
    and alpha_syn from it): the reference's outputs and gradients."""
    args = make_args()
    state = torch.randn(B, N, dtype=F64, requires_grad=True)
    square = (torch.randn(N, N, dtype=F64) * 0.4).requires_grad_()
    x = (torch.randn(T, B, N, dtype=F64) + 0.5).requires_grad_()
    results = []
    for fn in FNS.values():
        out = fn(x, square, square, square[0], args["alpha"], square[1].clamp(0, 1), 1.0,
                 state, state, state)
        results.append((out, torch.autograd.grad(sum(o.sum() for o in out), [x, square, state])))
    (a, ga), (b, gb) = results
    assert torch.equal(a[0], b[0])
    for got, want in zip(list(a[1:]) + list(ga), list(b[1:]) + list(gb)):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_threshold_crossing_is_strict_and_boundaries_are_exact():
    """U == theta does not fire; alpha = alpha_syn = 1 integrate exactly."""
    x = torch.ones(3, 1, 1, dtype=F64)
    one = torch.ones(1, 1, dtype=F64)
    for fn in FNS.values():
        spikes, u, _ = fn(x, one, None, None, 0.0, 0.0, 1.0)
        assert u.flatten().tolist() == [1.0] * 3 and not spikes.any()
        spikes, u, j = fn(0.25 * x, one, None, None, 1.0, 1.0, 1.0, reset="none")
        assert j.flatten().tolist() == [0.25, 0.5, 0.75]
        assert u.flatten().tolist() == [0.25, 0.75, 1.5] and spikes.flatten().tolist() == [0, 0, 1]


# ---------------------------------------------------------------- the module


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_modules_build_run_and_learn(dtype):
    """A bfloat16/float16 module (learnable decays and threshold): all
    tensors in that dtype, spikes in it, U and J in float32, gradients of
    every parameter in the module's dtype, the returned state continues, and
    the autograd backend spikes alike. float32 x is refused naming alpha."""
    torch.manual_seed(0)
    kw = dict(learn_alpha=True, learn_alpha_syn=True, learn_theta=True, dtype=dtype,
              return_membrane=True)
    layer = RecurrentCubaLIF(F, N, **kw)
    assert all(t.dtype == dtype for t in layer.state_dict().values())
    x = torch.randn(T, B, F, dtype=dtype) * 2
    spikes, membrane, state = layer(x)
    assert spikes.dtype == dtype and membrane.dtype == torch.float32
    assert state[1].dtype == torch.float32 and state[2].dtype == dtype
    spikes.float().sum().add(membrane.sum()).backward()
    assert all(p.grad is not None and p.grad.dtype == dtype for p in layer.parameters())
    layer(x, state)
    reference = RecurrentCubaLIF(F, N, backend="autograd", **kw)
    reference.load_state_dict(layer.state_dict())
    assert torch.equal(reference(x)[0], layer(x)[0])
    # (A float32 x takes low-precision weights, as autocast passes them, but
    # not low-precision neuron parameters.)
    with pytest.raises(TypeError, match="argument 'alpha' has dtype .* but x has dtype Float"):
        layer(torch.randn(T, B, F))


def test_copies_pickles_state_dicts_and_dtype_moves():
    """deepcopy, torch.save/load and a state_dict round trip of a module
    with every unusual option give the same outputs and repr; .to(float64)
    moves every tensor; a state_dict of [N] alphas into a 0-dim one is
    refused by load_state_dict."""
    torch.manual_seed(1)
    kw = dict(num_layers=2, recurrent="one_to_one", surrogate="atan", slope=3.0, reset="zero",
              batch_first=True, return_membrane=True, alpha=torch.linspace(0.5, 0.9, N),
              learn_alpha=True, alpha_syn=0.3)
    layer = RecurrentCubaLIF(F, N, save_state=False, **kw)
    x = torch.randn(B, T, F) * 2
    want = layer(x)
    buffer = io.BytesIO()
    torch.save(layer, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    fresh = RecurrentCubaLIF(F, N, **kw)
    fresh.load_state_dict(layer.state_dict())
    for other in (copy.deepcopy(layer), loaded, fresh):
        got = other(x)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert repr(loaded) == repr(layer)
    wide = copy.deepcopy(layer).to(F64)
    assert all(t.dtype == F64 for t in wide.state_dict().values())
    assert wide(x.double())[0].dtype == F64
    with pytest.raises(RuntimeError, match="size mismatch for alpha_l0"):
        RecurrentCubaLIF(F, N, num_layers=2, recurrent="one_to_one").load_state_dict(
            layer.state_dict())


@pytest.mark.parametrize("lengths", [False, True])
def test_fused_and_autograd_backends_agree_in_float64(lengths):
    """A two-layer, per-neuron, all-learnable module, fused vs autograd
    backend: the same spikes, close membranes, final states and gradients of
    x and of every parameter."""
    torch.manual_seed(0)
    kw = dict(per_neuron=True, learn_alpha=True, learn_alpha_syn=True, learn_theta=True,
              dtype=F64, num_layers=2, return_membrane=True, theta=0.5)
    fused = RecurrentCubaLIF(F, N, **kw)
    auto = RecurrentCubaLIF(F, N, backend="autograd", **kw)
    auto.load_state_dict(fused.state_dict())
    x = (torch.randn(8, B, F, dtype=F64) * 2).requires_grad_()
    options = dict(lengths=torch.tensor([8, 5, 0])) if lengths else {}
    results = []
    for layer in (fused, auto):
        spikes, membrane, final = layer(x, **options)
        loss = (spikes * torch.linspace(0, 1, N, dtype=F64)).sum() + membrane.sum() + sum(
            f.sum() for f in final)
        results.append(([spikes, membrane, *final],
                        torch.autograd.grad(loss, [x] + list(layer.parameters()))))
    (o1, g1), (o2, g2) = results
    assert o1[0].any() and torch.equal(o1[0], o2[0])
    for a, b in zip(o1[1:] + list(g1), o2[1:] + list(g2)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


def test_learn_flags_and_per_neuron_initial_values():
    """learn_* make Parameters (the rest buffers); an [N] initial value makes
    that parameter [N] in every layer, copied (no alias) and restored by
    reset_parameters; wrong shapes, out-of-range or NaN tensors, bool and
    complex tensors and non-bool flags name the argument."""
    layer = RecurrentCubaLIF(F, N, learn_alpha_syn=True)
    assert [n for n, _ in layer.named_parameters()] == ["w_in", "w_rec", "bias", "alpha_syn"]
    assert [n for n, _ in layer.named_buffers()] == ["alpha", "theta"]
    init = torch.full((N,), 0.5)
    layer = RecurrentCubaLIF(F, N, alpha_syn=init, learn_alpha_syn=True, num_layers=3)
    init.fill_(0.1)
    assert all(torch.equal(getattr(layer, f"alpha_syn_l{i}"), torch.full((N,), 0.5))
               for i in range(3))
    assert layer.alpha_l0.shape == ()
    with torch.no_grad():
        layer.alpha_syn_l1.fill_(0.9)
    layer.reset_parameters()
    assert torch.equal(layer.alpha_syn_l1, torch.full((N,), 0.5))
    assert RecurrentCubaLIF(F, 1, alpha_syn=torch.tensor([0.5])).alpha_syn.shape == (1,)
    assert RecurrentCubaLIF(F, N, alpha_syn=0.3, per_neuron=True).alpha_syn.shape == (N,)
    bad = [(dict(alpha_syn=torch.full((N + 1,), 0.5)), ValueError),
           (dict(alpha_syn=torch.tensor([0.5])), ValueError),
           (dict(alpha_syn=torch.full((1, N), 0.5)), ValueError),
           (dict(alpha_syn=torch.tensor(1.5)), ValueError),
           (dict(alpha_syn=torch.tensor([0.5] * (N - 1) + [math.nan])), ValueError),
           (dict(alpha_syn=1.5), ValueError), (dict(theta=math.inf), ValueError),
           (dict(alpha_syn=torch.ones(N, dtype=torch.bool)), TypeError),
           (dict(alpha_syn=torch.ones(N, dtype=torch.complex64)), TypeError),
           (dict(learn_alpha_syn=1), TypeError), (dict(save_state=None), TypeError)]
    for kwargs, exc in bad:
        (name,) = kwargs
        with pytest.raises(exc, match=f"argument '{name}'"):
            RecurrentCubaLIF(F, N, **kwargs)


def test_meta_initial_value_for_a_cpu_module_names_the_argument():
    """alpha_syn=torch.tensor(0.5, device="meta") for a CPU module: a meta
    tensor has no values to initialise from (and its range cannot be checked)."""
    with pytest.raises((TypeError, ValueError), match="'alpha_syn'"):
        RecurrentCubaLIF(F, N, alpha_syn=torch.tensor(0.5, device="meta"))


def test_trained_decays_out_of_range_are_clamped_in_the_forward():
    """The constructor refuses decays outside [0, 1], but a trained value an
    optimiser pushed out (alpha_syn 1.5, alpha -0.2, alpha_syn +inf) runs as
    the clamped value with zero gradient; a NaN one is refused naming it."""
    layer = RecurrentCubaLIF(F, N, learn_alpha_syn=True, learn_alpha=True, dtype=F64,
                             return_membrane=True)
    x = torch.randn(T, B, F, dtype=F64) * 2
    with torch.no_grad():
        layer.alpha_syn.fill_(1.5)
        layer.alpha.fill_(-0.2)
    spikes, membrane, (_, j, _) = layer(x)
    want = recurrent_cubalif(x, layer.w_in, layer.w_rec, layer.bias, 0.0, 1.0, layer.theta)
    assert torch.equal(spikes, want[0]) and torch.equal(membrane, want[1])
    assert torch.equal(j, want[2][-1])
    (spikes.sum() + membrane.sum()).backward()
    assert layer.alpha_syn.grad.item() == 0.0 and layer.alpha.grad.item() == 0.0
    with torch.no_grad():
        layer.alpha_syn.fill_(math.inf)
    layer(x)
    for backend in ("fused", "autograd"):
        layer.backend = backend
        with torch.no_grad():
            layer.alpha_syn.fill_(math.nan)
        with pytest.raises(ValueError, match="argument 'alpha_syn' must lie in"):
            layer(x)


def test_dropout_between_layers_in_train_and_eval():
    """num_layers=2, dropout=0.5: deterministic in eval; in training seeded
    runs repeat, differ from eval, and both backends drop alike; a dropout
    with one layer warns."""
    torch.manual_seed(0)
    layer = RecurrentCubaLIF(F, N, num_layers=2, dropout=0.5, dtype=F64, theta=0.5)
    auto = RecurrentCubaLIF(F, N, num_layers=2, dropout=0.5, dtype=F64, theta=0.5,
                            backend="autograd")
    auto.load_state_dict(layer.state_dict())
    x = torch.randn(10, B, F, dtype=F64) * 3
    layer.eval()
    evaluated = layer(x)[0]
    assert torch.equal(evaluated, layer(x)[0])
    layer.train()
    runs = []
    for module in (layer, layer, auto):
        torch.manual_seed(1)
        runs.append(module(x)[0])
    assert torch.equal(runs[0], runs[1]) and torch.equal(runs[0], runs[2])
    assert not torch.equal(runs[0], evaluated)
    with pytest.warns(UserWarning, match="dropout applies between stacked layers"):
        RecurrentCubaLIF(F, N, dropout=0.5)


# ---------------------------------------------------------------- snnTorch


@pytest.fixture
def snntorch():
    return pytest.importorskip("snntorch")


def _rsynaptic_loop(linear, neuron, x):
    """snnTorch's tutorial loop: (spikes, membranes, the last synaptic current)."""
    spk, syn, mem = neuron.reset_mem()
    spikes, membranes = [], []
    for x_t in x.unbind(0):
        spk, syn, mem = neuron(linear(x_t), spk, syn, mem)
        spikes.append(spk)
        membranes.append(mem)
    return torch.stack(spikes), torch.stack(membranes), syn


def _no_bias_recurrence(neuron):
    neuron.recurrent = nn.Linear(N, N, bias=False)


def _recurrent_bias(neuron):
    with torch.no_grad():
        neuron.recurrent.bias.fill_(0.3)


RSYNAPTIC = {
    "recurrent_bias_only": (dict(alpha=0.7, beta=0.85), False, _recurrent_bias),
    "no_bias_anywhere": (dict(alpha=0.7, beta=0.85), False, _no_bias_recurrence),
    "learn_everything": (dict(alpha=torch.linspace(0.2, 0.9, N), beta=0.9,
                              threshold=torch.linspace(0.5, 1.5, N), learn_alpha=True,
                              learn_beta=True, learn_threshold=True), True, None),
    "shared_V_of_shape_1": (dict(alpha=0.5, beta=0.8, all_to_all=False,
                                 V=torch.tensor([0.7])), True, None),
    "learnable_0dim_V": (dict(alpha=0.5, beta=0.8, all_to_all=False, V=torch.tensor(-0.3)), True,
                         None),
    "threshold_0": (dict(alpha=0.5, beta=0.8, threshold=0.0), True, None),
    "alpha_0_and_1": (dict(alpha=torch.tensor([0.0, 1.0, 0.0, 1.0, 0.5]), beta=0.8), True, None),
    "integer_decays": (dict(alpha=torch.tensor(1), beta=torch.tensor(0)), True, None),
    "no_reset_negative_threshold": (dict(alpha=0.6, beta=0.8, threshold=-0.2,
                                         reset_mechanism="none"), True, None),
}


@pytest.mark.parametrize("case", RSYNAPTIC)
def test_from_snntorch_rsynaptic_variants_spike_like_the_loop(snntorch, case):
    """Linear (with or without bias) + RSynaptic variants: the layer's
    spikes, membranes and final j equal the tutorial loop's; learnable
    snnTorch tensors become Parameters that require grad."""
    kwargs, linear_bias, modify = RSYNAPTIC[case]
    torch.manual_seed(0)
    if kwargs.get("all_to_all", True):
        kwargs = dict(kwargs, linear_features=N)
    neuron = snntorch.RSynaptic(**kwargs)
    if modify is not None:
        modify(neuron)
    linear = nn.Linear(F, N, bias=linear_bias)
    layer = RecurrentCubaLIF.from_snntorch(linear, neuron, return_membrane=True)
    x = torch.randn(20, B, F) * 1.5
    spikes, membrane, (_, j, _) = layer(x)
    want_spikes, want_membrane, want_j = _rsynaptic_loop(linear, neuron, x)
    assert spikes.any() and torch.equal(spikes, want_spikes)
    torch.testing.assert_close(membrane, want_membrane, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(j, want_j, rtol=1e-5, atol=1e-5)
    for theirs, ours in (("alpha", "alpha_syn"), ("beta", "alpha"), ("threshold", "theta")):
        learnable = isinstance(getattr(neuron, theirs), nn.Parameter)
        assert isinstance(getattr(layer, ours), nn.Parameter) == learnable, ours


def test_from_snntorch_wrong_classes_are_type_errors(snntorch):
    """A Synaptic (not recurrent), an RLeaky (pointing to RecurrentLIF), an
    nn.Linear as the neuron, the arguments swapped."""
    linear = nn.Linear(F, N)
    cases = [(linear, snntorch.Synaptic(alpha=0.5, beta=0.5), "got Synaptic"),
             (linear, snntorch.RLeaky(beta=0.5, linear_features=N),
              "for an snntorch.RLeaky use RecurrentLIF.from_snntorch"),
             (linear, nn.Linear(N, N), "'rsynaptic' must be an snntorch.RSynaptic, got Linear"),
             (snntorch.RSynaptic(alpha=0.5, beta=0.5, linear_features=N), linear,
              "'linear' must be an nn.Linear")]
    for first, second, message in cases:
        with pytest.raises(TypeError, match=re.escape(message)):
            RecurrentCubaLIF.from_snntorch(first, second)


# ---------------------------------------------------------------- NIR


@pytest.fixture
def nir():
    return pytest.importorskip("nir")


DT = 1e-4


def _cuba(nir, n=N, **changes):
    """A CubaLIF of n neurons (test_nir_cuba's, this file's N)."""
    return cubalif_node(nir, n, **changes)


def _graph(nir, cell, extra=None, more_edges=(), n=N):
    """input -> fc (Affine) -> cuba -> output, plus extra nodes and edges."""
    rng = np.random.default_rng(0)
    fc = nir.Affine(rng.normal(size=(n, F)), rng.normal(size=n) * 0.2)
    nodes = {"input": nir.Input(input_type=np.array([F])), "fc": fc, "cuba": cell,
             **(extra or {}), "output": nir.Output(output_type=np.array([n]))}
    edges = [("input", "fc"), ("fc", "cuba"), ("cuba", "output"), *more_edges]
    return nir.NIRGraph(nodes=nodes, edges=edges, type_check=False)


def _refused_naming(graph, node, kind, pattern, dt=DT):
    with pytest.raises(ValueError) as error:
        torch_ext.from_nir(graph, dt=dt)
    message = one_line(str(error.value))
    assert message.startswith(f"torch_ext.from_nir: node '{node}' ({kind}): "), message
    assert re.search(pattern, message), message


CUBA_FIELDS = ["tau_syn", "tau_mem", "r", "w_in", "v_threshold", "v_leak", "v_reset"]


@pytest.mark.parametrize("field", CUBA_FIELDS)
@pytest.mark.parametrize("lie", ["longer", "column", "empty", "nan"])
def test_cubalif_arrays_that_lie_are_refused_naming_the_node(nir, field, lie):
    """A CubaLIF field of the wrong length ([N+1], [N, 1], [0]) or NaN:
    one line naming the node and the field."""
    cell = _cuba(nir)
    value = {"longer": np.ones(N + 1), "column": np.ones((N, 1)), "empty": np.ones(0),
             "nan": np.full(N, np.nan)}[lie]
    setattr(cell, field, value)  # the node checks its fields at construction only
    pattern = f"{field} must be finite" if lie == "nan" else f"{field} has shape"
    _refused_naming(_graph(nir, cell), "cuba", "CubaLIF", pattern)


@pytest.mark.parametrize("changes,pattern", [
    (dict(tau_syn=np.zeros(N)), "tau_syn must be positive"),
    (dict(tau_mem=np.full(N, -1e-4)), "tau_mem must be positive"),
    (dict(tau_syn=np.full(N, np.inf)), "tau_syn must be finite"),
    (dict(tau_syn=np.full(N, 5e-5)), "tau_syn < dt = 0.0001 for 5 of 5"),
    (dict(tau_mem=np.full(N, 5e-5)), "tau_mem < dt"),
    (dict(v_leak=np.full(N, 0.1)), r"v_leak != 0 with a real synapse \(tau_syn > dt\)"),
    (dict(v_reset=np.full(N, 0.1)), "v_reset = 0.1 for all 5"),
], ids=["tau_syn_0", "tau_mem_negative", "tau_syn_inf", "tau_syn_below_dt", "tau_mem_below_dt",
        "v_leak", "v_reset"])
def test_cubalif_values_without_equivalent_are_refused(nir, changes, pattern):
    _refused_naming(_graph(nir, _cuba(nir, **changes)), "cuba", "CubaLIF", pattern)


def test_cubalif_taus_below_dt_are_refused_at_dt_1e_3(nir):
    """A graph made for dt = 1e-4 read with dt = 1e-3: tau < dt, named."""
    _refused_naming(_graph(nir, _cuba(nir)), "cuba", "CubaLIF", "tau_syn < dt = 0.001", dt=1e-3)


def _topologies(nir):
    eye = lambda n=N: nir.Linear(np.eye(n))  # noqa: E731
    li = nir.LI(tau=np.full(N, 1e-3), r=np.ones(N), v_leak=np.zeros(N))
    one_d = eye()
    one_d.weight = np.ones(N)
    return {
        "two_predecessors": (dict(extra={"fc2": nir.Linear(np.ones((N, F)))},
                                  more_edges=[("input", "fc2"), ("fc2", "cuba")]),
                             "input", "Input", "expected exactly one successor"),
        "cycle_through_LI": (dict(extra={"li": li}, more_edges=[("cuba", "li"), ("li", "cuba")]),
                             "cuba", "CubaLIF", r"its inputs are \['fc', 'li'\]"),
        "cycle_through_Threshold": (dict(extra={"th": nir.Threshold(threshold=np.ones(N))},
                                         more_edges=[("cuba", "th"), ("th", "cuba")]),
                                    "cuba", "CubaLIF", "its inputs are"),
        "cycle_through_Scale": (dict(extra={"sc": nir.Scale(scale=np.ones(N))},
                                     more_edges=[("cuba", "sc"), ("sc", "cuba")]),
                                "sc", "Scale", "not supported"),
        "cycle_through_two_Linears": (dict(extra={"a": eye(), "b": eye()},
                                           more_edges=[("cuba", "a"), ("a", "b"), ("b", "cuba")]),
                                      "cuba", "CubaLIF", r"its inputs are \['fc', 'b'\]"),
        "cycle_through_a_CubaLIF": (dict(extra={"c2": _cuba(nir)},
                                         more_edges=[("cuba", "c2"), ("c2", "cuba")]),
                                    "cuba", "CubaLIF", "its inputs are"),
        "self_edge": (dict(more_edges=[("cuba", "cuba")]), "cuba", "CubaLIF",
                      "a recurrent edge without a weight node"),
        "two_recurrent_nodes": (dict(extra={"a": eye(), "b": eye()},
                                     more_edges=[("cuba", "a"), ("a", "cuba"), ("cuba", "b"),
                                                 ("b", "cuba")]),
                                "cuba", "CubaLIF", "more than one recurrent weight node"),
        "recurrent_too_large": (dict(extra={"a": eye(N + 1)},
                                     more_edges=[("cuba", "a"), ("a", "cuba")]),
                                "a", "Linear", r"a recurrent weight must be \[5, 5\], got \[6, "
                                               r"6\]"),
        "recurrent_1d": (dict(extra={"a": one_d}, more_edges=[("cuba", "a"), ("a", "cuba")]),
                         "a", "Linear", "the weight must be 2-dimensional"),
        "recurrent_nan": (dict(extra={"a": nir.Linear(np.full((N, N), np.nan))},
                               more_edges=[("cuba", "a"), ("a", "cuba")]),
                          "a", "Linear", "its weight has non-finite values"),
        "recurrent_bias_length": (dict(extra={"a": nir.Affine(np.eye(N), np.ones(N + 1))},
                                       more_edges=[("cuba", "a"), ("a", "cuba")]),
                                  "a", "Affine", r"the bias has shape \[6\]"),
        "recurrent_node_also_to_output": (dict(extra={"a": eye()},
                                               more_edges=[("cuba", "a"), ("a", "cuba"),
                                                           ("a", "output")]),
                                          "cuba", "CubaLIF", "its inputs are"),
    }


TOPOLOGIES = ["two_predecessors", "cycle_through_LI", "cycle_through_Threshold",
              "cycle_through_Scale", "cycle_through_two_Linears", "cycle_through_a_CubaLIF",
              "self_edge", "two_recurrent_nodes", "recurrent_too_large", "recurrent_1d",
              "recurrent_nan", "recurrent_bias_length", "recurrent_node_also_to_output"]


@pytest.mark.parametrize("case", TOPOLOGIES)
def test_graphs_that_are_not_one_cubalif_layer_are_refused(nir, case):
    """Two inputs into the layer, cycles through nodes other than one
    Linear/Affine, recurrent weights of the wrong shape or non-finite: one
    line naming the offending node."""
    cases = _topologies(nir)
    assert sorted(cases) == sorted(TOPOLOGIES)
    graph_kwargs, node, kind, pattern = cases[case]
    _refused_naming(_graph(nir, _cuba(nir), **graph_kwargs), node, kind, pattern)


def _exported(**kwargs):
    torch.manual_seed(0)
    return torch_ext.to_nir(RecurrentCubaLIF(F, N, reset="zero", **kwargs))


def _edit_meta(graph, **entries):
    graph.nodes["cubalif"].metadata["torch_ext"].update(entries)
    return graph


@pytest.mark.parametrize("entries,pattern", [
    (dict(alpha_syn=0.5), "its metadata torch_ext.alpha_syn disagrees"),
    (dict(alpha_syn=np.nan), "its metadata torch_ext.alpha_syn must be finite"),
    (dict(alpha_syn=-0.5), "its metadata torch_ext.alpha_syn disagrees"),
    (dict(recurrent="none"), "its metadata says recurrent='none' but it has a recurrent cycle"),
    (dict(recurrent="one_to_one"), "incomplete: it has no 'w_rec'"),
    (dict(recurrent=None), "recurrent='None', which is not a recurrence"),
    (dict(reset="ZERO"), "its metadata says reset='ZERO'"),
], ids=["alpha_syn", "alpha_syn_nan", "alpha_syn_negative", "recurrent_none",
        "recurrent_one_to_one", "recurrent_None", "reset"])
def test_edited_metadata_values_are_refused_naming_the_node(nir, entries, pattern):
    _refused_naming(_edit_meta(_exported(), **entries), "cubalif", "CubaLIF", pattern)


def test_metadata_claiming_one_to_one_for_a_full_cycle_is_refused(nir):
    graph = _exported()
    weight = graph.nodes["w_rec"].weight
    _edit_meta(graph, recurrent="one_to_one", w_rec=np.diag(weight).copy())
    _refused_naming(graph, "cubalif", "CubaLIF",
                    "its metadata torch_ext.w_rec disagrees with the weight of its recurrent node")


@pytest.mark.parametrize("entries", [dict(alpha_syn=[0.8] * (N + 1)), dict(alpha_syn="0.8"),
                                     dict(alpha_syn=None), dict(theta=np.ones((2, N))),
                                     dict(slope="abc")],
                         ids=["alpha_syn_too_long", "alpha_syn_str", "alpha_syn_None",
                              "theta_2d", "slope_str"])
def test_metadata_of_the_wrong_shape_or_type_is_refused_naming_the_node(nir, entries):
    _refused_naming(_edit_meta(_exported(), **entries), "cubalif", "CubaLIF", "metadata")


def test_a_layer_without_neurons_is_refused_naming_the_node(nir):
    graph = nir.NIRGraph(
        nodes={"input": nir.Input(input_type=np.array([F])),
               "fc": nir.Affine(np.zeros((0, F)), np.zeros(0)), "cuba": _cuba(nir, 0),
               "output": nir.Output(output_type=np.array([0]))},
        edges=[("input", "fc"), ("fc", "cuba"), ("cuba", "output")], type_check=False)
    with pytest.raises(ValueError, match="torch_ext.from_nir: node '(fc|cuba)'"):
        torch_ext.from_nir(graph)


@pytest.mark.parametrize("module,pattern", [
    (lambda: RecurrentCubaLIF(F, N), "reset='subtract' cannot be exported"),
    (lambda: RecurrentCubaLIF(F, N, reset="none"), "reset='none' cannot be exported"),
    (lambda: RecurrentCubaLIF(F, N, reset="zero", alpha_syn=1.0),
     "alpha_syn is 1 for 5 of 5 neurons, an infinite tau_syn"),
    (lambda: RecurrentCubaLIF(F, N, reset="zero", alpha=torch.tensor([1.0] + [0.9] * (N - 1))),
     "alpha is 1 for 1 of 5 neurons, an infinite tau_mem"),
], ids=["subtract", "none", "alpha_syn_1", "alpha_1_for_one"])
def test_export_refusals_name_the_layer(nir, module, pattern):
    with pytest.raises(ValueError) as error:
        torch_ext.to_nir(module())
    message = one_line(str(error.value))
    assert message.startswith("torch_ext.to_nir: RecurrentCubaLIF, layer 0: ") and \
        pattern in message, message


def test_export_and_import_at_dt_1e_3(nir, tmp_path):
    """to_nir(dt=1e-3) read back with dt=1e-3 (in memory and through a file)
    gives the same spikes bitwise; read with the default dt it is refused
    naming the node and both dts."""
    torch.manual_seed(0)
    layer = RecurrentCubaLIF(F, N, reset="zero", alpha=torch.linspace(0.5, 0.95, N),
                             alpha_syn=0.3, learn_alpha_syn=True, dtype=F64)
    graph = torch_ext.to_nir(layer, dt=1e-3)
    x = torch.randn(20, B, F, dtype=F64) * 2
    nir.write(tmp_path / "cuba.nir", graph)
    for source in (graph, tmp_path / "cuba.nir"):
        again = torch_ext.from_nir(source, dt=1e-3)
        assert type(again) is RecurrentCubaLIF and isinstance(again.alpha_syn, nn.Parameter)
        assert torch.equal(again(x)[0], layer(x)[0])
    _refused_naming(graph, "cubalif", "CubaLIF",
                    r"its metadata torch_ext.alpha disagrees .* at dt = 0.0001 "
                    r"\(written with dt = 0.001")


def test_a_foreign_instantaneous_cubalif_is_a_recurrent_lif(nir):
    """No metadata, tau_syn = dt for all neurons and v_leak != 0: alpha_syn
    = 0, so the exact import is a RecurrentLIF (not refused for v_leak)."""
    cell = _cuba(nir, tau_syn=np.full(N, DT), v_leak=np.full(N, 0.1))
    assert type(torch_ext.from_nir(_graph(nir, cell))) is RecurrentLIF
