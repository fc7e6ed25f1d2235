"""Adversarial tests of the low-precision (bfloat16 / float16) CPU paths of
the recurrent ops.

The contract (README, "Mixed precision"): for bfloat16/float16 inputs, and
under torch.autocast("cpu", dtype=bfloat16 or float16) (which casts x, w_in,
w_rec and bias to that dtype; the neuron parameters and the initial states
stay as given), the op computes the float32 op of the rounded operands. The
dense products (x @ w_in.T, grad_x = gU @ w_in, grad_w_in = gU.T @ x) run
either as MKL's low-precision products (bf16/fp16 operands, float32
accumulation, gU rounded to the low-precision dtype for the two backward
products; TORCH_EXT_LOW_PRECISION_PRODUCTS "on", "auto", empty or unset) or,
with TORCH_EXT_LOW_PRECISION_PRODUCTS=off, in float32 on the upcast operands.
Everything else is float32: the state, the time loop, every sum. Spikes come
back in x's dtype, the states in float32, each gradient in its input's dtype.
Any other value of the variable is a ValueError naming it.

Every test runs on both product paths ("on" is skipped for a dtype that
build_info() says has no MKL product), for every neuron model:

- "off" is the float32 op of the upcast operands: the same bits as the fused
  op run on float32 tensors holding the rounded values (its gradients rounded
  to the operands' dtype); "on" agrees with it to the dtype's precision
  (operand gradients) and to float32 rounding (states, and the gradients of
  the float32 parameters and initial states); both give the spikes of the
  float64 reference on the rounded values (inputs kept 1e-4 clear of the
  threshold);
- autocast on float32 leaves is the direct low-precision call, bit for bit;
  float64 under autocast is the float64 op, bit for bit;
- float16 overflow: products whose float32 value is finite (x near 65504),
  sums and values past float32's range (bfloat16), a gU past 65504 (which the
  "on" path rounds to inf in its two products, as documented, and nowhere
  else);
- NaN / inf in every operand, parameter and initial state, and in an
  incoming gradient: the NaN / inf pattern of the float32 op;
- lengths with NaN / inf / 65504 padding in x and NaN gradients past the
  lengths, the low-memory mode, binary x (gathered or dense), thread counts,
  non-contiguous operands;
- mixed dtypes: a clear TypeError naming the argument, never garbage;
- the environment variable: read at every call (forward and backward), bad
  values raise, the empty value is the default.

The suite found three bugs, all fixed: MKL's low-precision products were
called with a wrong leading dimension where a dimension was 1 (one input
feature or one neuron: garbage results), the adaptive op's float32 alpha
gradient took gU rounded to the low-precision dtype, and a bad value of the
variable went unnoticed in a call without w_in."""
import contextlib
import math

import pytest
import torch

import torch_ext
from mixed_precision_helpers import (BINARY_ENV, ENV, INSTRUCTIONS, LOW, LOW_DTYPES, PATHS,
                                     bfloat16_dot_products,
                                     assert_same_results, dtype_id, float64_args, inputs_of,
                                     leaf, names_of, nonfinite_pattern_equal, norm_close,
                                     rebuild, same_bits, spike_rate_ok, use_path)
from neurons import FUSED, NEURONS, OPS, REFERENCE, make_inputs

OPERANDS = ("x", "w_in", "w_rec", "bias")  # what autocast casts


# ---------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------

def rounded_inputs(op, dtype, seed=0, T=12, B=3, F=20, N=16, state=True, **kwargs):
    """make_inputs in float32 (parameters [N], initial states and binary s0
    when `state`), with the operands (x, w_in, w_rec, bias) rounded to dtype
    but still held as float32 leaves: these are the values both a direct
    low-precision call and autocast see."""
    args = make_inputs(op, T=T, B=B, F=F, N=N, dtype=torch.float32, state=state, seed=seed,
                       **kwargs)

    def fn(name, a):
        return leaf(a.detach().to(dtype).float() if name in OPERANDS else a)
    return rebuild(args, fn)


def low_args(args32, dtype):
    """The direct low-precision call's arguments: the operands in dtype, the
    parameters and initial states float32, as given."""
    return rebuild(args32, lambda name, a: leaf(a, dtype if name in OPERANDS else None))


def float32_args(args):
    return rebuild(args, lambda name, a: leaf(a, torch.float32))


def incoming(outputs, dtype, seed=3):
    """Random gradients of every output: the spikes' rounded to dtype (they
    are passed in the spikes' dtype), the states' float32."""
    g = torch.Generator().manual_seed(seed)
    grads = [torch.randn(o.shape, generator=g, dtype=torch.float64).float() for o in outputs]
    grads[0] = grads[0].to(dtype).float()
    return grads


def output_gradients(op, args, dtype, seed=3, **options):
    """incoming() for the outputs of the op's call on args (run without a graph)."""
    with torch.no_grad():
        return incoming(FUSED[op](*args, **options), dtype, seed=seed)


def run(op, args, grads_out, autocast=None, **options):
    """The op's outputs and the gradients of the given output gradients with
    respect to every input that requires one (zeros where none reaches it)."""
    context = (torch.autocast("cpu", dtype=autocast) if autocast is not None
               else contextlib.nullcontext())
    with context:
        outputs = FUSED[op](*args, **options)
    inputs = inputs_of(args)
    grads = torch.autograd.grad(outputs, inputs,
                                [g.to(o.dtype) for g, o in zip(grads_out, outputs)],
                                allow_unused=True)
    return ([o.detach() for o in outputs],
            [torch.zeros_like(a) if g is None else g for a, g in zip(inputs, grads)])


def reference64(op, args32, **options):
    """The float64 reference on the (rounded) values: outputs only."""
    with torch.no_grad():
        return REFERENCE[op](*float64_args(args32), **options)


def tie_margin(op, args32, **options):
    out = reference64(op, args32, **options)
    theta = args32.theta
    theta = theta.detach().double() if isinstance(theta, torch.Tensor) else torch.tensor(theta)
    if out[1].numel() == 0:
        return math.inf
    return (out[1] - theta).abs().min().item()


def tie_free(op, dtype, margin=1e-4, seeds=range(30), options=None, **kwargs):
    """rounded_inputs of the first seed whose float64 membrane (on the rounded
    values) stays `margin` clear of the threshold: no spike can then differ
    between two float32 summation orders."""
    options = options or {}
    for seed in seeds:
        args = rounded_inputs(op, dtype, seed=seed, **kwargs)
        if tie_margin(op, args, **options) > margin:
            return args
    raise AssertionError("no seed gives inputs without near-ties")


def close_where_finite(a, b, rtol, atol_rel):
    """Same NaN / +-inf pattern, finite entries within rtol and atol_rel times
    the largest finite magnitude."""
    a, b = a.float(), b.float()
    assert nonfinite_pattern_equal(a, b), (
        f"non-finite pattern: {(~a.isfinite()).sum().item()} vs {(~b.isfinite()).sum().item()}")
    finite = b.isfinite()
    if finite.any():
        top = b[finite].abs().max().item()
        torch.testing.assert_close(a[finite], b[finite], rtol=rtol, atol=atol_rel * max(top, 1e-30))


# ---------------------------------------------------------------------------
# Agreement: both paths against the float32 op of the rounded operands
# ---------------------------------------------------------------------------

def check_against_float32_op(op, path, dtype, got, oracle, names, mode="direct", terms=1):
    """got: the low-precision call; oracle: the fused op on float32 tensors
    holding the rounded values, same output gradients. terms: how many times
    2 eps the operand gradients may differ in norm on the "on" path (the
    bound holds in norm for many elements; a handful of sums with
    cancellation, as in one-feature or one-neuron shapes, can lose more)."""
    (go, gg), (wo, wg) = got, oracle
    # Under autocast x stays float32 (only the weights are cast): so do the
    # spikes and grad_x, which is then not rounded to the low dtype.
    spike_dtype = dtype if mode == "direct" else torch.float32
    assert go[0].dtype == spike_dtype, "spikes come back in x's dtype"
    rounded_grads = OPERANDS if mode == "direct" else ["w_in", "w_rec", "bias"]  # autocast's casts
    for o in go[1:]:
        assert o.dtype == torch.float32, "states come back in float32"
    eps = torch.finfo(dtype).eps
    for name, a, b in zip(names, gg, wg):
        want_dtype = dtype if (name in OPERANDS and mode == "direct") else torch.float32
        assert a.dtype == want_dtype, f"gradient of {name}: {a.dtype}, want {want_dtype}"
    if path == "off":
        # The float32 op of the upcast operands: its bits, each gradient
        # rounded to its input's dtype.
        for i, (a, b) in enumerate(zip(go, wo)):
            assert same_bits(a.float() if i == 0 else a, b), f"output {i}"
        for name, a, b in zip(names, gg, wg):
            want = b.to(dtype).to(a.dtype) if name in rounded_grads else b
            assert same_bits(a, want), f"gradient of {name}"
        return
    assert torch.equal(go[0].float(), wo[0]), "spikes differ"
    for i, (a, b) in enumerate(zip(go[1:], wo[1:])):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=lambda m, i=i: f"state {i}: {m}")
    for name, a, b in zip(names, gg, wg):
        if name in OPERANDS:
            # Rounding gU (<= eps/2 per term) and the result (<= eps/2).
            assert norm_close(a, b, 2 * eps * terms), f"gradient of {name}: beyond 2 eps"
        else:
            top = b.abs().max().item() if b.numel() else 0.0
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * max(top, 1.0),
                                       msg=lambda m, name=name: f"gradient of {name}: {m}")


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", LOW_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("variant", ["all_to_all", "one_to_one", "no_recurrence_no_bias",
                                     "scalar_params"])
def test_matches_the_float32_op_of_the_rounded_operands(op, dtype, path, variant, monkeypatch):
    """Direct low-precision call on both paths: the float32 op's results (off:
    bitwise), and the spikes of the float64 reference on the rounded values."""
    use_path(monkeypatch, path, dtype)
    kwargs = dict(all_to_all={}, one_to_one=dict(recurrent="one_to_one"),
                  no_recurrence_no_bias=dict(recurrent="none", bias=False),
                  scalar_params=dict(params="scalar"))[variant]
    args32 = tie_free(op, dtype, **kwargs)
    args = low_args(args32, dtype)
    grads_out = output_gradients(op, args32, dtype)
    got = run(op, args, grads_out)
    oracle = run(op, args32, grads_out)
    assert spike_rate_ok(oracle[0][0])
    check_against_float32_op(op, path, dtype, got, oracle, names_of(args))
    ref = reference64(op, args32)
    assert torch.equal(got[0][0].double(), ref[0])
    for a, b in zip(got[0][1:], ref[1:]):
        torch.testing.assert_close(a.double(), b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", LOW_DTYPES, ids=dtype_id)
def test_the_two_paths_agree(op, dtype, monkeypatch):
    """"on" against "off", same inputs: the same spikes, states to float32
    rounding, each operand gradient to its dtype's precision."""
    if dtype_id(dtype) not in LOW:
        pytest.skip("no MKL product for this dtype")
    args32 = tie_free(op, dtype)
    grads_out = output_gradients(op, args32, dtype)
    results = {}
    for path in PATHS:
        use_path(monkeypatch, path, dtype)
        results[path] = run(op, low_args(args32, dtype), grads_out)
    check_against_float32_op(op, "on", dtype, results["on"],
                             ([o.float() for o in results["off"][0]], [g.float() for g in
                                                                       results["off"][1]]),
                             names_of(args32))


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", LOW_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("path", PATHS)
def test_float32_parameter_gradients_keep_float32_precision(op, dtype, path, monkeypatch):
    """The neuron parameters and initial states stay float32: their gradients
    are float32 sums over time and batch, so against the float64 reference on
    the same (rounded) values they are as accurate on the "on" path as on the
    "off" path (1e-4 of the largest entry; both measure ~1e-6), whatever the
    rounding of gU inside the two input products."""
    use_path(monkeypatch, path, dtype)
    args32 = tie_free(op, dtype)
    args = low_args(args32, dtype)
    grads_out = output_gradients(op, args32, dtype)
    got = run(op, args, grads_out)
    args64 = float64_args(args32)
    outputs = REFERENCE[op](*args64)
    ref = torch.autograd.grad(outputs, inputs_of(args64), [g.double() for g in grads_out])
    for name, a, b in zip(names_of(args), got[1], ref):
        if name in OPERANDS:
            continue
        assert a.dtype == torch.float32, name
        top = b.abs().max().item()
        err = (a.double() - b).abs().max().item() / max(top, 1e-30)
        assert err <= 1e-4, f"gradient of {name}: {err:.2e} of its largest entry"


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", LOW_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("path", PATHS)
def test_autocast_is_the_direct_call_on_the_cast_operands(op, dtype, path, monkeypatch):
    """Under autocast, float32 leaves: w_in, w_rec and bias are cast; x, the
    parameters and the initial states stay float32. The outputs and every
    gradient are the bits of the direct call with float32 x and the cast
    weights (their gradients upcast by the cast's backward); that call's
    outputs are the bits of the all-low-precision call's (x rounded for the
    products only), its float32 grad_x that call's before rounding."""
    use_path(monkeypatch, path, dtype)
    args32 = tie_free(op, dtype)
    grads_out = output_gradients(op, args32, dtype)
    mixed_args = rebuild(args32, lambda n, a: leaf(a, dtype if n in ("w_in", "w_rec", "bias")
                                                   else None))
    mixed = run(op, mixed_args, grads_out)
    auto_args = float32_args(args32)
    cast = run(op, auto_args, grads_out, autocast=dtype)
    names = names_of(auto_args)
    assert cast[0][0].dtype == torch.float32
    for i, (a, b) in enumerate(zip(cast[0], mixed[0])):
        assert same_bits(a, b), f"output {i}"
    for name, a, b in zip(names, cast[1], mixed[1]):
        assert a.dtype == torch.float32, name
        assert same_bits(a, b.float()), f"gradient of {name}"
    direct = run(op, low_args(args32, dtype), grads_out)
    for i, (a, b) in enumerate(zip(mixed[0], direct[0])):
        assert same_bits(a, b.float() if i == 0 else b), f"output {i}"
    for name, a, b in zip(names, mixed[1], direct[1]):
        assert same_bits(a.to(b.dtype), b), f"gradient of {name}"
    # And it is the float32 op of the rounded operands, as the direct call.
    check_against_float32_op(op, path, dtype, cast, run(op, args32, grads_out), names,
                             mode="autocast")


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", LOW_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("path", PATHS)
def test_low_precision_parameters_and_states(op, dtype, path, monkeypatch):
    """Parameters and initial states given in x's low dtype are accepted:
    computed as the float32 op on their values, their gradients in that dtype."""
    use_path(monkeypatch, path, dtype)
    args32 = tie_free(op, dtype)
    args32 = rebuild(args32, lambda name, a: leaf(a.detach().to(dtype).float()))
    args = rebuild(args32, lambda name, a: leaf(a, dtype))
    grads_out = output_gradients(op, args32, dtype)
    got = run(op, args, grads_out)
    oracle = run(op, args32, grads_out)
    names = names_of(args)
    for name, a in zip(names, got[1]):
        assert a.dtype == dtype, f"gradient of {name}: {a.dtype}"
    assert got[0][0].dtype == dtype and all(o.dtype == torch.float32 for o in got[0][1:])
    if path == "off":
        for i, (a, b) in enumerate(zip(got[0], oracle[0])):
            assert same_bits(a.float() if i == 0 else a, b), f"output {i}"
    else:
        assert torch.equal(got[0][0].float(), oracle[0][0])
        for a, b in zip(got[0][1:], oracle[0][1:]):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    eps = torch.finfo(dtype).eps
    for name, a, b in zip(names, got[1], oracle[1]):
        if path == "off":
            assert same_bits(a, b.to(dtype)), f"gradient of {name}"
        else:
            assert norm_close(a, b, 2 * eps), f"gradient of {name}"


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", LOW_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("path", PATHS)
def test_float64_under_autocast_is_the_float64_op(op, dtype, path, monkeypatch):
    """Autocast leaves float64 alone: outputs and gradients are the float64
    op's bits."""
    use_path(monkeypatch, path, dtype)
    args = make_inputs(op, T=10, B=3, F=12, N=9, state=True, seed=4)
    with torch.no_grad():
        like = FUSED[op](*args)
    g = torch.Generator().manual_seed(7)
    grads_out = [torch.randn(o.shape, generator=g, dtype=torch.float64) for o in like]
    plain = run(op, float64_args(args), grads_out)
    cast_args = float64_args(args)
    cast = run(op, cast_args, grads_out, autocast=dtype)
    assert cast[0][0].dtype == torch.float64
    assert_same_results(cast, plain, names_of(cast_args), "float64 under autocast")


# ---------------------------------------------------------------------------
# Mixed dtypes
# ---------------------------------------------------------------------------

def _with(args, **changes):
    return args._replace(**{k: v(getattr(args, k)) for k, v in changes.items()})


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("case,name,wrong", [
    ("x_bf16_w_in_f32", "w_in", "Float"),
    ("x_bf16_w_rec_f32", "w_rec", "Float"),
    ("x_bf16_bias_f32", "bias", "Float"),
    ("x_f16_w_in_bf16", "w_in", "BFloat16"),
    ("x_bf16_param_f64", "theta", "Double"),
    ("x_bf16_param_f16", "theta", "Half"),
    ("x_bf16_state_f16", "s0", "Half"),
])
def test_mixed_dtypes_raise_a_clear_error(op, case, name, wrong, monkeypatch):
    """A low-precision x with an operand of another dtype (or a parameter /
    state neither x's dtype nor float32): TypeError naming the argument and
    both dtypes, from the op and the reference alike (never a silent cast)."""
    use_path(monkeypatch, "on")
    base = rounded_inputs(op, torch.bfloat16, T=4, B=2, F=6, N=5)
    bf, f32 = torch.bfloat16, torch.float32
    to = lambda dtype: lambda t: leaf(t, dtype)  # noqa: E731
    x_dtype = {"x_f16_w_in_bf16": torch.float16}.get(case, bf)
    args = rebuild(base, lambda n, a: leaf(a, x_dtype if n in OPERANDS else None))
    changes = {
        "x_bf16_w_in_f32": dict(w_in=to(f32)),
        "x_bf16_w_rec_f32": dict(w_rec=to(f32)), "x_bf16_bias_f32": dict(bias=to(f32)),
        "x_f16_w_in_bf16": dict(w_in=to(bf)), "x_bf16_param_f64": dict(theta=to(torch.float64)),
        "x_bf16_param_f16": dict(theta=to(torch.float16)),
        "x_bf16_state_f16": dict(s0=to(torch.float16)),
    }[case]
    args = _with(args, **changes)
    x_name = {bf: "BFloat16", f32: "Float", torch.float16: "Half"}[x_dtype]
    pattern = rf"^{op}: argument '{name}' has dtype {wrong} but x has dtype {x_name}"
    for fn in (FUSED[op], REFERENCE[op]):
        with pytest.raises(TypeError, match=pattern):
            fn(*args)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("case,name,wrong,other", [
    ("w_in_bf16_w_rec_f16", "w_rec", "Half", "w_in has dtype BFloat16"),
    ("w_in_bf16_bias_f16", "bias", "Half", "w_in has dtype BFloat16"),
    ("w_rec_bf16_bias_f16", "bias", "Half", "w_rec has dtype BFloat16"),
    ("w_in_f64", "w_in", "Double", "x has dtype Float"),
    ("bias_f64", "bias", "Double", "x has dtype Float"),
])
def test_float32_x_with_weights_of_two_dtypes_raises(op, case, name, wrong, other, monkeypatch):
    """A float32 x takes bfloat16 or float16 weights (what autocast passes),
    each weight float32 or that one low dtype: any other mix is a TypeError
    naming the argument and both dtypes, from the op and the reference alike."""
    use_path(monkeypatch, "on")
    args = make_inputs(op, T=4, B=2, F=6, N=5, dtype=torch.float32, seed=1)
    to = lambda dtype: lambda t: leaf(t, dtype)  # noqa: E731
    bf, f16 = torch.bfloat16, torch.float16
    args = _with(args, **{
        "w_in_bf16_w_rec_f16": dict(w_in=to(bf), w_rec=to(f16)),
        "w_in_bf16_bias_f16": dict(w_in=to(bf), bias=to(f16)),
        "w_rec_bf16_bias_f16": dict(w_rec=to(bf), bias=to(f16)),
        "w_in_f64": dict(w_in=to(torch.float64)), "bias_f64": dict(bias=to(torch.float64)),
    }[case])
    pattern = rf"^{op}: argument '{name}' has dtype {wrong} but {other}"
    for fn in (FUSED[op], REFERENCE[op]):
        with pytest.raises(TypeError, match=pattern):
            fn(*args)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", LOW_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("path", PATHS)
def test_low_precision_x_with_float32_parameters_and_states(op, dtype, path, monkeypatch):
    """The documented mix: low-precision operands, float32 parameters and
    initial states (s0 included): accepted, and their gradients float32
    (check_against_float32_op checks the dtypes too)."""
    use_path(monkeypatch, path, dtype)
    args32 = tie_free(op, dtype)
    args = low_args(args32, dtype)
    for name, a in zip(args._fields, args):
        if isinstance(a, torch.Tensor) and name not in OPERANDS:
            assert a.dtype == torch.float32
    grads_out = output_gradients(op, args32, dtype)
    check_against_float32_op(op, path, dtype, run(op, args, grads_out),
                             run(op, args32, grads_out), names_of(args))


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", LOW_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("case,name", [("x_f64_w_in_f32", "w_in"), ("x_f64_bias_f32", "bias"),
                                       ("x_f32_w_in_f64", "w_in")])
def test_mixed_float64_under_autocast_raises(op, dtype, case, name, monkeypatch):
    """Autocast casts float32 but not float64: a float64 x with a float32
    weight (or the reverse) cannot be computed: a TypeError naming the
    argument."""
    use_path(monkeypatch, "on")
    args = make_inputs(op, T=4, B=2, F=6, N=5, seed=1)
    if case == "x_f64_w_in_f32":
        args = args._replace(w_in=leaf(args.w_in, torch.float32))
    elif case == "x_f64_bias_f32":
        args = args._replace(bias=leaf(args.bias, torch.float32))
    else:
        args = rebuild(args, lambda n, a: leaf(a, torch.float32 if n != "w_in" else None))
    with pytest.raises(TypeError, match=rf"^{op}: argument '{name}' has dtype"):
        with torch.autocast("cpu", dtype=dtype):
            FUSED[op](*args)


# ---------------------------------------------------------------------------
# Overflow, subnormals and non-finite values
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("path", PATHS)
def test_float16_products_near_65504_are_float32(op, path, monkeypatch):
    """x = 60000 (float16) times w_in = 2 over 4 inputs: every product and
    the sum (480000) overflow float16 but not float32, so the input current
    is finite and exact on both paths (float32 accumulation); x near 65504
    under autocast as well. The gradients: the float32 op's, rounded to
    float16 (finite here: w_in's gradient is about 60000 times the sum of gU)."""
    use_path(monkeypatch, path, torch.float16)
    T, B, F, N = 3, 2, 4, 3
    x = torch.full((T, B, F), 60000.0)
    x[1, 1] = 65504.0
    w_in = torch.full((N, F), 2.0)
    w_in[1] = -0.5
    args32 = make_inputs(op, T=T, B=B, F=F, N=N, dtype=torch.float32, recurrent="none",
                         bias=False)._replace(x=leaf(x), w_in=leaf(w_in))
    for mode in ("direct", "autocast"):
        if mode == "direct":
            args = low_args(args32, torch.float16)
            outputs = FUSED[op](*args)
        else:
            args = float32_args(args32)
            with torch.autocast("cpu", dtype=torch.float16):
                outputs = FUSED[op](*args)
        with torch.no_grad():
            ref = FUSED[op](*args32)
        for i, (a, b) in enumerate(zip(outputs, ref)):
            assert a.float().isfinite().all(), f"{mode}: output {i} overflowed"
            assert same_bits(a.float(), b), f"{mode}: output {i}"
        # The input current itself, exactly (zero initial state: the first
        # step's input state is I[1], times the adaptive neuron's gain).
        current = x[0] @ w_in.T
        assert current.abs().max().item() == 480000.0 and current.isfinite().all()
        if op == "recurrent_lif":
            assert torch.equal(outputs[1][0], current)
        elif op == "recurrent_cubalif":
            assert torch.equal(outputs[2][0], current)
        else:
            gain = (1 - args32.alpha.detach()).double()
            torch.testing.assert_close(outputs[1][0].double(), gain * current.double(),
                                       rtol=1e-6, atol=0)
        # A membrane gradient of 1/64 (exact in float16): grad_w_in sums 6
        # products of ~60000 * gU, well inside float16's range.
        grads = torch.autograd.grad(outputs[1].sum() / 64, [args.x, args.w_in])
        want = torch.autograd.grad(FUSED[op](*args32)[1].sum() / 64, [args32.x, args32.w_in])
        for name, a, b in zip(("x", "w_in"), grads, want):
            assert a.isfinite().all()
            # x stays float32 under autocast: its gradient is not rounded to float16.
            b = b if mode == "autocast" and name == "x" else b.half()
            if path == "off":
                assert same_bits(a, b.to(a.dtype))
            else:
                close_where_finite(a, b, rtol=2e-3, atol_rel=1e-3)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("case", ["product_overflows_float32", "sum_of_infs_is_nan",
                                  "autocast_float16_rounds_to_inf"])
def test_non_finite_from_the_rounded_values(op, path, case, monkeypatch):
    """Values whose float32 products of the rounded operands are not finite:
    bfloat16 x = 3e38 times w_in = 2 (inf), +inf and -inf products summed
    (NaN), and a float32 x = 1e5 that autocast to float16 rounds to inf: the
    op gives the float32 op's NaN / inf pattern (outputs and gradients) on
    both paths, finite values where it has them."""
    dtype = torch.float16 if case == "autocast_float16_rounds_to_inf" else torch.bfloat16
    use_path(monkeypatch, path, dtype)
    args32 = rounded_inputs(op, dtype, T=6, B=2, F=5, N=4, seed=2)
    x, w_in = args32.x.detach().clone(), args32.w_in.detach().clone()
    if case == "product_overflows_float32":
        x[2, 0, 1] = 3e38
        w_in[:, 1] = torch.tensor([2.0, -2.0, 0.5, 2.0])
    elif case == "sum_of_infs_is_nan":
        x[2, 0, :2] = 3e38
        w_in[0, :2] = torch.tensor([4.0, -4.0])
    else:
        x[3, 1, 2] = 1e5
    x = x.to(dtype).float() if case != "autocast_float16_rounds_to_inf" else x
    args = args32._replace(x=leaf(x), w_in=leaf(w_in.to(dtype).float()))
    rounded = args._replace(x=leaf(x.to(dtype).float()))  # what the op computes on
    with torch.no_grad():
        like = FUSED[op](*rounded)
    assert not like[1].isfinite().all(), "the case must produce a non-finite state"
    grads_out = incoming(like, dtype)
    if case == "autocast_float16_rounds_to_inf":
        got = run(op, float32_args(args), grads_out, autocast=dtype)
    else:
        got = run(op, low_args(args, dtype), grads_out)
    want = run(op, rounded, grads_out)
    names = names_of(args)
    if case == "sum_of_infs_is_nan" and bfloat16_dot_products(path, dtype):
        # An overflowing product inside a sum is inf or NaN by how the kernel
        # adds it: float32 FMAs add the next product exactly (inf + -1.2e39 =
        # inf), the bfloat16 dot-product instructions round each product
        # first (inf + -inf = NaN). So at the step the same entries are not
        # finite, the steps before agree, and the steps after differ (an inf
        # membrane spikes, a NaN one does not).
        for a, b in zip(got[0][1:], want[0][1:]):
            a, b = a.float(), b.float()
            torch.testing.assert_close(a[:2], b[:2], rtol=1e-5, atol=1e-5)
            assert torch.equal(a[2].isfinite(), b[2].isfinite())
        return
    for i, (a, b) in enumerate(zip(got[0], want[0])):
        close_where_finite(a, b, rtol=1e-5, atol_rel=1e-5)
    for name, a, b in zip(names, got[1], want[1]):
        if name in OPERANDS:
            b = b.to(dtype)
        assert nonfinite_pattern_equal(a, b), f"gradient of {name}: non-finite pattern"


def input_state_gradient(op, args32, grads_out):
    """dL/dI (I = x @ w_in.T, the float32 product of the rounded operands) of
    the float32 op, by running it on I with w_in None; and the gain with which
    I enters the input state (1 - alpha for the adaptive neuron, else 1)."""
    x, w_in = args32.x.detach(), args32.w_in.detach()
    current = leaf(torch.einsum("tbf,nf->tbn", x, w_in))
    args = rebuild(args32, lambda n, a: leaf(a))._replace(x=current, w_in=None)
    outputs = FUSED[op](*args)
    (g_current,) = torch.autograd.grad(outputs, [current], grads_out)
    gain = (1 - args32.alpha.detach()) if op == "recurrent_adlif" else torch.ones(())
    return g_current, gain


def emulated_input_gradients(op, args32, grads_out, dtype, path):
    """grad_x and grad_w_in as the contract computes them: float32 products
    of the rounded operands, gU (the input state's gradient) rounded to dtype
    first on the "on" path; each rounded to dtype at the end."""
    g_current, gain = input_state_gradient(op, args32, grads_out)
    gain_n = gain.reshape(-1, 1) if gain.dim() else gain
    x, w_in = args32.x.detach(), args32.w_in.detach()
    T, B, F = x.shape
    N = w_in.shape[0]
    g_u = (g_current / gain).reshape(T * B, N)
    if path == "on":
        g_u = g_u.to(dtype).float()
        w = (gain_n * w_in).to(dtype).float()
    else:
        w = gain_n * w_in
    grad_x = (g_u @ w).reshape(T, B, F).to(dtype)
    grad_w_in = (gain_n * (g_u.T @ x.reshape(T * B, F))).to(dtype)
    return grad_x, grad_w_in


def overflow_case(op, seed=2):
    """float16 inputs and output gradients under which some gU exceeds 65504
    (one membrane gradient of 1e5) while the float32 products stay finite
    for grad_x: the case that separates the two paths."""
    dtype = torch.float16
    args32 = rounded_inputs(op, dtype, T=8, B=3, F=12, N=10, seed=seed)
    grads_out = output_gradients(op, args32, dtype, seed=5)
    grads_out[1][5, 1, 3] = 1e5
    return args32, grads_out


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("path", PATHS)
def test_float16_gradient_overflow_follows_the_contract(op, path, monkeypatch):
    """A gU past 65504: "off" multiplies it in float32 (grad_x and grad_w_in
    are the float32 products rounded to float16: inf only where that
    rounding overflows); "on" rounds gU to float16 first, as documented, so
    those two products get inf (and NaN where infs of both signs meet)
    exactly where that rounding says. Every other gradient is float32 work
    on the float32 gU: the float32 op's, rounded to its input's dtype."""
    use_path(monkeypatch, path, torch.float16)
    dtype = torch.float16
    args32, grads_out = overflow_case(op)
    args = low_args(args32, dtype)
    got = run(op, args, grads_out)
    want = run(op, args32, grads_out)
    names = names_of(args)
    on_x, on_w = emulated_input_gradients(op, args32, grads_out, dtype, "on")
    off_x, off_w = emulated_input_gradients(op, args32, grads_out, dtype, "off")
    # The case does separate the paths (else it tests nothing).
    assert off_x.isfinite().all() and not on_x.isfinite().all()
    assert (~on_w.isfinite()).sum() > (~off_w.isfinite()).sum()
    emulated = dict(x=on_x if path == "on" else off_x, w_in=on_w if path == "on" else off_w)
    for name, a, b in zip(names, got[1], want[1]):
        if name in emulated:
            close_where_finite(a, emulated[name], rtol=4e-3, atol_rel=2e-3)
        else:
            want_b = b.to(a.dtype)
            close_where_finite(a, want_b, rtol=1e-3, atol_rel=1e-4)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("path", PATHS)
def test_float16_gradient_overflow_keeps_float32_parameter_gradients(op, path, monkeypatch):
    """The same gU past 65504 with only the float32 parameters and initial
    states requiring gradients (w_in frozen): those gradients are float32
    sums of the float32 gU, finite, and the float32 op's."""
    use_path(monkeypatch, path, torch.float16)
    dtype = torch.float16
    args32, grads_out = overflow_case(op)
    frozen = {"x", "w_in", "w_rec", "bias"}
    args32 = rebuild(args32, lambda n, a: a.detach().clone().requires_grad_(n not in frozen))
    args = rebuild(low_args(args32, dtype), lambda n, a: a.detach().requires_grad_(n not in frozen))
    got = run(op, args, grads_out)
    want = run(op, args32, grads_out)
    for name, a, b in zip(names_of(args), got[1], want[1]):
        assert a.dtype == torch.float32
        assert b.isfinite().all(), name
        assert a.isfinite().all(), f"gradient of {name} is not finite"
        top = b.abs().max().item()
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * top,
                                   msg=lambda m, name=name: f"gradient of {name}: {m}")


@pytest.mark.parametrize("dtype", LOW_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("path", PATHS)
def test_subnormal_operands_are_not_flushed(dtype, path, monkeypatch):
    """Subnormal x (bfloat16 2^-130, float16 2^-20) times a large weight: the
    float32 products keep them (no flush to zero in MKL's products), in the
    current and in both backward products; except on the CPU's bfloat16
    dot-product instructions, which count a subnormal operand as zero (the
    current and grad_w_in, whose operands it is, are 0 there; grad_x is not)."""
    use_path(monkeypatch, path, dtype)
    xv, wv = (2.0 ** -130, 2.0 ** 100) if dtype == torch.bfloat16 else (2.0 ** -20, 2.0 ** 10)
    x = torch.full((2, 1, 8), xv, dtype=dtype, requires_grad=True)
    w = torch.full((3, 8), wv, dtype=dtype, requires_grad=True)
    assert x[0, 0, 0].item() == xv and w[0, 0].item() == wv
    x_seen = 0.0 if bfloat16_dot_products(path, dtype) else xv
    spikes, u = torch_ext.recurrent_lif(x, w, None, None, 0.5, 1e30)
    assert torch.equal(u[0], torch.full((1, 3), 8 * x_seen * wv))
    g_x, g_w = torch.autograd.grad(u, [x, w], torch.ones_like(u))
    # gU[1] = 1 + 0.5, gU[2] = 1: grad_x = 1.5 * 3 * wv (row 0), grad_w = (1.5 + 1) * xv.
    assert torch.equal(g_x[0].float(), torch.full((1, 8), 4.5 * wv).to(dtype).float())
    assert torch.equal(g_w.float(), torch.full((3, 8), 2.5 * x_seen).to(dtype).float())


NON_FINITE = [("x", math.nan), ("x", math.inf), ("w_in", math.nan), ("w_in", -math.inf),
              ("w_rec", math.nan), ("w_rec", math.inf), ("bias", math.nan), ("bias", -math.inf),
              ("theta", math.inf), ("theta", math.nan), ("first_state", math.nan),
              ("first_state", math.inf), ("b", math.inf), ("a", math.nan)]


NON_FINITE_CASES = [(op, where, value) for op in OPS for where, value in NON_FINITE
                    if where in OPERANDS or where == "first_state"
                    or where in NEURONS[op].param_names]


@pytest.mark.parametrize("dtype", LOW_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("op,where,value", NON_FINITE_CASES,
                         ids=[f"{op}-{w}-{v}" for op, w, v in NON_FINITE_CASES])
def test_non_finite_values(op, dtype, path, where, value, monkeypatch):
    """One NaN / inf in an operand (low precision), a float32 parameter or an
    initial state: the outputs and gradients have the float32 op's NaN / inf
    pattern (operand gradients compared after rounding to their dtype), and
    its values elsewhere."""
    use_path(monkeypatch, path, dtype)
    if where == "first_state":
        where = NEURONS[op].initial_names[0]
    args32 = rounded_inputs(op, dtype, T=8, B=3, F=6, N=5, seed=1)
    t = getattr(args32, where).detach().clone()
    t.view(-1)[2] = value
    args32 = args32._replace(**{where: leaf(t)})
    args = low_args(args32, dtype)
    grads_out = output_gradients(op, args32, dtype)
    got = run(op, args, grads_out)
    want = run(op, args32, grads_out)
    for i, (a, b) in enumerate(zip(got[0], want[0])):
        if path == "off":
            assert same_bits(a.float() if i == 0 else a, b), f"output {i}"
        else:
            close_where_finite(a, b, rtol=1e-5, atol_rel=1e-5)
    eps = torch.finfo(dtype).eps
    for name, a, b in zip(names_of(args), got[1], want[1]):
        if name in OPERANDS:
            b = b.to(dtype)
        if path == "off":
            assert same_bits(a, b), f"gradient of {name}"
        else:
            close_where_finite(a, b, rtol=4 * eps if name in OPERANDS else 1e-4,
                               atol_rel=4 * eps if name in OPERANDS else 1e-4)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", LOW_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan], ids=["inf", "minus_inf", "nan"])
@pytest.mark.parametrize("target", ["spikes", "state"])
def test_non_finite_incoming_gradient(op, dtype, path, value, target, monkeypatch):
    """An inf / NaN output gradient: the gradients have the float32 op's NaN /
    inf pattern on both paths (rounding gU keeps inf and NaN)."""
    use_path(monkeypatch, path, dtype)
    args32 = tie_free(op, dtype, T=8, B=3, F=6, N=5)
    grads_out = output_gradients(op, args32, dtype)
    grads_out[0 if target == "spikes" else 1][4, 1, 2] = value
    got = run(op, low_args(args32, dtype), grads_out)
    want = run(op, args32, grads_out)
    some_nonfinite = False
    for name, a, b in zip(names_of(args32), got[1], want[1]):
        if name in OPERANDS:
            b = b.to(dtype)
        some_nonfinite |= not b.float().isfinite().all().item()
        assert nonfinite_pattern_equal(a, b), f"gradient of {name}: non-finite pattern"
    assert some_nonfinite


# ---------------------------------------------------------------------------
# lengths, padding and the low-memory mode
# ---------------------------------------------------------------------------

LENGTHS = [10, 6, 0, 3]  # T = 10, B = 4


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", LOW_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("padding", [math.nan, math.inf, 65504.0], ids=["nan", "inf", "max"])
@pytest.mark.parametrize("mode", ["direct", "autocast"])
@pytest.mark.parametrize("low_memory", [False, True], ids=["saved", "low_memory"])
def test_padding_past_lengths_leaks_nowhere(op, dtype, path, padding, mode, low_memory,
                                            monkeypatch):
    """x past each row's length holds NaN / inf / 65504 (whose products with
    w_in overflow float16 when summed) and the output gradients there are NaN:
    every output and gradient is finite, outputs past the lengths are 0, and
    all of it has the bits of the same call on zero padding with zero output
    gradients there; that call is the float32 op's (off: bitwise)."""
    use_path(monkeypatch, path, dtype)
    options = dict(lengths=torch.tensor(LENGTHS))
    if low_memory:
        options[NEURONS[op].save_flag] = False
    args32 = tie_free(op, dtype, options=options, T=10, B=4, F=12, N=10)
    past = torch.arange(10).view(10, 1) >= torch.tensor(LENGTHS).view(1, 4)
    x_pad = args32.x.detach().clone()
    x_pad[past] = padding
    x_zero = args32.x.detach().masked_fill(past.unsqueeze(-1), 0.0)
    grads_zero = output_gradients(op, args32, dtype, **options)
    for g in grads_zero:
        g[past] = 0.0
    grads_nan = [g.clone() for g in grads_zero]
    for g in grads_nan:
        g[past] = math.nan

    def call(x, grads_out):
        a32 = args32._replace(x=leaf(x))
        if mode == "direct":
            return run(op, low_args(a32, dtype), grads_out, **options)
        return run(op, float32_args(a32), grads_out, autocast=dtype, **options)

    padded = call(x_pad, grads_nan)
    zero = call(x_zero, grads_zero)
    names = names_of(args32)
    for i, t in enumerate([*padded[0], *padded[1]]):
        assert t.float().isfinite().all(), f"non-finite value in result {i}"
    for out in padded[0]:
        assert not out[past].any(), "outputs past a row's length must be 0"
    assert_same_results(padded, zero, names, "NaN-padded vs zero-padded")
    oracle = run(op, args32._replace(x=leaf(x_zero)), grads_zero, **options)
    check_against_float32_op(op, path, dtype, zero, oracle, names, mode=mode)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", LOW_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("recurrent", ["all_to_all", "one_to_one"])
@pytest.mark.parametrize("with_lengths", [False, True], ids=["full", "lengths"])
def test_low_memory_mode_has_the_saved_modes_bits(op, dtype, path, recurrent, with_lengths,
                                                  monkeypatch):
    """Under autocast, save_membrane / save_state=False (the backward replays
    the forward, recomputing the input projection on the same path) gives the
    saved mode's outputs and gradients bit for bit."""
    use_path(monkeypatch, path, dtype)
    options = dict(lengths=torch.tensor(LENGTHS)) if with_lengths else {}
    args32 = tie_free(op, dtype, options=options, T=10, B=4, F=12, N=10, recurrent=recurrent)
    grads_out = output_gradients(op, args32, dtype, **options)
    saved = run(op, float32_args(args32), grads_out, autocast=dtype, **options)
    low = run(op, float32_args(args32), grads_out, autocast=dtype,
              **{NEURONS[op].save_flag: False}, **options)
    assert_same_results(low, saved, names_of(args32), "low-memory vs saved")
    assert spike_rate_ok(saved[0][0])


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", LOW_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("low_memory", [False, True], ids=["saved", "low_memory"])
def test_path_changed_between_forward_and_backward(op, dtype, low_memory, monkeypatch):
    """The variable is read at every call: a forward on one path and a
    backward on the other (the low-memory one also replays the forward on
    it) still gives gradients within the dtype's precision of either path run
    throughout, and the forward's outputs are the first path's."""
    if dtype_id(dtype) not in LOW:
        pytest.skip("no MKL product for this dtype")
    options = {NEURONS[op].save_flag: False} if low_memory else {}
    args32 = tie_free(op, dtype)
    grads_out = output_gradients(op, args32, dtype)
    eps = torch.finfo(dtype).eps
    for first, second in (("on", "off"), ("off", "on")):
        use_path(monkeypatch, first, dtype)
        args = low_args(args32, dtype)
        outputs = FUSED[op](*args, **options)
        use_path(monkeypatch, second, dtype)
        grads = torch.autograd.grad(outputs, inputs_of(args),
                                    [g.to(o.dtype) for g, o in zip(grads_out, outputs)])
        use_path(monkeypatch, second, dtype)
        pure = run(op, low_args(args32, dtype), grads_out, **options)
        for name, a, b in zip(names_of(args), grads, pure[1]):
            tol = 2 * eps if name in OPERANDS else 1e-4
            assert norm_close(a, b, tol), f"{first} -> {second}: gradient of {name}"


# ---------------------------------------------------------------------------
# Binary x under autocast
# ---------------------------------------------------------------------------

def binary_rounded_inputs(op, dtype, seed, T=12, B=3, F=60, N=40, rate=0.1):
    """rounded_inputs with a binary x (ones at about `rate`) and w_in scaled so
    that the neurons fire."""
    from neurons import INPUT_SCALE
    args = rounded_inputs(op, dtype, seed=seed, T=T, B=B, F=F, N=N)
    g = torch.Generator().manual_seed(seed + 1000)
    x = (torch.rand(T, B, F, generator=g) < rate).float()
    scale = 1.5 * INPUT_SCALE[op] / max(rate * F, 1.0) ** 0.5
    w_in = (torch.randn(N, F, generator=g) * scale + 0.1 * scale).to(dtype).float()
    return args._replace(x=leaf(x), w_in=leaf(w_in))


def binary_tie_free(op, dtype, **kwargs):
    for seed in range(30):
        args = binary_rounded_inputs(op, dtype, seed, **kwargs)
        if tie_margin(op, args) > 1e-4:
            return args
    raise AssertionError("no seed gives inputs without near-ties")


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", LOW_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("path", PATHS)
def test_binary_x_under_autocast_gather_and_dense(op, dtype, path, monkeypatch):
    """A binary float32 x under autocast stays binary: gathered (forced) and
    dense give the same spikes, states to float32 rounding, gradients to the
    dtype's precision; both are the float32 op of the rounded operands."""
    use_path(monkeypatch, path, dtype)
    args32 = binary_tie_free(op, dtype)
    density = torch.ops.torch_ext._binary_input_density
    monkeypatch.setenv(BINARY_ENV, "gather")
    assert density(args32.x.to(dtype), args32.w_in.to(dtype)) > 0
    grads_out = output_gradients(op, args32, dtype)
    results = {}
    for mode in ("gather", "dense"):
        monkeypatch.setenv(BINARY_ENV, mode)
        results[mode] = run(op, float32_args(args32), grads_out, autocast=dtype)
    monkeypatch.setenv(BINARY_ENV, "dense")
    oracle = run(op, args32, grads_out)
    names = names_of(args32)
    assert spike_rate_ok(oracle[0][0])
    check_against_float32_op(op, path, dtype, results["dense"], oracle, names, mode="autocast")
    # Gathered: the same operands, another summation order (float32).
    g, d = results["gather"], results["dense"]
    assert torch.equal(g[0][0], d[0][0])
    for a, b in zip(g[0][1:], d[0][1:]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    eps = torch.finfo(dtype).eps
    for name, a, b in zip(names, g[1], d[1]):
        tol = 2 * eps if name in OPERANDS else 1e-4
        assert norm_close(a, b, tol), f"gradient of {name}"


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("path", PATHS)
def test_binary_x_with_float16_gradient_overflow_stays_dense(op, path, monkeypatch):
    """Binary float16 x, gather forced, a gU past 65504: on the "on" path the
    rounded gU holds inf, which the gather of grad_w_in would not multiply by
    the zeros of x; the backward must be the dense one's, bit for bit (same
    forward). On "off" gU is float32 (finite) and the gather agrees with the
    dense product."""
    use_path(monkeypatch, path, torch.float16)
    dtype = torch.float16
    args32 = binary_rounded_inputs(op, dtype, seed=0, T=8, B=3, F=30, N=12, rate=0.15)
    grads_out = output_gradients(op, args32, dtype, seed=5)
    grads_out[1][5, 1, 3] = 1e5
    results = {}
    for backward_mode in ("gather", "dense"):
        monkeypatch.setenv(BINARY_ENV, "dense")
        args = low_args(args32, dtype)
        outputs = FUSED[op](*args)
        monkeypatch.setenv(BINARY_ENV, backward_mode)
        grads = torch.autograd.grad(outputs, inputs_of(args),
                                    [g.to(o.dtype) for g, o in zip(grads_out, outputs)])
        results[backward_mode] = ([o.detach() for o in outputs], list(grads))
    names = names_of(args32)
    if path == "off":
        # gU stays float32 and finite: the gather may run, to float32
        # rounding of the dense result (its overflow to inf in float16 alike).
        for name, a, b in zip(names, results["gather"][1], results["dense"][1]):
            close_where_finite(a, b, rtol=1e-3, atol_rel=1e-4)
        return
    assert_same_results(results["gather"], results["dense"], names, "gather vs dense backward")
    w_in_grad = results["dense"][1][names.index("w_in")]
    assert w_in_grad.isnan().any()  # the rounded gU's inf times x's zeros in the dense product


# ---------------------------------------------------------------------------
# Threads, layouts
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", LOW_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("x_kind", ["dense", "binary_gathered"])
def test_thread_count_does_not_change_the_bits(op, dtype, path, x_kind, monkeypatch):
    """T * B = 1200 rows (beyond the small sizes elsewhere: the products split
    their rows in blocks from 128 rows, and grad_w_in its inner dimension from
    1024): one thread and two give the same bits, under autocast."""
    use_path(monkeypatch, path, dtype)
    if x_kind == "dense":
        args32 = rounded_inputs(op, dtype, T=300, B=4, F=40, N=40, seed=3)
    else:
        args32 = binary_rounded_inputs(op, dtype, 3, T=300, B=4, F=40, N=40, rate=0.1)
        monkeypatch.setenv(BINARY_ENV, "gather")
    grads_out = output_gradients(op, args32, dtype)
    previous = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 1):
            torch.set_num_threads(threads)
            results.append(run(op, float32_args(args32), grads_out, autocast=dtype))
    finally:
        torch.set_num_threads(previous)
    assert torch.get_num_threads() == previous
    names = names_of(args32)
    assert_same_results(results[1], results[0], names, "2 threads vs 1")
    assert_same_results(results[2], results[0], names, "1 thread again")
    assert spike_rate_ok(results[0][0][0])


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", LOW_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("path", PATHS)
def test_non_contiguous_operands_have_the_contiguous_bits(op, dtype, path, monkeypatch):
    """x a permuted view, w_in and w_rec transposed views (low precision):
    the products make their operands contiguous, so the bits are those of
    contiguous operands."""
    use_path(monkeypatch, path, dtype)
    args32 = tie_free(op, dtype)
    grads_out = output_gradients(op, args32, dtype)
    plain = low_args(args32, dtype)
    views = plain._replace(
        x=plain.x.detach().permute(1, 0, 2).contiguous().permute(1, 0, 2).requires_grad_(),
        w_in=plain.w_in.detach().t().contiguous().t().requires_grad_(),
        w_rec=plain.w_rec.detach().t().contiguous().t().requires_grad_())
    assert not views.x.is_contiguous() and not views.w_in.is_contiguous()
    assert_same_results(run(op, views, grads_out), run(op, plain, grads_out), names_of(plain),
                        "non-contiguous vs contiguous")


def sliced_inputs(op, dtype, T, B, F, N, seed):
    """rounded_inputs of shape (T, B, F, N), any of them 0 or 1: drawn at
    sizes of at least 2 and sliced down (make_inputs scales by 1/sqrt(F))."""
    args = rounded_inputs(op, dtype, seed=seed, T=T, B=B, F=max(F, 2), N=max(N, 2))

    def cut(name, a):
        a = a.detach()
        if name == "x":
            a = a[..., :F]
        elif name == "w_in":
            a = a[:N, :F]
        elif name == "w_rec":
            a = a[:N, :N]
        elif a.dim() >= 1:
            a = a[..., :N]
        # Fresh default strides (a sliced empty tensor keeps its parent's,
        # torch.zeros(N, 0) has (1, 1)).
        return leaf(torch.empty(a.shape, dtype=a.dtype).copy_(a))
    return rebuild(args, cut)


# (T, B, F, N): one input feature, one neuron, no input features, no
# neurons, no steps, no rows.
DEGENERATE = [(6, 3, 1, 5), (1, 1, 1, 5), (6, 3, 5, 1), (6, 3, 1, 1), (1, 1, 5, 1),
              (6, 3, 0, 4), (6, 3, 5, 0), (0, 3, 5, 4), (6, 0, 5, 4)]


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", LOW_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("shape", DEGENERATE, ids=["x".join(map(str, s)) for s in DEGENERATE])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
def test_degenerate_shapes(op, dtype, path, shape, bias, monkeypatch, capfd):
    """Sizes 0 and 1 on both paths: the float32 op of the rounded operands
    (off: bitwise), and no BLAS error message."""
    use_path(monkeypatch, path, dtype)
    T, B, F, N = shape
    for seed in range(30):
        args32 = sliced_inputs(op, dtype, T, B, F, N, seed)
        if not bias:
            args32 = args32._replace(bias=None)
        if tie_margin(op, args32) > 1e-4:
            break
    else:
        raise AssertionError("no seed gives inputs without near-ties")
    capfd.readouterr()
    grads_out = output_gradients(op, args32, dtype)
    got = run(op, low_args(args32, dtype), grads_out)
    oracle = run(op, args32, grads_out)
    captured = capfd.readouterr()
    assert "MKL ERROR" not in captured.out + captured.err, captured.out + captured.err
    check_against_float32_op(op, path, dtype, got, oracle, names_of(args32), terms=8)


# ---------------------------------------------------------------------------
# The environment variable
# ---------------------------------------------------------------------------

BAD_VALUES = ["fast", "ON", "Off", " on", "on ", "1", "true", "none", "bfloat16"]


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", LOW_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("value", BAD_VALUES)
def test_bad_value_is_a_value_error(op, dtype, value, monkeypatch):
    """Any value but auto / on / off / empty: ValueError naming the variable
    and the value, direct and under autocast."""
    monkeypatch.setenv(ENV, value)
    args32 = rounded_inputs(op, dtype, T=4, B=2, F=6, N=5)
    pattern = rf"{ENV} must be auto, on or off, got '{value}'"
    with pytest.raises(ValueError, match=pattern):
        FUSED[op](*low_args(args32, dtype))
    with pytest.raises(ValueError, match=pattern):
        with torch.autocast("cpu", dtype=dtype):
            FUSED[op](*float32_args(args32))


@pytest.mark.parametrize("op", OPS)
def test_bad_value_raises_without_w_in(op, monkeypatch):
    monkeypatch.setenv(ENV, "fast")
    args32 = rounded_inputs(op, torch.bfloat16, T=4, B=2, F=5, N=5, w_in=False)
    with pytest.raises(ValueError, match=ENV):
        FUSED[op](*low_args(args32, torch.bfloat16))


@pytest.mark.parametrize("op", OPS)
def test_bad_value_between_forward_and_backward(op, monkeypatch):
    """Read again by the backward: a bad value set after the forward makes
    the backward raise the ValueError."""
    use_path(monkeypatch, "on")
    args = low_args(rounded_inputs(op, torch.bfloat16, T=4, B=2, F=6, N=5), torch.bfloat16)
    outputs = FUSED[op](*args)
    monkeypatch.setenv(ENV, "fast")
    with pytest.raises(ValueError, match=rf"{ENV} must be auto, on or off, got 'fast'"):
        torch.autograd.grad(outputs[1].sum(), [args.x, args.w_in])


def test_bad_value_in_build_info(monkeypatch):
    monkeypatch.setenv(ENV, "fast")
    with pytest.raises(ValueError, match=ENV):
        torch_ext.build_info()


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", LOW_DTYPES, ids=dtype_id)
def test_empty_auto_and_unset_are_the_default_path(op, dtype, monkeypatch):
    """"" (empty), "auto" and unset all take the default path ("on" where
    MKL has the product and the CPU has instructions for it, else "off"):
    the same bits as that path's; "on" and "off" differ wherever MKL has
    the product."""
    default_on = dtype_id(dtype) in LOW and dtype_id(dtype) in INSTRUCTIONS
    args32 = tie_free(op, dtype)
    grads_out = output_gradients(op, args32, dtype)
    names = names_of(args32)
    results = {}
    for value in (None, "", "auto", "on", "off"):
        if value is None:
            monkeypatch.delenv(ENV, raising=False)
        else:
            monkeypatch.setenv(ENV, value)
        results[value] = run(op, low_args(args32, dtype), grads_out)
        info = torch_ext.build_info()
        on = dtype_id(dtype) in LOW and (value == "on" or (value != "off" and default_on))
        assert (dtype_id(dtype) in info["cpu_low_precision_products"]) == (dtype_id(dtype) in LOW)
        assert ("MKL" in info["cpu_product_paths"][dtype_id(dtype)]) == on, value
    for value in ("", "auto", "on" if default_on else "off"):
        assert_same_results(results[value], results[None], names, repr(value))
    if dtype_id(dtype) in LOW:
        # The MKL path does differ from the float32 one (gU is rounded for the
        # backward products), else the switch would test nothing.
        differs = any(not same_bits(a, b) for a, b in zip(results["off"][1], results["on"][1]))
        assert differs
