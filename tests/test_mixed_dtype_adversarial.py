"""Adversarial tests of a float32 x with bfloat16/float16 weights (what
torch.autocast now passes: it casts w_in, w_rec and bias and leaves a float32
x as it is).

The contract under test (README, "Mixed precision"): each weight is float32
or the one low-precision dtype; the dense products take x rounded to w_in's
dtype (round to nearest even), piece by piece inside the blocked products;
spikes, states and grad_x stay float32 (grad_x is not rounded); each
weight's gradient comes back in its dtype. TORCH_EXT_LOW_PRECISION_PRODUCTS
picks MKL's low-precision products (on) or float32 products of the rounded
values (off). So:

- "off" is, to the bit, the float32 op called with x.to(dtype).float() and
  the weights .float() (the weights' gradients rounded to their dtype,
  grad_x as it is);
- both paths agree with the plain-PyTorch reference called with the same
  mixed arguments (spikes exactly, where no membrane is within 1e-4 of the
  threshold), and with each other;
- rows past `lengths` (x NaN there) reach nothing; strides, thread counts,
  splits of the products into pieces change no bit.

Unlike tests/test_mixed_precision_adversarial.py, x here holds values that
the rounding changes (plain float32 random numbers, ties, subnormals,
values past the low dtype's range), so the rounding itself is under test.
"""
import contextlib
import copy
import math

import pytest
import torch

import torch_ext
from mixed_precision_helpers import (BINARY_ENV, ENV, LOW, LOW_DTYPES, PATHS,
                                     bfloat16_dot_products, flushed,
                                     assert_same_results, dtype_id, float64_args, inputs_of,
                                     leaf, names_of, nonfinite_pattern_equal, norm_close,
                                     rebuild, same_bits, spike_rate_ok, use_path)
from neurons import FUSED, NEURONS, OPS, REFERENCE, make_inputs

WEIGHTS = ("w_in", "w_rec", "bias")


# ---------------------------------------------------------------------------
# Inputs and runs
# ---------------------------------------------------------------------------

def mixed_inputs(op, dtype, T=12, B=3, F=20, N=16, seed=0, weight_dtypes=None, **kwargs):
    """float32 inputs (x NOT rounded: ordinary float32 values) with the
    weights named in weight_dtypes (default: all three) in that dtype."""
    # (make_inputs scales by 1 / sqrt(F) and 1 / sqrt(N): sizes 0 are sliced.)
    args = make_inputs(op, T=T, B=B, F=max(F, 1), N=max(N, 1), dtype=torch.float32, seed=seed,
                       **kwargs)
    if F == 0 or N == 0:
        F = F if args.w_in is not None else N

        def cut(name, a):
            if name == "x":
                return a[..., :F]
            if name == "w_in":
                return a[:N, :F]
            if name == "w_rec" and a.dim() == 2:
                return a[:N, :N]
            return a[..., :N] if a.dim() > 0 else a
        args = rebuild(args, lambda name, a: leaf(cut(name, a)))
    weight_dtypes = weight_dtypes if weight_dtypes is not None else dict.fromkeys(WEIGHTS, dtype)
    return rebuild(args, lambda name, a: leaf(a, weight_dtypes.get(name)))


def products_dtype(args):
    return args.w_in.dtype if args.w_in is not None else args.x.dtype


def oracle_args(args):
    """The float32 call on the values the mixed call multiplies: x rounded to
    w_in's dtype, every weight upcast."""
    dtype = products_dtype(args)

    def fn(name, a):
        if name == "x":
            return leaf(a.detach().to(dtype).float())
        return leaf(a, torch.float32 if name in WEIGHTS else None)
    return rebuild(args, fn)


def output_gradients(op, args, seed=3, **options):
    with torch.no_grad():
        outputs = FUSED[op](*args, **options)
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(o.shape, generator=g, dtype=torch.float64).float() for o in outputs]


def run(fn, args, grads_out, autocast=None, **options):
    context = (torch.autocast("cpu", dtype=autocast) if autocast is not None
               else contextlib.nullcontext())
    with context:
        outputs = fn(*args, **options)
    inputs = inputs_of(args)
    used = [o for o in outputs if o.requires_grad]
    if not used:
        return [o.detach() for o in outputs], [torch.zeros_like(a) for a in inputs]
    grads = torch.autograd.grad([o for o in outputs if o.requires_grad], inputs,
                                [g.to(o.dtype) for g, o in zip(grads_out, outputs)
                                 if o.requires_grad], allow_unused=True)
    return ([o.detach() for o in outputs],
            [torch.zeros_like(a) if g is None else g for a, g in zip(inputs, grads)])


def tie_margin(op, args, **options):
    """The float64 reference's closest membrane to the threshold, on the
    values the products take."""
    with torch.no_grad():
        out = REFERENCE[op](*float64_args(oracle_args(args)), **options)
    if out[1].numel() == 0:
        return math.inf
    theta = args.theta
    theta = theta.detach().double() if isinstance(theta, torch.Tensor) else torch.tensor(theta)
    membrane = out[1]
    if "lengths" in options and options["lengths"] is not None:
        T = membrane.shape[0]
        past = torch.arange(T).view(T, 1) >= options["lengths"].view(1, -1)
        membrane = membrane.masked_fill(past.unsqueeze(-1), math.inf)
    return (membrane - theta).abs().min().item()


def tie_free(op, dtype, margin=1e-4, seeds=range(40), options=None, **kwargs):
    options = options or {}
    for seed in seeds:
        args = mixed_inputs(op, dtype, seed=seed, **kwargs)
        if tie_margin(op, args, **options) > margin:
            return args
    raise AssertionError("no seed gives inputs without near-ties")


def check_dtypes(args, got):
    outputs, grads = got
    for o in outputs:
        assert o.dtype == torch.float32
    for name, a, g in zip(names_of(args), inputs_of(args), grads):
        assert g.dtype == a.dtype, f"gradient of {name}: {g.dtype}, want {a.dtype}"
        assert g.shape == a.shape, f"gradient of {name}: {g.shape}, want {a.shape}"


def check_off_is_the_oracle(args, got, oracle):
    """The "off" path: the float32 op of the rounded values, to the bit; each
    weight's gradient that op's rounded to the weight's dtype, grad_x and the
    parameters' gradients as they are."""
    check_dtypes(args, got)
    (go, gg), (wo, wg) = got, oracle
    for i, (a, b) in enumerate(zip(go, wo)):
        assert same_bits(a, b), f"output {i}"
    for name, a, g, w in zip(names_of(args), inputs_of(args), gg, wg):
        assert same_bits(g, w.to(a.dtype)), f"gradient of {name}"


def check_close(args, got, want, eps, what):
    """Same spikes, states to float32 rounding, gradients within 8 eps in
    norm (weights) or 1e-4 (float32 parameters and x)."""
    (go, gg), (wo, wg) = got, want
    assert torch.equal(go[0], wo[0]), f"{what}: spikes differ"
    for i, (a, b) in enumerate(zip(go[1:], wo[1:])):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5,
                                   msg=lambda m, i=i: f"{what}: state {i}: {m}")
    for name, a, b in zip(names_of(args), gg, wg):
        assert a.dtype == b.dtype, f"{what}: gradient of {name}: {a.dtype} vs {b.dtype}"
        assert norm_close(a.float(), b.float(), 8 * eps), f"{what}: gradient of {name}"


# ---------------------------------------------------------------------------
# Variants of the mixed call
# ---------------------------------------------------------------------------

def variant_case(op, dtype, variant):
    """(args, options) for one variant; args tie-free on the rounded values."""
    kw, options = {}, {}
    bf = dict(w_in=dtype, w_rec=dtype, bias=dtype)
    if variant == "all_to_all":
        pass
    elif variant == "one_to_one":
        kw = dict(recurrent="one_to_one")
    elif variant == "no_recurrence":
        kw = dict(recurrent="none")
    elif variant == "w_in_none":  # a low-precision w_rec and bias, x as the current
        kw = dict(w_in=False)
    elif variant == "w_in_low_w_rec_f32":
        kw = dict(weight_dtypes=dict(w_in=dtype, bias=dtype))
    elif variant == "w_in_f32_w_rec_low":  # x is then not rounded
        kw = dict(weight_dtypes=dict(w_rec=dtype))
    elif variant == "bias_only_low":
        kw = dict(weight_dtypes=dict(bias=dtype))
    elif variant == "w_in_only_low_no_bias":
        kw = dict(weight_dtypes=dict(w_in=dtype), bias=False)
    elif variant == "state":
        kw = dict(state=True, params="scalar")
    elif variant == "lengths":
        options = dict(lengths=torch.tensor([12, 7, 0]))
    elif variant == "lengths_low_memory":
        options = dict(lengths=torch.tensor([12, 7, 0]), **{NEURONS[op].save_flag: False})
    elif variant == "odd_F":
        kw = dict(F=37, N=5)
    elif variant == "long_TB":  # weight gradients split over T*B (chunked), forward in blocks
        kw = dict(T=40, B=32, F=24, N=16)
        options = dict(lengths=torch.randint(0, 41, (32,), generator=torch.Generator()
                                             .manual_seed(7)))
    elif variant == "wide_F":  # the forward's inner dimension F split into chunks
        kw = dict(T=3, B=2, F=2100, N=8)
    else:
        raise ValueError(variant)
    if variant not in ("w_in_low_w_rec_f32", "w_in_f32_w_rec_low", "bias_only_low",
                       "w_in_only_low_no_bias"):
        kw.setdefault("weight_dtypes", bf)
    args = tie_free(op, dtype, options=options, **kw)
    return args, options


VARIANTS = ["all_to_all", "one_to_one", "no_recurrence", "w_in_none", "w_in_low_w_rec_f32",
            "w_in_f32_w_rec_low", "bias_only_low", "w_in_only_low_no_bias", "state", "lengths",
            "lengths_low_memory", "odd_F", "long_TB", "wide_F"]


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", LOW_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("variant", VARIANTS)
def test_off_path_is_the_float32_op_of_rounded_x_bitwise(op, dtype, variant, monkeypatch):
    """off: every output and gradient has the bits of the float32 op called
    with x.to(w_in.dtype).float() and the weights upcast (the weights'
    gradients rounded to their dtype, grad_x unrounded)."""
    use_path(monkeypatch, "off", dtype)
    args, options = variant_case(op, dtype, variant)
    grads_out = output_gradients(op, args, **options)
    got = run(FUSED[op], args, grads_out, **options)
    oracle = run(FUSED[op], oracle_args(args), grads_out, **options)
    check_off_is_the_oracle(args, got, oracle)
    assert spike_rate_ok(got[0][0])
    if variant in ("all_to_all", "wide_F"):
        # The rounding is not a no-op on these inputs: the unrounded float32
        # call differs (else this would test nothing).
        unrounded = run(FUSED[op], rebuild(args, lambda n, a: leaf(a, torch.float32)), grads_out,
                        **options)
        assert not torch.equal(unrounded[0][1], got[0][1])


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", LOW_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("variant", ["all_to_all", "one_to_one", "w_in_none",
                                     "w_in_low_w_rec_f32", "w_in_f32_w_rec_low", "bias_only_low",
                                     "lengths_low_memory", "long_TB", "wide_F"])
def test_matches_the_reference_with_the_same_mixed_arguments(op, dtype, path, variant,
                                                            monkeypatch):
    """The fused op and torch_ext.recurrent_*_ref, same mixed arguments: the
    same spikes (no membrane within 1e-4 of the threshold), states to float32
    rounding, gradients (in the same dtypes) within 8 eps in norm."""
    use_path(monkeypatch, path, dtype)
    args, options = variant_case(op, dtype, variant)
    grads_out = output_gradients(op, args, **options)
    got = run(FUSED[op], args, grads_out, **options)
    want = run(REFERENCE[op], args, grads_out, **options)
    check_dtypes(args, got)
    check_dtypes(args, want)
    check_close(args, got, want, torch.finfo(dtype).eps, "fused vs reference")


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", LOW_DTYPES, ids=dtype_id)
def test_on_and_off_paths_agree(op, dtype, monkeypatch):
    """MKL's products (gU rounded for the two backward products) against the
    float32 products: same spikes, close states and gradients."""
    if dtype_id(dtype) not in LOW:
        pytest.skip("no MKL product")
    args, options = variant_case(op, dtype, "long_TB")
    grads_out = output_gradients(op, args, **options)
    results = {}
    for path in PATHS:
        use_path(monkeypatch, path, dtype)
        results[path] = run(FUSED[op], args, grads_out, **options)
    check_close(args, results["on"], results["off"], torch.finfo(dtype).eps, "on vs off")
    # MKL's path does round gU (else the switch would test nothing here).
    assert any(not torch.equal(a, b) for a, b in zip(results["on"][1], results["off"][1]))


# ---------------------------------------------------------------------------
# Strides
# ---------------------------------------------------------------------------

LAYOUTS = {
    # name: (shape of the base, the view of it that is x [T, B, F])
    "transposed": ((3, 10, 9), lambda b: b.transpose(0, 1)),
    "permuted": ((9, 10, 3), lambda b: b.permute(1, 2, 0)),
    "expanded_batch": ((10, 1, 9), lambda b: b.expand(10, 3, 9)),
    "expanded_time": ((1, 3, 9), lambda b: b.expand(10, 3, 9)),
    "expanded_features": ((10, 3, 1), lambda b: b.expand(10, 3, 9)),
    "expanded_all": ((1, 1, 9), lambda b: b.expand(10, 3, 9)),
    "strided_slice": ((20, 3, 18), lambda b: b[::2, :, 1::2]),
    # T * B = 1200 rows: the forward in blocks, grad_w_in chunked over T * B
    # (x [T*B, F] is then a stride-0 view / a copy, read piece by piece).
    # (F = 12: with F = 9 the oracle comparison below meets the alignment
    # bug of test_off_path_bitwise_for_F_not_a_multiple_of_4.)
    "long_expanded_all": ((1, 1, 12), lambda b: b.expand(40, 30, 12)),
    "long_transposed": ((30, 40, 12), lambda b: b.transpose(0, 1)),
    "long_expanded_time": ((1, 30, 12), lambda b: b.expand(40, 30, 12)),
}


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", LOW_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_non_contiguous_x_has_the_contiguous_bits(op, dtype, path, layout, monkeypatch):
    """A transposed / permuted / stride-0 / sliced float32 x with low-precision
    weights: the bits of the same call on x.contiguous(), outputs and the
    gradient reaching x's base."""
    use_path(monkeypatch, path, dtype)
    shape, view = LAYOUTS[layout]
    T, B, F = view(torch.empty(shape)).shape
    args = mixed_inputs(op, dtype, T=T, B=B, F=F, N=7, seed=4)
    g = torch.Generator().manual_seed(11)
    base = (torch.randn(shape, generator=g) * 1.5 * 1.3).requires_grad_()
    base2 = base.detach().clone().requires_grad_()
    x_view = view(base)
    assert not x_view.is_contiguous()
    grads_out = output_gradients(op, args._replace(x=x_view.detach()))

    def call(x, b):
        outs = FUSED[op](x, *args[1:])
        inputs = [b, *inputs_of(args)[1:]]
        return [o.detach() for o in outs], list(torch.autograd.grad(outs, inputs, grads_out))

    got = call(x_view, base)
    want = call(view(base2).contiguous(), base2)
    assert_same_results(got, want, ["x_base", *names_of(args)[1:]], layout)
    # And the rounding happened (x's values are not the low dtype's).
    oracle = run(FUSED[op], oracle_args(args._replace(x=leaf(x_view.contiguous()))), grads_out)
    assert torch.equal(got[0][0], oracle[0][0])
    if path == "off":
        assert all(same_bits(a, b) for a, b in zip(got[0], oracle[0]))


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", LOW_DTYPES, ids=dtype_id)
def test_autocast_transposed_x_is_the_direct_mixed_call(op, dtype, monkeypatch):
    """Functional calls under autocast with a batch-first (transposed) float32
    x: the direct call with float32 x and the weights cast, bit for bit."""
    use_path(monkeypatch, "off", dtype)
    args32 = make_inputs(op, T=9, B=4, F=11, N=6, dtype=torch.float32, seed=2)
    x_bf = args32.x.detach().transpose(0, 1).contiguous().requires_grad_()  # [B, T, F]
    grads_out = output_gradients(op, args32._replace(x=x_bf.detach().transpose(0, 1)))
    with torch.autocast("cpu", dtype=dtype):
        outs = FUSED[op](x_bf.transpose(0, 1), *args32[1:])
    assert outs[0].dtype == torch.float32
    got = ([o.detach() for o in outs],
           torch.autograd.grad(outs, [x_bf, *inputs_of(args32)[1:]], grads_out))
    mixed = rebuild(args32, lambda n, a: leaf(a, dtype if n in WEIGHTS else None))
    mixed = mixed._replace(x=leaf(x_bf.detach().transpose(0, 1).contiguous()))
    want = run(FUSED[op], mixed, grads_out)
    for a, b in zip(got[0], want[0]):
        assert same_bits(a, b)
    assert same_bits(got[1][0], want[1][0].transpose(0, 1))
    for a, b in zip(got[1][1:], want[1][1:]):
        assert same_bits(a, b.float())


def at_offset(t, elements):
    """A contiguous copy of t whose data starts `elements` floats past a
    64-byte boundary (what a slice such as big[1:] of a contiguous tensor is)."""
    buf = torch.empty(t.numel() + 64, dtype=t.dtype)
    shift = (-(buf.data_ptr() // t.element_size()) % 16) + elements
    out = buf[shift:shift + t.numel()].view(t.shape)
    out.copy_(t.detach())
    assert out.is_contiguous() and out.data_ptr() % 64 == elements * t.element_size()
    return out


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", LOW_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("path", PATHS)
def test_mixed_call_bits_do_not_depend_on_x_address(op, dtype, path, monkeypatch):
    """The mixed call rounds each piece of x into fresh memory, so a
    contiguous x at any address (a slice big[1:], say) gives the same bits."""
    use_path(monkeypatch, path, dtype)
    args = mixed_inputs(op, dtype, T=40, B=30, F=9, N=7, seed=4)
    grads_out = output_gradients(op, args)
    want = run(FUSED[op], args._replace(x=leaf(at_offset(args.x, 0))), grads_out)
    for elements in (1, 2, 3):
        got = run(FUSED[op], args._replace(x=at_offset(args.x, elements).requires_grad_()),
                  grads_out)
        assert_same_results(got, want, names_of(args), f"x {4 * elements} bytes off")


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", LOW_DTYPES, ids=dtype_id)
def test_off_path_bitwise_for_F_not_a_multiple_of_4(op, dtype, monkeypatch):
    """Row blocks of x at offsets that are not 64-byte multiples (F = 9): each
    rounded piece lies as those rows of x rounded whole would, so the mixed
    call has the float32 op's bits (MKL's sums depend on alignment; this
    found pieces in fresh aligned memory giving 1 ulp differences)."""
    use_path(monkeypatch, "off", dtype)
    args = mixed_inputs(op, dtype, T=40, B=30, F=9, N=7, seed=4, recurrent="none", bias=False)
    grads_out = output_gradients(op, args)
    got = run(FUSED[op], args, grads_out)
    oracle = run(FUSED[op], oracle_args(args), grads_out)
    check_off_is_the_oracle(args, got, oracle)


@pytest.mark.parametrize("op", OPS)
def test_float32_op_bits_do_not_depend_on_x_address(op, monkeypatch):
    """A contiguous float32 x at an offset from the allocator's alignment
    (x = big[1:]) gives the bits of x.clone(): rows of x that do not lie as
    in a fresh tensor are copied where they would (MKL rounds by alignment;
    this found membranes and weight gradients differing)."""
    monkeypatch.setenv(ENV, "off")
    args = make_inputs(op, T=40, B=30, F=9, N=7, dtype=torch.float32, seed=4)
    grads_out = output_gradients(op, args)
    want = run(FUSED[op], args._replace(x=leaf(at_offset(args.x, 0))), grads_out)
    got = run(FUSED[op], args._replace(x=at_offset(args.x, 2).requires_grad_()), grads_out)
    assert_same_results(got, want, names_of(args), "x 8 bytes off")


# ---------------------------------------------------------------------------
# Values: rounding, non-finite, past the low dtype's range
# ---------------------------------------------------------------------------

def bits_to_float(bits):
    return torch.tensor(bits, dtype=torch.int32).view(torch.float32)


def rounding_values(dtype):
    """float32 values whose rounding to dtype is a corner case: exact ties
    (to even, up and down), just off a tie, subnormals, -0, the largest
    finite value, values that overflow to inf, NaN payloads."""
    if dtype == torch.bfloat16:
        bits = [0x3F808000,  # 1 + 2^-8: tie, rounds down to even 1.0
                0x3F818000,  # 1 + 3 * 2^-8: tie, rounds up to even
                0x3F808001,  # just above a tie: up
                0x3F807FFF,  # just below a tie: down
                0x00008000,  # subnormal tie: down to 0
                0x00018000,  # subnormal tie: up
                0x00000001,  # smallest subnormal: 0
                0x80000000,  # -0
                0x7F7F7FFF,  # rounds to bfloat16's largest finite value
                0x7F7F8000,  # tie at the top: rounds up to inf
                0x7F7FFFFF,  # float32 max: inf
                0xFF7FFFFF,  # -float32 max: -inf
                0x7F800000, 0xFF800000,  # +-inf
                0x7F800001,  # signalling NaN: NaN, not inf
                0x7FC12345, 0xFFFFFFFF]  # NaN payloads
        bits = [b - (1 << 32) if b >= 1 << 31 else b for b in bits]
        values = bits_to_float(bits)
        return torch.cat([values, torch.tensor([3.4e38, -3.4e38, 70000.0])])
    return torch.tensor([65504.0, 65519.0, 65520.0, 70000.0, -70000.0, 3.4e38,
                         1 + 2 ** -11, 1 + 3 * 2 ** -11, 2 ** -25, 3 * 2 ** -25, 2 ** -26,
                         -2 ** -25, 6.1e-5, math.inf, -math.inf, math.nan, -0.0])


@pytest.mark.parametrize("dtype", LOW_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("path", PATHS)
def test_rounding_is_torchs_round_to_nearest_even(dtype, path, monkeypatch):
    """One feature, one neuron, w_in = 1, alpha = 0, T = 1: the membrane is
    x's value as the products see it, which must be torch's x.to(dtype)
    (round to nearest even, NaN stays NaN, overflow to inf), each value in
    its own batch row; grad_x is 1 (not rounded); grad_w_in of row b alone
    is row b's rounded value."""
    use_path(monkeypatch, path, dtype)
    theta = torch.finfo(torch.float32).max
    values = rounding_values(dtype)
    want = values.to(dtype).float()
    if bfloat16_dot_products(path, dtype):  # (they count subnormal operands as zero)
        want = flushed(want)
    B = values.numel()
    w_in = torch.ones(1, 1, dtype=dtype, requires_grad=True)
    x = values.view(1, B, 1).clone()
    spikes, u = torch_ext.recurrent_lif(x, w_in, None, None, alpha=0.0, theta=theta,
                                        reset="none")
    assert same_bits(u.detach().flatten(), want), (u.detach().flatten(), want)
    assert torch.equal(spikes.flatten(), (want > theta).float())
    # The reference rounds the same way.
    u_ref = torch_ext.recurrent_lif_ref(x, w_in.detach(), None, None, alpha=0.0, theta=theta,
                                        reset="none")[1]
    keep = ~values.isinf()
    assert same_bits(u_ref.flatten()[keep], values.to(dtype).float()[keep])
    # Gradients, on the values whose rounding is finite (one row at a time).
    finite = want.isfinite()
    xs = values[finite].view(1, -1, 1).clone().requires_grad_()
    spikes, u = torch_ext.recurrent_lif(xs, w_in, None, None, alpha=0.0, theta=theta,
                                        reset="none")
    assert not spikes.any()
    for b, expected in enumerate(want[finite]):
        g = torch.zeros_like(u)
        g[0, b, 0] = 1.0
        gx, gw = torch.autograd.grad(u, [xs, w_in], g, retain_graph=True)
        assert torch.equal(gx, g)
        assert gw.dtype == dtype and same_bits(gw.float().flatten(), expected.view(1)), (
            b, gw, expected)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", LOW_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, 3.4e38, 70000.0, 65519.0],
                         ids=["nan", "inf", "-inf", "3.4e38", "70000", "65519"])
def test_non_finite_and_huge_x(op, dtype, path, value, monkeypatch):
    """x holding NaN / +-inf / values past the low dtype's range (3.4e38 is
    inf in bfloat16 and float16; 70000 is inf in float16, finite in
    bfloat16; 65519 rounds to float16's 65504): off has the float32 op's
    bits on the rounded values, NaN where NaN and inf where inf; on has
    the same forward pattern."""
    use_path(monkeypatch, path, dtype)
    args = mixed_inputs(op, dtype, T=8, B=3, F=10, N=6, seed=5)
    x = args.x.detach().clone()
    x[2, 1, 3] = value
    x[5, 0, 0] = value
    args = args._replace(x=leaf(x))
    grads_out = output_gradients(op, args)
    got = run(FUSED[op], args, grads_out)
    check_dtypes(args, got)
    oracle = run(FUSED[op], oracle_args(args), grads_out)
    if path == "off":
        check_off_is_the_oracle(args, got, oracle)
    else:
        for i, (a, b) in enumerate(zip(got[0], oracle[0])):
            assert nonfinite_pattern_equal(a, b), f"output {i}"
        if math.isnan(value):  # NaN spreads alike whatever the rounding of gU
            for name, a, b in zip(names_of(args), got[1], oracle[1]):
                assert torch.equal(a.isnan(), b.isnan()), f"gradient of {name}"
    rounds_to_inf = math.isinf(torch.tensor(value).to(dtype).item())
    if rounds_to_inf or math.isnan(value):
        # The non-finite value reaches the state of row 1 from step 2 on (or
        # of row 0 from step 5 on) and nothing in row 2.
        assert got[0][1][:, 2].isfinite().all()
        assert not got[0][1][2:, 1].isfinite().all()
        assert got[0][1][:2].isfinite().all()
    else:
        # (The weights' float16 gradients may overflow: gU times 65504 summed.)
        for t in [*got[0], got[1][0]]:
            assert t.isfinite().all()


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", LOW_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("value", [math.inf, -math.inf], ids=["inf", "-inf"])
def test_reference_keeps_infinite_x_infinite(op, dtype, value, monkeypatch):
    """The reference rounds x for the product without inf - inf = NaN (this
    found its straight-through rounding x + (rounded - x).detach() did)."""
    use_path(monkeypatch, "off", dtype)
    x = torch.full((1, 1, 1), value)
    w_in = torch.ones(1, 1, dtype=dtype)
    ref = REFERENCE[op](x, w_in, None)
    fused = FUSED[op](x, w_in, None)
    oracle = REFERENCE[op](x, w_in.float(), None)
    for a, b in zip(fused, oracle):
        assert same_bits(a, b)
    for a, b in zip(ref, oracle):
        assert same_bits(a, b), (a, b)


# ---------------------------------------------------------------------------
# Padding past the lengths, pieces of the products, thread counts
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", LOW_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("low_memory", [False, True], ids=["saved", "low_memory"])
@pytest.mark.parametrize("recurrent", ["all_to_all", "one_to_one", "w_in_none"])
def test_nan_padding_past_lengths_leaks_nowhere(op, dtype, path, low_memory, recurrent,
                                                monkeypatch):
    """T*B = 1152 rows (forward in 8 blocks of rows, grad_w_in and the
    adaptive drive chunked over T*B >= 4 N): x NaN past each row's length
    and NaN output gradients there change no bit of any output or gradient
    against zero padding; off is the float32 op's bits on the rounded x."""
    use_path(monkeypatch, path, dtype)
    T, B = 48, 24
    lengths = torch.randint(0, T + 1, (B,), generator=torch.Generator().manual_seed(3))
    lengths[0], lengths[1], lengths[2] = T, 0, 1
    options = dict(lengths=lengths)
    if low_memory:
        options[NEURONS[op].save_flag] = False
    kw = dict(w_in=False) if recurrent == "w_in_none" else dict(recurrent=recurrent)
    args = tie_free(op, dtype, options=options, T=T, B=B, F=20, N=12, state=True, **kw)
    past = torch.arange(T).view(T, 1) >= lengths.view(1, B)
    x_nan = args.x.detach().masked_fill(past.unsqueeze(-1), math.nan)
    x_zero = args.x.detach().masked_fill(past.unsqueeze(-1), 0.0)
    grads_zero = output_gradients(op, args._replace(x=x_zero), **options)
    for g in grads_zero:
        g[past] = 0.0
    grads_nan = [g.clone() for g in grads_zero]
    for g in grads_nan:
        g[past] = math.nan
    padded = run(FUSED[op], args._replace(x=leaf(x_nan)), grads_nan, **options)
    zero = run(FUSED[op], args._replace(x=leaf(x_zero)), grads_zero, **options)
    for i, t in enumerate([*padded[0], *padded[1]]):
        assert t.float().isfinite().all(), f"non-finite value in result {i}"
    for out in padded[0]:
        assert not out[past].any(), "outputs past a row's length must be 0"
    if args.w_in is not None:
        assert not padded[1][0][past].any(), "grad_x past a row's length must be 0"
    assert_same_results(padded, zero, names_of(args), "NaN-padded vs zero-padded")
    if path == "off":
        oracle = run(FUSED[op], oracle_args(args._replace(x=leaf(x_zero))), grads_zero,
                     **options)
        check_off_is_the_oracle(args, zero, oracle)
    else:
        want = run(REFERENCE[op], args._replace(x=leaf(x_zero)), grads_zero, **options)
        check_close(args, zero, want, torch.finfo(dtype).eps, "on vs reference")


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", LOW_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("low_memory", [False, True], ids=["saved", "low_memory"])
def test_all_rows_past_their_length(op, dtype, path, low_memory, monkeypatch):
    """lengths all 0 and x all NaN (T * B = 1200, chunked weight gradients):
    every output and gradient is exactly 0, in its dtype."""
    use_path(monkeypatch, path, dtype)
    T, B = 50, 24
    options = dict(lengths=torch.zeros(B, dtype=torch.long))
    if low_memory:
        options[NEURONS[op].save_flag] = False
    args = mixed_inputs(op, dtype, T=T, B=B, F=20, N=12, seed=1, state=True)
    args = args._replace(x=leaf(torch.full((T, B, 20), math.nan)))
    grads_out = output_gradients(op, args, **options)
    got = run(FUSED[op], args, grads_out, **options)
    check_dtypes(args, got)
    for o in got[0]:
        assert not o.any() and o.isfinite().all()
    for name, g in zip(names_of(args), got[1]):
        assert g.float().isfinite().all(), name
        assert not g.any(), name


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", LOW_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("shape", [(48, 24, 20, 12), (3, 2, 2100, 8), (40, 30, 600, 10)],
                         ids=["long_TB", "wide_F", "both"])
def test_thread_counts_give_the_same_bits(op, dtype, path, shape, monkeypatch):
    """1 and 2 threads: the same bits (the products split into pieces fixed
    by the shape, each rounding its own slice of x)."""
    use_path(monkeypatch, path, dtype)
    T, B, F, N = shape
    args = mixed_inputs(op, dtype, T=T, B=B, F=F, N=N, seed=6)
    options = dict(lengths=torch.randint(0, T + 1, (B,),
                                         generator=torch.Generator().manual_seed(1)))
    grads_out = output_gradients(op, args, **options)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            results.append(run(FUSED[op], args, grads_out, **options))
    finally:
        torch.set_num_threads(threads)
    assert_same_results(results[0], results[1], names_of(args), "1 vs 2 threads")
    check_dtypes(args, results[0])


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", LOW_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("shape", [(0, 2, 3, 4), (3, 0, 3, 4), (3, 2, 0, 4), (3, 2, 3, 0),
                                   (1, 1, 1, 1), (1, 3, 1, 5), (2, 1, 7, 1), (0, 0, 0, 0)],
                         ids=lambda s: "x".join(map(str, s)))
def test_degenerate_sizes(op, dtype, path, shape, monkeypatch):
    """T, B, F or N of 0 or 1: shapes and dtypes of every output and gradient;
    off: the float32 op's bits; the reference's values."""
    use_path(monkeypatch, path, dtype)
    T, B, F, N = shape
    args = mixed_inputs(op, dtype, T=T, B=B, F=F, N=N, seed=8, state=True)
    grads_out = output_gradients(op, args)
    got = run(FUSED[op], args, grads_out)
    check_dtypes(args, got)
    for t in [*got[0], *got[1]]:
        assert t.float().isfinite().all()
    assert got[0][0].shape == (T, B, N)
    if path == "off":
        oracle = run(FUSED[op], oracle_args(args), grads_out)
        check_off_is_the_oracle(args, got, oracle)
    want = run(REFERENCE[op], args, grads_out)
    for a, b in zip(got[0], want[0]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    eps = torch.finfo(dtype).eps
    for name, a, b in zip(names_of(args), got[1], want[1]):
        assert a.dtype == b.dtype and a.shape == b.shape, name
        torch.testing.assert_close(a.float(), b.float(), rtol=8 * eps, atol=8 * eps,
                                   msg=lambda m, name=name: f"gradient of {name}: {m}")


# ---------------------------------------------------------------------------
# Binary x
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", LOW_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("low_memory", [False, True], ids=["saved", "low_memory"])
def test_binary_float32_x_gather_and_dense(op, dtype, path, low_memory, monkeypatch):
    """A float32 0/1 x with low-precision weights (the second layer of a stack
    under autocast), with lengths and ones past them: gathered and dense
    agree (spikes exactly), the dense off path has the float32 op's bits."""
    use_path(monkeypatch, path, dtype)
    T, B, F, N = 30, 8, 80, 24
    lengths = torch.tensor([30, 0, 5, 17, 30, 1, 29, 12])
    options = dict(lengths=lengths)
    if low_memory:
        options[NEURONS[op].save_flag] = False
    for seed in range(20):
        args = mixed_inputs(op, dtype, T=T, B=B, F=F, N=N, seed=seed)
        g = torch.Generator().manual_seed(seed + 100)
        x = (torch.rand(T, B, F, generator=g) < 0.1).float()
        w_in = torch.randn(N, F, generator=g) * 3.0 * (1 if op != "recurrent_cubalif" else 0.4)
        args = args._replace(x=leaf(x), w_in=leaf(w_in, dtype))
        if tie_margin(op, args, **options) > 1e-4:
            break
    else:
        raise AssertionError("no tie-free seed")
    grads_out = output_gradients(op, args, **options)
    results = {}
    for mode in ("gather", "dense"):
        monkeypatch.setenv(BINARY_ENV, mode)
        results[mode] = run(FUSED[op], args, grads_out, **options)
    check_dtypes(args, results["gather"])
    check_close(args, results["gather"], results["dense"], torch.finfo(dtype).eps,
                "gather vs dense")
    assert spike_rate_ok(results["dense"][0][0])
    if path == "off":
        oracle = run(FUSED[op], oracle_args(args), grads_out, **options)
        check_off_is_the_oracle(args, results["dense"], oracle)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", LOW_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("subset", ["params_only", "x_only", "w_in_only", "weights_only"])
def test_gradient_subsets_have_the_full_calls_bits(op, dtype, path, subset, monkeypatch):
    """Asking for some gradients only (the adaptive op's alpha gradient alone
    needs the drive, sum gU * x rounded, without grad_w_in), with NaN padding
    past the lengths and T * B = 1152: each gradient has the bits of the
    call that asks for all of them."""
    use_path(monkeypatch, path, dtype)
    T, B = 48, 24
    lengths = torch.randint(0, T + 1, (B,), generator=torch.Generator().manual_seed(9))
    options = dict(lengths=lengths)
    args = mixed_inputs(op, dtype, T=T, B=B, F=20, N=12, seed=3)
    past = torch.arange(T).view(T, 1) >= lengths.view(1, B)
    args = args._replace(x=leaf(args.x.detach().masked_fill(past.unsqueeze(-1), math.nan)))
    grads_out = output_gradients(op, args, **options)
    for g in grads_out:
        g[past] = 0.0
    full = run(FUSED[op], args, grads_out, **options)
    names = names_of(args)
    params = NEURONS[op].param_names
    keep = {"params_only": set(params), "x_only": {"x"}, "w_in_only": {"w_in"},
            "weights_only": set(WEIGHTS)}[subset]
    part_args = rebuild(args, lambda n, a: leaf(a).requires_grad_(n in keep))
    part = run(FUSED[op], part_args, grads_out, **options)
    for name, g in zip(names_of(part_args), part[1]):
        want = full[1][names.index(name)]
        assert g.float().isfinite().all(), name
        assert same_bits(g, want), f"gradient of {name}"


# ---------------------------------------------------------------------------
# Modules under autocast
# ---------------------------------------------------------------------------

MODULES = {"RecurrentLIF": "recurrent_lif", "RecurrentAdLIF": "recurrent_adlif",
           "RecurrentCubaLIF": "recurrent_cubalif"}


def is_weight(name):
    return name.split("_l")[0] in WEIGHTS


@pytest.mark.parametrize("module", list(MODULES))
@pytest.mark.parametrize("dtype", LOW_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("recurrent", ["all_to_all", "one_to_one"])
def test_modules_under_autocast(module, dtype, path, recurrent, monkeypatch):
    """batch_first, num_layers=2, lengths, NaN padding past them: under
    autocast the outputs are float32 and finite, every parameter's gradient
    float32 and finite; off: the bits of the float32 module whose weights
    hold their rounded values, on x rounded (weights' gradients rounded)."""
    use_path(monkeypatch, path, dtype)
    torch.manual_seed(0)
    B, T, F, N = 5, 16, 13, 20
    m = getattr(torch_ext, module)(F, N, num_layers=2, batch_first=True, recurrent=recurrent)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.startswith("w_in"):
                p.mul_(40.0 if module == "RecurrentAdLIF" else 3.0)  # 10 to 50 % spikes
    lengths = torch.tensor([16, 0, 9, 1, 12])
    past = torch.arange(T).view(1, T) >= lengths.view(B, 1)  # [B, T]
    x = (torch.randn(B, T, F) * 1.7 + 0.3).masked_fill(past.unsqueeze(-1), math.nan)
    x.requires_grad_()
    with torch.autocast("cpu", dtype=dtype):
        spikes, final = m(x, lengths=lengths)
    assert spikes.dtype == torch.float32
    assert spikes.isfinite().all() and not spikes[past].any()
    assert 0.02 < spikes[~past].mean().item() < 0.95
    flat_final = [s for layer in final for s in (layer if isinstance(layer, tuple) else [layer])]
    flat_final = [s for s in flat_final if isinstance(s, torch.Tensor)] or list(final)
    loss = (spikes * torch.linspace(-1, 1, N)).sum() + sum(
        (s.float() * 0.1).sum() for s in flat_final)
    params = [p for _, p in m.named_parameters()]
    grads = torch.autograd.grad(loss, [x, *params], allow_unused=True)
    names = ["x", *(n for n, _ in m.named_parameters())]
    for name, g in zip(names, grads):
        if g is None:
            continue
        assert g.dtype == torch.float32, name
        if name == "x":
            assert g[~past].isfinite().all() and not g[past].any()
        else:
            assert g.isfinite().all(), name
    assert grads[1] is not None and grads[1].abs().sum() > 0  # w_in_l0 learns
    # The float32 module on the rounded values.
    m32 = copy.deepcopy(m)
    with torch.no_grad():
        for name, p in m32.named_parameters():
            if is_weight(name):
                p.copy_(p.to(dtype).float())
    x32 = x.detach().to(dtype).float().requires_grad_()
    spikes32, final32 = m32(x32, lengths=lengths)
    flat32 = [s for layer in final32 for s in (layer if isinstance(layer, tuple) else [layer])]
    flat32 = [s for s in flat32 if isinstance(s, torch.Tensor)] or list(final32)
    loss32 = (spikes32 * torch.linspace(-1, 1, N)).sum() + sum(
        (s.float() * 0.1).sum() for s in flat32)
    grads32 = torch.autograd.grad(loss32, [x32, *m32.parameters()], allow_unused=True)
    if path != "off":
        # (MKL's products sum in another order: no exact comparison without
        # a tie margin, which the functional tests above check.)
        return
    assert torch.equal(spikes, spikes32)
    for a, b in zip(flat_final, flat32):
        assert same_bits(a, b)
    for name, a, b in zip(names, grads, grads32):
        if a is None or b is None:
            assert a is None and b is None, name
            continue
        want = b.to(dtype).float() if is_weight(name) else b
        if name == "x":
            want = want.masked_fill(past.unsqueeze(-1), 0)
        assert same_bits(a, want), name


# ---------------------------------------------------------------------------
# Errors, autocast of another low dtype, opcheck
# ---------------------------------------------------------------------------

BF, F16, F32, F64 = torch.bfloat16, torch.float16, torch.float32, torch.float64
ERROR_CASES = {
    # case: (x dtype, {weight: dtype}, w_in present, argument named)
    "bf16_w_in_fp16_bias": (F32, dict(w_in=BF, w_rec=F32, bias=F16), True, "bias"),
    "fp16_w_in_bf16_w_rec": (F32, dict(w_in=F16, w_rec=BF, bias=F32), True, "w_rec"),
    "f32_w_in_bf16_w_rec_fp16_bias": (F32, dict(w_in=F32, w_rec=BF, bias=F16), True, "bias"),
    "no_w_in_bf16_w_rec_fp16_bias": (F32, dict(w_rec=BF, bias=F16), False, "bias"),
    "f64_w_in": (F32, dict(w_in=F64, w_rec=F32, bias=F32), True, "w_in"),
    "f64_w_rec_with_bf16_w_in": (F32, dict(w_in=BF, w_rec=F64, bias=BF), True, "w_rec"),
    "f64_bias": (F32, dict(w_in=BF, w_rec=BF, bias=F64), True, "bias"),
    "bf16_x_f32_w_in": (BF, dict(w_in=F32, w_rec=BF, bias=BF), True, "w_in"),
    "bf16_x_f32_w_rec": (BF, dict(w_in=BF, w_rec=F32, bias=BF), True, "w_rec"),
    "bf16_x_f32_bias": (BF, dict(w_in=BF, w_rec=BF, bias=F32), True, "bias"),
    "fp16_x_bf16_w_in": (F16, dict(w_in=BF, w_rec=F16, bias=F16), True, "w_in"),
    "f64_x_bf16_w_in": (F64, dict(w_in=BF, w_rec=F64, bias=F64), True, "w_in"),
}


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_wrong_dtype_mixes_raise_a_type_error_naming_the_argument(op, case, monkeypatch):
    monkeypatch.setenv(ENV, "off")
    x_dtype, weights, with_w_in, name = ERROR_CASES[case]
    args = make_inputs(op, T=4, B=2, F=6, N=5, dtype=torch.float32, seed=1, w_in=with_w_in)
    args = rebuild(args, lambda n, a: leaf(a, x_dtype if n == "x" else weights.get(n)))
    for fn in (FUSED[op], REFERENCE[op]):
        with pytest.raises(TypeError, match=rf"^{op}: argument '{name}' has dtype"):
            fn(*args)


@pytest.mark.parametrize("op", OPS)
def test_float64_weight_under_autocast_raises(op, monkeypatch):
    """autocast leaves float64 alone: a float32 x with a float64 w_in under
    autocast is the same TypeError."""
    monkeypatch.setenv(ENV, "off")
    args = make_inputs(op, T=4, B=2, F=6, N=5, dtype=torch.float32, seed=1)
    args = args._replace(w_in=leaf(args.w_in, F64))
    with torch.autocast("cpu", dtype=BF):
        with pytest.raises(TypeError, match=rf"^{op}: argument 'w_in' has dtype Double"):
            FUSED[op](*args)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("path", PATHS)
def test_float16_x_under_bfloat16_autocast_is_cast(op, path, monkeypatch):
    """x of another low dtype is cast (only a float32 x stays): a float16 x
    under bfloat16 autocast is the all-bfloat16 call."""
    use_path(monkeypatch, path, BF)
    args = mixed_inputs(op, BF, T=6, B=2, F=8, N=5, seed=2,
                        weight_dtypes=dict.fromkeys(WEIGHTS, F32))
    x16 = args.x.detach().half()
    with torch.autocast("cpu", dtype=BF):
        got = FUSED[op](x16, *args[1:])
    want = FUSED[op](x16.to(BF), *[a.detach().to(BF) if n in WEIGHTS else a
                                   for n, a in zip(args._fields[1:], args[1:])])
    assert got[0].dtype == BF
    for a, b in zip(got, want):
        assert same_bits(a.detach(), b)


@pytest.mark.skipif(not hasattr(torch.library, "opcheck"), reason="needs torch >= 2.4")
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("low", ["all", "bias_only", "w_in_only"])
def test_opcheck_mixed_dtypes(op, low, monkeypatch):
    """opcheck (schema, fake/meta kernels, autograd registration) on float32
    x with bfloat16 weights, forward and backward, with lengths."""
    monkeypatch.setenv(ENV, "off")
    neuron = NEURONS[op]
    args = make_inputs(op, T=7, B=3, F=5, N=4, dtype=torch.float32, state=True,
                       params="scalar", requires_grad=False)
    lows = {"all": WEIGHTS, "bias_only": ("bias",), "w_in_only": ("w_in",)}[low]
    args = rebuild(args, lambda n, a: a.to(BF) if n in lows else a)
    call = (*args, neuron.reset, neuron.detach_reset, "sigmoid", None, True,
            torch.tensor([7, 4, 0]))
    torch.library.opcheck(getattr(torch.ops.torch_ext, op).default, call)
    with torch.no_grad():
        outputs = getattr(torch.ops.torch_ext, op)(*call)
    n = len(args)
    back = (torch.randn_like(outputs[0]), *(torch.randn_like(o) for o in outputs[1:]),
            *args, *outputs, neuron.reset, neuron.detach_reset, "sigmoid", None,
            [True] * (n + 3), call[-1])  # (+ delays, delay_sigma, rec_mask: absent)
    torch.library.opcheck(getattr(torch.ops.torch_ext, f"_{op}_backward").default, back)
    grads = getattr(torch.ops.torch_ext, f"_{op}_backward")(*back)
    assert [g.dtype for g in grads[:4]] == [F32, *(BF if w in lows else F32 for w in WEIGHTS)]
    meta = FUSED[op](*[a.to("meta") if isinstance(a, torch.Tensor) else a for a in args])
    for r, mt in zip(outputs, meta):
        assert mt.dtype == r.dtype == F32 and mt.shape == r.shape
