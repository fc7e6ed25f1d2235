"""Adversarial tests of the per-source ("axonal", delays [N]) spike-event
path of the recurrent delays (csrc/cpu/loops.cpp: DelayedSpikeRing,
delay_sums_at_spikes, and grad_w_rec from P's non-zeros), in the three
fused ops torch_ext.recurrent_{lif,adlif,cubalif}.

The claims under test (README, "Recurrent delays", "How the fused op
computes it"): the events run where the history is binary and D <= 64
(TORCH_EXT_BINARY_INPUTS=gather forces them, =dense turns them off, by
default from D = 16 with a narrow kernel), and then
- the outputs are bitwise those of the dense path, float32 included;
- so are the gradients of x, w_in, the bias, the neuron parameters, the
  initial states, the delays, delay_sigma, rec_mask and s0 / the history;
- w_rec's gradient and the adaptive neuron's input gain's (alpha: its
  "drive" holds sum_j w_rec * M) are the dense ones up to the order of the
  sum (float64: 1e-12; float32: a bound in eps below);
- where something non-finite flows (an inf/NaN incoming gradient, an inf in
  the mask or w_rec, a NaN input), the results are the dense path's and the
  reference's, NaN where they have NaN;
- a history that is not binary (0.5, 2, -1, NaN, inf) takes the dense path
  (so even w_rec's gradient is then the dense one to the bit).
Each case is compared gather (and default) against dense with the same
inputs, and in float64 the fused op against the plain-autograd reference
(spikes exactly where no membrane is within 1e-9 of the threshold, states
to 1e-12, gradients to 1e-10 relative to the gradient's scale).

"Bitwise" here means: the same NaN positions and, everywhere else, the same
bit pattern (so a signed zero counts), not merely ==.

The fallbacks: where a gP could make a sum overflow (larger than max /
(T * B)) or is not finite, the loop leaves E to the driver, which sums
every tap after the loop (so a NaN of 0 * inf stays, as in the dense path
and the reference), in another order (test_overflowing_delay_sums_are_the_
dense_ones, test_a_nonfinite_gP_leaves_the_delay_gradients_the_dense_ones).
A row's untaken steps pass nothing to rec_mask's gradient, even where rec
is not finite there (test_untaken_steps_pass_no_nan_to_the_mask_gradient).

A library bug found on the way, outside the events (dense path, also
without delays), is a strict xfail naming it:
test_adlif_gain_with_an_infinite_incoming_gradient_is_the_reference."""
import pytest
import torch

import torch_ext  # noqa: F401
from torch_ext._neurons import NEURONS

from neurons import FUSED, OPS, REFERENCE, make_inputs

F64, F32 = torch.float64, torch.float32
MODE = "TORCH_EXT_BINARY_INPUTS"
# The parameter whose gradient holds the drive sum_j w_rec * M (the input gain).
GAIN = {"recurrent_adlif": "alpha"}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny products: from a few hundred elements MKL would use 2 OpenMP
    threads, slow on the shared 2-core machine; the thread test sets 2
    itself. Restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def gen(seed):
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------
# Inputs


def delay_values(pattern, N, D, seed):
    """Per-source delays [N], float64, by pattern."""
    g = gen(seed + 100)
    if pattern == "spread":  # over [0.5, D + 0.5], a quarter on integers
        d = 0.5 + D * torch.rand(N, generator=g, dtype=F64)
        d[: N // 4] = d[: N // 4].round()
        return d
    if pattern == "integers":  # every tap on a kink with sigma = 0
        return torch.randint(1, D + 1, (N,), generator=g).to(F64)
    if pattern == "halves":
        return torch.randint(0, D + 1, (N,), generator=g).to(F64) + 0.5
    if pattern == "bounds":  # 0, D + 1 and beyond: taps at and past both ends
        values = [0.0, D + 1.0, 1.0, float(D), 0.5, D + 0.5, -0.5, D + 1.5, -3.0, D + 7.0]
        return torch.tensor([values[n % len(values)] for n in range(N)], dtype=F64)
    raise ValueError(pattern)


def sigma_values(pattern, N, D, seed):
    """delay_sigma by pattern: a tensor [N] / 0-dim, a float, or "absent"."""
    g = gen(seed + 200)
    if pattern == "neuron":
        return torch.rand(N, generator=g, dtype=F64)
    if pattern == "zero":
        return 0.0
    if pattern == "zero_tensor":
        return torch.zeros(N, dtype=F64)
    if pattern == "mixed":  # some 0, some on the kernel's edge, some wider than D
        values = [0.0, 1.0, 0.25, 3.0 * D, 0.0, 2.0, D + 0.5]
        return torch.tensor([values[n % len(values)] for n in range(N)], dtype=F64)
    if pattern == "0-dim":
        return torch.tensor(0.75, dtype=F64)
    if pattern == "wide":  # every tap of every neuron used
        return torch.tensor(2.0 * D, dtype=F64)
    if pattern == "huge":  # s^2 overflows: every tap 0 (no recurrence at all)
        return torch.tensor(1e200, dtype=F64)
    if pattern == "absent":
        return "absent"
    raise ValueError(pattern)


def history_values(kind, D, B, N, seed, rate=0.1):
    """s0: a [D, B, N] history or a [B, N] s0, float64, or None."""
    g = gen(seed + 300)
    binary = (torch.rand(D, B, N, generator=g) < rate).to(F64)
    if kind == "binary":
        return binary
    if kind == "dense_binary":
        return (torch.rand(D, B, N, generator=g) < 0.5).to(F64)
    if kind == "ones":
        return torch.ones(D, B, N, dtype=F64)
    if kind == "zeros":
        return torch.zeros(D, B, N, dtype=F64)
    if kind == "none":
        return None
    if kind == "s0":
        return (torch.rand(B, N, generator=g) < 0.5).to(F64)
    if kind == "s0_half":  # not binary: the default history built from it is not
        s0 = (torch.rand(B, N, generator=g) < 0.5).to(F64)
        s0[0, 0] = 0.5
        return s0
    if kind == "neg_zero":  # -0.0 == 0: binary
        return torch.where(binary == 0, torch.tensor(-0.0, dtype=F64), binary)
    special = {"half": 0.5, "two": 2.0, "neg_one": -1.0, "nan": float("nan"),
               "inf": float("inf"), "almost_one": 1.0 + 2.0 ** -23,  # (float32's next after 1)
               "subnormal": 2.0 ** -1070}
    if kind in special:  # one value that is not a spike, deep in the history
        h = binary.clone()
        h[D // 2, 0, N // 2] = special[kind]
        return h
    raise ValueError(kind)


def build(op, *, T=24, B=3, N=40, D=20, dtype=F64, seed=0, recurrent="all_to_all",
          history="binary", delays="spread", sigma="neuron", mask="random",
          x_scale=0.6, grad=None, w_in=True):
    """(args, kw): make_inputs' random inputs of `op` with a bias and an
    initial state, and per-source delay keywords. grad: the names of the
    arguments that require grad (None: every tensor argument)."""
    args = make_inputs(op, T=T, B=B, F=7, N=N, state=True, seed=seed, dtype=F64,
                       recurrent=recurrent, requires_grad=False, w_in=w_in)
    args = args._replace(x=args.x * x_scale, s0=history_values(history, D, B, N, seed))
    kw = dict(delays=delay_values(delays, N, D, seed) if isinstance(delays, str) else delays,
              max_delay=D)
    s = sigma_values(sigma, N, D, seed) if isinstance(sigma, str) else sigma
    if not (isinstance(s, str) and s == "absent"):
        kw["delay_sigma"] = s
    if isinstance(mask, str) and mask == "random":
        kw["rec_mask"] = 0.5 + torch.rand(B, N, generator=gen(seed + 400), dtype=F64)
    elif mask is not None:
        kw["rec_mask"] = mask
    return prepare(args, kw, dtype, grad)


def prepare(args, kw, dtype, grad=None):
    """Fresh leaves of `dtype`; requires_grad on those named in `grad` (None: all)."""
    def leaf(name, t):
        if not isinstance(t, torch.Tensor):
            return t
        t = t.detach().to(dtype).clone()
        return t.requires_grad_(grad is None or name in grad)

    args = args._replace(**{n: leaf(n, t) for n, t in args._asdict().items()})
    kw = {n: leaf(n, t) for n, t in kw.items()}
    return args, kw


def named_leaves(args, kw):
    named = list(args._asdict().items()) + list(kw.items())
    return [(n, t) for n, t in named if isinstance(t, torch.Tensor) and t.requires_grad]


def incoming(out, seed=11):
    """Random incoming gradients of every output, float64 values."""
    g = gen(seed)
    return [torch.randn(o.shape, generator=g, dtype=F64).to(o.dtype) for o in out]


def run(fn, args, kw, weights=None, **options):
    """The outputs and {name: gradient} of sum(weights * outputs)."""
    out = fn(*args, **kw, **options)
    leaves = named_leaves(args, kw)
    if weights is None:
        weights = incoming(out)
    grads = {}
    if leaves:
        got = torch.autograd.grad(out, [t for _, t in leaves], weights, allow_unused=True)
        grads = {n: torch.zeros_like(t) if g is None else g for (n, t), g in zip(leaves, got)}
    return out, grads


def run_mode(monkeypatch, mode, fn, args, kw, weights=None, **options):
    if mode == "default":
        monkeypatch.delenv(MODE, raising=False)
    else:
        monkeypatch.setenv(MODE, mode)
    try:
        return run(fn, args, kw, weights, **options)
    finally:
        monkeypatch.delenv(MODE, raising=False)


# ----------------------------------------------------------------------------
# Comparisons


def bits(t):
    return t.view({torch.float64: torch.int64, torch.float32: torch.int32,
                   torch.bfloat16: torch.int16, torch.float16: torch.int16}[t.dtype])


def assert_bitwise(a, b, what):
    """The same NaN positions; the same bits everywhere else (-0 != +0)."""
    assert a.shape == b.shape and a.dtype == b.dtype, what
    nan_a, nan_b = a.isnan(), b.isnan()
    assert torch.equal(nan_a, nan_b), f"{what}: NaN positions differ"
    keep = ~nan_a
    differ = bits(a)[keep] != bits(b)[keep]
    if differ.any():
        i = differ.nonzero()[0].item()
        raise AssertionError(f"{what}: {int(differ.sum())} of {a.numel()} entries differ, "
                             f"e.g. {a[keep][i].item()!r} against {b[keep][i].item()!r}")


def assert_close_order(a, b, rows, what):
    """The same sum in another order: NaN and inf where the other has them,
    the finite entries within float64 1e-12 or, for float32, `rows` roundings
    of the largest magnitude (rows terms summed; a few times the result)."""
    assert a.shape == b.shape and a.dtype == b.dtype, what
    assert torch.equal(a.isnan(), b.isnan()), f"{what}: NaN positions differ"
    assert torch.equal(a.isinf(), b.isinf()) and torch.equal(a[a.isinf()], b[b.isinf()]), \
        f"{what}: inf differ"
    fa, fb = a[a.isfinite()], b[b.isfinite()]
    if a.dtype == F64:
        torch.testing.assert_close(fa, fb, rtol=1e-12, atol=1e-12, msg=lambda m: f"{what}: {m}")
    else:
        scale = fb.abs().max().item() if fb.numel() else 0.0
        bound = 4 * max(rows, 1) * torch.finfo(a.dtype).eps * scale
        torch.testing.assert_close(fa, fb, rtol=0, atol=bound, msg=lambda m: f"{what}: {m}")


def order_only(op, name, recurrent):
    """Gradients that the events may sum in another order: w_rec's (all to
    all: from P's non-zeros) and the input gain's (its drive)."""
    return recurrent == "all_to_all" and (name == "w_rec" or name == GAIN.get(op))


def assert_events_are_dense(op, args, kw, monkeypatch, modes=("gather", "default"),
                            weights=None, recurrent="all_to_all", exact_all=False, rounded=(),
                            **options):
    """Each of `modes` against TORCH_EXT_BINARY_INPUTS=dense with the same
    inputs: outputs and the exact gradients bitwise, the others up to the
    order of the sum (bitwise too where `exact_all`: no events can run).
    rounded: gradients compared up to the order of the sum for a known bug
    (each named where it is passed). Returns the dense run."""
    dense = run_mode(monkeypatch, "dense", FUSED[op], args, kw, weights, **options)
    rows = args.x.shape[0] * args.x.shape[1]
    for mode in modes:
        got = run_mode(monkeypatch, mode, FUSED[op], args, kw, weights, **options)
        for i, (a, b) in enumerate(zip(got[0], dense[0])):
            assert_bitwise(a, b, f"{mode}: output {i}")
        assert got[1].keys() == dense[1].keys()
        for name in dense[1]:
            a, b = got[1][name], dense[1][name]
            if (order_only(op, name, recurrent) and not exact_all) or name in rounded:
                assert_close_order(a, b, rows, f"{mode}: gradient of {name}")
            else:
                assert_bitwise(a, b, f"{mode}: gradient of {name}")
    return dense


def assert_fused_is_reference(op, args, kw, monkeypatch, mode="gather", weights=None,
                              margin=1e-9, inf_split=(), **options):
    """float64: the fused op (in `mode`) against the reference: spikes
    exactly (no finite membrane within `margin` of the threshold), states to
    1e-12, every gradient to 1e-10 relative to its scale; NaN and inf where
    the reference has them. inf_split: gradients that the fused op sums in
    two parts which an infinite incoming gradient turns into inf - inf (the
    adaptive neuron's gain: a pre-existing difference from the reference,
    test_adlif_gain_with_an_infinite_incoming_gradient_is_the_reference):
    for those, non-finite at the same places and the finite values close."""
    assert args.x.dtype == F64
    got, g_got = run_mode(monkeypatch, mode, FUSED[op], args, kw, weights, **options)
    options = {k: v for k, v in options.items() if k != NEURONS[op].save_flag}
    want, g_want = run(REFERENCE[op], args, kw, weights, **options)
    theta = args.theta.detach() if isinstance(args.theta, torch.Tensor) else args.theta
    gap = (want[1].detach() - theta).abs()
    gap = gap[gap.isfinite()]
    assert gap.numel() == 0 or gap.min() > margin, "a membrane at the threshold: pick another seed"
    assert torch.equal(got[0], want[0]), "spikes"
    for state, a, b in zip(NEURONS[op].states, got[1:], want[1:]):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, equal_nan=True,
                                   msg=lambda m, s=state.output: f"{s}: {m}")
    assert g_got.keys() == g_want.keys()
    for name in g_want:
        a, b = g_got[name], g_want[name]
        finite = b[b.isfinite()]
        scale = max(finite.abs().max().item() if finite.numel() else 0.0, 1.0)
        if name in inf_split:
            assert torch.equal(a.isfinite(), b.isfinite()), f"gradient of {name}: non-finite"
            a, b = a[a.isfinite()], finite
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10 * scale, equal_nan=True,
                                   msg=lambda m, n=name: f"gradient of {n}: {m}")
    return got


def row_of(args, kw, b, steps):
    """Row b of the inputs, its first `steps` steps (slices of the leaves,
    so gradients flow back to them)."""
    def cut(name, t):
        if not isinstance(t, torch.Tensor) or t.dim() == 0:
            return t
        if name == "x":
            return t[:steps, b:b + 1]
        if name == "s0":
            return t[:, b:b + 1] if t.dim() == 3 else t[b:b + 1]
        if name in ("rec_mask",) or (name in NEURONS_INITIAL and t.dim() == 2):
            return t[b:b + 1]
        return t

    return (args._replace(**{n: cut(n, t) for n, t in args._asdict().items()}),
            {n: cut(n, t) for n, t in kw.items()})


NEURONS_INITIAL = {n for neuron in NEURONS.values() for n in neuron.initial_names}


def assert_fused_is_reference_row_by_row(op, args, kw, lengths, monkeypatch, mode="gather",
                                         weights=None):
    """float64, with lengths: the reference run on each row alone, cut to its
    length (where a NaN meets the padding the reference run on the whole
    batch lets 0 * NaN flow back through the padded steps, which the fused op
    by design does not: nothing flows through a step a row does not take).
    Outputs: the row's steps to 1e-12 (spikes exactly), zeros past them;
    gradients: of the sum of the rows' losses, NaN where it has NaN."""
    got, g_got = run_mode(monkeypatch, mode, FUSED[op], args, kw, weights, lengths=lengths)
    if weights is None:
        weights = incoming(got)
    leaves = named_leaves(args, kw)
    loss = 0.0
    for b, steps in enumerate(lengths.tolist()):
        for o in got:
            assert not o[steps:, b].any(), "outputs past a row's length must be 0"
        if steps == 0:
            continue
        row_args, row_kw = row_of(args, kw, b, steps)
        want = REFERENCE[op](*row_args, **row_kw)
        assert torch.equal(got[0][:steps, b:b + 1], want[0]), f"spikes of row {b}"
        for a, w in zip(got[1:], want[1:]):
            torch.testing.assert_close(a[:steps, b:b + 1], w, rtol=1e-12, atol=1e-12,
                                       equal_nan=True)
        loss = loss + sum((w * o).sum() for w, o in
                          zip([wt[:steps, b:b + 1] for wt in weights], want))
    g_want = torch.autograd.grad(loss, [t for _, t in leaves], allow_unused=True)
    for (name, t), g in zip(leaves, g_want):
        a, b = g_got[name], torch.zeros_like(t) if g is None else g
        finite = b[b.isfinite()]
        scale = max(finite.abs().max().item() if finite.numel() else 0.0, 1.0)
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10 * scale, equal_nan=True,
                                   msg=lambda m, n=name: f"gradient of {n}: {m}")


def lengths_for(T, B):
    """Lengths with a full row, an empty one and partial ones."""
    values = [T, 0, max(T // 2, 1), max(T - 1, 0), 1]
    return torch.tensor([values[b % len(values)] for b in range(B)])


# ----------------------------------------------------------------------------
# Shapes: N around one 64-bit word, D from 1 to 65, T below D, T = 1


SHAPES = {  # name: (N, D, T)
    "N1_D16": (1, 16, 20),
    "N63_D1": (63, 1, 25),
    "N64_D2": (64, 2, 12),
    "N65_D16": (65, 16, 40),
    "N130_D63_T<D": (130, 63, 30),
    "N70_D64": (70, 64, 80),
    "N5_D64_T3": (5, 64, 3),
    "N65_D20_T1": (65, 20, 1),
    "N64_D65_dense": (64, 65, 30),
}


@pytest.mark.parametrize("dtype", [F64, F32], ids=["float64", "float32"])
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("op", OPS)
def test_shapes_events_are_dense_and_reference(op, shape, dtype, monkeypatch):
    """Every shape, with lengths (an empty row, a full one) and without:
    gather and default against dense; in float64 also the reference. At
    D = 65 no events can run: every gradient bitwise."""
    N, D, T = SHAPES[shape]
    args, kw = build(op, T=T, B=3, N=N, D=D, dtype=dtype, seed=1, x_scale=0.5)
    for options in ({}, dict(lengths=lengths_for(T, 3))):
        dense = assert_events_are_dense(op, args, kw, monkeypatch, exact_all=D > 64, **options)
        if N * T >= 60:
            assert dense[0][0].sum() > 0, "no spikes: the case tests nothing"
    if dtype == F64:
        assert_fused_is_reference(op, args, kw, monkeypatch, lengths=lengths_for(T, 3))


# ----------------------------------------------------------------------------
# Delay values: kinks, the kernel's edge, bounds, sigma 0 / wide / huge


DELAY_CASES = {  # name: (delays, sigma, D, options)
    "integers_sigma0": ("integers", "zero", 16, {}),
    "halves_sigma0": ("halves", "zero_tensor", 16, dict(reset="zero")),
    "bounds_mixed_sigma": ("bounds", "mixed", 16, {}),
    "integers_edge_sigma": ("integers", "mixed", 16, dict(reset="none")),
    "spread_0dim_sigma": ("spread", "0-dim", 16, dict(detach_reset=True)),
    "spread_no_sigma": ("spread", "absent", 16, {}),
    "spread_wide_kernel": ("spread", "wide", 16, {}),
    "bounds_huge_sigma": ("bounds", "huge", 16, {}),
    "D64_wide_kernel": ("spread", "wide", 64, {}),  # all 64 bits of every neuron's word
    "D64_bounds": ("bounds", "mixed", 64, dict(surrogate="atan")),
    "D1_bounds": ("bounds", "mixed", 1, {}),
    "D2_halves": ("halves", "zero", 2, dict(surrogate="triangle")),
}


@pytest.mark.parametrize("case", list(DELAY_CASES))
@pytest.mark.parametrize("op", OPS)
def test_delay_values_events_are_dense_and_reference(op, case, monkeypatch):
    """Delays on integers and half-integers with sigma = 0 (every tap on a
    kink), at 0, D + 1 and past both ends, taps exactly on the kernel's edge
    (|delta - k| = s: K = 0 but its derivatives are not), per-neuron sigma
    with zeros and windows wider than D, a 0-dim sigma, no sigma, and a sigma
    whose s^2 overflows (no recurrence): bitwise the dense path, and the
    reference."""
    delays, sigma, D, options = DELAY_CASES[case]
    args, kw = build(op, T=30, B=3, N=40, D=D, seed=2, delays=delays, sigma=sigma)
    dense = assert_events_are_dense(op, args, kw, monkeypatch, **options)
    assert dense[0][0].sum() > 0
    assert_fused_is_reference(op, args, kw, monkeypatch, **options)


# ----------------------------------------------------------------------------
# Histories: binary ones take the events; anything else falls back


BINARY_HISTORIES = ("binary", "ones", "zeros", "s0", "none", "neg_zero", "dense_binary")
OTHER_HISTORIES = ("half", "two", "neg_one", "nan", "inf", "almost_one", "subnormal",
                   "s0_half")


@pytest.mark.parametrize("history", BINARY_HISTORIES + OTHER_HISTORIES)
@pytest.mark.parametrize("op", OPS)
def test_histories(op, history, monkeypatch):
    """All-ones, all-zero, [B, N] s0, no s0, -0.0 in place of 0: events,
    bitwise the dense path. 0.5, 2, -1, NaN, inf in the history (or 0.5 in
    an s0 [B, N]): the dense path, so every gradient, w_rec's included, is
    the dense one to the bit; and the reference, NaN where it has NaN."""
    args, kw = build(op, T=26, B=3, N=40, D=16, seed=3, history=history)
    fallback = history in OTHER_HISTORIES
    assert_events_are_dense(op, args, kw, monkeypatch, exact_all=fallback)
    assert_fused_is_reference(op, args, kw, monkeypatch)
    if history == "nan":  # the NaN does spread (else the case would test less)
        out = FUSED[op](*args, **kw)
        assert out[1].isnan().any()


@pytest.mark.parametrize("op", OPS)
def test_the_events_do_run(op, monkeypatch):
    """That the comparisons above compare two paths: all to all, w_rec's
    gradient from P's non-zeros (forced) is the dense product's sum in
    another order, so some bits differ; with a history that is not binary
    (one 0.5) the events are off and every bit is the dense path's."""
    args, kw = build(op, T=40, B=4, N=70, D=20, seed=17)
    events = run_mode(monkeypatch, "gather", FUSED[op], args, kw)[1]["w_rec"]
    dense = run_mode(monkeypatch, "dense", FUSED[op], args, kw)[1]["w_rec"]
    assert not torch.equal(bits(events), bits(dense))
    assert_close_order(events, dense, 160, "w_rec")
    history = args.s0.detach().clone()
    history[3, 1, 5] = 0.5
    args = args._replace(s0=history.requires_grad_())
    events = run_mode(monkeypatch, "gather", FUSED[op], args, kw)[1]["w_rec"]
    dense = run_mode(monkeypatch, "dense", FUSED[op], args, kw)[1]["w_rec"]
    assert_bitwise(events, dense, "w_rec")


@pytest.mark.parametrize("op", OPS)
def test_strided_history_is_the_contiguous_one(op, monkeypatch):
    """A history given as a non-contiguous view: bitwise the contiguous one's
    results, with the events."""
    args, kw = build(op, T=20, B=3, N=40, D=16, seed=4)
    base = args.s0.detach()
    strided = base.permute(2, 1, 0).contiguous().permute(2, 1, 0)  # the same values, strides N-first
    assert not strided.is_contiguous()
    a = run_mode(monkeypatch, "gather", FUSED[op], args, kw)
    b = run_mode(monkeypatch, "gather", FUSED[op],
                 args._replace(s0=strided.requires_grad_()), kw)
    for i, (x, y) in enumerate(zip(a[0], b[0])):
        assert_bitwise(x, y, f"output {i}")
    for name in a[1]:
        assert_bitwise(a[1][name], b[1][name], name)


# ----------------------------------------------------------------------------
# Masks, and non-finite values flowing


def mask_with(kind, B, N, seed):
    m = 0.5 + torch.rand(B, N, generator=gen(seed), dtype=F64)
    if kind == "zeros":
        m[0] = 0.0
        m[:, ::3] = 0.0
    elif kind == "inf":
        m[1, 5] = float("inf")
    elif kind == "inf_and_zero_row":
        m[0] = 0.0
        m[2, 7] = float("inf")
    elif kind == "nan":
        m[2, 30] = float("nan")
    elif kind == "negative":
        m[:, ::2] *= -1.0
    return m


@pytest.mark.parametrize("kind", ["zeros", "negative", "inf", "inf_and_zero_row", "nan"])
@pytest.mark.parametrize("op", OPS)
def test_masks(op, kind, monkeypatch):
    """A mask with zero rows and columns (gM = 0 there), with an inf (the
    recurrent input inf or NaN, m * gX NaN): bitwise the dense path, and the
    reference, NaN where it has NaN."""
    args, kw = build(op, T=26, B=3, N=40, D=16, seed=5, mask=mask_with(kind, 3, 40, 6))
    assert_events_are_dense(op, args, kw, monkeypatch)
    assert_fused_is_reference(op, args, kw, monkeypatch)
    if kind not in ("zeros", "negative"):
        out, grads = run(FUSED[op], args, kw)
        assert not all(o.isfinite().all() for o in out[1:]), "the inf does not flow"


NONFINITE = {  # name: (output index, (t, b, n), value)
    "spikes_inf": (0, (9, 1, 4), float("inf")),
    "spikes_nan": (0, (3, 0, 7), float("nan")),
    "state_inf": (1, (12, 2, 9), float("inf")),
    "state_neg_inf_first_step": (1, (0, 1, 0), -float("inf")),
    "state_nan_last_step": (1, (25, 0, 39), float("nan")),
    "last_state_inf": (-1, (20, 1, 3), float("inf")),
}


@pytest.mark.parametrize("recurrent", ["all_to_all", "one_to_one"])
@pytest.mark.parametrize("where", list(NONFINITE))
@pytest.mark.parametrize("op", OPS)
def test_nonfinite_incoming_gradients(op, where, recurrent, monkeypatch):
    """One inf or NaN in an incoming gradient (the spikes', the membrane's,
    the last state's), the others random: the events give way to the dense
    sums (a skipped 0 * inf would drop a NaN): bitwise the dense path, NaN
    at the same places, and the reference's values."""
    out_index, at, value = NONFINITE[where]
    args, kw = build(op, T=26, B=3, N=40, D=16, seed=7, recurrent=recurrent)
    weights = nonfinite_weights(op, args, kw, out_index, at, value)
    # One-to-one, the non-finite gP reaches one neuron only; the others'
    # delay and sigma gradients are then only the dense ones up to rounding:
    # test_a_nonfinite_gP_leaves_the_delay_gradients_the_dense_bits (a bug).
    rounded = ("delays", "delay_sigma") if recurrent == "one_to_one" else ()
    dense = assert_events_are_dense(op, args, kw, monkeypatch, weights=weights,
                                    recurrent=recurrent, rounded=rounded)
    assert any(not g.isfinite().all() for g in dense[1].values()), "nothing non-finite flows"
    assert_fused_is_reference(op, args, kw, monkeypatch, weights=weights,
                              inf_split=(GAIN[op],) if op in GAIN else ())


def nonfinite_weights(op, args, kw, out_index, at, value, seed=20):
    shapes = [o.shape for o in FUSED[op](*args, **kw)]
    weights = [torch.randn(s, generator=gen(seed + i), dtype=F64).to(args.x.dtype)
               for i, s in enumerate(shapes)]
    weights[out_index][at] = value
    return weights


@pytest.mark.parametrize("value", [float("inf"), float("nan")], ids=["inf", "nan"])
@pytest.mark.parametrize("op", OPS)
def test_nonfinite_incoming_gradients_in_a_later_block_of_rows(op, value, monkeypatch):
    """B = 40: three blocks of rows in the backward; the non-finite gradient
    in the last block only (the others' event sums are then dropped for the
    dense ones): bitwise the dense path, with 1 and 2 threads."""
    args, kw = build(op, T=20, B=40, N=40, D=16, seed=14)
    weights = nonfinite_weights(op, args, kw, 1, (11, 37, 5), value)
    runs = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        runs.append(assert_events_are_dense(op, args, kw, monkeypatch, modes=("gather",),
                                            weights=weights))
    for name in runs[0][1]:
        assert_bitwise(runs[0][1][name], runs[1][1][name], name)
    assert runs[0][1]["delays"].isnan().any()


@pytest.mark.parametrize("value", [float("inf"), float("nan")], ids=["inf", "nan"])
@pytest.mark.parametrize("op", OPS)
def test_nonfinite_incoming_gradients_past_the_lengths_pass_nowhere(op, value, monkeypatch):
    """An inf or NaN in the incoming gradients at steps a row does not take
    (its outputs there are constant 0): nothing flows back from it, so the
    events still run: every gradient finite and bitwise that of the same
    incoming gradients with those entries 0, and the dense path's."""
    args, kw = build(op, T=20, B=3, N=40, D=16, seed=15)
    lengths = torch.tensor([20, 0, 9])
    weights = incoming(FUSED[op](*args, **kw))
    hostile = [w.clone() for w in weights]
    hostile[0][15, 2, 3] = value
    hostile[1][0, 1, 0] = value
    hostile[-1][19, 2, 39] = value
    clean = [w.clone() for w in hostile]
    for w in clean:
        w[~w.isfinite()] = 0.0
    got = assert_events_are_dense(op, args, kw, monkeypatch, modes=("gather",),
                                  weights=hostile, lengths=lengths)
    want = run_mode(monkeypatch, "gather", FUSED[op], args, kw, clean, lengths=lengths)
    for name in want[1]:
        assert got[1][name].isfinite().all(), name
    events = run_mode(monkeypatch, "gather", FUSED[op], args, kw, hostile, lengths=lengths)
    for name in want[1]:
        assert_bitwise(events[1][name], want[1][name], name)


@pytest.mark.xfail(strict=True, reason=(
    "library bug (pre-existing, not in the delays' code: also without delays, on the dense "
    "path): the adaptive neuron's alpha gradient is its loop sum minus the 'drive' sum "
    "w_in * (gV.T @ x) + ..., so an infinite incoming gradient gives inf - inf = NaN where "
    "the reference's gV * (V[t-1] - I[t]) is +-inf"))
@pytest.mark.parametrize("delays", [False, True], ids=["no_delays", "delays"])
def test_adlif_gain_with_an_infinite_incoming_gradient_is_the_reference(delays):
    x = torch.tensor([[[1.0, -3.0]], [[0.5, 0.25]]], dtype=F64)  # I[0] = -0.25
    w_in = torch.tensor([[0.5, 0.25]], dtype=F64)
    w_rec = torch.tensor([[0.5]], dtype=F64) if delays else None
    alpha = torch.tensor([0.6], dtype=F64, requires_grad=True)
    v0 = torch.tensor([[0.5]], dtype=F64)
    kw = dict(delays=torch.tensor([1.5], dtype=F64), max_delay=2) if delays else {}
    grads = []
    for fn in (FUSED["recurrent_adlif"], REFERENCE["recurrent_adlif"]):
        s, v, a = fn(x, w_in, w_rec, None, alpha, 0.9, 0.3, 0.4, 1.0, v0, None, None, **kw)
        gv = torch.zeros_like(v)
        gv[0, 0, 0] = float("inf")  # dV[0]/dalpha = V0 - I[0] = 0.75: the gradient is +inf
        grads.append(torch.autograd.grad(v, alpha, gv)[0])
    assert grads[1].item() == float("inf")
    torch.testing.assert_close(grads[0], grads[1], equal_nan=True)


@pytest.mark.parametrize("what", ["w_rec_inf", "w_rec_nan", "x_nan", "w_rec_inf_lengths"])
@pytest.mark.parametrize("op", OPS)
def test_nonfinite_inputs(op, what, monkeypatch):
    """An inf or NaN in w_rec (the events' P is finite, but gP is not) or a
    NaN in x: bitwise the dense path and the reference, NaN where it has NaN."""
    args, kw = build(op, T=22, B=3, N=40, D=16, seed=8)
    w_rec, x = args.w_rec.detach().clone(), args.x.detach().clone()
    if what.startswith("w_rec_inf"):
        w_rec[3, 11] = float("inf")
    elif what == "w_rec_nan":
        w_rec[20, 2] = float("nan")
    else:
        x[6, 1, 2] = float("nan")
    args = args._replace(w_rec=w_rec.requires_grad_(), x=x.requires_grad_())
    if what.endswith("lengths"):
        # (The mask's gradient of a row with padding takes 0 * the NaN of
        # inf * 0 at its untaken steps: a bug of its own, in
        # test_untaken_steps_pass_no_nan_to_the_mask_gradient; not asked here.)
        args, kw = prepare(args, kw, F64, grad=set(args._fields) | {"delays", "delay_sigma"})
        lengths = lengths_for(22, 3)
        assert_events_are_dense(op, args, kw, monkeypatch, lengths=lengths)
        assert_fused_is_reference_row_by_row(op, args, kw, lengths, monkeypatch)
    else:
        assert_events_are_dense(op, args, kw, monkeypatch)
        assert_fused_is_reference(op, args, kw, monkeypatch)


@pytest.mark.parametrize("op", OPS)
def test_a_nonfinite_gP_leaves_the_delay_gradients_the_dense_ones(op, monkeypatch):
    """A non-finite gP (an inf incoming gradient) makes the driver sum E
    after the loop (torch sums, another order than the dense path's loop
    sums): one-to-one, the neurons the inf does not reach keep finite
    delays' and sigma's gradients, the dense path's up to that order
    (float64: 1e-12); the others NaN, where the dense path has NaN."""
    args, kw = build(op, T=26, B=3, N=40, D=16, seed=7, recurrent="one_to_one")
    weights = nonfinite_weights(op, args, kw, 1, (12, 2, 9), float("inf"))
    dense = run_mode(monkeypatch, "dense", FUSED[op], args, kw, weights)[1]
    events = run_mode(monkeypatch, "gather", FUSED[op], args, kw, weights)[1]
    for name in ("delays", "delay_sigma"):
        # Some neurons NaN, most not: the finite ones are what the values compare.
        assert dense[name].isnan().any() and dense[name].isfinite().sum() > 10
        assert torch.equal(events[name].isnan(), dense[name].isnan())
        torch.testing.assert_close(events[name], dense[name], rtol=1e-12, atol=1e-12,
                                   equal_nan=True)



@pytest.mark.parametrize("delays", [False, True], ids=["mask_only", "delays"])
def test_untaken_steps_pass_no_nan_to_the_mask_gradient(delays):
    """A step a row does not take passes nothing back (x's, the states' and
    the history's gradients are 0 there, as the row run alone), rec_mask's
    included, though with an inf in w_rec the untaken steps' rec would be
    inf * 0 = NaN."""
    T, B, N = 5, 2, 3
    x = torch.rand(T, B, N, generator=gen(0), dtype=F64)
    w_rec = torch.rand(N, N, generator=gen(1), dtype=F64) * 0.3
    w_rec[0, 1] = float("inf")
    kw = dict(delays=torch.tensor([1.0, 2.0, 1.5], dtype=F64), max_delay=2) if delays else {}
    mask = torch.ones(B, N, dtype=F64, requires_grad=True)
    x0 = x.detach().clone().requires_grad_()
    s, u = FUSED["recurrent_lif"](x0, None, w_rec, lengths=torch.tensor([T, 0]), rec_mask=mask,
                                  **kw)
    g_x, g_mask = torch.autograd.grad(u, [x0, mask], torch.ones_like(u))
    assert not u[:, 1].any() and not g_x[:, 1].any()  # row 1 takes no step: nothing flows
    assert torch.equal(g_mask[1], torch.zeros(N, dtype=F64))


# ----------------------------------------------------------------------------
# Gradients asked for some arguments only


SUBSETS = {
    "delays": ("delays",),
    "w_rec": ("w_rec",),
    "sigma": ("delay_sigma",),
    "mask": ("rec_mask",),
    "history": ("s0",),
    "no_delay_args": ("x", "w_in", "bias"),
    "delays_and_w_rec": ("delays", "w_rec"),
    "sigma_and_mask": ("delay_sigma", "rec_mask"),
    "first_param": None,  # the model's first parameter (adlif: the gain)
}


@pytest.mark.parametrize("subset", list(SUBSETS))
@pytest.mark.parametrize("op", OPS)
def test_gradients_of_some_arguments_only(op, subset, monkeypatch):
    """Only the delays, only w_rec, only sigma, only the mask, only the
    history, none of the delay arguments, pairs, only a neuron parameter:
    the backward then runs only some of the event sums (E without P, P
    without E): each bitwise the dense path, and the reference; the same
    gradient as with everything asked for (bitwise where the events are
    exact)."""
    names = SUBSETS[subset] or (NEURONS[op].param_names[0],)
    args, kw = build(op, T=26, B=3, N=40, D=16, seed=9, grad=names)
    assert [n for n, _ in named_leaves(args, kw)] == [n for n in list(args._fields) + list(kw)
                                                      if n in names]
    dense = assert_events_are_dense(op, args, kw, monkeypatch)
    assert_fused_is_reference(op, args, kw, monkeypatch)
    every = build(op, T=26, B=3, N=40, D=16, seed=9)
    _, all_grads = run_mode(monkeypatch, "gather", FUSED[op], *every)
    _, some_grads = run_mode(monkeypatch, "gather", FUSED[op], args, kw)
    for name in names:
        if order_only(op, name, "all_to_all"):
            assert_close_order(some_grads[name], all_grads[name], 78, name)
        else:
            assert_bitwise(some_grads[name], all_grads[name], name)
    assert set(dense[1]) == set(names)


# ----------------------------------------------------------------------------
# One-to-one, the low-memory mode, thread counts, chunks


@pytest.mark.parametrize("dtype", [F64, F32], ids=["float64", "float32"])
@pytest.mark.parametrize("op", OPS)
def test_one_to_one(op, dtype, monkeypatch):
    """A one-to-one w_rec [N] with [N] delays (N over one word, D = 20,
    lengths): no product from P's non-zeros, so every gradient, w_rec's and
    the gain's included, is the dense one to the bit; and the reference."""
    args, kw = build(op, T=30, B=3, N=70, D=20, dtype=dtype, seed=10, recurrent="one_to_one",
                     delays="bounds", sigma="mixed")
    for options in ({}, dict(lengths=lengths_for(30, 3))):
        dense = assert_events_are_dense(op, args, kw, monkeypatch, recurrent="one_to_one",
                                        **options)
        assert dense[0][0].sum() > 0
    if dtype == F64:
        assert_fused_is_reference(op, args, kw, monkeypatch, lengths=lengths_for(30, 3))


@pytest.mark.parametrize("low", [torch.bfloat16, torch.float16], ids=["bfloat16", "float16"])
@pytest.mark.parametrize("op", OPS)
def test_half_precision_with_float32_delays(op, low, monkeypatch):
    """x, the weights, the parameters, the states and the history in
    bfloat16/float16 (computed in float32), the delays, sigma and the mask
    in float32, as a module built in half precision keeps them: the events
    are bitwise the dense path by the same rules, with lengths."""
    args, kw = build(op, T=30, B=3, N=70, D=20, dtype=F32, seed=18)
    args, _ = prepare(args, {}, low)
    assert args.s0.dtype == low and kw["delays"].dtype == F32
    dense = assert_events_are_dense(op, args, kw, monkeypatch, lengths=lengths_for(30, 3))
    assert dense[0][0].dtype == low and dense[0][0].sum() > 0


@pytest.mark.parametrize("dtype", [F64, F32], ids=["float64", "float32"])
@pytest.mark.parametrize("op", OPS)
def test_low_memory_mode(op, dtype, monkeypatch):
    """The op's save flag off (the backward replays the forward, with the
    events' ring): with the events, bitwise the run that kept the states;
    against the dense path by the same rules; with lengths."""
    flag = NEURONS[op].save_flag
    args, kw = build(op, T=30, B=3, N=70, D=24, dtype=dtype, seed=11)
    lengths = lengths_for(30, 3)
    kept = run_mode(monkeypatch, "gather", FUSED[op], args, kw, lengths=lengths, **{flag: True})
    replayed = run_mode(monkeypatch, "gather", FUSED[op], args, kw, lengths=lengths,
                        **{flag: False})
    for i, (a, b) in enumerate(zip(kept[0], replayed[0])):
        assert_bitwise(a, b, f"output {i}")
    for name in kept[1]:
        assert_bitwise(kept[1][name], replayed[1][name], name)
    assert_events_are_dense(op, args, kw, monkeypatch, lengths=lengths, **{flag: False})


@pytest.mark.parametrize("op", OPS)
def test_thread_counts_are_bitwise_the_same(op, monkeypatch):
    """B = 40: three blocks of rows in the backward, each with its own ring;
    1 and 2 threads give the same bits, with the events (and lengths)."""
    B = 40
    args, kw = build(op, T=24, B=B, N=70, D=20, seed=12)
    lengths = torch.tensor([24, 0, 13, 1, 24, 7, 24, 24] * 5)
    runs = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        runs.append(run_mode(monkeypatch, "gather", FUSED[op], args, kw, lengths=lengths))
    (a, ga), (b, gb) = runs
    for i, (x, y) in enumerate(zip(a, b)):
        assert_bitwise(x, y, f"output {i}")
    for name in ga:
        assert_bitwise(ga[name], gb[name], name)


@pytest.mark.parametrize("mode", ["gather", "default"])
@pytest.mark.parametrize("op", OPS)
def test_chunks_continued_with_the_history_are_the_whole_run(op, mode, monkeypatch):
    """Chunks shorter and longer than D, each continued with the last D
    spikes as the history and the last states: the whole run, bitwise (x is
    the input current itself: no product whose shape depends on T)."""
    D, T = 20, 50
    args, kw = build(op, T=T, B=3, N=65, D=D, seed=13, w_in=False, grad=())
    if mode == "default":
        monkeypatch.delenv(MODE, raising=False)
    else:
        monkeypatch.setenv(MODE, mode)
    whole = FUSED[op](*args, **kw)
    assert 0 < whole[0].mean() < 0.5
    names = NEURONS[op].initial_names
    pieces, start, state = [], 0, args
    for size in (3, 17, 1, 22, 7):
        out = FUSED[op](*state._replace(x=args.x[start:start + size]), **kw)
        pieces.append(out)
        history = torch.cat([state.s0, out[0]])[-D:]
        state = state._replace(s0=history,
                               **{n: o[-1] for n, o in zip(names[:-1], out[1:])})
        start += size
    assert start == T
    for i, w in enumerate(whole):
        assert_bitwise(torch.cat([p[i] for p in pieces]), w, f"output {i}")


@pytest.mark.parametrize("forward,backward", [("gather", "dense"), ("dense", "gather")])
@pytest.mark.parametrize("op", OPS)
def test_mode_changed_between_forward_and_backward(op, forward, backward, monkeypatch):
    """TORCH_EXT_BINARY_INPUTS is read at each call: a forward with the
    events and a backward without (and the other way round) give the dense
    path's results by the same rules."""
    args, kw = build(op, T=30, B=3, N=70, D=24, seed=16)
    dense = run_mode(monkeypatch, "dense", FUSED[op], args, kw)
    monkeypatch.setenv(MODE, forward)
    out = FUSED[op](*args, **kw)
    monkeypatch.setenv(MODE, backward)
    leaves = named_leaves(args, kw)
    grads = torch.autograd.grad(out, [t for _, t in leaves], incoming(out))
    for i, (a, b) in enumerate(zip(out, dense[0])):
        assert_bitwise(a, b, f"output {i}")
    for (name, _), g in zip(leaves, grads):
        if order_only(op, name, "all_to_all"):
            assert_close_order(g, dense[1][name], 90, name)
        else:
            assert_bitwise(g, dense[1][name], name)


# ----------------------------------------------------------------------------
# E overflowing: finite inputs, finite gP


def overflow_case(op, dtype):
    """Finite inputs where the dense E[k] = sum gP[t] * S[t-k] overflows to
    inf at taps k outside the kernel's support (K = Kx = Ks = 0 there):
    the dense path and the reference then multiply that inf by the kernel's
    zero derivative (NaN); the events, which skip those taps, do not.
    No spike in the run (theta 1e3), the triangle surrogate (exactly 0 off
    the threshold), no reset: the gradients are linear in the incoming one,
    which is 0.25 * the largest float at neuron 0's membrane; w_rec = 1,
    delays 15 with sigma 0 (taps 14, 15, 16), a history of ones except at
    the steps those taps read."""
    T, B, N, D = 4, 1, 3, 20
    args = make_inputs(op, T=T, B=B, F=4, N=N, state=True, seed=3, params="float",
                       requires_grad=False)
    history = torch.ones(D, B, N, dtype=F64)
    history[D - 17:D - 10] = 0  # S[t-k] for t = 1..4, k = 14..16
    # gP = gain * gV @ w_rec: w_rec = 1 / gain (the adaptive neuron's 1 - alpha)
    scale = 1.0 / (1.0 - args.alpha) if op in GAIN else 1.0
    args = args._replace(s0=history, theta=1e3, w_rec=torch.full((N, N), scale, dtype=F64))
    kw = dict(delays=torch.full((N,), 15.0, dtype=F64), max_delay=D,
              delay_sigma=torch.zeros(N, dtype=F64))
    args, kw = prepare(args, kw, dtype, grad=("delays", "delay_sigma", "w_rec", "s0", "x"))
    weights = [torch.zeros(T, B, N, dtype=dtype) for _ in range(1 + len(NEURONS[op].states))]
    weights[1][:, :, 0] = torch.finfo(dtype).max * 0.25
    return args, kw, weights


@pytest.mark.parametrize("dtype", [F64, F32], ids=["float64", "float32"])
@pytest.mark.parametrize("op", OPS)
def test_overflowing_delay_sums_are_the_dense_ones(op, dtype, monkeypatch):
    """The events skip the taps where Kx = Ks = 0; where the dense E at such
    a tap overflows to inf (finite gP), the dense path and the reference
    give NaN (0 * inf): so where a gP could make a sum overflow (larger than
    max / (T * B)) the loop leaves E to the driver, which sums every tap."""
    args, kw, weights = overflow_case(op, dtype)
    opts = dict(surrogate="triangle", reset="none")
    dense = run_mode(monkeypatch, "dense", FUSED[op], args, kw, weights, **opts)
    assert dense[1]["delays"].isnan().all()  # 0 * inf: the case is what it says
    # gP is finite (the history's gradient, sum_k K_k * gP, is): no fallback is due.
    assert dense[1]["s0"].isfinite().all() and dense[1]["x"].isfinite().all()
    if dtype == F64:
        want = run(REFERENCE[op], args, kw, weights, **opts)
        assert want[1]["delays"].isnan().all() and want[1]["delay_sigma"].isnan().all()
    events = run_mode(monkeypatch, "gather", FUSED[op], args, kw, weights, **opts)
    for name in dense[1]:
        assert_bitwise(events[1][name], dense[1][name], name)
