"""Adversarial tests of the binary-input (spike) path of the recurrent ops.

When x holds only 0 and 1 (-0.0 counting as 0), lies on the CPU and w_in is
finite, the ops may compute the input projection x @ w_in.T by gathering the
w_in columns of the active inputs, and grad_w_in by summing gU over them,
instead of the dense products (TORCH_EXT_BINARY_INPUTS: "gather" forces it
for any binary x, "dense" forbids it, unset chooses by the density of ones).
This file attacks the decision and the two gathers, for every neuron model:

- x that is almost binary (one 0.5, NaN, +-inf, 1 +- eps, -1, a subnormal)
  must take the dense path and give its bits; one -0.0 is binary and must
  gather and agree with the dense path to rounding;
- integer-valued non-binary x, all-zero and all-one x, integer dtypes of x;
- a binary x that requires grad, lengths with binary / NaN / inf padding;
- non-finite w_in, and a non-finite incoming gradient (the gather of
  grad_w_in would drop the NaN of 0 * inf: the op must fall back to dense);
- float32, bfloat16 and float16 x;
- shapes at the gathers' boundaries (the scan's vectors of 8 floats or 4
  doubles of x and its scalar tail, tiles of 64 floats or 32 doubles of N,
  tasks of 256 rows), empty T or B, strided x;
- thread counts (the gathers' results must not depend on them), every
  recurrence and the low-memory mode (whose backward recomputes the input
  projection and must get the same bits);
- the environment variable read at every call, also between the forward
  and the backward.

Every case must give the right result or a clear error, never a silently
wrong one. The reference is the plain-autograd torch_ext.<op>_ref in float64;
"dense" is the fused op with TORCH_EXT_BINARY_INPUTS=dense."""
import math

import pytest
import torch

from neurons import (FUSED, INPUT_SCALE, NEURONS, OPS, REFERENCE, assert_matches_reference,
                     grad_inputs, grad_names, make_inputs, run_with_grads)

ENV = "TORCH_EXT_BINARY_INPUTS"
density = torch.ops.torch_ext._binary_input_density


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------

def set_mode(monkeypatch, mode):
    """mode: "gather", "dense", or "auto" (the variable unset)."""
    if mode == "auto":
        monkeypatch.delenv(ENV, raising=False)
    else:
        monkeypatch.setenv(ENV, mode)


def binary_args(op, T=10, B=3, F=40, N=12, *, rate=0.3, dtype=torch.float64, seed=0,
                x_grad=False, **kwargs):
    """make_inputs with x replaced by a binary x (ones at about `rate`) and
    w_in by one scaled so that the neurons fire at a non-trivial rate (the
    binary x has a smaller mean square than make_inputs' random x)."""
    args = make_inputs(op, T=T, B=B, F=F, N=N, dtype=dtype, seed=seed, **kwargs)
    g = torch.Generator().manual_seed(seed + 1000)
    x = (torch.rand(T, B, F, generator=g) < rate).to(dtype)
    scale = 1.5 * INPUT_SCALE[op] / max(rate * F, 1.0) ** 0.5
    w_in = torch.randn(N, F, generator=g, dtype=torch.float64) * scale + 0.1 * scale
    return args._replace(x=x.requires_grad_(x_grad), w_in=w_in.to(dtype).requires_grad_())


def tie_margin(op, args, **options):
    """How far the reference's membrane (float64, from the same values) stays
    from the threshold: a spike can only differ between two summation orders
    within rounding of it."""
    up = [a.detach().double() if isinstance(a, torch.Tensor) and a.is_floating_point() else a
          for a in args]
    up = type(args)(*up)
    with torch.no_grad():
        membrane = REFERENCE[op](*up, **options)[1]
    if membrane.numel() == 0:
        return math.inf
    theta = up.theta if isinstance(up.theta, torch.Tensor) else torch.tensor(up.theta)
    return (membrane - theta).abs().min().item()


def tie_free(make, op, margin=1e-6, seeds=range(40), **options):
    """The first of make(seed) whose membrane stays `margin` clear of the threshold."""
    for seed in seeds:
        args = make(seed)
        if tie_margin(op, args, **options) > margin:
            return args
    raise AssertionError("no seed gives inputs without near-ties")


def run(monkeypatch, mode, op, args, **options):
    """The fused op's outputs and gradients (run_with_grads) under `mode`."""
    set_mode(monkeypatch, mode)
    return run_with_grads(FUSED[op], args, **options)


def assert_identical(got, want, what=""):
    """The same dtype, shape and values, NaN where NaN (bitwise up to the sign of 0)."""
    for i, (a, b) in enumerate(zip(got, want)):
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True,
                                   msg=lambda m, i=i: f"{what}[{i}]: {m}")


def assert_results_identical(got, want, names):
    """run_with_grads results: outputs and gradients, bitwise (NaN where NaN)."""
    assert_identical(got[0], want[0], "outputs")
    assert len(got[1]) == len(want[1])
    for name, a, b in zip(names, got[1], want[1]):
        assert_identical([a], [b], f"gradient of {name}")


def assert_results_close(got, want, names, rel=1e-12, equal_nan=False):
    """Gathered against dense in float64: the same spikes, every state and
    gradient within `rel` relative to the tensor's largest entry (an entry
    that is a cancelling sum of many terms carries their rounding, not its
    own; the gather and the dense product sum the same terms in another order)."""
    assert_identical(got[0][:1], want[0][:1], "spikes")
    tensors = [(f"state {i}", a, b) for i, (a, b) in enumerate(zip(got[0][1:], want[0][1:]))]
    tensors += [(f"gradient of {n}", a, b) for n, a, b in zip(names, got[1], want[1])]
    for what, a, b in tensors:
        finite = b[b.isfinite()]
        top = finite.abs().max().item() if finite.numel() else 0.0
        torch.testing.assert_close(a, b, rtol=rel, atol=rel * max(top, 1.0), equal_nan=equal_nan,
                                   msg=lambda m, what=what: f"{what}: {m}")


def assert_low_precision_close(got, want, names):
    """Gathered against dense in float32 / bfloat16 / float16 (the compute
    dtype float32): both multiply the same (rounded) operands and sum in
    float32, in another order. The states differ by float32 rounding of sums
    of tens of O(1) terms (~1e-6): rtol = atol = 1e-5. The gradients amplify
    that: the sigmoid surrogate's derivative (slope 25) changes by up to 25
    times a membrane's difference, relatively, and BPTT sums such terms over
    every step and neuron (the dense path itself is as far from the float64
    reference, measured ~1e-4 of the largest entry): 3e-4 of the tensor's
    largest entry; and a gradient is rounded to its dtype at the end, where
    that float32 difference can move it by one unit of the dtype: rtol =
    max(3e-4, that dtype's eps). A wrong gather (a term dropped or doubled)
    is off by O(1). The spikes must be equal: callers keep every membrane
    1e-4 clear of the threshold, so none can flip."""
    assert torch.equal(got[0][0], want[0][0]), "spikes differ"
    for i, (a, b) in enumerate(zip(got[0][1:], want[0][1:])):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=lambda m, i=i: f"state {i}: {m}")
    for name, a, b in zip(names, got[1], want[1]):
        rtol = max(3e-4, torch.finfo(a.dtype).eps)
        top = b.float().abs().max().item()
        torch.testing.assert_close(a.float(), b.float(), rtol=rtol, atol=3e-4 * max(top, 1.0),
                                   msg=lambda m, name=name: f"gradient of {name}: {m}")


def dtype_id(dtype):
    return str(dtype).removeprefix("torch.")


def spike_rate_ok(spikes):
    return 0.02 < spikes.double().mean().item() < 0.95


# ---------------------------------------------------------------------------
# Almost-binary x
# ---------------------------------------------------------------------------

# (id, dtype of x, the value planted, whether that x is binary)
ALMOST_BINARY = [
    ("half", torch.float64, 0.5, False),
    ("neg_zero", torch.float64, -0.0, True),
    ("nan", torch.float64, math.nan, False),
    ("one_plus_eps64", torch.float64, 1 + 2.0 ** -52, False),
    ("one_plus_eps32", torch.float64, 1 + 2.0 ** -23, False),
    ("one_plus_eps32_in_float32", torch.float32, 1 + 2.0 ** -23, False),
    ("one_minus_eps64", torch.float64, 1 - 2.0 ** -53, False),
    ("one_minus_eps32_in_float32", torch.float32, 1 - 2.0 ** -24, False),
    ("one_plus_eps_in_bfloat16", torch.bfloat16, 1 + 2.0 ** -7, False),
    ("one_plus_eps_in_float16", torch.float16, 1 + 2.0 ** -10, False),
    ("minus_one", torch.float64, -1.0, False),
    ("inf", torch.float64, math.inf, False),
    ("minus_inf", torch.float64, -math.inf, False),
    ("subnormal", torch.float64, 5e-324, False),
    ("subnormal_in_float32", torch.float32, 1e-45, False),
]
# T * B = 300 rows: two tasks of the scan (256 rows each); F = 70: eight
# vectors of 8 floats (4 doubles: sixteen) and a scalar tail per row. "mid"
# is row 257's value 64, a vector's first: the second task meets it, after the
# first task has seen only ones and zeros.
ALMOST_SHAPE = dict(T=30, B=10, F=70, N=128)
POSITIONS = {"first": (0, 0, 0), "mid": (25, 7, 64), "last": (29, 9, 69)}


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("name,dtype,value,binary", ALMOST_BINARY,
                         ids=[case[0] for case in ALMOST_BINARY])
@pytest.mark.parametrize("position", POSITIONS)
def test_almost_binary_x(op, name, dtype, value, binary, position, monkeypatch):
    """One planted value: dense path (bitwise the dense results) unless the x
    is still binary (-0.0: gathered, equal to dense to rounding)."""
    # N = 128 and a rate of 0.03: under the crossover (about 4 % at N = 128),
    # so that "auto" gathers too when x is binary.
    args = tie_free(lambda seed: binary_args(op, **ALMOST_SHAPE, rate=0.03, dtype=dtype,
                                             seed=seed), op)
    x = args.x.detach().clone()
    x[POSITIONS[position]] = value
    planted = torch.tensor(value, dtype=dtype).item()  # (the subnormal rounds to the dtype's)
    assert x[POSITIONS[position]].item() == planted or math.isnan(value)
    args = args._replace(x=x)
    names = grad_names(args)

    for mode in ("gather", "auto"):
        set_mode(monkeypatch, mode)
        if binary:
            assert density(x, args.w_in) >= 0, mode
        else:
            assert density(x, args.w_in) == -1.0, mode
    set_mode(monkeypatch, "dense")
    assert density(x, args.w_in) == -1.0

    dense = run(monkeypatch, "dense", op, args)
    for mode in ("gather", "auto"):
        got = run(monkeypatch, mode, op, args)
        if binary:
            assert_results_close(got, dense, names)
        else:
            assert_results_identical(got, dense, names)
    if dtype == torch.float64 and math.isfinite(value):
        set_mode(monkeypatch, "gather")
        spikes = assert_matches_reference(op, args, rtol=1e-10, atol=1e-10)
        assert spike_rate_ok(spikes)
    elif dtype == torch.float64:  # NaN, +-inf: they propagate as in the reference
        assert not dense[0][1].isfinite().all()
        ref = run_with_grads(REFERENCE[op], args)
        for i, (a, b) in enumerate(zip(dense[0], ref[0])):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, equal_nan=True,
                                       msg=lambda m, i=i: f"output {i}: {m}")
        for name, a, b in zip(names, dense[1], ref[1]):
            assert torch.equal(a.isnan(), b.isnan()), f"NaN pattern of the gradient of {name}"


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("values", [(0.0, 1.0, 2.0), (0.0, 3.0), (0.0, 1.0, -1.0),
                                    (0.0, 1.0, 1.0 + 2.0 ** -52)],
                         ids=["0-1-2", "0-3", "0-1-minus1", "0-1-1pluseps"])
def test_integer_valued_non_binary_x(op, values, monkeypatch):
    """Values in {0, 1, 2} or {0, 3} (every one an integer, not all 0/1): dense."""
    def make(seed):
        args = binary_args(op, rate=0.3, seed=seed)
        g = torch.Generator().manual_seed(seed)
        pick = torch.randint(len(values), args.x.shape, generator=g)
        x = torch.tensor(values, dtype=torch.float64)[pick]
        x = torch.where(args.x.detach() > 0, x, torch.zeros_like(x))
        x.view(-1)[0] = values[-1]  # the non-binary value certainly present
        return args._replace(x=x)

    args = tie_free(make, op)
    assert not ((args.x == 0) | (args.x == 1)).all()
    set_mode(monkeypatch, "gather")
    assert density(args.x, args.w_in) == -1.0
    assert_matches_reference(op, args)
    assert_results_identical(run(monkeypatch, "gather", op, args),
                             run(monkeypatch, "dense", op, args), grad_names(args))


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("fill", [0.0, 1.0], ids=["all_zero", "all_one"])
def test_all_zero_and_all_one_x(op, fill, monkeypatch):
    """Density 0 and 1: "gather" gathers both; unforced at N = 128 (crossover
    about 4 %) the all-zero x gathers and the all-one x does not."""
    def make(seed):
        args = binary_args(op, N=128, seed=seed)
        x = torch.full_like(args.x.detach(), fill)
        w_in = args.w_in.detach() / (40 if fill else 1)  # all 40 inputs on: keep it firing
        return args._replace(x=x, w_in=w_in.requires_grad_())

    args = tie_free(make, op)
    set_mode(monkeypatch, "gather")
    assert density(args.x, args.w_in) == fill
    set_mode(monkeypatch, "auto")
    assert density(args.x, args.w_in) == (-1.0 if fill else 0.0)
    names = grad_names(args)
    dense = run(monkeypatch, "dense", op, args)
    for mode in ("gather", "auto"):
        assert_results_close(run(monkeypatch, mode, op, args), dense, names)
        set_mode(monkeypatch, mode)
        assert_matches_reference(op, args, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", [torch.bool, torch.uint8, torch.int64, torch.int32],
                         ids=dtype_id)
@pytest.mark.parametrize("mode", ["gather", "auto"])
def test_integer_dtype_x_is_rejected(op, dtype, mode, monkeypatch):
    """x must be a floating tensor, even one holding only 0 and 1: a TypeError
    naming the op and argument 'x' (the fused op and the reference alike)."""
    set_mode(monkeypatch, mode)
    args = binary_args(op)
    x = args.x.detach().to(dtype)
    for fn in (FUSED[op], REFERENCE[op]):
        with pytest.raises(TypeError, match=rf"^{op}: argument 'x' must be a floating"):
            fn(*args._replace(x=x))


# ---------------------------------------------------------------------------
# Gradients: x, lengths, non-finite values
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("op", OPS)
def test_binary_x_requiring_grad(op, monkeypatch):
    args = tie_free(lambda seed: binary_args(op, seed=seed, x_grad=True, state=True), op)
    set_mode(monkeypatch, "gather")
    assert density(args.x, args.w_in) > 0
    assert "x" in grad_names(args)
    spikes = assert_matches_reference(op, args, rtol=1e-12, atol=1e-12)
    assert spike_rate_ok(spikes)


LENGTHS = [10, 6, 0, 1]  # T = 10, B = 4


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("padding", [0.0, 1.0, "random", math.nan, math.inf, 0.5],
                         ids=["zeros", "ones", "random_binary", "nan", "inf", "half"])
@pytest.mark.parametrize("low_memory", [False, True], ids=["saved", "low_memory"])
def test_lengths_with_padding(op, padding, low_memory, monkeypatch):
    """Steps past each row's length take no part: binary padding gathers,
    non-binary padding (NaN, inf, 0.5) is dense and reaches no output and no
    gradient (the reference, which would multiply it, runs on zero padding)."""
    options = dict(lengths=torch.tensor(LENGTHS))
    if low_memory:
        options[NEURONS[op].save_flag] = False

    def make(seed):
        return binary_args(op, B=4, seed=seed, x_grad=True, state=True)

    args = tie_free(make, op, **options)
    past = torch.arange(10).view(10, 1) >= torch.tensor(LENGTHS).view(1, 4)  # [T, B]
    x = args.x.detach().clone()
    if padding != "random":
        x[past] = padding
    padded = args._replace(x=x.requires_grad_())
    zero_padded = args._replace(x=x.detach().masked_fill(past.unsqueeze(-1), 0).requires_grad_())
    binary = padding in (0.0, 1.0, "random")
    names = grad_names(padded)

    set_mode(monkeypatch, "gather")
    assert (density(padded.x, padded.w_in) >= 0) == binary
    got = run(monkeypatch, "gather", op, padded, **options)
    dense = run(monkeypatch, "dense", op, padded, **options)
    if binary:
        assert_results_close(got, dense, names)
    else:
        assert_results_identical(got, dense, names)
    for i, tensor in enumerate([*got[0], *got[1]]):
        assert tensor.isfinite().all(), f"non-finite value in result {i}"
    ref = run_with_grads(REFERENCE[op], zero_padded, **options)
    assert_identical(got[0][:1], ref[0][:1], "spikes")
    for what, a, b in [*zip(["state"] * 3, got[0][1:], ref[0][1:]), *zip(names, got[1], ref[1])]:
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, msg=lambda m, w=what: f"{w}: {m}")
    for out in got[0]:
        assert not out[past].any(), "outputs past a row's length must be 0"


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("value,where", [(math.inf, (0, 0)), (math.nan, (-1, -1)),
                                         (-math.inf, (3, 20))], ids=["inf", "nan", "minus_inf"])
def test_non_finite_w_in_with_binary_x(op, value, where, monkeypatch):
    """A gather skips the zeros of x, so it would drop the NaN of 0 * inf:
    such a w_in must stay dense, even forced, with the dense path's bits."""
    args = binary_args(op)
    w_in = args.w_in.detach().clone()
    w_in[where] = value
    args = args._replace(w_in=w_in.requires_grad_())
    for mode in ("gather", "auto", "dense"):
        set_mode(monkeypatch, mode)
        assert density(args.x, args.w_in) == -1.0, mode
    dense = run(monkeypatch, "dense", op, args)
    assert not dense[0][1].isfinite().all()  # the non-finite weight does reach the membrane
    for mode in ("gather", "auto"):
        assert_results_identical(run(monkeypatch, mode, op, args), dense, grad_names(args))


def backward_with(monkeypatch, op, args, grad_outputs, forward_mode, backward_mode, **options):
    """The forward under one mode, the backward of the given output gradients under another."""
    set_mode(monkeypatch, forward_mode)
    outputs = FUSED[op](*args, **options)
    set_mode(monkeypatch, backward_mode)
    inputs = grad_inputs(args)
    grads = torch.autograd.grad(outputs, inputs, grad_outputs, allow_unused=True)
    return outputs, [torch.zeros_like(a) if g is None else g for a, g in zip(inputs, grads)]


def output_gradients(args, outputs_like, seed=3):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(out.shape, generator=g, dtype=torch.float64).to(out.dtype)
            for out in outputs_like]


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "minus_inf"])
@pytest.mark.parametrize("target", ["spikes", "state"])
@pytest.mark.parametrize("variant", ["default", "no_bias", "frozen_w_in"])
def test_non_finite_incoming_gradient(op, value, target, variant, monkeypatch):
    """gU non-finite: grad_w_in by gathering would drop the NaN of 0 * inf
    (x = 0 against a non-finite gU), so the op must compute it densely: with
    the same forward, a backward under "gather" gives the bits of one under
    "dense"; and all of it agrees with the dense path run throughout. Also
    without a bias (whose gradient is not asked for then), and with w_in
    frozen (the adaptive neuron's alpha still sums gU over x: its input
    gain's gradient)."""
    args = binary_args(op, state=True, bias=variant != "no_bias")
    if variant == "frozen_w_in":
        args = args._replace(w_in=args.w_in.detach())
    set_mode(monkeypatch, "gather")
    assert density(args.x, args.w_in) > 0
    with torch.no_grad():
        like = FUSED[op](*args)
    grads_out = output_gradients(args, like)
    grads_out[0 if target == "spikes" else 1][5, 1, 2] = value
    names = grad_names(args)

    gathered = backward_with(monkeypatch, op, args, grads_out, "gather", "gather")
    mixed = backward_with(monkeypatch, op, args, grads_out, "gather", "dense")
    dense = backward_with(monkeypatch, op, args, grads_out, "dense", "dense")
    # The non-finite gradient does reach what the gather would compute.
    reached = "w_in" if "w_in" in names else "alpha" if op == "recurrent_adlif" else "w_rec"
    assert not gathered[1][names.index(reached)].isfinite().all()
    assert_results_identical(gathered, mixed, names)
    assert_results_close(gathered, dense, names, equal_nan=True)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("value", [math.nan, math.inf], ids=["nan", "inf"])
def test_non_finite_incoming_gradient_past_the_lengths(op, value, monkeypatch):
    """Outputs past a row's length are constant 0: a non-finite gradient of
    them passes nowhere (as in the reference), and the gather still applies."""
    options = dict(lengths=torch.tensor(LENGTHS))
    args = tie_free(lambda seed: binary_args(op, B=4, seed=seed, state=True), op, **options)
    set_mode(monkeypatch, "gather")
    assert density(args.x, args.w_in) > 0
    with torch.no_grad():
        like = FUSED[op](*args)
    grads_out = output_gradients(args, like)
    for grad in grads_out:
        grad[LENGTHS[1]:, 1] = value  # row 1's steps past its length
        grad[:, 2] = value  # row 2 has length 0
    names = grad_names(args)
    ref_outputs = REFERENCE[op](*args, **options)
    ref_grads = torch.autograd.grad(ref_outputs, grad_inputs(args), grads_out)
    assert all(g.isfinite().all() for g in ref_grads)
    for mode in ("gather", "dense"):
        outputs, grads = backward_with(monkeypatch, op, args, grads_out, mode, mode, **options)
        for name, a, b in zip(names, grads, ref_grads):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10,
                                       msg=lambda m, name=name, mode=mode: f"{mode}, {name}: {m}")


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("forward_mode,backward_mode", [("gather", "dense"), ("dense", "gather")])
@pytest.mark.parametrize("low_memory", [False, True], ids=["saved", "low_memory"])
def test_mode_changed_between_forward_and_backward(op, forward_mode, backward_mode, low_memory,
                                                   monkeypatch):
    """The variable is read at every call: a backward under the other mode
    (the low-memory one recomputes the projection the other way) still gives
    the gradients to rounding."""
    options = {NEURONS[op].save_flag: False} if low_memory else {}
    args = tie_free(lambda seed: binary_args(op, seed=seed, state=True, x_grad=True), op)
    set_mode(monkeypatch, "gather")
    assert density(args.x, args.w_in) > 0
    grads_out = output_gradients(args, FUSED[op](*args))
    names = grad_names(args)
    mixed = backward_with(monkeypatch, op, args, grads_out, forward_mode, backward_mode,
                          **options)
    dense = backward_with(monkeypatch, op, args, grads_out, "dense", "dense", **options)
    assert_results_close(mixed, dense, names)


# ---------------------------------------------------------------------------
# Precision
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=dtype_id)
def test_low_precision_gather_vs_dense(op, dtype, monkeypatch):
    """Gathered against dense to float32 rounding (assert_low_precision_close
    explains the tolerances), with inputs 1e-4 clear of the threshold."""
    args = tie_free(lambda seed: binary_args(op, T=15, F=90, N=40, rate=0.1, dtype=dtype,
                                             seed=seed), op, margin=1e-4)
    set_mode(monkeypatch, "gather")
    assert density(args.x, args.w_in) > 0
    got = run(monkeypatch, "gather", op, args)
    dense = run(monkeypatch, "dense", op, args)
    assert spike_rate_ok(dense[0][0])
    assert_low_precision_close(got, dense, grad_names(args))


# ---------------------------------------------------------------------------
# Shapes, strides, threads, recurrence, low memory
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("F", [1, 63, 64, 65, 130])
@pytest.mark.parametrize("N", [1, 31, 32, 33, 64, 65, 70])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=dtype_id)
def test_boundary_shapes(op, F, N, dtype, monkeypatch):
    """Vectors of 8 floats / 4 doubles of x and the scan's tail (F), tiles of
    32 doubles / 64 floats of N,
    under "gather": float64 against the reference; float32 (whose tiles are
    64 wide) against the dense path to float32 rounding, and its spikes
    against the reference's on the same values in float64."""
    set_mode(monkeypatch, "gather")
    rate = 0.3 if F > 1 else 0.6
    margin = 1e-6 if dtype == torch.float64 else 1e-4
    args = tie_free(lambda seed: binary_args(op, T=6, B=3, F=F, N=N, rate=rate, dtype=dtype,
                                             seed=seed, state=True), op, margin=margin)
    assert density(args.x, args.w_in) >= 0
    if dtype == torch.float64:
        assert_matches_reference(op, args, rtol=1e-12, atol=1e-12)
        return
    got = run(monkeypatch, "gather", op, args)
    assert_low_precision_close(got, run(monkeypatch, "dense", op, args), grad_names(args))
    up = type(args)(*[a.detach().double() if isinstance(a, torch.Tensor) else a for a in args])
    with torch.no_grad():
        assert torch.equal(got[0][0].double(), REFERENCE[op](*up)[0])


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("T,B", [(1, 1), (64, 4), (257, 1), (43, 6), (0, 3), (10, 0)],
                         ids=["1x1", "256rows", "257rows", "258rows", "T0", "B0"])
def test_row_counts(op, T, B, monkeypatch):
    """Tasks of 256 rows (T * B) in the scan and the forward gather, and empty
    T or B, under "gather": against the reference (1e-10: up to 257 steps of
    BPTT carry more rounding than one product) and the dense path."""
    set_mode(monkeypatch, "gather")
    args = tie_free(lambda seed: binary_args(op, T=T, B=B, F=65, N=33, rate=0.2, seed=seed,
                                             state=True, x_grad=True), op)
    if T * B:
        assert density(args.x, args.w_in) >= 0
        assert_matches_reference(op, args)
        assert_results_close(run(monkeypatch, "gather", op, args),
                             run(monkeypatch, "dense", op, args), grad_names(args))
    else:  # empty: the reference's shapes and zero gradients
        got = run_with_grads(FUSED[op], args)
        ref = run_with_grads(REFERENCE[op], args)
        assert_identical(got[0], ref[0], "outputs")
        assert_identical(got[1], ref[1], "gradients")


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("layout", ["permuted", "strided", "expanded", "transposed_w_in"])
def test_non_contiguous_inputs(op, layout, monkeypatch):
    """x (or w_in) a view with other strides: gathered from its values."""
    set_mode(monkeypatch, "gather")

    def make(seed):
        args = binary_args(op, T=10, B=3, F=80, N=33, seed=seed, state=True)
        x = args.x.detach()
        if layout == "permuted":
            x = x.permute(1, 0, 2).contiguous().permute(1, 0, 2)
        elif layout == "strided":
            x = torch.stack([x, 1 - x], -1).flatten(-2)[..., ::2]
        elif layout == "expanded":
            x = x[:, :1].expand(-1, 3, -1)
        else:
            w_in = args.w_in.detach().t().contiguous().t()
            return args._replace(w_in=w_in.requires_grad_())
        return args._replace(x=x)

    args = tie_free(make, op)
    assert layout == "transposed_w_in" or not args.x.is_contiguous()
    assert layout != "transposed_w_in" or not args.w_in.is_contiguous()
    assert density(args.x, args.w_in) > 0
    assert_matches_reference(op, args, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=dtype_id)
def test_thread_count_does_not_change_the_bits(op, dtype, monkeypatch):
    """T * B = 320 rows (two tasks), N = 70 (several tiles): one thread and two."""
    set_mode(monkeypatch, "gather")
    args = binary_args(op, T=40, B=8, F=130, N=70, rate=0.2, dtype=dtype, state=True)
    assert density(args.x, args.w_in) > 0
    names = grad_names(args)
    previous = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 1):
            torch.set_num_threads(threads)
            results.append(run_with_grads(FUSED[op], args))
    finally:
        torch.set_num_threads(previous)
    assert torch.get_num_threads() == previous
    assert_results_identical(results[1], results[0], names)
    assert_results_identical(results[2], results[0], names)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("recurrent", ["all_to_all", "one_to_one", "none"])
def test_recurrence_and_low_memory(op, recurrent, monkeypatch):
    """Every recurrence, saving the states or not: the low-memory backward
    recomputes the input projection by the same gather, so its gradients
    are those of the saving mode bit for bit; both match the reference."""
    set_mode(monkeypatch, "gather")
    flag = NEURONS[op].save_flag
    args = tie_free(lambda seed: binary_args(op, T=12, B=3, F=70, N=40, seed=seed, state=True,
                                             recurrent=recurrent, x_grad=True), op)
    assert density(args.x, args.w_in) > 0
    saved = run_with_grads(FUSED[op], args)
    low = run_with_grads(FUSED[op], args, **{flag: False})
    assert_results_identical(low, saved, grad_names(args))
    for save in (True, False):
        spikes = assert_matches_reference(op, args, rtol=1e-12, atol=1e-12, **{flag: save})
    assert spike_rate_ok(spikes)


# ---------------------------------------------------------------------------
# The choice of path
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("op", OPS)
def test_unforced_choice_follows_the_density(op, monkeypatch):
    """Unset (or any value other than "gather" / "dense"): a sparse x at
    N = 256 gathers, a denser one does not; read again at every call."""
    sparse = tie_free(lambda seed: binary_args(op, T=10, B=3, F=100, N=256, rate=0.04, seed=seed),
                      op)
    busy = binary_args(op, T=10, B=3, F=100, N=256, rate=0.5)
    for value in (None, "", "GATHER", "Dense", "gather ", "1"):
        if value is None:
            monkeypatch.delenv(ENV, raising=False)
        else:
            monkeypatch.setenv(ENV, value)
        assert density(sparse.x, sparse.w_in) == pytest.approx(sparse.x.mean().item()), value
        assert density(busy.x, busy.w_in) == -1.0, value
    monkeypatch.setenv(ENV, "dense")
    assert density(sparse.x, sparse.w_in) == -1.0
    monkeypatch.setenv(ENV, "gather")
    assert density(busy.x, busy.w_in) == pytest.approx(busy.x.mean().item())
    set_mode(monkeypatch, "auto")
    spikes = assert_matches_reference(op, sparse, rtol=1e-12, atol=1e-12)
    assert spike_rate_ok(spikes)


def x_with_ones(count, rows, cols, where):
    """A [rows, 1, cols] float32 x with `count` ones: spread evenly over all
    rows, packed into the first rows, or packed into the last ones."""
    flat = torch.zeros(rows * cols)
    if where == "spread":
        flat[torch.linspace(0, rows * cols - 1, count).round().long()] = 1
    elif where == "first":
        flat[:count] = 1
    else:
        flat[rows * cols - count:] = 1
    assert flat.sum().item() == count
    return flat.view(rows, 1, cols)


def test_crossover_count_does_not_depend_on_layout_or_threads(monkeypatch):
    """Unforced, the gather is chosen up to some count of ones K (for this N
    and size): K ones gather and K + 1 do not, wherever the ones lie (all in
    the scan's first task of 256 rows, all in its second, or spread), with
    one thread or two."""
    set_mode(monkeypatch, "auto")
    rows, cols = 300, 100
    w_in = torch.randn(300, cols)
    low, high = 0, rows * cols  # gathers at low ones, not at high (found by bisection)
    assert density(x_with_ones(low, rows, cols, "spread"), w_in) >= 0
    assert density(x_with_ones(high, rows, cols, "spread"), w_in) == -1.0
    while high - low > 1:
        mid = (low + high) // 2
        if density(x_with_ones(mid, rows, cols, "spread"), w_in) >= 0:
            low = mid
        else:
            high = mid
    assert 0 < low < rows * cols // 2
    previous = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            for where in ("spread", "first", "last"):
                x = x_with_ones(low, rows, cols, where)
                assert density(x, w_in) == pytest.approx(low / (rows * cols)), (threads, where)
                assert density(x_with_ones(low + 1, rows, cols, where), w_in) == -1.0
    finally:
        torch.set_num_threads(previous)
