"""Adversarial tests of the recurrent delays (delays=, max_delay=,
delay_sigma=, rec_mask=, and a spike history [D, B, N] as s0) in the fused
ops torch_ext.recurrent_{lif,adlif,cubalif} (C++, CPU; a hand-written
backward) and in their plain-PyTorch references recurrent_*_ref.

The oracles here are independent of either implementation's delay code:
- `naive_rec`: the contract's formula written with Python floats, one tap
  at a time, fed to the *no-delay* reference one step at a time (teacher
  forcing: each step starts from the whole run's own previous state), so
  every step of every model is checked against the formula, spikes included,
  for the fused op and the reference alike;
- torch.autograd.gradcheck in float64 where the run is smooth (a threshold
  that is never reached: the membrane is then linear in the recurrent input
  and the surrogate's gradient is exactly 0), for both;
- at the kernel's kinks: central finite differences, which equal the
  contract's convention (the mean of the one-sided derivatives) exactly for
  the delays, the run being piecewise linear in each delay there;
- exact identities (powers of two scale exactly in binary floating point,
  x + 0 = x) where a bitwise comparison is justified; elsewhere a tolerance
  with its reason next to it;
- the fused op against the reference in float64 (outputs to 1e-12, spikes
  exactly where no membrane is within 1e-9 of the threshold, every gradient,
  the delays', sigma's, the mask's and the history's included, to 1e-10
  relative), and the same exception type and first line of message from both
  for every bad argument;
- the reference as it was before the delays (git), bitwise, for delays=None.
What only the fused op has: the low-memory mode and the thread count
(bitwise), opcheck of its forward and backward ops, non-contiguous inputs
(bitwise), in-place changes after the forward, CUDA's refusal.

Tests that show a bug are kept as strict xfails naming it."""
import math
import os
import subprocess
import types

import pytest
import torch

import torch_ext
from torch_ext._neurons import NEURONS

from neurons import FUSED, OPS, REFERENCE, make_inputs

KINDS = ("axonal", "synaptic", "one_to_one")  # one_to_one: [N] w_rec with [N] delays
F64 = torch.float64
IMPLS = ("reference", "fused")


# ----------------------------------------------------------------------------
# Helpers


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The products here are tiny ([3, D*N] @ [D*N, N]); from D*N = 20 MKL
    runs them on 2 OpenMP threads, which on a 2-core machine shared with a
    build spin for ~15 ms per product. One thread: the same results, 1000x
    faster there. Restored afterwards. (The thread-count test sets 2 itself.)"""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def both(op):
    """(name, function) of the reference and the fused op of `op`."""
    return (("reference", REFERENCE[op]), ("fused", FUSED[op]))


def gen(seed):
    return torch.Generator().manual_seed(seed)


def _initials(op):
    return NEURONS[op].initial_names


def base_args(op, kind, T=7, B=3, N=4, seed=0, w_in=False, requires_grad=False, **kw):
    """make_inputs with the recurrence kind's w_rec and a random initial state.
    Without w_in (the default here) x is the input current itself: no
    product of a shape that depends on T, so chunked runs are bitwise whole."""
    return make_inputs(op, T=T, B=B, F=N, N=N, w_in=w_in, state=True, seed=seed,
                       recurrent="one_to_one" if kind == "one_to_one" else "all_to_all",
                       requires_grad=requires_grad, **kw)


def cast(args, dtype):
    return type(args)(*[a.to(dtype) if isinstance(a, torch.Tensor) else a for a in args])


def random_delays(kind, N, D, seed, low=-1.0, high=None):
    """Delays uniform in [low, high] (default: around [0, D + 1.5], some taps
    outside 1..D), [N] per source or [N, N] per synapse."""
    high = D + 1.5 if high is None else high
    shape = (N, N) if kind == "synaptic" else (N,)
    return torch.rand(shape, generator=gen(seed), dtype=F64) * (high - low) + low


def random_history(D, B, N, seed, p=0.5):
    return (torch.rand(D, B, N, generator=gen(seed)) < p).to(F64)


def kappa_py(x, s):
    """The contract's kernel, Python floats: max(0, s - |x|) / s^2."""
    return max(0.0, s - abs(x)) / (s * s)


def naive_taps(kind, delays, sigma, N, D):
    """K[k-1, i, j] = kappa(delta_ij - k; 1 + sigma_j), one Python float at a time."""
    d = delays.tolist()
    if isinstance(sigma, torch.Tensor):
        sg = sigma.tolist() if sigma.dim() == 1 else [sigma.item()] * N
    else:
        sg = [float(sigma)] * N
    K = torch.zeros(D, N, N, dtype=F64)
    for k in range(1, D + 1):
        for i in range(N):
            for j in range(N):
                delta = d[i][j] if kind == "synaptic" else d[j]
                K[k - 1, i, j] = kappa_py(delta - k, 1.0 + sg[j])
    return K


def full_w(kind, w_rec):
    return torch.diag(w_rec) if kind == "one_to_one" else w_rec


def naive_rec(kind, w_rec, K, mask, past):
    """rec[b, i] = m[b, i] * sum_j w[i, j] sum_k K[k, i, j] S_j[t - k];
    past[k - 1] = S[t - k] ([B, N] each)."""
    W = full_w(kind, w_rec.detach().to(F64))
    rec = torch.einsum("kij,kbj->bi", W.unsqueeze(0) * K, torch.stack(past).to(F64))
    return rec if mask is None else mask.to(F64) * rec


def states_of(op, args):
    """The initial states (besides s0) of args, in the op's order."""
    return [getattr(args, n) for n in _initials(op)[:-1]]


def with_states(op, args, states, s0):
    names = _initials(op)
    return args._replace(**dict(zip(names[:-1], states)), s0=s0)


def theta_of(args):
    return args.theta.detach() if isinstance(args.theta, torch.Tensor) else args.theta


def assert_margin(args, out, margin=1e-9):
    """No membrane within `margin` of the threshold: rounding differences
    far below it cannot flip a spike, so spikes may be compared exactly."""
    m = (out[1].detach().to(F64) - theta_of(args)).abs()
    assert m.numel() == 0 or m.min() > margin, "pick inputs without near-ties"


def linear(args):
    """The same inputs with a threshold never reached: no spike in the run,
    the surrogate's gradient exp(-k * 1e3) is exactly 0, every output is
    linear in the recurrent input (and smooth in everything gradcheck sees)."""
    return args._replace(theta=1e3)


# With the threshold at 1e3, a subtract reset of S[0] puts -1e3 into the
# membrane, and a loss of O(1e4) rounds to ~1e-12, which finite differences
# divide by their eps: the finite-difference tests use no reset instead (the
# reset is not what they test; gradcheck and the step oracle cover it).
NO_RESET = dict(reset="none")


def loss_of(out, seed=11, spikes=False):
    """A random linear function of the states (and of the spikes: their
    surrogate gradient, where `spikes`)."""
    g = gen(seed)
    return sum((torch.randn(o.shape, generator=g, dtype=F64).to(o.dtype) * o).sum()
               for o in (out if spikes else out[1:]))


def grads_of(loss, leaves):
    """Gradients of `loss` by `leaves`, zeros where none reaches one (the
    reference's T = 0 outputs have no graph at all)."""
    if not loss.requires_grad:
        return [torch.zeros_like(t) for t in leaves]
    grads = torch.autograd.grad(loss, leaves, allow_unused=True)
    return [torch.zeros_like(t) if g is None else g for t, g in zip(leaves, grads)]


def assert_rel(got, want, rel, msg):
    """|got - want| <= rel * (|want| + max |want|): relative to the gradient's scale."""
    assert got.shape == want.shape and got.dtype == want.dtype, msg
    scale = want.abs().max().item() if want.numel() else 0.0
    torch.testing.assert_close(got, want, rtol=rel, atol=rel * max(scale, 1e-300),
                               msg=lambda m: f"{msg}: {m}")


def leaves_of(args, kw):
    """(names, tensors) of every tensor argument that requires grad."""
    named = list(args._asdict().items()) + list(kw.items())
    named = [(n, t) for n, t in named if isinstance(t, torch.Tensor) and t.requires_grad]
    return [n for n, _ in named], [t for _, t in named]


def assert_runs_bitwise_equal(runs, context=()):
    """Each of `runs` (callables returning (the op's outputs, (names,
    leaves))): the same outputs and gradients of loss_of(out, spikes=True)
    by its leaves, bit for bit. Returns the first run's outputs."""
    results = []
    for run in runs:
        out, (names, leaves) = run()
        results.append((out, grads_of(loss_of(out, spikes=True), leaves)))
    (a, ga), (b, gb) = results
    for x, y in zip(a, b):
        assert torch.equal(x, y), context
    for name, x, y in zip(names, ga, gb):
        assert torch.equal(x, y), (*context, name)
    return a


def assert_fused_is_reference(op, args, kw, margin=1e-9, spikes_in_loss=True):
    """float64: the fused op's spikes equal the reference's (no membrane
    within `margin` of the threshold), its states to 1e-12, the gradient of
    a random loss by every tensor argument that requires grad to 1e-10
    relative. Returns the reference's outputs."""
    names, leaves = leaves_of(args, kw)
    results = {}
    for which, fn in both(op):
        out = fn(*args, **kw)
        results[which] = (out, grads_of(loss_of(out, spikes=spikes_in_loss), leaves))
    (ref, g_ref), (fused, g_fused) = results["reference"], results["fused"]
    assert_margin(args, ref, margin)
    assert fused[0].dtype == ref[0].dtype and torch.equal(fused[0], ref[0]), "spikes"
    for state, a, b in zip(NEURONS[op].states, fused[1:], ref[1:]):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=state.output)
    for name, a, b in zip(names, g_fused, g_ref):
        assert_rel(a, b, 1e-10, f"gradient of {name}")
    return ref


def first_line(error):
    return str(error).splitlines()[0] if str(error) else ""


def check_steps(op, kind, args, history, K, mask, whole, label):
    """Every step t of `whole` (a run from the history [D, B, N]) is the
    no-delay reference's step from the run's own state at t - 1 with the
    formula's recurrent input (taps K) added to x[t]."""
    D, T = history.shape[0], args.x.shape[0]
    spikes = list(history.unbind(0)) + list(whole[0].unbind(0))  # S[1-D], ..., S[T]
    no_rec = args._replace(w_rec=None)
    rec_seen = 0.0
    for t in range(T):
        past = [spikes[D + t - k] for k in range(1, D + 1)]  # S[t+1-k], output t = time t+1
        rec = naive_rec(kind, args.w_rec, K, mask, past)
        rec_seen += rec.abs().sum()
        prev = states_of(op, args) if t == 0 else [o[t - 1] for o in whole[1:]]
        step = with_states(op, no_rec._replace(x=args.x[t:t + 1] + rec), prev, spikes[D - 1 + t])
        one = REFERENCE[op](*step)
        assert torch.equal(one[0][0], whole[0][t]), f"{label}: spikes of step {t}"
        for a, b in zip(one[1:], whole[1:]):
            # (x + rec) + bias against (x + bias) + rec: a few ulps of O(1) values
            torch.testing.assert_close(a[0], b[t], rtol=1e-12, atol=1e-12,
                                       msg=lambda m: f"{label}, step {t}: {m}")
    return rec_seen


# ----------------------------------------------------------------------------
# Values: every step of every model against the formula


@pytest.mark.parametrize("D", [1, 5, 12])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("op", OPS)
def test_each_step_is_the_formula_fed_to_the_reference_without_delays(op, kind, D):
    """D = 12 > T = 7: taps read back into the given history only; delays in
    [-1, D + 1.5]: some taps negative or beyond D (dropped); per-neuron sigma
    up to 1.6 (taps spread over up to 5 steps); a random mask with zeros."""
    T, B, N = 7, 3, 4
    args = base_args(op, kind, T=T, B=B, N=N, seed=D)
    history = random_history(D, B, N, seed=D + 1)
    delays = random_delays(kind, N, D, seed=D + 2)
    sigma = torch.rand(N, generator=gen(D + 3), dtype=F64) * 1.6
    mask = torch.rand(B, N, generator=gen(D + 4), dtype=F64) * 2
    mask[0, 1] = 0.0
    kw = dict(delays=delays, max_delay=D, delay_sigma=sigma, rec_mask=mask)
    K = naive_taps(kind, delays, sigma, N, D)
    for which, fn in both(op):
        whole = fn(*args._replace(s0=history), **kw)
        assert_margin(args, whole)
        assert 0 < whole[0].mean() < 1
        assert check_steps(op, kind, args, history, K, mask, whole, which) > 0
    # Neither call changed any of its arguments.
    assert torch.equal(history, random_history(D, B, N, seed=D + 1))
    assert torch.equal(delays, random_delays(kind, N, D, seed=D + 2))
    assert torch.equal(mask[1:], (torch.rand(B, N, generator=gen(D + 4), dtype=F64) * 2)[1:])


@pytest.mark.parametrize("op", OPS)
def test_negative_delays_with_a_wide_kernel_and_taps_deep_in_the_history(op):
    """Negative delays with a wide kernel still reach taps k >= 1 (delta =
    -0.5, s = 3: k = 1, 2); delays of exactly 0 and D + 1 with sigma 0 have
    value 0 (a = 0 at the edge); D = 40 > T = 3."""
    T, B, N, D = 3, 2, 4, 40
    args = base_args(op, "synaptic", T=T, B=B, N=N, seed=5)
    history = random_history(D, B, N, seed=6)
    delays = torch.tensor([-0.5, 0.0, 41.0, 38.5], dtype=F64)
    sigma = torch.tensor([2.0, 0.0, 0.0, 1.25], dtype=F64)
    K = naive_taps("axonal", delays, sigma, N, D)
    assert K[:, :, 0].sum() > 0 and K[:, :, 1].sum() == 0 and K[:, :, 2].sum() == 0
    assert K[0, 0, 0] == 1.5 / 9 and K[1, 0, 0] == 0.5 / 9 and K[2, 0, 0] == 0
    for which, fn in both(op):
        whole = fn(*args._replace(s0=history), delays=delays, max_delay=D, delay_sigma=sigma)
        assert_margin(args, whole)
        check_steps(op, "axonal", args, history, K, None, whole, which)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("op", OPS)
def test_delays_reaching_no_tap_are_no_recurrence_bitwise(op, kind):
    """sigma = 0 and every delta <= 0 or >= D + 1 (both edges included):
    every tap is exactly 0, rec = 0, and u + 0 = u: the run is bitwise the
    run without w_rec, for any history, in both implementations."""
    N, D = 4, 3
    args = base_args(op, kind, T=8, N=N, seed=1)
    per = torch.tensor([0.0, -2.5, 4.0, 1e6], dtype=F64)
    delays = per.expand(N, N).clone() if kind == "synaptic" else per
    history = random_history(D, 3, N, seed=2)
    want = REFERENCE[op](*args._replace(w_rec=None, s0=history[-1]))
    assert want[0].sum() > 0
    for which, fn in both(op):
        got = fn(*args._replace(s0=history), delays=delays, max_delay=D)
        for a, b in zip(got, want):
            assert torch.equal(a, b), which


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("op", OPS)
def test_power_of_two_taps_are_a_scaled_w_rec_bitwise(op, kind):
    """D = 1, delta = 0.5 (or 1.5), sigma = 0: the one tap is exactly 1/2,
    so rec = (S/2) @ w.T = S @ (w/2).T bit for bit (halving is exact); a
    mask of 1/2 on neuron 1 is that row of w_rec halved, with or without
    delays. Each implementation against itself without delays."""
    N = 4
    args = base_args(op, kind, T=9, N=N, seed=3)
    mask = torch.ones(3, N, dtype=F64)
    mask[:, 1] = 0.5
    half_row = args.w_rec.clone()
    half_row[1] = half_row[1] / 2
    one = torch.ones(N, N, dtype=F64) if kind == "synaptic" else torch.ones(N, dtype=F64)
    for which, fn in both(op):
        for value in (0.5, 1.5):
            per = torch.full((N,), value, dtype=F64)
            delays = per.expand(N, N).clone() if kind == "synaptic" else per
            got = fn(*args, delays=delays, max_delay=1)
            want = fn(*args._replace(w_rec=args.w_rec / 2))
            assert want[0].sum() > 0
            for a, b in zip(got, want):
                assert torch.equal(a, b), (which, value)
        want = fn(*args._replace(w_rec=half_row))
        for kw in ({}, dict(delays=one, max_delay=1)):
            got = fn(*args, rec_mask=mask, **kw)
            for a, b in zip(got, want):
                assert torch.equal(a, b), (which, kw)
        # D = 6: the same nonzero terms plus exact zeros, but a per-synapse product
        # over D * N terms may sum them in another order than over N: to rounding.
        got = fn(*args, rec_mask=mask, delays=one, max_delay=6)
        assert torch.equal(got[0], want[0]), which
        for a, b in zip(got[1:], want[1:]):
            torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("op", OPS)
def test_a_two_dim_s0_is_a_history_of_zeros_before_it(op):
    N, D = 4, 5
    args = base_args(op, "synaptic", T=6, N=N, seed=4)
    delays = random_delays("synaptic", N, D, seed=5)
    kw = dict(delays=delays, max_delay=D, delay_sigma=0.3)
    padded = torch.cat([torch.zeros(D - 1, 3, N, dtype=F64), args.s0.unsqueeze(0)])
    for which, fn in both(op):
        for a, b in zip(fn(*args, **kw), fn(*args._replace(s0=padded), **kw)):
            assert torch.equal(a, b), which
        none = args._replace(s0=None)
        zeros = args._replace(s0=torch.zeros(D, 3, N, dtype=F64))
        for a, b in zip(fn(*none, **kw), fn(*zeros, **kw)):
            assert torch.equal(a, b), which


@pytest.mark.parametrize("op", ("recurrent_lif", "recurrent_cubalif"))
def test_the_reset_sees_the_last_history_step(op):
    """R[0] = S[0] = history[-1]: with w_rec's taps all dropped, the
    subtract reset alone tells history[-1] from the older steps."""
    args = base_args(op, "axonal", T=3, N=4, seed=8)
    kw = dict(delays=torch.full((4,), 50.0, dtype=F64), max_delay=2)
    ones_last = torch.zeros(2, 3, 4, dtype=F64)
    ones_last[1] = 1
    ones_first = torch.zeros(2, 3, 4, dtype=F64)
    ones_first[0] = 1
    for which, fn in both(op):
        a = fn(*args._replace(s0=ones_last), **kw)
        b = fn(*args._replace(s0=ones_first), **kw)
        # the membrane (LIF) or the current (CUBA) at step 1 without a reset
        without = fn(*args._replace(s0=torch.zeros(3, 4, dtype=F64), w_rec=None))
        assert torch.equal(b[1][0], without[1][0]), which
        torch.testing.assert_close(a[1][0], without[1][0] - args.theta, rtol=1e-14, atol=1e-14)


# ----------------------------------------------------------------------------
# The fused op against the reference


def fused_case(op, kind, D, variant, T=7, B=3, N=4, seed=0):
    """Inputs with every delay argument requiring grad. variant: which
    form each argument takes (sigma a float, 0-dim or [N]; s0 a history or
    [B, N]; lengths; w_in; each reset and detach_reset)."""
    args = base_args(op, kind, T=T, B=B, N=N, seed=seed + D, requires_grad=True,
                     w_in=variant.get("w_in", False))
    kw = dict(delays=random_delays(kind, N, D, seed=seed + D + 1).requires_grad_(), max_delay=D)
    sigma = variant.get("sigma", "per_neuron")
    if sigma == "per_neuron":
        kw["delay_sigma"] = (torch.rand(N, generator=gen(seed + 2), dtype=F64) * 1.6
                             ).requires_grad_()
    elif sigma == "scalar":
        kw["delay_sigma"] = torch.tensor(0.45, dtype=F64, requires_grad=True)
    elif sigma == "float":
        kw["delay_sigma"] = 0.3
    if variant.get("mask", True):
        kw["rec_mask"] = (torch.rand(B, N, generator=gen(seed + 3), dtype=F64) * 2
                          ).requires_grad_()
    history = random_history(D, B, N, seed=seed + 4)
    s0 = history if variant.get("history", True) else history[-1]
    args = args._replace(s0=s0.requires_grad_())
    for name in ("lengths", "reset", "detach_reset", "surrogate"):
        if name in variant:
            kw[name] = variant[name]
    return args, kw


VARIANTS = {
    "default": {},
    "lengths": dict(lengths=torch.tensor([7, 2, 0])),
    "s0 [B, N], float sigma": dict(history=False, sigma="float"),
    "0-dim sigma, no mask, w_in": dict(sigma="scalar", mask=False, w_in=True),
    "no sigma": dict(sigma=None),
    "zero reset, detached": dict(reset="zero", detach_reset=True, surrogate="fast_sigmoid"),
    "subtract, not detached": dict(reset="subtract", detach_reset=False, surrogate="atan"),
    "no reset, lengths": dict(reset="none", lengths=torch.tensor([3, 7, 5]),
                              surrogate="triangle"),
}


@pytest.mark.parametrize("D,variant", [(4, v) for v in VARIANTS] + [
    (D, v) for D in (1, 12) for v in ("default", "lengths")])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("op", OPS)
def test_fused_is_the_reference(op, kind, D, variant):
    """Every model and kind; D < T with each form of each argument, D = 1
    and D > T (taps reading only the history): outputs and every gradient
    (x, the weights, the parameters, the initial states, the history,
    delays, sigma, the mask) against the reference."""
    args, kw = fused_case(op, kind, D, VARIANTS[variant])
    ref = assert_fused_is_reference(op, args, kw)
    assert 0 < ref[0].mean() < 1


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("op", OPS)
def test_fused_is_the_reference_with_a_real_valued_history_and_strided_inputs(op, kind):
    """A history of any real values (not spikes: the fused op's spike gather
    must multiply, not just add), x and w_rec not contiguous, per-source
    delays expanded to [N, N] (stride 0) for the per-synapse kind, whose
    gradient autograd sums back into the [N] leaf."""
    N, D = 4, 3
    args = base_args(op, kind, T=7, N=N, seed=97, requires_grad=True)
    w = args.w_rec.detach()
    w = w.t().contiguous().t() if w.dim() == 2 else torch.stack([w, w], 1)[:, 0]
    x = args.x.detach().transpose(0, 1).contiguous().transpose(0, 1)
    history = torch.randn(D, 3, N, generator=gen(98), dtype=F64)
    args = args._replace(x=x.requires_grad_(), w_rec=w.requires_grad_(),
                         s0=history.requires_grad_())
    assert not (args.x.is_contiguous() or args.w_rec.is_contiguous())
    per = random_delays("axonal", N, D, seed=99).requires_grad_()
    kw = dict(delays=per.expand(N, N) if kind == "synaptic" else per, max_delay=D,
              delay_sigma=0.4,
              rec_mask=(torch.rand(3, N, generator=gen(100), dtype=F64) + 0.5).requires_grad_())
    assert_fused_is_reference(op, args, kw)
    results = [grads_of(loss_of(fn(*args, **kw), spikes=True), [per]) for _, fn in both(op)]
    assert_rel(results[1][0], results[0][0], 1e-10, "the [N] leaf of expanded delays")


@pytest.mark.parametrize("recurrent", ("all_to_all", "one_to_one"))
@pytest.mark.parametrize("op", OPS)
def test_fused_is_the_reference_with_a_mask_only(op, recurrent):
    """rec_mask without delays (D = 1, K = 1 in the fused op): s0 [B, N]."""
    args = make_inputs(op, T=8, B=3, F=5, N=4, recurrent=recurrent, state=True, seed=67)
    mask = (torch.rand(3, 4, generator=gen(68), dtype=F64) * 2).requires_grad_()
    for lengths in (None, torch.tensor([8, 0, 3])):
        assert_fused_is_reference(op, args, dict(rec_mask=mask, lengths=lengths))


# ----------------------------------------------------------------------------
# Chunks, lengths, empty and tiny shapes


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("op", OPS)
def test_chunks_of_any_length_continue_bitwise(op, kind):
    """Chunks of 1, 0, 2, 5, 3 steps with D = 4 (chunks shorter than D, an
    empty one), per-neuron sigma, a mask: s0 = cat([s0, spikes])[-D:] and the
    other states' last values give the whole run bit for bit (x is the
    current itself: every step runs the same operations on the same shapes)."""
    N, D, T = 4, 4, 11
    args = base_args(op, kind, T=T, N=N, seed=9)
    kw = dict(delays=random_delays(kind, N, D, seed=10, low=0.5), max_delay=D,
              delay_sigma=torch.rand(N, generator=gen(11), dtype=F64),
              rec_mask=torch.rand(3, N, generator=gen(12), dtype=F64) + 0.5)
    history = random_history(D, 3, N, seed=13)
    for which, fn in both(op):
        whole = fn(*args._replace(s0=history), **kw)
        assert 0 < whole[0].mean() < 1
        pieces, start, s0, states = [], 0, history, states_of(op, args)
        for n in (1, 0, 2, 5, 3):
            part = fn(*with_states(op, args._replace(x=args.x[start:start + n]), states, s0),
                      **kw)
            pieces.append(part)
            s0 = torch.cat([s0, part[0]])[-D:]
            if n:
                states = [o[-1] for o in part[1:]]
            start += n
        assert start == T
        for i, w in enumerate(whole):
            assert torch.equal(w, torch.cat([p[i] for p in pieces])), (which, i)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("op", OPS)
def test_lengths_with_a_history_each_row_alone(op, kind):
    N, D, T = 4, 3, 8
    args = base_args(op, kind, T=T, N=N, seed=14, requires_grad=True)
    history = random_history(D, 3, N, seed=15).requires_grad_()
    delays = random_delays(kind, N, D, seed=16).requires_grad_()
    kw = dict(delays=delays, max_delay=D, delay_sigma=0.4)
    lengths = torch.tensor([8, 2, 0])
    for which, fn in both(op):
        got = fn(*args._replace(s0=history), lengths=lengths, **kw)
        for b, n in enumerate(lengths.tolist()):
            row = with_states(op, args._replace(x=args.x[:n, b:b + 1]),
                              [s[b:b + 1] for s in states_of(op, args)], history[:, b:b + 1])
            alone = fn(*row, **kw)
            for g, a in zip(got, alone):
                # one row's products may sum in another order than the batch's
                torch.testing.assert_close(g[:n, b:b + 1], a, rtol=1e-12, atol=1e-12)
                assert torch.equal(g[n:, b], torch.zeros_like(g[n:, b])), which
        (g_hist,) = torch.autograd.grad(loss_of(got), [history])
        assert torch.equal(g_hist[:, 2], torch.zeros_like(g_hist[:, 2])), which  # length 0
        assert g_hist[:, 0].abs().sum() > 0 and g_hist[:, 1].abs().sum() > 0, which


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("op", OPS)
def test_fused_length_zero_row_with_a_nan_history_passes_nothing_back(op, kind):
    """A row of length 0 takes no step: its history (NaN here) reaches no
    output and no gradient; every gradient equals the run with that row's
    history clean. (The reference, plain autograd, gives NaN there: 0 * NaN
    in its products, as without delays: see test_cuba_adversarial.py.)"""
    N, D = 4, 3
    args = base_args(op, kind, T=6, N=N, seed=69, requires_grad=True)
    kw = dict(delays=random_delays(kind, N, D, seed=70).requires_grad_(), max_delay=D,
              delay_sigma=(torch.rand(N, generator=gen(71), dtype=F64)).requires_grad_(),
              rec_mask=(torch.rand(3, N, generator=gen(72), dtype=F64) + 0.5).requires_grad_(),
              lengths=torch.tensor([6, 2, 0]))
    def run(value):
        history = random_history(D, 3, N, seed=73)
        history[:, 2] = value
        a = args._replace(s0=history.requires_grad_())
        return FUSED[op](*a, **kw), leaves_of(a, kw)

    assert_runs_bitwise_equal([lambda: run(0.0), lambda: run(math.nan)])


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("op", OPS)
def test_empty_time_and_batch_and_one_neuron(op, kind):
    D = 3
    for which, fn in both(op):
        # T = 0: empty outputs of the right shapes and dtypes; the history is
        # untouched; every gradient (fused: a backward of empty outputs) is zero.
        args = base_args(op, kind, T=0, N=4, seed=17, requires_grad=True)
        history = random_history(D, 3, 4, seed=18).requires_grad_()
        delays = random_delays(kind, 4, D, 19).requires_grad_()
        out = fn(*args._replace(s0=history), delays=delays, max_delay=D)
        assert all(o.shape == (0, 3, 4) and o.dtype == F64 for o in out), which
        assert torch.equal(torch.cat([history, out[0]])[-D:], history)
        grads = grads_of(sum(o.sum() for o in out), [delays, history, args.w_rec])
        assert all(torch.equal(g, torch.zeros_like(g)) for g in grads), which
        # B = 0: empty batch, forward and backward.
        args = base_args(op, kind, T=5, B=0, N=4, seed=20, requires_grad=True)
        delays = random_delays(kind, 4, D, 21).requires_grad_()
        sigma = torch.zeros(4, dtype=F64, requires_grad=True)
        hist0 = torch.zeros(D, 0, 4, dtype=F64, requires_grad=True)
        mask = torch.ones(0, 4, dtype=F64, requires_grad=True)
        out = fn(*args._replace(s0=hist0), delays=delays, max_delay=D, delay_sigma=sigma,
                 rec_mask=mask, lengths=torch.zeros(0, dtype=torch.long))
        assert all(o.shape == (5, 0, 4) for o in out), which
        grads = grads_of(sum(o.sum() for o in out[1:]), [delays, sigma, hist0, mask, args.w_rec])
        assert all(torch.equal(g, torch.zeros_like(g)) for g in grads), which
        # N = 1: [1] delays (per source) and [1, 1] (per synapse) are the same layer.
        args = base_args(op, "axonal", T=6, B=2, N=1, seed=22)
        per = torch.tensor([1.6], dtype=F64)
        hist1 = random_history(D, 2, 1, seed=23)
        a = fn(*args._replace(s0=hist1), delays=per, max_delay=D, delay_sigma=0.2)
        b = fn(*args._replace(s0=hist1), delays=per.view(1, 1), max_delay=D,
               delay_sigma=torch.tensor([0.2], dtype=F64))
        assert 0 < a[0].mean() < 1
        for x, y in zip(a, b):
            torch.testing.assert_close(x, y, rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("op", OPS)
def test_one_neuron_fused_is_the_reference(op, kind):
    """N = 1 with a history longer than the run (D = 9 > T = 5), every gradient."""
    args = base_args(op, kind, T=5, B=2, N=1, seed=74, requires_grad=True)
    args = args._replace(s0=random_history(9, 2, 1, seed=75).requires_grad_())
    kw = dict(delays=(torch.tensor([[3.3]] if kind == "synaptic" else [3.3], dtype=F64)
                      ).requires_grad_(), max_delay=9,
              delay_sigma=torch.tensor([1.7], dtype=F64, requires_grad=True),
              rec_mask=torch.tensor([[0.5], [1.5]], dtype=F64, requires_grad=True))
    assert_fused_is_reference(op, args, kw)


def zero_neuron_case(op, delay_shape):
    """N = 0 (F = 3): x [4, 2, 3], w_in [0, 3], w_rec [0, 0], delays of delay_shape."""
    args = make_inputs(op, T=4, B=2, F=3, N=1, state=True, seed=76)
    empty = {name: value.detach()[..., :0].requires_grad_()
             for name, value in args._asdict().items()
             if isinstance(value, torch.Tensor) and value.dim() and value.shape[-1] == 1}
    empty.update(w_in=torch.zeros(0, 3, dtype=F64, requires_grad=True),
                 w_rec=torch.zeros(0, 0, dtype=F64, requires_grad=True),
                 s0=torch.zeros(3, 2, 0, dtype=F64, requires_grad=True))
    args = args._replace(**empty)
    kw = dict(delays=torch.zeros(delay_shape, dtype=F64, requires_grad=True), max_delay=3,
              delay_sigma=torch.zeros(0, dtype=F64, requires_grad=True),
              rec_mask=torch.ones(2, 0, dtype=F64, requires_grad=True))
    return args, kw


def assert_zero_neurons(fn, op, delay_shape):
    args, kw = zero_neuron_case(op, delay_shape)
    out = fn(*args, **kw)
    assert all(o.shape == (4, 2, 0) for o in out)
    names, leaves = leaves_of(args, kw)
    for name, t, g in zip(names, leaves, grads_of(loss_of(out, spikes=True), leaves)):
        assert g.shape == t.shape and torch.equal(g, torch.zeros_like(t)), name


@pytest.mark.parametrize("delay_shape", [(0,), (0, 0)], ids=["per_source", "per_synapse"])
@pytest.mark.parametrize("op", OPS)
def test_zero_neurons_fused(op, delay_shape):
    assert_zero_neurons(FUSED[op], op, delay_shape)


@pytest.mark.parametrize("delay_shape", [
    (0,), (0, 0)],
    ids=["per_source", "per_synapse"])
@pytest.mark.parametrize("op", OPS)
def test_zero_neurons_reference(op, delay_shape):
    assert_zero_neurons(REFERENCE[op], op, delay_shape)


# ----------------------------------------------------------------------------
# Gradients


def smooth_delays(kind, N, D, sigma, seed):
    """Delays at least 1e-3 from every kink (delta = k, k +- s_j) so that
    gradcheck's perturbations (eps 1e-6) stay on one linear piece."""
    for attempt in range(100):
        d = random_delays(kind, N, D, seed + 1000 * attempt)
        s = 1 + sigma  # 0-dim or [N] per source j: the last dimension of x
        k = torch.arange(1, D + 1, dtype=F64).view(-1, *([1] * d.dim()))
        x = d.unsqueeze(0) - k
        dist = torch.minimum(x.abs(), (x.abs() - s).abs())
        if dist.min() > 1e-3:
            return d
    raise AssertionError("no smooth delays found")


@pytest.mark.parametrize("kind,history_kind", [
    ("axonal", "history"), ("synaptic", "history"), ("one_to_one", "history"),
    ("synaptic", "s0")])
@pytest.mark.parametrize("op", OPS)
def test_gradcheck_every_tensor_argument(op, kind, history_kind):
    """x, w_rec, bias, the initial states, the history (or a [B, N] s0),
    delays, per-neuron sigma and rec_mask, in float64 away from the kinks,
    for both implementations. The history reaches the output through the
    taps and, for history[-1], through the reset (LIF/CUBA: subtract, not
    detached)."""
    T, B, N, D = 4, 2, 3, 3
    args = linear(base_args(op, kind, T=T, B=B, N=N, seed=24))
    sigma = torch.tensor([0.05, 0.35, 0.8], dtype=F64)  # > eps: a perturbed sigma stays >= 0
    delays = smooth_delays(kind, N, D, sigma, seed=25)
    history = random_history(D, B, N, seed=26) if history_kind == "history" else args.s0
    mask = torch.rand(B, N, generator=gen(27), dtype=F64) + 0.5
    state = states_of(op, args)
    names = ["x", "w_rec", "bias"]
    inputs = [getattr(args, n).detach().clone().requires_grad_() for n in names]
    inputs += [s.detach().clone().requires_grad_() for s in state]
    inputs += [t.detach().clone().requires_grad_() for t in (history, delays, sigma, mask)]
    n_state = len(state)

    for which, fn in both(op):
        def run(*ts):
            x, w_rec, bias = ts[:3]
            st = ts[3:3 + n_state]
            hist, d, sg, m = ts[3 + n_state:]
            a = with_states(op, args._replace(x=x, w_rec=w_rec, bias=bias), list(st), hist)
            return fn(*a, delays=d, max_delay=D, delay_sigma=sg, rec_mask=m,
                      detach_reset=False)[1:]  # (a detached reset is not d/ds0)

        out = run(*inputs)
        assert (out[0] - 1e3).abs().min() > 100, which  # far below the threshold
        assert torch.autograd.gradcheck(run, inputs, eps=1e-6, atol=1e-7, rtol=1e-6), which


@pytest.mark.parametrize("recurrent", ("all_to_all", "one_to_one"))
@pytest.mark.parametrize("op", OPS)
def test_gradcheck_rec_mask_without_delays(op, recurrent):
    """rec_mask also without delays: rec = m * (S[t-1] @ w_rec.T), its
    gradient and s0's (through the mask and the reset) by gradcheck."""
    args = linear(make_inputs(op, T=4, B=2, F=3, N=3, w_in=False, recurrent=recurrent,
                              state=True, requires_grad=False, seed=65))
    inputs = [t.detach().clone().requires_grad_() for t in
              (args.w_rec, args.s0, torch.rand(2, 3, generator=gen(66), dtype=F64) + 0.5)]
    for which, fn in both(op):
        def run(w_rec, s0, mask):
            return fn(*args._replace(w_rec=w_rec, s0=s0), rec_mask=mask, detach_reset=False)[1:]

        assert torch.autograd.gradcheck(run, inputs, eps=1e-6, atol=1e-7, rtol=1e-6), which


KINKS = {
    # per source delays, sigma: every tap on a kink (delta = k or |delta - k| = s),
    # the edges 0 and D + 1 (value 0, derivative not), and mixtures.
    "integers, sigma 0": ([1.0, 2.0, 3.0, 4.0], 0.0),
    "edges 0 and D + 1, sigma 0": ([0.0, 5.0, 2.0, 1.0], 0.0),
    "at |delta - k| = s": ([1.5, 2.5, 3.5, 4.5], 0.5),
    "integers, sigma 1": ([1.0, 2.0, 3.0, 4.0], 1.0),
    "negative and beyond D at |delta - k| = s": ([-0.25, 0.5, 3.0, 5.25], 0.25),
}


@pytest.mark.parametrize("case", KINKS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("op", OPS)
def test_delay_gradients_at_kinks_are_central_differences(op, kind, case):
    """Linear regime: the outputs are linear in each tap and each tap
    piecewise linear in delta with kinks >= 1/4 apart here, so the central
    difference with eps = 2^-10 (delta +- eps exact) is exactly the mean of
    the one-sided derivatives, which is the contract's convention
    (kappa_x = -sign(x) h(a) / s^2, h(0) = 1/2). Rounding: losses are O(10),
    1e-15 / 2^-9 ~ 1e-12, so atol 1e-9 is loose yet far below the O(0.1)
    a wrong h(0) would cost. The finite differences are the reference's;
    the fused op's gradient must equal them as well."""
    N, D = 4, 4
    args = linear(base_args(op, kind, T=6, N=N, seed=28))
    per, sig = KINKS[case]
    per = torch.tensor(per, dtype=F64)
    delays = (per.expand(N, N) + torch.tensor([0.0, 1.0, -1.0, 0.0], dtype=F64).view(N, 1)
              if kind == "synaptic" else per.clone())
    history = random_history(D, 3, N, seed=29, p=0.6)
    mask = torch.rand(3, N, generator=gen(30), dtype=F64) + 0.5

    def loss(d, fn=REFERENCE[op]):
        out = fn(*args._replace(s0=history), delays=d, max_delay=D,
                 delay_sigma=sig, rec_mask=mask, **NO_RESET)
        return loss_of(out)

    eps = 2.0 ** -10
    fd = torch.zeros_like(delays)
    for idx in range(delays.numel()):
        e = torch.zeros(delays.numel(), dtype=F64)
        e[idx] = eps
        e = e.view_as(delays)
        fd.view(-1)[idx] = (loss(delays + e) - loss(delays - e)) / (2 * eps)
    assert fd.abs().max() > 1e-2
    for which, fn in both(op):
        d = delays.clone().requires_grad_()
        (grad,) = torch.autograd.grad(loss(d, fn), [d])
        torch.testing.assert_close(grad, fd, rtol=0, atol=1e-9, msg=lambda m: f"{which}: {m}")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("op", OPS)
def test_sigma_gradient_at_the_kernel_edge_is_the_mean_of_both_sides(op, kind):
    """Every tap at |delta - k| = s (a = 0): kappa_s = h(0) / s^2 = 1 / (2 s^2),
    the mean of 0 (a < 0) and 1 / s^2 (a > 0). The central difference over
    eps sees 1 / (2 (s + eps)^2) per edge tap: it is off by ~eps / s^3 per
    tap, times sum |w m S| = O(10): eps = 1e-7 gives ~1e-6, rounding
    1e-15 / 1e-7 = 1e-8; atol 2e-5, while h(0) = 0 or 1 (a one-sided
    derivative) would be off by more than 1e-2 (checked below)."""
    N, D = 4, 5
    args = linear(base_args(op, kind, T=6, N=N, seed=31))
    s = 1.5
    per = torch.tensor([1.5, 2.5, 3.5, 0.5], dtype=F64)  # |delta - k| = 1.5 = s for some k
    delays = per.expand(N, N).clone() if kind == "synaptic" else per
    history = random_history(D, 3, N, seed=32, p=0.7)

    def loss(sg, fn=REFERENCE[op]):
        return loss_of(fn(*args._replace(s0=history), delays=delays, max_delay=D,
                          delay_sigma=sg, **NO_RESET))

    sg0 = torch.full((N,), s - 1, dtype=F64)
    eps = 1e-7
    fd = torch.stack([(loss(sg0 + eps * e) - loss(sg0 - eps * e)) / (2 * eps)
                      for e in torch.eye(N, dtype=F64)])
    for which, fn in both(op):
        sg = sg0.clone().requires_grad_()
        (grad,) = torch.autograd.grad(loss(sg, fn), [sg])
        torch.testing.assert_close(grad, fd, rtol=0, atol=2e-5, msg=lambda m: f"{which}: {m}")
    # The one-sided derivatives differ by far more than the tolerance.
    right = torch.stack([(loss(sg0 + eps * e) - loss(sg0)) / eps
                         for e in torch.eye(N, dtype=F64)])
    assert (right - fd).abs().max() > 1e-2


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("op", OPS)
def test_requires_grad_on_some_arguments_only(op, kind):
    """Each tensor argument alone requiring grad (the fused op's backward is
    then asked for that one gradient only: needs_grad) gets the same
    gradient, bit for bit, as when all do; none at all: no graph."""
    N, D, B = 4, 3, 3
    args = base_args(op, kind, T=7, B=B, N=N, seed=33)
    base = dict(args._asdict(), s0=random_history(D, B, N, seed=34),
                delays=random_delays(kind, N, D, seed=35),
                delay_sigma=torch.tensor(0.3, dtype=F64) if kind == "synaptic"
                else torch.rand(N, generator=gen(37), dtype=F64),
                rec_mask=torch.rand(B, N, generator=gen(36), dtype=F64))
    names = [n for n, v in base.items() if isinstance(v, torch.Tensor)]
    lengths = torch.tensor([7, 2, 0])

    def run(fn, t):
        out = fn(*type(args)(**{n: t[n] for n in args._fields}), delays=t["delays"],
                 max_delay=D, delay_sigma=t["delay_sigma"], rec_mask=t["rec_mask"],
                 lengths=lengths)
        return out, loss_of(out, spikes=True)

    for which, fn in both(op):
        all_leaves = {n: (v.clone().requires_grad_() if n in names else v)
                      for n, v in base.items()}
        want = dict(zip(names, torch.autograd.grad(run(fn, all_leaves)[1],
                                                   [all_leaves[n] for n in names])))
        for name in names:
            one = dict(base, **{name: base[name].clone().requires_grad_()})
            (got,) = torch.autograd.grad(run(fn, one)[1], [one[name]])
            assert torch.equal(got, want[name]), (which, name)
            assert got.abs().sum() > 0, (which, name)
        out, _ = run(fn, base)  # none at all: no graph through anything
        assert not any(o.requires_grad for o in out), which


@pytest.mark.parametrize("op", OPS)
def test_one_to_one_with_per_neuron_sigma_is_a_diagonal_w_rec(op):
    """[N] w_rec with [N] delays and [N] sigma against the [N, N] diagonal
    w_rec with the same (per source) delays, in both implementations, and
    the fused op against the reference (every gradient)."""
    N, D = 4, 4
    args = base_args(op, "one_to_one", T=9, N=N, seed=37)
    delays = torch.tensor([1.5, 2.25, 0.5, 3.9], dtype=F64)
    sigma = torch.tensor([0.0, 0.7, 1.3, 0.2], dtype=F64)
    for which, fn in both(op):
        results = []
        for w_rec in (args.w_rec, torch.diag(args.w_rec)):
            w, d, sg = [t.clone().requires_grad_() for t in (w_rec, delays, sigma)]
            out = fn(*args._replace(w_rec=w), delays=d, max_delay=D, delay_sigma=sg)
            results.append((out, torch.autograd.grad(loss_of(out), [w, d, sg])))
        (a, ga), (b, gb) = results
        assert torch.equal(a[0], b[0]) and a[0].sum() > 0, which
        for x, y in zip(a[1:], b[1:]):
            torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(ga[0], torch.diag(gb[0]), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(ga[1], gb[1], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(ga[2], gb[2], rtol=1e-12, atol=1e-12)
    leaves = base_args(op, "one_to_one", T=9, N=N, seed=37, requires_grad=True)
    assert_fused_is_reference(op, leaves, dict(delays=delays.clone().requires_grad_(),
                                               max_delay=D,
                                               delay_sigma=sigma.clone().requires_grad_()))


# ----------------------------------------------------------------------------
# Dtypes


DTYPE_PAIRS = [  # (x's dtype, a delay argument's dtype that is neither x's nor the compute dtype)
    (torch.float32, F64), (F64, torch.float32), (torch.float16, F64),
    (torch.float16, torch.bfloat16), (torch.bfloat16, torch.float16), (F64, torch.float16),
]


@pytest.mark.parametrize("name", ["delays", "delay_sigma", "rec_mask", "s0"])
@pytest.mark.parametrize("x_dtype,dtype", DTYPE_PAIRS)
@pytest.mark.parametrize("op", OPS)
def test_delay_arguments_of_another_dtype_are_a_type_error(op, x_dtype, dtype, name):
    """delays, a tensor delay_sigma, rec_mask and the history take x's dtype
    or the compute dtype (float32 for float16/bfloat16/float32 x, float64 for
    float64 x), like the neuron parameters: anything else is a TypeError
    naming the argument, the same from both implementations."""
    N, D = 4, 3
    args = cast(base_args(op, "synaptic", T=5, N=N, seed=38), x_dtype)
    compute = F64 if x_dtype == F64 else torch.float32
    kw = dict(delays=torch.ones(N, N, dtype=compute), max_delay=D,
              delay_sigma=torch.zeros(N, dtype=compute),
              rec_mask=torch.ones(3, N, dtype=compute), s0=torch.zeros(D, 3, N, dtype=compute))
    kw[name] = kw[name].to(dtype)
    s0 = kw.pop("s0")
    errors = []
    for which, fn in both(op):
        with pytest.raises(TypeError, match=f"argument '{name}' has dtype") as info:
            fn(*args._replace(s0=s0), **kw)
        errors.append(info.value)
    assert first_line(errors[0]) == first_line(errors[1])


@pytest.mark.parametrize("low", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("op", OPS)
def test_half_precision_is_float32_of_the_same_values_bitwise(op, low, monkeypatch):
    """bfloat16/float16 x, weights, history, delays, sigma and mask (each in
    x's dtype, or in float32, the compute dtype, of the same values): on the
    float32 product path (MKL's low-precision products, the default on a CPU
    with bfloat16/float16 instructions, sum in another order:
    test_mixed_precision.py) both implementations compute in float32 after
    exact up-casts, so states and
    gradients equal a float32 run of the same (rounded) values bit for bit;
    spikes come back in x's dtype, each gradient in its argument's dtype.
    The reference only with a detached reset: otherwise history[-1]'s
    gradient is the sum of two paths (the reset and the taps), each rounded
    to the low dtype before they add, which a float32 run does not reproduce
    bit for bit; the fused op adds them in float32, so both resets."""
    monkeypatch.setenv("TORCH_EXT_LOW_PRECISION_PRODUCTS", "off")
    N, D = 4, 3
    args = base_args(op, "synaptic", T=6, N=N, seed=41, w_in=True)
    low_args = cast(args, low)
    f32_args = cast(low_args, torch.float32)
    extra = dict(history=random_history(D, 3, N, seed=42),
                 delays=random_delays("synaptic", N, D, seed=43),
                 sigma=torch.tensor([0.1, 0.5, 0.0, 0.9], dtype=F64),
                 mask=torch.rand(3, N, generator=gen(44), dtype=F64) + 0.5)
    for which, fn in both(op):
        for detach in (True,) if which == "reference" else (True, False):
            for arg_dtype in (low, torch.float32):
                results = []
                for a, dtype in ((low_args, arg_dtype), (f32_args, torch.float32)):
                    t = {k: v.to(low).to(dtype).requires_grad_() for k, v in extra.items()}
                    out = fn(*a._replace(s0=t["history"]), delays=t["delays"], max_delay=D,
                             delay_sigma=t["sigma"], rec_mask=t["mask"], detach_reset=detach)
                    results.append((out, torch.autograd.grad(loss_of(out), list(t.values()))))
                (lo, g_lo), (hi, g_hi) = results
                label = (which, detach, arg_dtype)
                assert lo[0].dtype == low and torch.equal(lo[0].float(), hi[0]), label
                assert 0 < hi[0].mean() < 1
                for x, y in zip(lo[1:], hi[1:]):
                    assert x.dtype == torch.float32 and torch.equal(x, y), label
                for x, y in zip(g_lo, g_hi):
                    assert x.dtype == arg_dtype and torch.equal(x, y.to(arg_dtype)), label


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("op", OPS)
def test_float32_close_to_float64(op, kind):
    """Linear regime (no spike can flip): float32 against float64 of the same
    inputs (the delay arguments in float32 too, of values exact in float32).
    Bound: unit roundoff 6e-8 on each of the ~N*D + 6 terms of magnitude
    <= ~5 summed per step, carried with decay < 1 over T = 8 steps:
    8 * 22 * 5 * 6e-8 ~ 5e-5 worst case; atol 1e-4 (the values are O(1-10),
    a wrong tap or step would cost O(0.1)). Then a spiking run whose float64
    membrane keeps 3e-4 (3 times the bound) from the threshold: the same
    spikes."""
    N, D = 4, 4
    args = base_args(op, kind, T=8, N=N, seed=45)
    delays = random_delays(kind, N, D, seed=46).float().double()
    history = random_history(D, 3, N, seed=47)
    sigma = torch.tensor([0.1, 0.5, 0.0, 0.9], dtype=F64).float().double()

    def runs(fn, a, **reset):
        kw = dict(max_delay=D, **reset)
        return (fn(*a._replace(s0=history), delays=delays, delay_sigma=sigma, **kw),
                fn(*cast(a, torch.float32)._replace(s0=history.float()), delays=delays.float(),
                   delay_sigma=sigma.float(), **kw))

    for which, fn in both(op):
        hi, lo = runs(fn, linear(args), **NO_RESET)  # no -1e3: the bound is for O(1-10) values
        for x, y in zip(hi[1:], lo[1:]):
            torch.testing.assert_close(y.double(), x, rtol=0, atol=1e-4)
        hi, lo = runs(fn, args)
        assert_margin(args, hi, margin=3e-4)
        assert torch.equal(hi[0], lo[0].double()) and 0 < hi[0].mean() < 1, which
        for x, y in zip(hi[1:], lo[1:]):
            torch.testing.assert_close(y.double(), x, rtol=0, atol=1e-4)


@pytest.mark.parametrize("op", OPS)
def test_float32_delays_near_the_largest_float32_are_no_recurrence(op):
    """float32 x and delays +-3e38 (finite, far beyond any tap): no tap, the
    run without w_rec, bit for bit, gradients finite (a float64 delay would
    be a TypeError with a float32 x: no silent cast to inf)."""
    args = cast(base_args(op, "axonal", T=4, N=4, seed=62), torch.float32)
    want = REFERENCE[op](*args._replace(w_rec=None))
    for value in (3e38, -3e38):
        for which, fn in both(op):
            d = torch.full((4,), value, dtype=torch.float32, requires_grad=True)
            out = fn(*args, delays=d, max_delay=2, delay_sigma=0.5)
            for x, y in zip(out, want):
                assert torch.equal(x, y), (which, value)
            (g,) = torch.autograd.grad(loss_of(out), [d])
            assert torch.equal(g, torch.zeros_like(g)), (which, value)


# ----------------------------------------------------------------------------
# Layout


def strided_copy(t, stride):
    """A leaf with t's values and the given strides (not contiguous)."""
    out = torch.empty_strided(t.shape, stride, dtype=t.dtype)
    out.copy_(t)
    return out


@pytest.mark.parametrize("kind", ("axonal", "synaptic"))
@pytest.mark.parametrize("op", OPS)
def test_non_contiguous_arguments_are_their_contiguous_copies(op, kind):
    """Transposed delays, a [N, B, D]-ordered history, a mask and a sigma
    with stride 2: the same outputs and gradients, bit for bit, in both
    implementations; an expanded (stride 0) [N, N] of per-source delays is
    the axonal layer."""
    N, D, B = 4, 3, 3
    args = base_args(op, "synaptic", T=7, B=B, N=N, seed=48)
    delays = random_delays(kind, N, D, seed=49)
    history = random_history(D, B, N, seed=50)
    mask = torch.rand(B, N, generator=gen(51), dtype=F64)
    sigma = torch.tensor([0.1, 0.5, 0.0, 0.9], dtype=F64)
    dense = dict(delays=delays, s0=history, rec_mask=mask, delay_sigma=sigma)
    for which, fn in both(op):
        strided = dict(
            delays=(strided_copy(delays, (1, N)) if kind == "synaptic"
                    else torch.stack([delays, delays], 1)[:, 0]),
            s0=strided_copy(history, (1, D, D * B)),
            rec_mask=torch.stack([mask, mask], -1)[..., 0],
            delay_sigma=torch.stack([sigma, sigma], 1)[:, 0])
        assert not any(t.is_contiguous() for t in strided.values())
        results = []
        for kw in (strided, dense):
            kw = {k: v.detach().requires_grad_() for k, v in kw.items()}
            leaves = list(kw.values())
            s0 = kw.pop("s0")
            out = fn(*args._replace(s0=s0), max_delay=D, **kw)
            results.append((out, torch.autograd.grad(loss_of(out, spikes=True), leaves)))
        (a, ga), (b, gb) = results
        for x, y in zip(a, b):
            assert torch.equal(x, y), which
        for x, y in zip(ga, gb):
            assert torch.equal(x, y), which
    per = random_delays("axonal", N, D, seed=52)
    for which, fn in both(op):
        a = fn(*args, delays=per.expand(N, N), max_delay=D)
        b = fn(*args, delays=per, max_delay=D)
        assert torch.equal(a[0], b[0]), which
        for x, y in zip(a[1:], b[1:]):
            torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------
# Hostile values


def assert_same_values(a, b, msg):
    """Equal to 1e-12, NaN where the other is NaN, inf where it is inf."""
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, equal_nan=True, msg=msg)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("op", OPS)
def test_non_finite_history_and_mask_stay_in_their_row(op, kind):
    """A NaN / inf in row 0 of the history or of the mask reaches row 0's
    recurrent input (0 * inf = NaN for a zero tap, as the formula's sum is
    written), never the other rows, which equal the run with row 0 clean;
    the fused op gives the reference's values, NaN for NaN. (Every tap
    here is used by some delay; a tap no delay reaches: the test below.)"""
    N, D = 4, 3
    args = base_args(op, kind, T=6, N=N, seed=53)
    per = torch.tensor([1.2, 2.5, 3.0, 0.7], dtype=F64)  # taps 1, 2, 3 each used
    delays = random_delays(kind, N, D, seed=54, low=0.5) if kind == "synaptic" else per
    history = random_history(D, 3, N, seed=55)
    mask = torch.rand(3, N, generator=gen(56), dtype=F64) + 0.5
    assert naive_taps(kind, delays, 0.0, N, D).sum((1, 2)).min() > 0  # every tap used
    for which, fn in both(op):
        clean = fn(*args._replace(s0=history), delays=delays, max_delay=D, rec_mask=mask)
        for what, value in (("history", math.nan), ("history", math.inf), ("mask", math.nan),
                            ("mask", -math.inf)):
            h, m = history.clone(), mask.clone()
            if what == "history":
                h[0, 0, 2] = value  # oldest step: rec at step 1 multiplies it by its tap
            else:
                m[0, 1] = value
            out = fn(*args._replace(s0=h), delays=delays, max_delay=D, rec_mask=m)
            for a, b in zip(out, clean):
                assert torch.equal(a[:, 1:], b[:, 1:]), (which, what, value)
            assert not torch.isfinite(out[1][0, 0]).all(), (which, what, value)
            if which == "fused":
                ref = REFERENCE[op](*args._replace(s0=h), delays=delays, max_delay=D, rec_mask=m)
                for a, b in zip(out, ref):
                    assert_same_values(a, b, f"{what} {value}")


@pytest.mark.parametrize("value", [math.nan, math.inf])
@pytest.mark.parametrize("kind", KINDS)
def test_non_finite_history_at_an_unused_tap(kind, value):
    """delays 1, sigma 0, D = 3: taps 2 and 3 are zero for every synapse; a
    NaN / inf at S[-2] (read by tap 3 at step 1 only): the fused op must give
    the reference's values, NaN for NaN (README: inf/NaN spread as in a
    dense product)."""
    N, D = 4, 3
    args = base_args("recurrent_lif", kind, T=4, N=N, seed=77)
    per = torch.ones(N, dtype=F64)  # sigma 0: tap 1 only; taps 2 and 3 are all zero
    delays = per.expand(N, N).clone() if kind == "synaptic" else per
    history = random_history(D, 3, N, seed=78)
    history[0, 0, 2] = value  # S[-2], read by tap 3 at step 1 only
    ref = torch_ext.recurrent_lif_ref(*args._replace(s0=history), delays=delays, max_delay=D)
    fused = torch_ext.recurrent_lif(*args._replace(s0=history), delays=delays, max_delay=D)
    for a, b in zip(fused, ref):
        assert_same_values(a, b, "fused against the reference")


@pytest.mark.parametrize("kind", ("axonal", "synaptic"))
@pytest.mark.parametrize("op", OPS)
def test_non_finite_w_rec_entry_stays_in_its_neuron(op, kind):
    """w_rec[1, 2] = inf (or NaN) with delays per source or per synapse:
    neuron 1's recurrent input is non-finite from the first step (inf * 0
    is NaN, as without delays); the membranes of the other neurons stay
    finite; the fused op gives the reference's values, NaN for NaN."""
    N, D = 4, 3
    args = base_args(op, kind, T=6, N=N, seed=57)
    for value in (math.inf, -math.inf, math.nan):
        w = args.w_rec.clone()
        w[1, 2] = value
        for kw in ({}, dict(delays=random_delays(kind, N, D, seed=58, low=0.5), max_delay=D),
                   dict(delays=random_delays(kind, N, D, seed=59, low=20, high=30),
                        max_delay=D)):  # no tap at all: still 0 * inf
            outs = {}
            for which, fn in both(op):
                out = fn(*args._replace(w_rec=w), **kw)
                assert not torch.isfinite(out[1][0, :, 1]).any(), (which, value, kw)
                assert torch.isfinite(out[1][:, :, [0, 2, 3]]).all(), (which, value, kw)
                outs[which] = out
            for a, b in zip(outs["fused"], outs["reference"]):
                assert_same_values(a, b, f"w_rec {value}")


@pytest.mark.parametrize("op", OPS)
def test_tiny_and_large_sigma(op):
    """sigma = 1e-300 rounds to s = 1 exactly: the run is sigma = 0's, bit
    for bit. sigma = 1e200: every tap is <= 1 / s = 1e-200, so the run is
    the run without w_rec to 1e-190 (s^2 overflows to inf, taps 0: still
    within that), and the gradients stay finite."""
    N, D = 4, 3
    args = base_args(op, "synaptic", T=6, N=N, seed=59)
    delays = random_delays("synaptic", N, D, seed=60, low=0.5)
    want = REFERENCE[op](*args._replace(w_rec=None))
    for which, fn in both(op):
        a = fn(*args, delays=delays, max_delay=D, delay_sigma=1e-300)
        b = fn(*args, delays=delays, max_delay=D)
        for x, y in zip(a, b):
            assert torch.equal(x, y), which
        a = fn(*args, delays=delays, max_delay=D, delay_sigma=1)  # an int is a float
        b = fn(*args, delays=delays, max_delay=D, delay_sigma=torch.tensor(1.0, dtype=F64))
        for x, y in zip(a, b):
            assert torch.equal(x, y), which
        sg = torch.tensor(1e200, dtype=F64, requires_grad=True)
        d = delays.clone().requires_grad_()
        out = fn(*args, delays=d, max_delay=D, delay_sigma=sg)
        assert torch.equal(out[0], want[0]), which
        for x, y in zip(out[1:], want[1:]):
            torch.testing.assert_close(x, y, rtol=0, atol=1e-190)
        grads = torch.autograd.grad(loss_of(out), [sg, d])
        assert all(torch.isfinite(g).all() for g in grads), which


SIGMA_NEAR_MAX = [(F64, 1e308), (F64, 1.7976931348623157e308), (torch.float32, 3.4e38)]


@pytest.mark.parametrize("dtype,sigma", SIGMA_NEAR_MAX)
@pytest.mark.parametrize("op", OPS)
def test_sigma_near_the_largest_float_is_still_no_recurrence(op, dtype, sigma):
    """A finite sigma up to the compute dtype's max, as a float or a tensor:
    s^2 overflows, a = s - |x| does not, the taps (a/2 + |a|/2) / s^2 (or
    max(0, a) / s^2) are 0: the run without w_rec (no NaN), and the delays'
    gradient is 0."""
    args = cast(base_args(op, "axonal", T=4, N=4, seed=61), dtype)
    want = REFERENCE[op](*args._replace(w_rec=None))
    for which, fn in both(op):
        for sg in (sigma, torch.tensor(sigma, dtype=dtype)):
            d = torch.ones(4, dtype=dtype, requires_grad=True)
            out = fn(*args, delays=d, max_delay=2, delay_sigma=sg)
            for x, y in zip(out, want):
                assert torch.equal(x, y), (which, type(sg))
            (g,) = torch.autograd.grad(loss_of(out), [d])
            assert torch.equal(g, torch.zeros_like(g)), (which, type(sg))


@pytest.mark.parametrize("which", [
    "reference",
    "fused"])
@pytest.mark.parametrize("dtype,sigma", SIGMA_NEAR_MAX)
def test_sigma_near_the_largest_float_has_a_finite_gradient(dtype, sigma, which):
    """d rec / d sigma -> 0 as sigma grows (|kappa_s| <= 3 / s^2): a tensor
    sigma near the dtype's max gets the gradient 0, not NaN."""
    args = cast(base_args("recurrent_lif", "axonal", T=4, N=4, seed=61), dtype)
    fn = dict(both("recurrent_lif"))[which]
    sg = torch.tensor(sigma, dtype=dtype, requires_grad=True)
    out = fn(*args, delays=torch.ones(4, dtype=dtype), max_delay=2, delay_sigma=sg)
    (g,) = torch.autograd.grad(loss_of(out), [sg])
    assert torch.equal(g, torch.zeros_like(g)), g


# ----------------------------------------------------------------------------
# Meta tensors


@pytest.mark.parametrize("op", OPS)
def test_meta_tensors_give_meta_outputs_and_gradients(op):
    """Both implementations run on meta with delays (shapes only; the value
    checks read CPU tensors only), forward and backward."""
    N, D = 4, 3
    for which, fn in both(op):
        args = base_args(op, "synaptic", T=5, N=N, seed=63, device="meta", requires_grad=True)
        kw = dict(delays=torch.ones(N, N, dtype=F64, device="meta", requires_grad=True),
                  max_delay=D,
                  delay_sigma=torch.zeros(N, dtype=F64, device="meta", requires_grad=True),
                  rec_mask=torch.ones(3, N, dtype=F64, device="meta", requires_grad=True),
                  lengths=torch.tensor([5, 2, 0], device="meta"))
        args = args._replace(s0=torch.zeros(D, 3, N, dtype=F64, device="meta",
                                            requires_grad=True))
        out = fn(*args, **kw)
        assert all(o.device.type == "meta" and o.shape == (5, 3, N) for o in out), which
        names, leaves = leaves_of(args, kw)
        grads = torch.autograd.grad(sum(o.sum() for o in out[1:]), leaves)
        for name, t, g in zip(names, leaves, grads):
            assert g.device.type == "meta" and g.shape == t.shape, (which, name)


@pytest.mark.parametrize("dtype", [F64, torch.float16])
@pytest.mark.parametrize("op", OPS)
def test_fused_meta_shapes_and_dtypes_are_the_real_ones(op, dtype):
    N, D = 4, 3
    args = cast(base_args(op, "axonal", T=5, N=N, seed=64), dtype)
    kw = dict(delays=torch.ones(N, dtype=dtype), max_delay=D, delay_sigma=0.5,
              rec_mask=torch.ones(3, N, dtype=F64 if dtype == F64 else torch.float32))
    args = args._replace(s0=torch.zeros(D, 3, N, dtype=dtype))
    real = FUSED[op](*args, **kw)
    meta = FUSED[op](*[a.to("meta") if isinstance(a, torch.Tensor) else a for a in args],
                     **{k: v.to("meta") if isinstance(v, torch.Tensor) else v
                        for k, v in kw.items()})
    for r, m in zip(real, meta):
        assert m.device.type == "meta" and m.shape == r.shape and m.dtype == r.dtype


def test_meta_without_delays_still_works():
    args = base_args("recurrent_lif", "synaptic", T=5, N=4, seed=64, device="meta")
    for which, fn in both("recurrent_lif"):
        out = fn(*args, rec_mask=torch.ones(3, 4, dtype=F64, device="meta"))
        assert all(o.device.type == "meta" and o.shape == (5, 3, 4) for o in out), which


# ----------------------------------------------------------------------------
# What only the fused op has


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("op", OPS)
def test_low_memory_mode_is_bitwise_the_default(op, kind):
    """save_membrane=False / save_state=False (the backward replays the
    forward loop with the known spikes) with delays, sigma, a mask, the
    history and lengths: the same outputs and gradients, bit for bit."""
    N, D = 4, 3
    flag = NEURONS[op].save_flag
    for variant in (VARIANTS["lengths"], VARIANTS["s0 [B, N], float sigma"],
                    VARIANTS["subtract, not detached"]):
        args, kw = fused_case(op, kind, D, variant, N=N, seed=79)
        assert_runs_bitwise_equal(
            [lambda save=save: (FUSED[op](*args, **kw, **{flag: save}), leaves_of(args, kw))
             for save in (True, False)])


@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_fused_results_do_not_depend_on_the_thread_count(dtype):
    """1 and 2 threads: the same outputs and gradients, bit for bit, for
    every model and kind. B = 40: the forward splits the rows over the
    threads, the backward's blocks of 16 rows give each thread some; N = 24,
    D = 5 so that every product has more than one block. In float64 also
    against the reference (the tests above have one block of rows only)."""
    T, B, N, F, D = 10, 40, 24, 12, 5
    lengths = torch.randint(0, T + 1, (B,), generator=gen(80))
    threads = torch.get_num_threads()
    try:
        for op in OPS:
            for kind in KINDS:
                args = cast(make_inputs(op, T=T, B=B, F=F, N=N, state=True, seed=81,
                                        requires_grad=False,
                                        recurrent="one_to_one" if kind == "one_to_one"
                                        else "all_to_all"), dtype)
                kw = dict(delays=random_delays(kind, N, D, seed=82).to(dtype), max_delay=D,
                          delay_sigma=torch.rand(N, generator=gen(83), dtype=F64).to(dtype),
                          rec_mask=(torch.rand(B, N, generator=gen(84), dtype=F64) + 0.5
                                    ).to(dtype), lengths=lengths)
                args = args._replace(s0=random_history(D, B, N, seed=85, p=0.3).to(dtype))
                args = type(args)(*[a.requires_grad_() if isinstance(a, torch.Tensor) else a
                                    for a in args])
                kw = {k: v.requires_grad_() if isinstance(v, torch.Tensor) and
                      v.is_floating_point() else v for k, v in kw.items()}
                def run(n):
                    torch.set_num_threads(n)
                    assert torch.get_num_threads() == n
                    return FUSED[op](*args, **kw), leaves_of(args, kw)

                a = assert_runs_bitwise_equal([lambda: run(1), lambda: run(2)], (op, kind))
                assert 0 < a[0].double().mean() < 1
                if dtype == F64:  # and several backward blocks against the reference
                    assert_fused_is_reference(op, args, kw)
    finally:
        torch.set_num_threads(threads)


needs_opcheck = pytest.mark.skipif(not hasattr(torch.library, "opcheck"),
                                   reason="torch.library.opcheck needs torch >= 2.4")


@needs_opcheck
@pytest.mark.parametrize("op,kind", [("recurrent_lif", "synaptic"),
                                     ("recurrent_adlif", "one_to_one"),
                                     ("recurrent_cubalif", "axonal")])
def test_opcheck_forward_and_backward_with_delays(op, kind):
    """torch.library.opcheck (schema, autograd registration, fake tensors,
    AOT dispatch) of the forward op called directly with delays, sigma, a
    mask, the history and lengths, and of the backward op with needs_grad
    (its last three entries: delays, delay_sigma, rec_mask) all true, and
    alternating."""
    neuron = NEURONS[op]
    T, B, N, D = 8, 3, 4, 3
    args = make_inputs(op, T=T, B=B, F=5, N=N, state=True, params="scalar", seed=86,
                       recurrent="one_to_one" if kind == "one_to_one" else "all_to_all")
    delays = (random_delays(kind, N, D, seed=87)).requires_grad_()
    sigma = (torch.rand(N, generator=gen(88), dtype=F64)).requires_grad_()
    mask = (torch.rand(B, N, generator=gen(89), dtype=F64) + 0.5).requires_grad_()
    history = random_history(D, B, N, seed=90).requires_grad_()
    tensors = list(args._replace(s0=history))
    lengths = torch.tensor([T, 4, 0])
    call = (*tensors, neuron.reset, neuron.detach_reset, "sigmoid", None, True, lengths,
            delays, D, sigma, mask)
    torch.library.opcheck(getattr(torch.ops.torch_ext, op).default, call)
    with torch.no_grad():
        outputs = getattr(torch.ops.torch_ext, op)(*call)
    n = len(tensors)
    for needs in ([True] * (n + 3), [i % 2 == 0 for i in range(n + 3)]):
        back = (torch.randn_like(outputs[0]), *(torch.randn_like(o) for o in outputs[1:]),
                *[a.detach() for a in tensors], *outputs, neuron.reset, neuron.detach_reset,
                "sigmoid", None, needs, lengths, delays.detach(), D, sigma.detach(),
                mask.detach())
        torch.library.opcheck(getattr(torch.ops.torch_ext, f"_{op}_backward").default, back)


@pytest.mark.parametrize("name", ["delays", "delay_sigma", "rec_mask", "s0"])
@pytest.mark.parametrize("op", OPS)
def test_fused_in_place_change_after_the_forward_is_an_error(op, name):
    """The fused backward reads the delay arguments again: changed in place
    after the forward, the backward raises (autograd's version check) instead
    of returning the gradient of other values."""
    N, D = 4, 3
    args = base_args(op, "synaptic", T=5, N=N, seed=91, requires_grad=True)
    kw = dict(delays=random_delays("synaptic", N, D, seed=92).requires_grad_(), max_delay=D,
              delay_sigma=torch.rand(N, generator=gen(93), dtype=F64).requires_grad_(),
              rec_mask=(torch.rand(3, N, generator=gen(94), dtype=F64) + 0.5).requires_grad_())
    args = args._replace(s0=random_history(D, 3, N, seed=95).requires_grad_())
    out = FUSED[op](*args, **kw)
    with torch.no_grad():
        (args.s0 if name == "s0" else kw[name]).add_(0.25)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        torch.autograd.grad(loss_of(out), leaves_of(args, kw)[1])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("op", OPS)
def test_cuda_delays_and_masks_are_off_unless_asked(op, monkeypatch):
    """x on CUDA with delays or a mask, TORCH_EXT_CUDA_DELAYS unset (the
    CUDA kernels' delays have never run on a GPU): NotImplementedError naming
    the argument, from both implementations (the reference calls the op's
    check); without them the op runs."""
    monkeypatch.delenv("TORCH_EXT_CUDA_DELAYS", raising=False)
    N, D = 4, 3
    args = cast(base_args(op, "synaptic", T=5, N=N, seed=96), torch.float32)
    args = type(args)(*[a.cuda() if isinstance(a, torch.Tensor) else a for a in args])
    delays = torch.ones(N, N, device="cuda")
    mask = torch.ones(3, N, device="cuda")
    for kw, name in ((dict(delays=delays, max_delay=D), "delays"),
                     (dict(rec_mask=mask), "rec_mask"),
                     (dict(delays=delays, max_delay=D, rec_mask=mask), "delays"),
                     (dict(delays=delays.cpu(), max_delay=D), "delays")):
        errors = []
        for which, fn in both(op):
            with pytest.raises(NotImplementedError, match=f"argument '{name}'") as info:
                fn(*args, **kw)
            errors.append(info.value)
        assert first_line(errors[0]) == first_line(errors[1])
    out = FUSED[op](*args)
    assert all(o.device.type == "cuda" for o in out)


# ----------------------------------------------------------------------------
# delays=None: exactly the reference before the delays


BEFORE = "16c255b"  # the commit before the delays


@pytest.fixture(scope="module")
def reference_before():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        src = subprocess.run(["git", "-C", root, "show", f"{BEFORE}:torch_ext/reference.py"],
                             capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        pytest.skip(f"the reference before the delays ({BEFORE}) is not in this checkout")
    module = types.ModuleType("torch_ext._reference_before_delays")
    module.__package__ = "torch_ext"
    exec(compile(src, "reference_before_delays.py", "exec"), module.__dict__)
    return module


@pytest.mark.parametrize("recurrent", ("all_to_all", "one_to_one", "none"))
@pytest.mark.parametrize("op", OPS)
def test_without_delays_bitwise_the_reference_before(op, recurrent, reference_before):
    old = getattr(reference_before, op + "_ref")
    for T, lengths, reset in ((9, None, None), (9, torch.tensor([9, 3, 0]), "zero"),
                              (9, None, "subtract"), (0, None, None)):
        args = make_inputs(op, T=T, B=3, F=5, N=4, recurrent=recurrent, state=True, seed=T)
        kw = dict(lengths=lengths) if reset is None else dict(lengths=lengths, reset=reset)
        new_out = REFERENCE[op](*args, **kw)
        old_out = old(*args, **kw)
        for a, b in zip(new_out, old_out):
            assert torch.equal(a, b) and a.dtype == b.dtype
        if T:
            inputs = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
            g_new = torch.autograd.grad(loss_of(new_out), inputs, allow_unused=True)
            g_old = torch.autograd.grad(loss_of(old_out), inputs, allow_unused=True)
            for a, b in zip(g_new, g_old):
                assert (a is None and b is None) or torch.equal(a, b)


# ----------------------------------------------------------------------------
# Errors: each names its argument, the same from both implementations


def error_cases(B=3, N=4, D=3):
    d = torch.ones(N, dtype=F64)
    ok = dict(delays=d, max_delay=D)
    t = lambda *shape, **kw: torch.zeros(shape, dtype=kw.pop("dtype", F64), **kw)  # noqa: E731
    f32 = dict(x_dtype=torch.float32)
    return {
        # delays
        "delays without w_rec": (dict(ok, w_rec=None), ValueError, "'delays'"),
        "delays [N, N] with one-to-one": (dict(ok, w_rec=torch.ones(N, dtype=F64),
                                               delays=torch.ones(N, N, dtype=F64)),
                                          ValueError, "'delays'"),
        "delays [1, N]": (dict(ok, delays=t(1, N)), ValueError, "'delays'"),
        "delays [N, 1]": (dict(ok, delays=t(N, 1)), ValueError, "'delays'"),
        "delays [N, N + 1]": (dict(ok, delays=t(N, N + 1)), ValueError, "'delays'"),
        "delays 0-dim": (dict(ok, delays=t()), ValueError, "'delays'"),
        "delays [N, N, 1]": (dict(ok, delays=t(N, N, 1)), ValueError, "'delays'"),
        "delays a float": (dict(ok, delays=1.0), TypeError, "'delays'"),
        "delays a list": (dict(ok, delays=[1.0] * N), TypeError, "'delays'"),
        "delays bool": (dict(ok, delays=t(N, dtype=torch.bool)), TypeError, "'delays'"),
        "delays int32": (dict(ok, delays=t(N, dtype=torch.int32)), TypeError, "'delays'"),
        "delays complex": (dict(ok, delays=t(N, dtype=torch.complex128)), TypeError,
                           "'delays'"),
        "delays float32 with float64 x": (dict(ok, delays=t(N, dtype=torch.float32)),
                                          TypeError, "'delays'"),
        "delays float64 with float32 x": (dict(ok, **f32), TypeError, "'delays'"),
        "delays meta": (dict(ok, delays=t(N, device="meta")), ValueError, "'delays'"),
        "delays -inf synaptic": (dict(ok, delays=torch.tensor([[1.0] * N] * (N - 1) + [
            [1.0, 1.0, -math.inf, 1.0]], dtype=F64)), ValueError, "'delays'"),
        "delays NaN": (dict(ok, delays=torch.tensor([1.0, math.nan, 1, 1], dtype=F64)),
                       ValueError, "'delays'"),
        "delays inf float32": (dict(ok, delays=torch.tensor([1.0, math.inf, 1, 1]), **f32),
                               ValueError, "'delays'"),
        # max_delay
        "max_delay missing": (dict(ok, max_delay=None), ValueError, "'max_delay'"),
        "max_delay 0": (dict(ok, max_delay=0), ValueError, "'max_delay'"),
        "max_delay -1": (dict(ok, max_delay=-1), ValueError, "'max_delay'"),
        "max_delay -2**63": (dict(ok, max_delay=-2 ** 63), ValueError, "'max_delay'"),
        "max_delay 2**63": (dict(ok, max_delay=2 ** 63), ValueError, "'max_delay'"),
        "max_delay -2**63 - 1": (dict(ok, max_delay=-2 ** 63 - 1), ValueError, "'max_delay'"),
        "max_delay 10**30": (dict(ok, max_delay=10 ** 30), ValueError, "'max_delay'"),
        "max_delay 3.5": (dict(ok, max_delay=3.5), TypeError, "'max_delay'"),
        "max_delay 3.0": (dict(ok, max_delay=3.0), TypeError, "'max_delay'"),
        "max_delay True": (dict(ok, max_delay=True), TypeError, "'max_delay'"),
        "max_delay a str": (dict(ok, max_delay="3"), TypeError, "'max_delay'"),
        "max_delay a tensor": (dict(ok, max_delay=torch.tensor(3)), TypeError, "'max_delay'"),
        "max_delay without delays": (dict(max_delay=1), ValueError, "'max_delay'"),
        "max_delay without delays, with mask": (dict(max_delay=2, rec_mask=torch.ones(B, N,
                                                                                        dtype=F64)),
                                                ValueError, "'max_delay'"),
        # delay_sigma
        "sigma without delays": (dict(delay_sigma=1e-9), ValueError, "'delay_sigma'"),
        "sigma tensor without delays": (dict(delay_sigma=torch.tensor(0.5, dtype=F64)),
                                        ValueError, "'delay_sigma'"),
        "zero sigma tensor without delays": (dict(delay_sigma=torch.tensor(0.0, dtype=F64)),
                                             ValueError, "'delay_sigma'"),
        "zero [N] sigma without delays, with mask": (dict(delay_sigma=t(N),
                                                          rec_mask=torch.ones(B, N, dtype=F64)),
                                                     ValueError, "'delay_sigma'"),
        "sigma -inf": (dict(ok, delay_sigma=-math.inf), ValueError, "'delay_sigma'"),
        "sigma inf": (dict(ok, delay_sigma=math.inf), ValueError, "'delay_sigma'"),
        "sigma NaN": (dict(ok, delay_sigma=math.nan), ValueError, "'delay_sigma'"),
        "sigma -1e-300": (dict(ok, delay_sigma=-1e-300), ValueError, "'delay_sigma'"),
        "sigma -0.5 without delays": (dict(delay_sigma=-0.5), ValueError, "'delay_sigma'"),
        "sigma beyond float32 with float32 x": (dict(ok, delays=t(N, dtype=torch.float32),
                                                     delay_sigma=1e39, **f32),
                                                ValueError, "'delay_sigma'"),
        "sigma beyond float32 with float16 x": (dict(ok, delays=t(N, dtype=torch.float32),
                                                     delay_sigma=3.5e38,
                                                     x_dtype=torch.float16),
                                                ValueError, "'delay_sigma'"),
        "sigma an int too large for a float": (dict(ok, delay_sigma=10 ** 400), ValueError,
                                               "'delay_sigma'"),
        "sigma [N] one negative": (dict(ok, delay_sigma=torch.tensor([0.0, 0.1, -0.1, 0.0],
                                                                     dtype=F64)),
                                   ValueError, "'delay_sigma'"),
        "sigma [N] inf": (dict(ok, delay_sigma=torch.tensor([0.0, math.inf, 0.0, 0.0],
                                                            dtype=F64)),
                          ValueError, "'delay_sigma'"),
        "sigma 0-dim NaN float32": (dict(ok, delays=t(N, dtype=torch.float32),
                                         delay_sigma=torch.tensor(math.nan), **f32),
                                    ValueError, "'delay_sigma'"),
        "sigma [1]": (dict(ok, delay_sigma=t(1)), ValueError, "'delay_sigma'"),
        "sigma [N, N]": (dict(ok, delay_sigma=t(N, N)), ValueError, "'delay_sigma'"),
        "sigma int tensor": (dict(ok, delay_sigma=t(N, dtype=torch.int64)), TypeError,
                             "'delay_sigma'"),
        "sigma float32 tensor with float64 x": (dict(ok, delay_sigma=t(N, dtype=torch.float32)),
                                                TypeError, "'delay_sigma'"),
        "sigma meta": (dict(ok, delay_sigma=t(N, device="meta")), ValueError, "'delay_sigma'"),
        "sigma bool": (dict(ok, delay_sigma=True), TypeError, "'delay_sigma'"),
        "sigma None": (dict(ok, delay_sigma=None), TypeError, "'delay_sigma'"),
        "sigma a list": (dict(ok, delay_sigma=[0.1] * N), TypeError, "'delay_sigma'"),
        "sigma a str": (dict(ok, delay_sigma="0.1"), TypeError, "'delay_sigma'"),
        # rec_mask
        "mask without w_rec": (dict(w_rec=None, rec_mask=torch.ones(B, N, dtype=F64)),
                               ValueError, "'rec_mask'"),
        "mask [1, N]": (dict(ok, rec_mask=t(1, N)), ValueError, "'rec_mask'"),
        "mask [B, 1]": (dict(rec_mask=t(B, 1)), ValueError, "'rec_mask'"),
        "mask [B, N, 1]": (dict(ok, rec_mask=t(B, N, 1)), ValueError, "'rec_mask'"),
        "mask [N]": (dict(ok, rec_mask=t(N)), ValueError, "'rec_mask'"),
        "mask bool": (dict(ok, rec_mask=t(B, N, dtype=torch.bool)), TypeError, "'rec_mask'"),
        "mask int": (dict(rec_mask=t(B, N, dtype=torch.int64)), TypeError, "'rec_mask'"),
        "mask float32 with float64 x": (dict(rec_mask=t(B, N, dtype=torch.float32)),
                                        TypeError, "'rec_mask'"),
        "mask float64 with float32 x": (dict(rec_mask=t(B, N), **f32), TypeError, "'rec_mask'"),
        "mask meta": (dict(rec_mask=t(B, N, device="meta")), ValueError, "'rec_mask'"),
        "mask a list": (dict(ok, rec_mask=[[1.0] * N] * B), TypeError, "'rec_mask'"),
        "mask a float": (dict(rec_mask=1.0), TypeError, "'rec_mask'"),
        # the history s0
        "history D + 1": (dict(ok, s0=t(D + 1, B, N)), ValueError, "'s0'"),
        "history D - 1": (dict(ok, s0=t(D - 1, B, N)), ValueError, "'s0'"),
        "history of zero steps": (dict(ok, s0=t(0, B, N)), ValueError, "'s0'"),
        "history B + 1": (dict(ok, s0=t(D, B + 1, N)), ValueError, "'s0'"),
        "history N + 1": (dict(ok, s0=t(D, B, N + 1)), ValueError, "'s0'"),
        "history 4-d": (dict(ok, s0=t(1, D, B, N)), ValueError, "'s0'"),
        "history 1-d": (dict(ok, s0=t(N)), ValueError, "'s0'"),
        "s0 [B, N + 1] with delays": (dict(ok, s0=t(B, N + 1)), ValueError, "'s0'"),
        "history int": (dict(ok, s0=t(D, B, N, dtype=torch.int64)), TypeError, "'s0'"),
        "history float32": (dict(ok, s0=t(D, B, N, dtype=torch.float32)), TypeError, "'s0'"),
        "history meta": (dict(ok, s0=t(D, B, N, device="meta")), ValueError, "'s0'"),
        "history without delays": (dict(s0=t(D, B, N)), ValueError, "'s0'"),
        "history with a mask only": (dict(s0=t(D, B, N), rec_mask=torch.ones(B, N, dtype=F64)),
                                     ValueError, "'s0'"),
        "s0 a list with delays": (dict(ok, s0=[[0.0] * N] * B), TypeError, "'s0'"),
    }


def call_with(fn, op, changes, T=5, B=3, N=4):
    changes = dict(changes)
    dtype = changes.pop("x_dtype", F64)
    args = make_inputs(op, T=T, B=B, F=5, N=N, requires_grad=False, dtype=dtype)
    positional = {k: v for k, v in changes.items() if k in args._fields}
    keywords = {k: v for k, v in changes.items() if k not in args._fields}
    return fn(*args._replace(**positional), **keywords)


def assert_both_raise(op, changes, exc, name, **shape):
    """The reference and the fused op raise `exc` naming the argument, with
    the same first line of message."""
    errors = []
    for which, fn in both(op):
        with pytest.raises(exc, match=f"argument {name}") as info:
            call_with(fn, op, changes, **shape)
        errors.append(info.value)
    assert type(errors[0]) is type(errors[1])
    assert first_line(errors[0]) == first_line(errors[1])
    assert first_line(errors[0]).startswith(f"{op}: argument {name}")


@pytest.mark.parametrize("case", error_cases())
def test_bad_arguments_raise_naming_them(case):
    changes, exc, name = error_cases()[case]
    for op in OPS:
        assert_both_raise(op, changes, exc, name)


@pytest.mark.parametrize("case", error_cases(B=0))
def test_bad_arguments_raise_on_empty_inputs_too(case):
    """T = 0 or B = 0: the checks still run (no step would have caught them)."""
    changes, exc, name = error_cases(B=0)[case]
    for T in (0, 2):
        assert_both_raise("recurrent_lif", changes, exc, name, T=T, B=0)


GOOD = {
    # what the contract accepts, at its edges
    "max_delay a numpy int": dict(max_delay=None),  # filled in below (numpy is optional)
    "sigma 0.0 without delays (the default)": dict(delays=None, max_delay=None,
                                                   delay_sigma=0.0),
    "sigma an int": dict(delay_sigma=1),
    "sigma float32's max with float32 x": dict(delays=torch.ones(4), delay_sigma=3.4e38,
                                               x_dtype=torch.float32),
    "float32 delays with float16 x": dict(delays=torch.ones(4), x_dtype=torch.float16),
    "float16 delays with float16 x": dict(delays=torch.ones(4, dtype=torch.float16),
                                          x_dtype=torch.float16),
    "max_delay 4096 with a [B, N] s0": dict(max_delay=2 ** 12),
    "delays -1e308": dict(delays=torch.tensor([1.0, -1e308, 1e308, 0.0], dtype=F64)),
}


@pytest.mark.parametrize("case", GOOD)
@pytest.mark.parametrize("op", OPS)
def test_edge_arguments_are_accepted_alike(op, case):
    changes = dict(dict(delays=torch.ones(4, dtype=F64), max_delay=3), **GOOD[case])
    if case == "max_delay a numpy int":
        np = pytest.importorskip("numpy")
        changes["max_delay"] = np.int64(3)
    outs = [call_with(fn, op, changes) for _, fn in both(op)]
    assert torch.equal(outs[0][0], outs[1][0])
    for a, b in zip(outs[0][1:], outs[1][1:]):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
