"""Adversarial misuse of recurrent_lif, RecurrentLIF and the direct ops.

For every misuse the op must either raise a clear exception naming the
argument (TypeError, ValueError or NotImplementedError with 'name' in the
message) or return what the plain-autograd reference returns: never garbage,
a crash, a hang or a silent change of meaning. A check raises the same error
(type and message) in the functional, the module, the direct op, the Meta
kernel (all-meta tensors) and under torch.compile / torch.export.

The first section pins down twelve defects found earlier by such a probe (each
test fails on the old behaviour, described in its docstring); the sections
after it cover each class of misuse more widely. Value comparisons are float64.
"""
import math

import numpy as np
import pytest
import torch

import torch_ext
from conftest import LIFArgs, grad_inputs, make_inputs, run_with_grads

T, B, F, N = 6, 2, 5, 4
OP = torch.ops.torch_ext.recurrent_lif
BACKWARD_OP = torch.ops.torch_ext._recurrent_lif_backward
# The direct op's trailing arguments: reset, detach_reset, surrogate, slope.
OP_OPTIONS = ("subtract", False, "sigmoid", None)
TENSOR_ARGS = ("w_in", "w_rec", "bias", "alpha", "theta", "u0", "s0")  # besides x
ONE_DEVICE = "all tensors must be on one device"
ONCE_DIFFERENTIABLE = "once-differentiable"

needs_opcheck = pytest.mark.skipif(not hasattr(torch.library, "opcheck"),
                                   reason="torch.library.opcheck needs torch >= 2.4")


def inputs(T=T, B=B, F=F, N=N, requires_grad=True, **kw):
    """Every argument given, alpha per neuron and theta 0-dim (so all eight are
    tensors and the direct op takes them as they are)."""
    kw.setdefault("alpha_shape", (N,))
    kw.setdefault("theta_shape", ())
    return make_inputs(T, B, F, N, state=True, requires_grad=requires_grad, **kw)


def leaves(args):
    """Detached copies that require grad, so each test edits its own tensors."""
    return LIFArgs(*[a.detach().clone().requires_grad_() if isinstance(a, torch.Tensor) else a
                     for a in args])


def to_meta(args):
    return LIFArgs(*[a.detach().to("meta") if isinstance(a, torch.Tensor) else a for a in args])


def error_of(fn, *args, **kwargs):
    with pytest.raises(Exception) as info:
        fn(*args, **kwargs)
    return info.value


def assert_same_error(got, want):
    assert type(got) is type(want), (got, want)
    assert str(got) == str(want)


def error_chain(e):
    """e and the exceptions it wraps (torch.compile wraps the original error)."""
    while e is not None:
        yield e
        e = e.__cause__ or e.__context__


def assert_matches_reference(args, **options):
    """Outputs and all eight gradients equal the reference's, NaN where it has NaN."""
    s_f, u_f, g_f = run_with_grads(torch_ext.recurrent_lif, args, **options)
    s_r, u_r, g_r = run_with_grads(torch_ext.recurrent_lif_ref, args, **options)
    torch.testing.assert_close(s_f, s_r, rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(u_f, u_r, rtol=1e-10, atol=1e-10, equal_nan=True)
    assert len(g_f) == len(g_r)
    for name, got, want in zip([n for n, a in zip(LIFArgs._fields, args)
                                if isinstance(a, torch.Tensor) and a.requires_grad], g_f, g_r):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10, equal_nan=True,
                                   msg=lambda m: f"gradient of {name}: {m}")
    return (s_f, u_f, g_f), (s_r, u_r, g_r)


# ---------------------------------------------------------------------------
# The twelve defects (each test failed on the old behaviour)
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", TENSOR_ARGS)
def test_defect_01_meta_tensor_among_cpu_tensors_raises(name):
    """Was: garbage outputs. Now the device error of any other mix."""
    args = inputs(requires_grad=False)
    args = args._replace(**{name: getattr(args, name).to("meta")})
    with pytest.raises(ValueError, match=f"'{name}' is on meta but x is on cpu; {ONE_DEVICE}"):
        torch_ext.recurrent_lif(*args)


def test_defect_01_module_moved_to_meta_raises_on_real_data():
    layer = torch_ext.RecurrentLIF(F, N).to("meta")
    with pytest.raises(ValueError, match=ONE_DEVICE):
        layer(torch.randn(T, B, F))


def test_defect_02_meta_kernel_checks_shapes():
    """Was: all-meta inputs with wrong shapes returned outputs."""
    args = inputs(requires_grad=False)
    bad = args._replace(w_rec=torch.zeros(N, N + 1, dtype=torch.float64))
    want = error_of(torch_ext.recurrent_lif, *bad)
    assert isinstance(want, ValueError) and "'w_rec'" in str(want)
    assert_same_error(error_of(torch_ext.recurrent_lif, *to_meta(bad)), want)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("state", [False, True])
def test_defect_03_non_finite_w_rec_of_a_silent_neuron_reaches_the_forward(bad, state):
    """Was: the forward gathered only the w_rec columns of neurons that fired,
    so a non-finite weight from a neuron that never fires vanished. The dense
    product S @ w_rec.T has 0 * NaN = 0 * inf = NaN, and so must the op."""
    args = make_inputs(T, B, F, N, state=state)
    w_rec = args.w_rec.detach().clone()
    w_rec[0, 1] = bad                      # the weight from neuron 1 into neuron 0
    bias = args.bias.detach().clone()
    bias[1] = -50.0                        # neuron 1 never fires
    args = args._replace(w_rec=w_rec.requires_grad_(), bias=bias.requires_grad_())
    (spikes, membrane, _), _ = assert_matches_reference(args)
    assert not spikes[:, :, 1].any()
    assert not membrane[:, :, 0].isfinite().any()


@pytest.mark.parametrize("detach", [False, True])
def test_defect_04_reset_zero_infinite_membrane_at_the_last_step(detach):
    """Was: every gradient of that batch row NaN (0 * inf from the reset term
    of a step that does not exist). Only grad_w_in, which multiplies the
    infinite input itself, may be infinite, as in the reference."""
    args = inputs()
    x = args.x.detach().clone()
    x[-1, 0, 0] = math.inf
    args = args._replace(x=x.requires_grad_())
    (_, membrane, grads), _ = assert_matches_reference(args, reset="zero", detach_reset=detach)
    assert not membrane[-1, 0].isfinite().all()
    for name, g in zip(LIFArgs._fields, grads):
        if name == "w_in":
            assert not g.isnan().any()
        else:
            assert g.isfinite().all(), name


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_defect_05_autocast_leaves_float64_alone(dtype):
    """Was: float64 inputs raised under torch.autocast('cpu')."""
    args = inputs()
    want = run_with_grads(torch_ext.recurrent_lif, args)
    with torch.autocast("cpu", dtype=dtype):
        got = run_with_grads(torch_ext.recurrent_lif, args)
    assert got[0].dtype == got[1].dtype == torch.float64
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    for a, b in zip(got[2], want[2]):
        assert a.dtype == torch.float64 and torch.equal(a, b)


@needs_opcheck
@pytest.mark.parametrize("T_,B_", [(0, B), (T, 0), (0, 0)])
def test_defect_06_empty_time_or_batch_outputs_do_not_alias(T_, B_):
    """Was: with T = 0 or B = 0 the returned gradients shared storage
    (opcheck: 'outputs alias unexpectedly')."""
    args = inputs(T_, B_, requires_grad=False)
    for tensors in (args, leaves(args)):  # without and with requires_grad
        torch.library.opcheck(OP.default, (*tensors, *OP_OPTIONS))
    spikes, membrane = OP(*args, *OP_OPTIONS)
    for needs in ([True] * 11, [True, False, True, False, True, False, True, False] + [False] * 3):
        torch.library.opcheck(BACKWARD_OP.default,
                              (torch.randn_like(spikes), torch.randn_like(membrane), args.x,
                               args.w_in, args.w_rec, args.bias, args.alpha, args.theta, args.u0,
                               args.s0, spikes, membrane, *OP_OPTIONS, needs))


@pytest.mark.parametrize("w_in", [True, False])
def test_defect_07_no_neurons_backward_returns_empty_gradients(w_in):
    """Was: N = 0 crashed in the backward."""
    args = make_inputs(T, B, F, 0, state=True, w_in=w_in, alpha_shape=(0,), theta_shape=())
    (spikes, _, grads), _ = assert_matches_reference(args)
    assert spikes.shape == (T, B, 0)
    for a, g in zip([a for a in args if isinstance(a, torch.Tensor)], grads):
        assert g.shape == a.shape


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")  # torch's own
@pytest.mark.parametrize("name", ("x",) + TENSOR_ARGS)
def test_defect_08_forward_mode_ad_raises(name):
    """Was: a zero tangent, silently."""
    import torch.autograd.forward_ad as fwAD
    args = inputs(requires_grad=False)
    with fwAD.dual_level():
        primal = getattr(args, name)
        dual = fwAD.make_dual(primal, torch.ones_like(primal))
        with pytest.raises(NotImplementedError, match="recurrent_lif: forward-mode AD"):
            torch_ext.recurrent_lif(*args._replace(**{name: dual}))


def test_defect_08_jvp_raises():
    args = inputs(requires_grad=False)

    def membrane_of(w_rec):
        return torch_ext.recurrent_lif(*args._replace(w_rec=w_rec))[1]

    with pytest.raises(NotImplementedError, match="recurrent_lif"):
        torch.func.jvp(membrane_of, (args.w_rec,), (torch.ones_like(args.w_rec),))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_defect_09_slope_beyond_the_compute_dtype_raises(dtype):
    """Was: slope=1e300 with float32 inputs became inf, the gradients NaN.
    float16/bfloat16 compute in float32, so the same limit holds."""
    args = make_inputs(T, B, F, N, dtype=dtype, state=True, requires_grad=False)
    want = error_of(torch_ext.recurrent_lif, *args, slope=1e300)
    assert isinstance(want, ValueError) and "'slope'" in str(want)
    tensors = args._replace(alpha=torch.tensor(0.85), theta=torch.tensor(1.0))
    assert_same_error(error_of(OP, *tensors, "subtract", False, "sigmoid", 1e300), want)
    assert_same_error(error_of(torch_ext.recurrent_lif, *to_meta(args), slope=1e300), want)
    assert_same_error(error_of(torch_ext.recurrent_lif_ref, *args, slope=1e300), want)
    assert_same_error(error_of(torch_ext.RecurrentLIF, F, N, slope=1e300, dtype=dtype), want)
    torch_ext.recurrent_lif(*args, slope=3e38)  # the largest float32 is fine


@pytest.mark.parametrize("surrogate", sorted(torch_ext._C.SURROGATE_SLOPES))
def test_defect_09_float64_takes_a_huge_slope(surrogate):
    (_, _, grads), _ = assert_matches_reference(inputs(), surrogate=surrogate, slope=1e300)
    assert all(g.isfinite().all() for g in grads)


def test_defect_10_module_checks_detach_reset_type():
    """Was: RecurrentLIF(detach_reset="False") silently became True."""
    want = error_of(torch_ext.recurrent_lif, *inputs(), detach_reset="False")
    assert isinstance(want, TypeError) and "'detach_reset'" in str(want)
    assert_same_error(error_of(torch_ext.RecurrentLIF, F, N, detach_reset="False"), want)


@pytest.mark.parametrize("kwargs,name", [(dict(alpha="0.9"), "alpha"), (dict(theta=None), "theta"),
                                         (dict(alpha=True), "alpha"), (dict(theta=False), "theta")])
def test_defect_11_module_constructor_type_errors_name_the_argument(kwargs, name):
    """Was: messages without the argument's name, and alpha=True accepted."""
    with pytest.raises(TypeError, match=f"'{name}'"):
        torch_ext.RecurrentLIF(F, N, **kwargs)


def call_with(name, value):
    """Positional arguments and keyword options of a call with `name` set to
    `value` (alpha and theta are positional, the options keywords)."""
    args = inputs(requires_grad=False)._replace(alpha=0.9, theta=1.0)
    if name in LIFArgs._fields:
        return args._replace(**{name: value}), {}
    return args, {name: value}


@pytest.mark.parametrize("huge", [10**400, -10**400], ids=["+10**400", "-10**400"])
@pytest.mark.parametrize("name", ["alpha", "theta", "slope"])
def test_defect_12_ints_beyond_float_range_name_the_argument(name, huge):
    """Was: OverflowError without the argument's name."""
    args, options = call_with(name, huge)
    want = error_of(torch_ext.recurrent_lif, *args, **options)
    assert isinstance(want, ValueError) and f"'{name}'" in str(want)
    assert_same_error(error_of(torch_ext.recurrent_lif_ref, *args, **options), want)
    assert_same_error(error_of(torch_ext.RecurrentLIF, F, N, **{name: huge}), want)


# ---------------------------------------------------------------------------
# One error, everywhere: functional, module, direct op, Meta kernel, compile
# ---------------------------------------------------------------------------

# (replaced arguments, options, exception type, argument named): checks done
# in C++, by the real and the Meta kernels alike.
KERNEL_CASES = [
    (dict(x=torch.zeros(T, B, dtype=torch.float64)), {}, ValueError, "x"),
    (dict(x=torch.zeros(T, B, F, 1, dtype=torch.float64)), {}, ValueError, "x"),
    (dict(x=torch.zeros(T, B, F, dtype=torch.int64)), {}, TypeError, "x"),
    (dict(x=torch.zeros(T, B, F, dtype=torch.complex128)), {}, TypeError, "x"),
    (dict(x=torch.zeros(T, B, F, dtype=torch.bool)), {}, TypeError, "x"),
    (dict(w_in=torch.zeros(N, F + 1, dtype=torch.float64)), {}, ValueError, "w_in"),
    (dict(w_in=torch.zeros(N * F, dtype=torch.float64)), {}, ValueError, "w_in"),
    (dict(w_in=torch.zeros(N, F, dtype=torch.float32)), {}, TypeError, "w_in"),
    (dict(w_rec=torch.zeros(N, N + 1, dtype=torch.float64)), {}, ValueError, "w_rec"),
    (dict(w_rec=torch.zeros(N + 1, N + 1, dtype=torch.float64)), {}, ValueError, "w_rec"),
    (dict(w_rec=torch.zeros(N + 1, dtype=torch.float64)), {}, ValueError, "w_rec"),  # one-to-one, wrong N
    (dict(w_rec=torch.zeros(N, N, dtype=torch.float16)), {}, TypeError, "w_rec"),
    (dict(w_in=None), {}, ValueError, "w_rec"),   # then N = F = 5, but w_rec is [4, 4]
    (dict(bias=torch.zeros(N + 1, dtype=torch.float64)), {}, ValueError, "bias"),
    (dict(bias=torch.zeros(1, N, dtype=torch.float64)), {}, ValueError, "bias"),
    (dict(bias=torch.zeros(N, dtype=torch.float32)), {}, TypeError, "bias"),
    (dict(alpha=torch.full((N + 1,), 0.5, dtype=torch.float64)), {}, ValueError, "alpha"),
    (dict(alpha=torch.full((1, N), 0.5, dtype=torch.float64)), {}, ValueError, "alpha"),
    (dict(alpha=torch.full((N,), 0.5, dtype=torch.float32)), {}, TypeError, "alpha"),
    (dict(alpha=torch.ones(N, dtype=torch.int64)), {}, TypeError, "alpha"),
    (dict(theta=torch.ones(2, dtype=torch.float64)), {}, ValueError, "theta"),
    (dict(theta=torch.ones((), dtype=torch.int64)), {}, TypeError, "theta"),
    (dict(u0=torch.zeros(B + 1, N, dtype=torch.float64)), {}, ValueError, "u0"),
    (dict(u0=torch.zeros(B, N + 1, dtype=torch.float64)), {}, ValueError, "u0"),
    (dict(u0=torch.zeros(N, dtype=torch.float64)), {}, ValueError, "u0"),
    (dict(u0=torch.zeros(B, N, dtype=torch.float16)), {}, TypeError, "u0"),
    (dict(s0=torch.zeros(B, N + 1, dtype=torch.float64)), {}, ValueError, "s0"),
    (dict(s0=torch.zeros(B, N, dtype=torch.int64)), {}, TypeError, "s0"),
    ({}, dict(reset="hard"), ValueError, "reset"),
    ({}, dict(surrogate="relu"), ValueError, "surrogate"),
    ({}, dict(slope=0.0), ValueError, "slope"),
    ({}, dict(slope=-1.0), ValueError, "slope"),
    ({}, dict(slope=math.nan), ValueError, "slope"),
    ({}, dict(slope=math.inf), ValueError, "slope"),
]


def kernel_case_id(case):
    replace, options, _, name = case
    (key, value), = (replace or options).items()
    if isinstance(value, torch.Tensor):
        value = f"{list(value.shape)}-{str(value.dtype).replace('torch.', '')}"
    return f"{key}={value}"


def direct_op_call(args, options):
    """The direct op's positional arguments for a recurrent_lif call."""
    full = dict(zip(("reset", "detach_reset", "surrogate", "slope"), OP_OPTIONS), **options)
    return (*args, full["reset"], full["detach_reset"], full["surrogate"], full["slope"])


@pytest.mark.parametrize("replace,options,exc,name", KERNEL_CASES,
                         ids=[kernel_case_id(c) for c in KERNEL_CASES])
def test_same_error_from_functional_direct_op_and_meta_kernel(replace, options, exc, name):
    args = inputs(requires_grad=False)._replace(**replace)
    want = error_of(torch_ext.recurrent_lif, *args, **options)
    assert isinstance(want, exc) and f"'{name}'" in str(want), want
    assert_same_error(error_of(OP, *direct_op_call(args, options)), want)
    # All-meta inputs: the Meta kernel applies the same checks.
    assert_same_error(error_of(OP, *direct_op_call(to_meta(args), options)), want)
    assert_same_error(error_of(torch_ext.recurrent_lif, *to_meta(args), **options), want)


BACKWARD_CASES = [
    (dict(grad_spikes=torch.zeros(T - 1, B, N, dtype=torch.float64)), ValueError, "grad_spikes"),
    (dict(grad_membrane=torch.zeros(T, B, N + 1, dtype=torch.float64)), ValueError,
     "grad_membrane"),
    (dict(grad_spikes=torch.zeros(T, B, N, dtype=torch.int32)), TypeError, "grad_spikes"),
    (dict(spikes=torch.zeros(T, B + 1, N, dtype=torch.float64)), ValueError, "spikes"),
    (dict(membrane=torch.zeros(T, B, N, dtype=torch.int64)), TypeError, "membrane"),
    (dict(x=torch.zeros(T, B, dtype=torch.float64)), ValueError, "x"),
    (dict(w_rec=torch.zeros(N, N + 1, dtype=torch.float64)), ValueError, "w_rec"),
    (dict(u0=torch.zeros(B + 1, N, dtype=torch.float64)), ValueError, "u0"),
    (dict(surrogate="relu"), ValueError, "surrogate"),
    (dict(slope=-1.0), ValueError, "slope"),
]


@pytest.mark.parametrize("replace,exc,name", BACKWARD_CASES,
                         ids=[next(iter(c[0])) for c in BACKWARD_CASES])
def test_backward_op_same_error_on_cpu_and_meta(replace, exc, name):
    args = inputs(requires_grad=False)
    spikes, membrane = OP(*args, *OP_OPTIONS)
    call = dict(grad_spikes=torch.ones_like(spikes), grad_membrane=torch.ones_like(membrane),
                **args._asdict(), spikes=spikes, membrane=membrane)
    call.update(reset="subtract", detach_reset=False, surrogate="sigmoid", slope=None,
                needs_grad=[True] * 11)
    call.update(replace)
    want = error_of(BACKWARD_OP, **call)
    assert isinstance(want, exc) and f"'{name}'" in str(want), want
    meta = {k: v.to("meta") if isinstance(v, torch.Tensor) else v for k, v in call.items()}
    assert_same_error(error_of(BACKWARD_OP, **meta), want)


def test_meta_kernels_give_the_real_kernels_shapes_and_dtypes():
    for dtype in (torch.float64, torch.float16):
        args = make_inputs(T, B, F, N, dtype=dtype, state=True, requires_grad=False,
                           alpha_shape=(N,))
        real, meta = OP(*args, *OP_OPTIONS), OP(*to_meta(args), *OP_OPTIONS)
        for r, m in zip(real, meta):
            assert m.device.type == "meta" and m.shape == r.shape and m.dtype == r.dtype


@pytest.mark.parametrize("replace,options", [
    (dict(w_rec=torch.zeros(N, N + 1, dtype=torch.float64)), {}),   # a shape check
    (dict(u0=torch.zeros(B, N, dtype=torch.float16)), {}),           # a dtype check
    ({}, dict(reset="hard")),                                         # an option check in C++
    ({}, dict(detach_reset="yes")),                                   # a Python type check
    (dict(alpha=torch.full((N,), 1.5, dtype=torch.float64)), {}),    # a value: at run time
], ids=["shape", "dtype", "option", "type", "value"])
def test_compiled_fullgraph_raises_the_eager_error(replace, options):
    args = inputs(requires_grad=False)._replace(**replace)
    want = error_of(torch_ext.recurrent_lif, *args, **options)
    torch._dynamo.reset()
    compiled = torch.compile(torch_ext.recurrent_lif, fullgraph=True, backend="aot_eager")
    got = error_of(compiled, *args, **options)
    # torch.compile wraps the error; the original message must be in the chain.
    assert any(str(want) in str(e) for e in error_chain(got)), got


def test_compiled_with_dynamic_shapes_checks_symbolic_shapes():
    args = inputs(requires_grad=False)
    torch._dynamo.reset()
    compiled = torch.compile(torch_ext.recurrent_lif, fullgraph=True, backend="aot_eager",
                             dynamic=True)
    assert compiled(*args)[0].shape == (T, B, N)
    got = error_of(compiled, *args._replace(w_rec=torch.zeros(N, N + 1, dtype=torch.float64)))
    assert any(isinstance(e, ValueError) and "'w_rec' must have shape" in str(e)
               for e in error_chain(got)), got


class _Functional(torch.nn.Module):
    def forward(self, x, w_in, w_rec, bias, alpha, theta, u0, s0):
        return torch_ext.recurrent_lif(x, w_in, w_rec, bias, alpha, theta, u0, s0)


def test_export_rejects_a_wrong_shape_with_the_eager_error():
    args = inputs(requires_grad=False)
    torch.export.export(_Functional(), tuple(args))  # the right shapes export
    bad = args._replace(bias=torch.zeros(N + 1, dtype=torch.float64))
    want = error_of(torch_ext.recurrent_lif, *bad)
    assert_same_error(error_of(torch.export.export, _Functional(), tuple(bad)), want)


def test_module_raises_the_functionals_errors():
    layer = torch_ext.RecurrentLIF(F, N, dtype=torch.float64)
    x = torch.randn(T, B, F, dtype=torch.float64)
    params = (layer.w_in, layer.w_rec, layer.bias, layer.alpha.clamp(0, 1), layer.theta)
    zeros = torch.zeros(B, N, dtype=torch.float64)
    state = (zeros, torch.zeros(B, N, dtype=torch.int64))                  # s0's dtype
    want = error_of(torch_ext.recurrent_lif, x, *params, *state)
    assert_same_error(error_of(layer, x, state), want)
    # A state of the wrong shape is the module's own error, which gives the
    # expected shape in the module's terms (it also covers stacked layers).
    with pytest.raises(ValueError, match=r"'state': u must have shape \[B, N\] = \[2, 4\]"):
        layer(x, (torch.zeros(B + 1, N, dtype=torch.float64), zeros))
    want = error_of(torch_ext.recurrent_lif, x.long(), *params)
    assert_same_error(error_of(layer, x.long()), want)


# ---------------------------------------------------------------------------
# Devices, meta included
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", TENSOR_ARGS)
def test_meta_argument_among_cpu_tensors_direct_op(name):
    args = inputs(requires_grad=False)
    args = args._replace(**{name: getattr(args, name).to("meta")})
    want = error_of(torch_ext.recurrent_lif, *args)
    assert isinstance(want, ValueError) and f"'{name}' is on meta" in str(want)
    assert_same_error(error_of(OP, *args, *OP_OPTIONS), want)


@pytest.mark.parametrize("name", TENSOR_ARGS)
def test_cpu_argument_among_meta_tensors(name):
    cpu = inputs(requires_grad=False)
    args = to_meta(cpu)._replace(**{name: getattr(cpu, name)})
    with pytest.raises(ValueError, match=f"'{name}' is on cpu but x is on meta; {ONE_DEVICE}"):
        torch_ext.recurrent_lif(*args)


@pytest.mark.parametrize("name", ["grad_spikes", "grad_membrane", "spikes", "membrane", "u0", "s0"])
def test_meta_argument_in_the_backward_op(name):
    args = inputs(requires_grad=False)
    spikes, membrane = OP(*args, *OP_OPTIONS)
    call = dict(grad_spikes=torch.ones_like(spikes), grad_membrane=torch.ones_like(membrane),
                **args._asdict(), spikes=spikes, membrane=membrane)
    call[name] = call[name].to("meta")
    with pytest.raises(ValueError, match=f"'{name}' is on meta but x is on cpu; {ONE_DEVICE}"):
        BACKWARD_OP(**call, reset="subtract", detach_reset=False, surrogate="sigmoid", slope=None,
                    needs_grad=[True] * 11)


def test_meta_data_through_a_cpu_module_raises():
    layer = torch_ext.RecurrentLIF(F, N)
    with pytest.raises(ValueError, match=f"'w_in' is on cpu but x is on meta; {ONE_DEVICE}"):
        layer(torch.randn(T, B, F, device="meta"))


def test_meta_state_into_a_cpu_module_raises():
    layer = torch_ext.RecurrentLIF(F, N)
    state = (torch.zeros(B, N, device="meta"), torch.zeros(B, N))
    with pytest.raises(ValueError, match=f"'u0' is on meta but x is on cpu; {ONE_DEVICE}"):
        layer(torch.randn(T, B, F), state)


def test_all_meta_module_runs_shapes_only():
    layer = torch_ext.RecurrentLIF(F, N, return_membrane=True, batch_first=True).to("meta")
    spikes, membrane, (u, s) = layer(torch.randn(B, T, F, device="meta"))
    assert spikes.shape == membrane.shape == (B, T, N) and u.shape == s.shape == (B, N)
    assert spikes.device.type == "meta"


@pytest.mark.xfail(strict=True, reason=(
    "under torch.compile a device mix is caught by torch's own fake-tensor check "
    "(FakeTensorDeviceMismatchError 'Expected all tensors to be on the same device, but found "
    "at least two devices, cpu and meta!'), which does not name the argument: inside the fake "
    "kernel every fake tensor reports device 'meta', so the C++ Meta kernel cannot tell the "
    "devices apart and the eager 'all tensors must be on one device' error never runs"))
def test_compiled_device_mix_names_the_argument():
    args = inputs(requires_grad=False)
    args = args._replace(w_in=args.w_in.to("meta"))
    torch._dynamo.reset()
    compiled = torch.compile(torch_ext.recurrent_lif, fullgraph=True, backend="aot_eager")
    got = error_of(compiled, *args)
    assert any("'w_in' is on meta" in str(e) for e in error_chain(got)), got


# ---------------------------------------------------------------------------
# Non-finite values in every input
# ---------------------------------------------------------------------------

# x, the weights, bias, the state and a tensor theta: the op does not inspect
# their values (that would cost a device synchronisation on CUDA and a pass over
# the data), so a NaN or inf there must flow exactly as through the plain
# autograd reference (including 0 * inf = NaN in the products and NaN
# thresholds never firing). s0 may hold any real value (R[0] = s0).
PROPAGATED = ["x", "w_in", "w_rec", "bias", "theta", "u0", "s0"]


@pytest.mark.parametrize("detach", [False, True])
@pytest.mark.parametrize("reset", ["subtract", "zero", "none"])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("name", PROPAGATED)
def test_non_finite_value_flows_as_in_the_reference(name, bad, reset, detach):
    args = inputs(theta_shape=(N,))
    value = getattr(args, name).detach().clone()
    value.view(-1)[1] = bad
    args = args._replace(**{name: value.requires_grad_()})
    (_, membrane, _), _ = assert_matches_reference(args, reset=reset, detach_reset=detach)
    if name != "theta":  # a non-finite threshold changes the spikes, not the membrane
        assert not membrane.isfinite().all()


@pytest.mark.parametrize("surrogate", sorted(torch_ext._C.SURROGATE_SLOPES))
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
def test_non_finite_0dim_theta_flows_as_in_the_reference(bad, surrogate):
    args = inputs()._replace(theta=torch.tensor(bad, dtype=torch.float64, requires_grad=True))
    assert_matches_reference(args, surrogate=surrogate)


@pytest.mark.parametrize("shape", [(), (N,)])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
def test_non_finite_tensor_alpha_raises(bad, shape):
    # alpha is a decay factor: outside [0, 1] (so any inf) it makes the
    # membrane grow without bound, and NaN means nothing; the op checks tensor
    # alpha on CPU (the reference, plain PyTorch, does not check values).
    alpha = torch.full(shape, 0.5, dtype=torch.float64)
    alpha.view(-1)[-1] = bad
    args = inputs()._replace(alpha=alpha)
    want = error_of(torch_ext.recurrent_lif, *args)
    assert isinstance(want, ValueError) and "'alpha' must lie in [0, 1]" in str(want)
    assert_same_error(error_of(OP, *args, *OP_OPTIONS), want)


def test_module_with_a_nan_learnable_alpha_raises():
    # clamp(NaN) is NaN: a diverged alpha is reported, not used.
    layer = torch_ext.RecurrentLIF(F, N, learn_alpha=True, dtype=torch.float64)
    with torch.no_grad():
        layer.alpha.fill_(math.nan)
    with pytest.raises(ValueError, match="'alpha'"):
        layer(torch.randn(T, B, F, dtype=torch.float64))


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("name", ["alpha", "theta"])
def test_non_finite_python_alpha_or_theta_raises(name, bad):
    # A Python number is a constant of the model, checked once on the host: a
    # non-finite decay or threshold is a mistake, not data.
    args, _ = call_with(name, bad)
    want = error_of(torch_ext.recurrent_lif, *args)
    assert isinstance(want, ValueError) and f"'{name}'" in str(want)
    assert_same_error(error_of(torch_ext.recurrent_lif_ref, *args), want)
    assert_same_error(error_of(torch_ext.RecurrentLIF, F, N, **{name: bad}), want)


# ---------------------------------------------------------------------------
# Empty dimensions
# ---------------------------------------------------------------------------

EMPTY_SHAPES = [(0, B, F, N), (T, 0, F, N), (T, B, 0, N), (T, B, F, 0), (0, 0, F, N),
                (0, B, F, 0), (T, 0, 0, 0), (0, 0, 0, 0)]


@pytest.mark.parametrize("weights", ["both", "no_w_in", "no_w_rec"])
@pytest.mark.parametrize("shape", EMPTY_SHAPES,
                         ids=["T{}-B{}-F{}-N{}".format(*s) for s in EMPTY_SHAPES])
def test_empty_dimension_forward_and_backward_match_the_reference(shape, weights):
    T_, B_, F_, N_ = shape
    args = make_inputs(T_, B_, F_, N_, state=True, w_in=weights != "no_w_in",
                       w_rec=weights != "no_w_rec", alpha_shape=(N_,))
    (spikes, membrane, grads), _ = assert_matches_reference(args)
    assert spikes.shape == membrane.shape == (T_, B_, N_)
    for a, g in zip([a for a in args if isinstance(a, torch.Tensor)], grads):
        assert g.shape == a.shape and g.dtype == a.dtype


@needs_opcheck
@pytest.mark.parametrize("shape", [(T, B, 0, N), (T, B, F, 0)], ids=["F0", "N0"])
def test_empty_features_or_neurons_pass_opcheck(shape):
    args = inputs(*shape, requires_grad=False, alpha_shape=(shape[3],))
    torch.library.opcheck(OP.default, (*leaves(args), *OP_OPTIONS))
    spikes, membrane = OP(*args, *OP_OPTIONS)
    torch.library.opcheck(BACKWARD_OP.default,
                          (torch.randn_like(spikes), None, args.x, args.w_in, args.w_rec,
                           args.bias, args.alpha, args.theta, args.u0, args.s0, spikes, membrane,
                           *OP_OPTIONS, [True] * 11))


@pytest.mark.parametrize("T_,B_", [(0, B), (T, 0), (0, 0)])
def test_module_with_empty_time_or_batch(T_, B_):
    layer = torch_ext.RecurrentLIF(F, N, learn_alpha=True, learn_theta=True, per_neuron=True,
                                   return_membrane=True, dtype=torch.float64)
    reference = torch_ext.RecurrentLIF(F, N, learn_alpha=True, learn_theta=True, per_neuron=True,
                                       return_membrane=True, dtype=torch.float64,
                                       backend="autograd")
    reference.load_state_dict(layer.state_dict())
    x = torch.randn(T_, B_, F, dtype=torch.float64)
    results = []
    for m in (layer, reference):
        spikes, membrane, (u, s) = m(x)
        assert spikes.shape == membrane.shape == (T_, B_, N) and u.shape == s.shape == (B_, N)
        loss = spikes.sum() + membrane.sum() + u.sum()
        grads = torch.autograd.grad(loss, list(m.parameters()), allow_unused=True) \
            if loss.requires_grad else [None] * len(list(m.parameters()))
        results.append([torch.zeros_like(p) if g is None else g
                        for p, g in zip(m.parameters(), grads)])
    for a, b in zip(*results):
        assert torch.equal(a, b) and not a.any()


# ---------------------------------------------------------------------------
# Autograd modes
# ---------------------------------------------------------------------------

def test_no_grad_gives_the_same_values_and_no_graph():
    args = inputs()
    want = torch_ext.recurrent_lif(*args)
    with torch.no_grad():
        got = torch_ext.recurrent_lif(*args)
    for a, b in zip(got, want):
        assert a.grad_fn is None and not a.requires_grad and torch.equal(a, b)


def test_inference_mode_gives_the_same_values():
    args = inputs()
    want = torch_ext.recurrent_lif(*args)
    with torch.inference_mode():
        got = torch_ext.recurrent_lif(*args)
    for a, b in zip(got, want):
        assert a.is_inference() and not a.requires_grad and torch.equal(a, b)


def test_gradients_of_a_subset_of_the_inputs():
    args = inputs()
    args = args._replace(x=args.x.detach(), alpha=args.alpha.detach(), u0=args.u0.detach())
    spikes, membrane = torch_ext.recurrent_lif(*args)
    grads = torch.autograd.grad(spikes.sum() + membrane.sum(), [args.w_in, args.theta])
    want = torch.autograd.grad(sum(o.sum() for o in torch_ext.recurrent_lif_ref(*args)),
                               [args.w_in, args.theta])
    for a, b in zip(grads, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_retain_graph_gives_the_same_gradients_twice_then_the_graph_is_freed():
    args = inputs()
    spikes, membrane = torch_ext.recurrent_lif(*args)
    loss = (spikes * 1.5).sum() + membrane.pow(2).sum()
    tensors = list(args)
    first = torch.autograd.grad(loss, tensors, retain_graph=True)
    second = torch.autograd.grad(loss, tensors)
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        torch.autograd.grad(loss, tensors)


def test_create_graph_first_derivative_works_second_raises():
    args = inputs()
    spikes, membrane = torch_ext.recurrent_lif(*args)
    loss = spikes.sum() + membrane.pow(2).sum()
    plain = torch.autograd.grad(loss, list(args), retain_graph=True)
    grads = torch.autograd.grad(loss, list(args), create_graph=True)
    for a, b in zip(grads, plain):
        assert a.requires_grad and torch.equal(a, b)
    # Using a gradient in a new graph is fine as long as nothing differentiates
    # through it: only the path through the op's backward raises.
    p = torch.randn(3, dtype=torch.float64, requires_grad=True)
    penalty = grads[1].pow(2).sum() + p.pow(2).sum()
    (gp,) = torch.autograd.grad(penalty, [p], retain_graph=True)
    assert torch.equal(gp, 2 * p)
    torch.autograd.grad(grads[1].detach().sum() * p.sum(), [p])
    for target in (args.w_in, args.x, args.theta):
        with pytest.raises(RuntimeError, match=ONCE_DIFFERENTIABLE):
            torch.autograd.grad(penalty, [target], retain_graph=True)


def test_direct_backward_op_is_once_differentiable():
    args = leaves(inputs())
    spikes, membrane = OP(*args, *OP_OPTIONS)
    grads = BACKWARD_OP(torch.ones_like(spikes), None, args.x, args.w_in, args.w_rec, args.bias,
                        args.alpha, args.theta, args.u0, args.s0, spikes, membrane, *OP_OPTIONS,
                        [True] * 11)
    with pytest.raises(RuntimeError, match=ONCE_DIFFERENTIABLE):
        torch.autograd.grad(grads[0].sum(), [args.w_in])


@pytest.mark.filterwarnings("ignore:.*batching rule")
def test_vmap_equals_a_loop():
    args = inputs(requires_grad=False)
    xs = torch.stack([args.x, 2 * args.x, -args.x])

    def membrane_of(x):
        return torch_ext.recurrent_lif(*args._replace(x=x))[1]

    want = torch.stack([membrane_of(x) for x in xs])
    got = torch.vmap(membrane_of)(xs)  # torch's per-sample fallback (no batching rule)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_functorch_grad_equals_the_reference_or_raises():
    # torch.func.grad of the op: either the reference's gradient or an error,
    # never a wrong number.
    args = inputs(requires_grad=False)

    def loss(fn, w_in):
        spikes, membrane = fn(*args._replace(w_in=w_in))
        return spikes.sum() + membrane.pow(2).sum()

    w_in = args.w_in.clone().requires_grad_()
    (want,) = torch.autograd.grad(loss(torch_ext.recurrent_lif_ref, w_in), [w_in])
    try:
        got = torch.func.grad(lambda w: loss(torch_ext.recurrent_lif, w))(args.w_in)
    except RuntimeError as e:
        assert "torch::autograd::Function" in str(e) or "recurrent_lif" in str(e), e
    else:
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------------------
# Option and argument types, functional and module
# ---------------------------------------------------------------------------

# (keyword arguments, exception, argument named). Checked in Python before any
# work, identically by the functional, the reference and the module.
BAD_OPTIONS = [
    (dict(reset=None), TypeError, "reset"),
    (dict(reset=1), TypeError, "reset"),
    (dict(reset=True), TypeError, "reset"),
    (dict(reset=b"zero"), TypeError, "reset"),
    (dict(reset="Zero"), ValueError, "reset"),
    (dict(reset=""), ValueError, "reset"),
    (dict(detach_reset="False"), TypeError, "detach_reset"),
    (dict(detach_reset="True"), TypeError, "detach_reset"),
    (dict(detach_reset=0), TypeError, "detach_reset"),
    (dict(detach_reset=1), TypeError, "detach_reset"),
    (dict(detach_reset=1.0), TypeError, "detach_reset"),
    (dict(detach_reset=None), TypeError, "detach_reset"),
    (dict(detach_reset=torch.tensor(True)), TypeError, "detach_reset"),
    (dict(surrogate=None), ValueError, "surrogate"),
    (dict(surrogate=1), ValueError, "surrogate"),
    (dict(surrogate="Sigmoid"), ValueError, "surrogate"),
    (dict(surrogate=torch.sigmoid), ValueError, "surrogate"),
    (dict(slope="25"), TypeError, "slope"),
    (dict(slope=True), TypeError, "slope"),
    (dict(slope=False), TypeError, "slope"),
    (dict(slope=[25.0]), TypeError, "slope"),
    (dict(slope=25j), TypeError, "slope"),
    (dict(slope=torch.tensor(25.0)), TypeError, "slope"),
    (dict(slope=0), ValueError, "slope"),
    (dict(slope=-1), ValueError, "slope"),
    (dict(slope=-math.inf), ValueError, "slope"),
    (dict(slope=10**400), ValueError, "slope"),
    (dict(slope=np.float64(-2.0)), ValueError, "slope"),
    (dict(alpha="0.9"), TypeError, "alpha"),
    (dict(alpha=None), TypeError, "alpha"),
    (dict(alpha=True), TypeError, "alpha"),
    (dict(alpha=False), TypeError, "alpha"),
    (dict(alpha=0.9j), TypeError, "alpha"),
    (dict(alpha=[0.9]), TypeError, "alpha"),
    (dict(alpha=np.bool_(True)), TypeError, "alpha"),
    (dict(alpha=2), ValueError, "alpha"),
    (dict(alpha=-1e-300), ValueError, "alpha"),
    (dict(alpha=np.float64(1.5)), ValueError, "alpha"),
    (dict(alpha=10**400), ValueError, "alpha"),
    (dict(theta="1"), TypeError, "theta"),
    (dict(theta=None), TypeError, "theta"),
    (dict(theta=True), TypeError, "theta"),
    (dict(theta=1j), TypeError, "theta"),
    (dict(theta=(1.0,)), TypeError, "theta"),
    (dict(theta=np.float32(np.inf)), ValueError, "theta"),
    (dict(theta=-10**400), ValueError, "theta"),
]


def option_id(case):
    (key, value), = case[0].items()
    return f"{key}={value!r}"[:40]


@pytest.mark.parametrize("kwargs,exc,name", BAD_OPTIONS, ids=[option_id(c) for c in BAD_OPTIONS])
def test_bad_option_same_error_in_functional_reference_and_module(kwargs, exc, name):
    args = inputs(requires_grad=False)._replace(alpha=0.9, theta=1.0)
    if name in ("alpha", "theta"):
        args = args._replace(**kwargs)
        call_kwargs = {}
    else:
        call_kwargs = kwargs
    want = error_of(torch_ext.recurrent_lif, *args, **call_kwargs)
    assert isinstance(want, exc) and f"'{name}'" in str(want), want
    assert_same_error(error_of(torch_ext.recurrent_lif_ref, *args, **call_kwargs), want)
    # float64, as the inputs: the slope's range depends on the compute dtype.
    assert_same_error(error_of(torch_ext.RecurrentLIF, F, N, dtype=torch.float64, **kwargs), want)


@pytest.mark.parametrize("options", [dict(reset=None), dict(detach_reset="yes"), dict(slope="25"),
                                     dict(surrogate=None)], ids=lambda o: option_id((o,)))
def test_direct_op_rejects_wrong_option_types_naming_the_argument(options):
    # The schema's own check (torch's RuntimeError) names the argument too.
    args = inputs(requires_grad=False)
    full = dict(zip(("reset", "detach_reset", "surrogate", "slope"), OP_OPTIONS), **options)
    with pytest.raises(RuntimeError, match=f"argument '{next(iter(options))}'"):
        OP(*args, *full.values())


BAD_TENSOR_ARGS = [
    ("x", None), ("x", [[[1.0]]]), ("x", np.zeros((T, B, F))), ("x", 1.0),
    ("w_in", [[1.0] * F] * N), ("w_in", np.zeros((N, F))), ("w_in", 0.5),
    ("w_rec", np.eye(N)), ("w_rec", 1.0), ("bias", [0.0] * N), ("bias", 0.1),
    ("u0", np.zeros((B, N))), ("u0", 0.0), ("s0", [[0.0] * N] * B), ("s0", False),
]


@pytest.mark.parametrize("name,value", BAD_TENSOR_ARGS,
                         ids=[f"{n}-{type(v).__name__}" for n, v in BAD_TENSOR_ARGS])
def test_non_tensor_for_a_tensor_argument_raises_type_error(name, value):
    args = inputs(requires_grad=False)._replace(**{name: value})
    want = error_of(torch_ext.recurrent_lif, *args)
    assert isinstance(want, TypeError) and f"'{name}'" in str(want), want
    assert_same_error(error_of(torch_ext.recurrent_lif_ref, *args), want)


# Python numbers of other kinds that mean the same value: accepted, same result.
EQUIVALENT_NUMBERS = [
    (dict(alpha=np.float64(0.75)), dict(alpha=0.75)),
    (dict(alpha=np.float32(0.5)), dict(alpha=0.5)),
    (dict(alpha=1), dict(alpha=1.0)),
    (dict(alpha=0), dict(alpha=0.0)),
    (dict(theta=np.int64(1)), dict(theta=1.0)),
    (dict(theta=np.float32(1.25)), dict(theta=1.25)),
    (dict(theta=2), dict(theta=2.0)),
    (dict(slope=np.float32(5.0)), dict(slope=5.0)),
    (dict(slope=np.int64(5)), dict(slope=5.0)),
    (dict(slope=5), dict(slope=5.0)),
]


@pytest.mark.parametrize("given,plain", EQUIVALENT_NUMBERS,
                         ids=[option_id((g,)) for g, _ in EQUIVALENT_NUMBERS])
def test_numpy_and_int_numbers_mean_the_same_as_floats(given, plain):
    args = inputs()._replace(alpha=0.85, theta=1.0)

    def run(kw):
        call = args._replace(**{k: v for k, v in kw.items() if k in ("alpha", "theta")})
        rest = {k: v for k, v in kw.items() if k == "slope"}
        return run_with_grads(torch_ext.recurrent_lif, call, **rest)

    got, want = run(given), run(plain)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert all(torch.equal(a, b) for a, b in zip(got[2], want[2]))
    x = torch.randn(T, B, F, dtype=torch.float64)
    torch.manual_seed(0)
    m_given = torch_ext.RecurrentLIF(F, N, dtype=torch.float64, **given)
    torch.manual_seed(0)
    m_plain = torch_ext.RecurrentLIF(F, N, dtype=torch.float64, **plain)
    assert torch.equal(m_given(x)[0], m_plain(x)[0])


@pytest.mark.parametrize("value", [np.bool_(False), np.bool_(True)])
def test_numpy_bool_never_changes_the_meaning_of_detach_reset(value):
    # Either rejected with the argument named, or taken as bool(value).
    args = inputs()
    for fn in (torch_ext.recurrent_lif, lambda *a, **kw: torch_ext.RecurrentLIF(F, N, **kw)):
        try:
            got = fn(*args, detach_reset=value)
        except TypeError as e:
            assert "'detach_reset'" in str(e) and "numpy" in str(e)
            continue
        if isinstance(got, torch_ext.RecurrentLIF):
            assert got.detach_reset is bool(value)
        else:
            want = torch_ext.recurrent_lif(*args, detach_reset=bool(value))
            assert all(torch.equal(a, b) for a, b in zip(got, want))


# Module-only arguments.
BAD_MODULE_ARGS = [
    (dict(in_features="3"), (TypeError, ValueError), "in_features"),
    (dict(in_features=3.0), (TypeError, ValueError), "in_features"),
    (dict(in_features=None), (TypeError, ValueError), "in_features"),
    (dict(in_features=True), (TypeError, ValueError), "in_features"),
    (dict(in_features=0), ValueError, "in_features"),
    (dict(in_features=-2), ValueError, "in_features"),
    (dict(in_features=10**400), ValueError, "in_features"),
    (dict(hidden_size=2**64), ValueError, "hidden_size"),
    (dict(hidden_size="4"), (TypeError, ValueError), "hidden_size"),
    (dict(bias="False"), TypeError, "bias"),
    (dict(bias=0), TypeError, "bias"),
    (dict(bias=None), TypeError, "bias"),
    (dict(learn_alpha="False"), TypeError, "learn_alpha"),
    (dict(learn_theta=1), TypeError, "learn_theta"),
    (dict(per_neuron=None), TypeError, "per_neuron"),
    (dict(batch_first="yes"), TypeError, "batch_first"),
    (dict(return_membrane=0), TypeError, "return_membrane"),
    (dict(backend=None), ValueError, "backend"),
    (dict(backend="Fused"), ValueError, "backend"),
    (dict(backend=["fused"]), ValueError, "backend"),
    # Tensors are initial values: 0-dim or [N], real, in range.
    (dict(alpha=torch.full((N + 1,), 0.5)), ValueError, "alpha"),
    (dict(alpha=torch.full((1, N), 0.5)), ValueError, "alpha"),
    (dict(alpha=torch.tensor([0.5, 1.5, 0.5, 0.5])), ValueError, "alpha"),
    (dict(alpha=torch.tensor(float("nan"))), ValueError, "alpha"),
    (dict(alpha=torch.ones(N, dtype=torch.bool)), TypeError, "alpha"),
    (dict(theta=torch.ones(N + 1)), ValueError, "theta"),
    (dict(theta=torch.tensor([1.0, float("inf"), 1.0, 1.0])), ValueError, "theta"),
    (dict(theta=torch.ones(N, dtype=torch.complex64)), TypeError, "theta"),
    (dict(num_layers=0), ValueError, "num_layers"),
    (dict(num_layers=2.0), ValueError, "num_layers"),
    (dict(num_layers=True), ValueError, "num_layers"),
    (dict(dropout=1.5), ValueError, "dropout"),
    (dict(dropout=-0.1), ValueError, "dropout"),
    (dict(dropout=True), ValueError, "dropout"),
    (dict(dropout="0.1"), ValueError, "dropout"),
    (dict(recurrent="dense"), ValueError, "recurrent"),
]


@pytest.mark.parametrize("kwargs,exc,name", BAD_MODULE_ARGS,
                         ids=[option_id(c) for c in BAD_MODULE_ARGS])
def test_module_only_arguments_name_the_argument(kwargs, exc, name):
    call = dict(in_features=F, hidden_size=N)
    call.update(kwargs)
    with pytest.raises(exc, match=f"'{name}'"):
        torch_ext.RecurrentLIF(**call)


@pytest.mark.parametrize("state", [
    (torch.zeros(B, N),), (torch.zeros(B, N),) * 3, torch.zeros(2, B, N), "us", 0.0,
], ids=["1-tuple", "3-tuple", "tensor", "str", "float"])
def test_module_state_must_be_a_pair(state):
    layer = torch_ext.RecurrentLIF(F, N)
    with pytest.raises(TypeError, match="'state'"):
        layer(torch.randn(T, B, F), state)


def test_module_numpy_int_sizes_work_or_name_the_argument():
    try:
        layer = torch_ext.RecurrentLIF(np.int64(F), np.int64(N))
    except (TypeError, ValueError) as e:
        assert "'in_features'" in str(e)
    else:
        assert layer(torch.randn(T, B, F))[0].shape == (T, B, N)


@pytest.mark.parametrize("w_rec", [False, True])
@pytest.mark.parametrize("reset,detach", [("subtract", False), ("subtract", True), ("none", False)])
def test_nan_membrane_gets_the_surrogate_only_where_a_spike_gradient_flows(w_rec, reset, detach):
    """Autograd evaluates a spike's surrogate only if some gradient reaches that
    spike (an incoming spike gradient, or a next step reading it through w_rec
    or the reset). Where none does, a NaN membrane must not turn the zero
    spike gradient into NaN (0 * sg(NaN)): with only the membrane in the loss,
    the gradients are NaN exactly where the reference's are."""
    args = inputs(w_rec=w_rec)
    x = args.x.detach().clone()
    x[-1, 0, 1] = math.nan  # NaN membrane from the last step on
    x[2, 1, 0] = math.nan   # and from an earlier step
    args = args._replace(x=x.requires_grad_())
    got, want = [torch.autograd.grad(fn(*args, reset=reset, detach_reset=detach)[1].sum(),
                                     grad_inputs(args), allow_unused=True)
                 for fn in (torch_ext.recurrent_lif, torch_ext.recurrent_lif_ref)]
    for a, b, arg in zip(got, want, grad_inputs(args)):
        b = torch.zeros_like(arg) if b is None else b  # the reference never used that input
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, equal_nan=True)
