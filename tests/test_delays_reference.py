"""Learnable recurrent delays in the plain-PyTorch references (the oracle the
fused ops' delays will be checked against): the recurrent input reads the
spike history through the triangular kernel kappa(delta - k; 1 + sigma).

Checked in float64 against what the contract says independently of the
reference's own code: unit delays are the layer without delays, integer
delays are a pure shift, axonal delays are synaptic ones with equal rows,
chunks continued with the history equal the whole run, and every gradient
(w_rec, delays, sigma, rec_mask) equals the closed form of the reverse-mode
equations, kinks included (kappa's derivative convention), on runs where the
membrane is linear in the recurrent input (no spike in the run, the history
given as s0)."""
import pytest
import torch

import torch_ext
from torch_ext.reference import delay_kernel

from neurons import OPS, REFERENCE, make_inputs

KINDS = ("axonal", "synaptic")


def delays_of(kind, N, values):
    """values [N] per source neuron as that kind of delays."""
    return values.clone() if kind == "axonal" else values.expand(N, N).clone()


def leaves(*tensors):
    return [t.detach().clone().requires_grad_() for t in tensors]


def outputs_and_grads(fn, args, inputs, **kw):
    out = fn(*args, **kw)
    g = torch.Generator().manual_seed(7)
    weights = [torch.randn(o.shape, generator=g, dtype=torch.float64) for o in out]
    loss = sum((w * o).sum() for w, o in zip(weights, out))
    grads = torch.autograd.grad(loss, inputs, allow_unused=True)
    return out, grads


def tensor_leaves(args):
    return [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]


# ----------------------------------------------------------------------------
# The kernel


def test_kernel_values_and_taps():
    s = torch.tensor(1.0, dtype=torch.float64)
    x = torch.tensor([-1.5, -1.0, -0.25, 0.0, 0.25, 1.0, 1.5], dtype=torch.float64)
    want = torch.tensor([0.0, 0.0, 0.75, 1.0, 0.75, 0.0, 0.0], dtype=torch.float64)
    assert torch.equal(delay_kernel(x, s), want)
    # s = 2 (sigma = 1): the integer taps of any integer delay sum to 1.
    taps = delay_kernel(torch.arange(-3.0, 4.0, dtype=torch.float64), torch.tensor(2.0))
    assert torch.equal(taps, torch.tensor([0, 0, 0.25, 0.5, 0.25, 0, 0], dtype=torch.float64))


def kappa_x(x, s):
    """The contract's derivative convention: -sign(x) h(a) / s^2."""
    a = s - x.abs()
    h = torch.where(a > 0, 1.0, torch.where(a == 0, 0.5, 0.0)).to(x.dtype)
    return -torch.sign(x) * h / s ** 2


def kappa_s(x, s):
    a = s - x.abs()
    h = torch.where(a > 0, 1.0, torch.where(a == 0, 0.5, 0.0)).to(x.dtype)
    return h / s ** 2 - 2 * a.clamp(min=0) / s ** 3


@pytest.mark.parametrize("x", [-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0, 3.0])
@pytest.mark.parametrize("sigma", [0.0, 0.5, 1.0])
def test_kernel_derivatives_follow_the_convention_at_kinks_too(x, sigma):
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    st = torch.tensor(1.0 + sigma, dtype=torch.float64, requires_grad=True)
    gx, gs = torch.autograd.grad(delay_kernel(xt, st), [xt, st])
    assert gx.item() == kappa_x(xt.detach(), st.detach()).item()
    assert gs.item() == pytest.approx(kappa_s(xt.detach(), st.detach()).item(), abs=1e-15)


# ----------------------------------------------------------------------------
# Values


@pytest.mark.parametrize("D", [1, 4])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("op", OPS)
def test_unit_delays_are_the_layer_without_delays(op, kind, D):
    args = make_inputs(op, T=9, B=3, F=5, N=4, state=True)
    inputs = tensor_leaves(args)
    N = args.w_rec.shape[0]
    delays = delays_of(kind, N, torch.ones(N, dtype=torch.float64)).requires_grad_()
    want, want_grads = outputs_and_grads(REFERENCE[op], args, inputs)
    got, got_grads = outputs_and_grads(REFERENCE[op], args, inputs + [delays], delays=delays,
                                       max_delay=D)
    assert torch.equal(got[0], want[0]) and want[0].sum() > 0
    for a, b in zip(got[1:] + tuple(got_grads[:-1]), want[1:] + tuple(want_grads)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert torch.isfinite(got_grads[-1]).all()


def lif_with_integer_delays(x, w_in, w_rec, bias, alpha, theta, history, delays):
    """LIF (reset subtract) with rec[t]_i = sum_j w_rec[i,j] S_j[t - delays[j]],
    written directly from that formula."""
    spikes = list(history.unbind(0))  # S[1-D..0]
    u = torch.zeros_like(history[0])
    out = []
    for t in range(x.shape[0]):
        rec = torch.stack([spikes[len(spikes) - int(d)][:, j] for j, d in enumerate(delays)], 1)
        u = alpha * u + x[t] @ w_in.T + bias + rec @ w_rec.T - theta * spikes[-1]
        spikes.append((u > theta).to(u.dtype))
        out.append(u)
    return torch.stack(spikes[history.shape[0]:]), torch.stack(out)


@pytest.mark.parametrize("kind", KINDS)
def test_integer_delays_are_a_shift(kind):
    args = make_inputs("recurrent_lif", T=15, B=3, F=5, N=6, params="float", requires_grad=False)
    D, N, B = 5, 6, 3
    g = torch.Generator().manual_seed(3)
    history = (torch.rand(D, B, N, generator=g) > 0.5).double()
    per_source = torch.tensor([1.0, 2.0, 5.0, 3.0, 1.0, 4.0], dtype=torch.float64)
    spikes, u = torch_ext.recurrent_lif_ref(*args._replace(s0=history),
                                            delays=delays_of(kind, N, per_source), max_delay=D)
    want_s, want_u = lif_with_integer_delays(args.x, args.w_in, args.w_rec, args.bias,
                                             args.alpha, args.theta, history, per_source)
    assert torch.equal(spikes, want_s) and 0 < spikes.mean() < 1
    torch.testing.assert_close(u, want_u, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("op", OPS)
def test_taps_outside_one_to_max_delay_are_dropped(op):
    """Delays beyond D with sigma = 0 reach no tap: no recurrent input at all,
    and no gradient for the delays."""
    args = make_inputs(op, T=8, B=2, F=5, N=4, state=True)
    inputs = tensor_leaves(args)
    delays = torch.full((4, 4), 9.0, dtype=torch.float64, requires_grad=True)
    got, grads = outputs_and_grads(REFERENCE[op], args, inputs + [delays], delays=delays,
                                   max_delay=3)
    no_rec = args._replace(w_rec=torch.zeros_like(args.w_rec))
    want, _ = outputs_and_grads(REFERENCE[op], no_rec, tensor_leaves(no_rec))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert torch.equal(grads[-1], torch.zeros_like(delays))


@pytest.mark.parametrize("op", OPS)
def test_axonal_delays_are_synaptic_delays_with_equal_rows(op):
    args = make_inputs(op, T=10, B=3, F=5, N=5, state=True)
    inputs = tensor_leaves(args)
    per_source = torch.tensor([1.3, 2.0, 3.7, 1.0, 2.5], dtype=torch.float64)
    axonal, synaptic = leaves(per_source, per_source.expand(5, 5))
    sigma_a, sigma_s = leaves(torch.tensor([0.0, 0.4, 1.0, 0.2, 0.7], dtype=torch.float64),
                              torch.tensor([0.0, 0.4, 1.0, 0.2, 0.7], dtype=torch.float64))
    a_out, a_grads = outputs_and_grads(REFERENCE[op], args, inputs + [axonal, sigma_a],
                                       delays=axonal, max_delay=5, delay_sigma=sigma_a)
    s_out, s_grads = outputs_and_grads(REFERENCE[op], args, inputs + [synaptic, sigma_s],
                                       delays=synaptic, max_delay=5, delay_sigma=sigma_s)
    assert torch.equal(a_out[0], s_out[0])
    for a, b in zip(a_out[1:] + a_grads[:-2], s_out[1:] + s_grads[:-2]):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(a_grads[-2], s_grads[-2].sum(0), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(a_grads[-1], s_grads[-1], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("op", OPS)
def test_one_to_one_axonal_delays_are_a_diagonal_w_rec(op):
    args = make_inputs(op, T=10, B=3, F=5, N=4, recurrent="one_to_one", state=True)
    inputs = tensor_leaves(args)
    delays = torch.tensor([1.5, 2.0, 1.0, 3.25], dtype=torch.float64)
    d1, d2 = leaves(delays, delays)
    one, one_grads = outputs_and_grads(REFERENCE[op], args, inputs + [d1], delays=d1, max_delay=4,
                                       delay_sigma=0.3)
    diag = args._replace(w_rec=torch.diag(args.w_rec.detach()).requires_grad_())
    full, full_grads = outputs_and_grads(REFERENCE[op], diag, tensor_leaves(diag) + [d2],
                                         delays=d2, max_delay=4, delay_sigma=0.3)
    assert torch.equal(one[0], full[0])
    for a, b in zip(one[1:], full[1:]):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    w_rec_at = [i for i, t in enumerate(inputs) if t is args.w_rec][0]
    torch.testing.assert_close(one_grads[w_rec_at], torch.diag(full_grads[w_rec_at]),
                               rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(one_grads[-1], full_grads[-1], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("op", OPS)
def test_chunks_continued_with_the_history_equal_the_whole_run(op, kind):
    args = make_inputs(op, T=13, B=3, F=5, N=4, state=True, requires_grad=False)
    D = 4
    delays = delays_of(kind, 4, torch.tensor([1.0, 2.6, 4.0, 3.2], dtype=torch.float64))
    kw = dict(delays=delays, max_delay=D, delay_sigma=0.5,
              rec_mask=torch.rand(3, 4, generator=torch.Generator().manual_seed(1)).double())
    history = (torch.rand(D, 3, 4, generator=torch.Generator().manual_seed(2)) > 0.5).double()
    whole = REFERENCE[op](*args._replace(s0=history), **kw)
    first = REFERENCE[op](*args._replace(x=args.x[:6], s0=history), **kw)
    states = [o[-1] for o in first[1:]]  # the model's states, then the spike history
    continued = args._replace(x=args.x[6:], s0=torch.cat([history, first[0]])[-D:],
                              **dict(zip(args._fields[-1 - len(states):-1], states)))
    second = REFERENCE[op](*continued, **kw)
    assert whole[0].sum() > 0
    for w, a, b in zip(whole, first, second):
        torch.testing.assert_close(w, torch.cat([a, b]), rtol=0, atol=0)


def test_a_shared_sigma_equals_per_neuron_sigmas():
    args = make_inputs("recurrent_lif", T=10, B=3, F=5, N=4, state=True)
    inputs = tensor_leaves(args)
    delays = torch.tensor([1.3, 2.0, 3.5, 1.0], dtype=torch.float64)
    shared, per_neuron = leaves(torch.tensor(0.6, dtype=torch.float64),
                                torch.full((4,), 0.6, dtype=torch.float64))
    a, ga = outputs_and_grads(torch_ext.recurrent_lif_ref, args, inputs + [shared], delays=delays,
                              max_delay=4, delay_sigma=shared)
    b, gb = outputs_and_grads(torch_ext.recurrent_lif_ref, args, inputs + [per_neuron],
                              delays=delays, max_delay=4, delay_sigma=per_neuron)
    c = torch_ext.recurrent_lif_ref(*args, delays=delays, max_delay=4, delay_sigma=0.6)
    for x, y, z in zip(a, b, c):
        assert torch.equal(x, y) and torch.equal(x, z)
    torch.testing.assert_close(ga[-1], gb[-1].sum(), rtol=1e-12, atol=1e-12)


def test_a_mask_of_ones_is_no_mask_and_zeros_cut_the_recurrence():
    args = make_inputs("recurrent_lif", T=10, B=3, F=5, N=4, state=True, requires_grad=False)
    for kw in ({}, dict(delays=torch.tensor([1.5, 2.0, 1.0, 2.5], dtype=torch.float64),
                        max_delay=3)):
        plain = torch_ext.recurrent_lif_ref(*args, **kw)
        ones = torch_ext.recurrent_lif_ref(*args, rec_mask=torch.ones(3, 4, dtype=torch.float64),
                                           **kw)
        zeros = torch_ext.recurrent_lif_ref(*args, rec_mask=torch.zeros(3, 4, dtype=torch.float64),
                                            **kw)
        no_rec = torch_ext.recurrent_lif_ref(*args._replace(w_rec=torch.zeros(4, 4).double()))
        for a, b, c, d in zip(plain, ones, zeros, no_rec):
            assert torch.equal(a, b) and torch.equal(c, d)


@pytest.mark.parametrize("op", OPS)
def test_lengths_each_row_as_if_alone(op):
    args = make_inputs(op, T=9, B=3, F=5, N=4, state=True, requires_grad=False)
    kw = dict(delays=torch.tensor([1.5, 3.0, 1.0, 2.2], dtype=torch.float64), max_delay=3,
              delay_sigma=0.25)
    lengths = torch.tensor([9, 4, 0])
    got = REFERENCE[op](*args, lengths=lengths, **kw)
    for b, n in enumerate(lengths.tolist()):
        row = args._replace(**{f: (v[:n, b:b + 1] if f == "x" else v[b:b + 1])
                               for f, v in args._asdict().items()
                               if isinstance(v, torch.Tensor) and f not in
                               ("w_in", "w_rec", "bias") and (v.dim() == 3 or f.endswith("0"))})
        alone = REFERENCE[op](*row, **kw)
        for g, a in zip(got, alone):
            # (to rounding: a product over one row may sum in another order)
            torch.testing.assert_close(g[:n, b:b + 1], a, rtol=1e-12, atol=1e-12)
            assert torch.equal(g[n:, b], torch.zeros_like(g[n:, b]))


# ----------------------------------------------------------------------------
# Gradients against the closed form


def linear_run(kind, delays, sigma, D=4, T=7, B=3, N=5, seed=0):
    """LIF (reset none, alpha 0.8) whose threshold is never reached, fed a
    random binary history: the membrane is linear in the recurrent input,
    and the surrogate's gradient vanishes (exp(-25 * 1e4) = 0). Returns the
    inputs, the membrane, and the closed-form gradients of sum(g * U)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, B, N, generator=g, dtype=torch.float64)
    w_rec = torch.randn(N, N, generator=g, dtype=torch.float64)
    mask = torch.rand(B, N, generator=g, dtype=torch.float64)
    history = (torch.rand(D, B, N, generator=g) > 0.4).double()
    weights = torch.randn(T, B, N, generator=g, dtype=torch.float64)
    alpha = 0.8
    w_rec_l, delays_l, sigma_l, mask_l = leaves(w_rec, delays, sigma, mask)
    _, u = torch_ext.recurrent_lif_ref(x, None, w_rec_l, None, alpha, 1e4, None, history,
                                       reset="none", delays=delays_l, max_delay=D,
                                       delay_sigma=sigma_l, rec_mask=mask_l)
    grads = torch.autograd.grad((weights * u).sum(), [w_rec_l, delays_l, sigma_l, mask_l])

    # The closed form: the gradient reaching rec[t] (dU[t]/drec[t] = 1),
    # g~ = m * it, C[k] = sum_t g~[t].T @ S[t-k], and the sums of section "delays".
    reach = torch.zeros_like(weights)
    carry = torch.zeros(B, N, dtype=torch.float64)
    for t in reversed(range(T)):
        carry = weights[t] + alpha * carry
        reach[t] = carry
    g_tilde = mask * reach
    spikes = torch.cat([history, torch.zeros(T, B, N, dtype=torch.float64)])  # none in the run
    C = torch.stack([sum(g_tilde[t].T @ spikes[D + t - k] for t in range(T))
                     for k in range(1, D + 1)])  # [D, N(i), N(j)]
    k = torch.arange(1, D + 1, dtype=torch.float64)
    s = 1 + sigma
    if kind == "axonal":
        x_k = delays.view(1, 1, N) - k.view(D, 1, 1)  # [D, 1, N(j)]
    else:
        x_k = delays.view(1, N, N) - k.view(D, 1, 1)
    s_j = s.view(1, 1, -1) if s.dim() == 1 else s
    K, Kx, Ks = delay_kernel(x_k, s_j), kappa_x(x_k, s_j), kappa_s(x_k, s_j)
    want_w_rec = (K * C).sum(0)
    want_delays = w_rec * (Kx * C).sum(0)
    if kind == "axonal":
        want_delays = want_delays.sum(0)  # over i
    per_tap = (w_rec * Ks * C).sum(0).sum(0)  # [N(j)]
    want_sigma = per_tap if sigma.dim() == 1 else per_tap.sum()
    # rec with m = 1 at every step: the mask's gradient sums reach * it.
    rec_unmasked = torch.stack([
        sum((spikes[D + t - kk] @ (w_rec * K[kk - 1]).T) for kk in range(1, D + 1))
        for t in range(T)])
    want_mask = (reach * rec_unmasked).sum(0)
    return grads, (want_w_rec, want_delays, want_sigma, want_mask)


DELAY_CASES = {
    "integer, sigma 0 (kinks everywhere)": (torch.tensor([1.0, 2.0, 3.0, 4.0, 2.0]), 0.0),
    "fractional, sigma 0": (torch.tensor([1.25, 2.5, 3.75, 1.9, 2.1]), 0.0),
    "fractional, sigma 0.5": (torch.tensor([1.25, 2.5, 3.0, 1.9, 2.1]), 0.5),
    "at |delta - k| = s": (torch.tensor([1.5, 2.5, 2.0, 3.5, 1.0]), 0.5),
    "outside [1, D]": (torch.tensor([0.3, 5.5, -1.0, 4.2, 0.0]), 0.25),
}


@pytest.mark.parametrize("per_neuron_sigma", [False, True])
@pytest.mark.parametrize("case", DELAY_CASES)
@pytest.mark.parametrize("kind", KINDS)
def test_gradients_equal_the_closed_form(kind, case, per_neuron_sigma):
    per_source, sigma = DELAY_CASES[case]
    per_source = per_source.double()
    if kind == "synaptic":  # rows that differ, around the same taps
        delays = per_source.expand(5, 5) + torch.tensor([0.0, 1.0, -0.5, 0.25, 2.0]).double().view(5, 1)
    else:
        delays = per_source
    sigma = (torch.linspace(0, 1, 5).double() * sigma * 2 if per_neuron_sigma
             else torch.tensor(sigma, dtype=torch.float64))
    grads, want = linear_run(kind, delays, sigma)
    for name, a, b in zip(("w_rec", "delays", "delay_sigma", "rec_mask"), grads, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=name)


def test_an_integer_delay_with_sigma_zero_gets_the_central_difference():
    """d rec / d delta = w (S[t-delta-1] - S[t-delta+1]) / 2 at an integer delta."""
    N, D, T, B = 1, 5, 1, 1
    history = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0], dtype=torch.float64).view(D, B, N)
    delays = torch.tensor([3.0], dtype=torch.float64, requires_grad=True)
    w = torch.tensor([[0.7]], dtype=torch.float64)
    _, u = torch_ext.recurrent_lif_ref(torch.zeros(T, B, N, dtype=torch.float64), None, w, None,
                                       0.5, 1e4, None, history, reset="none", delays=delays,
                                       max_delay=D)
    (grad,) = torch.autograd.grad(u.sum(), [delays])
    # S[t-k] for t = 1: k = 1 is history[-1], so S[1-k] = history[D-k].
    s = {k: history[D - k, 0, 0].item() for k in range(1, D + 1)}
    assert grad.item() == 0.7 * (s[4] - s[2]) / 2


def test_gradcheck_away_from_the_kinks():
    g = torch.Generator().manual_seed(5)
    B, N, D = 2, 3, 4
    history = (torch.rand(D, B, N, generator=g) > 0.4).double()
    x = torch.randn(5, B, N, generator=g, dtype=torch.float64)

    def membrane(w_rec, delays, sigma, mask):
        return torch_ext.recurrent_lif_ref(x, None, w_rec, None, 0.8, 1e4, None, history,
                                           reset="none", delays=delays, max_delay=D,
                                           delay_sigma=sigma, rec_mask=mask)[1]

    inputs = leaves(torch.randn(N, N, generator=g, dtype=torch.float64),
                    torch.tensor([[1.3, 2.2, 3.1], [1.7, 2.6, 1.45], [2.35, 1.15, 3.4]],
                                 dtype=torch.float64),
                    torch.tensor([0.1, 0.35, 0.6], dtype=torch.float64),
                    torch.rand(B, N, generator=g, dtype=torch.float64))
    assert torch.autograd.gradcheck(membrane, inputs, eps=1e-6, atol=1e-8)


# ----------------------------------------------------------------------------
# Bad input: a clear error naming the argument


def bad_calls():
    N = 4
    ok = dict(delays=torch.ones(N, dtype=torch.float64), max_delay=3)
    return {
        "delays without w_rec": (dict(ok, w_rec=None), ValueError, "'delays' needs"),
        "rec_mask without w_rec": (dict(w_rec=None, rec_mask=torch.ones(3, N).double()),
                                   ValueError, "'rec_mask' needs"),
        "max_delay missing": (dict(ok, max_delay=None), ValueError, "'max_delay'"),
        "max_delay 0": (dict(ok, max_delay=0), ValueError, "'max_delay'"),
        "max_delay float": (dict(ok, max_delay=2.0), TypeError, "'max_delay'"),
        "max_delay bool": (dict(ok, max_delay=True), TypeError, "'max_delay'"),
        "max_delay without delays": (dict(max_delay=3), ValueError, "'max_delay'"),
        "sigma without delays": (dict(delay_sigma=0.5), ValueError, "'delay_sigma'"),
        "delays wrong shape": (dict(ok, delays=torch.ones(N + 1).double()), ValueError, "'delays'"),
        "delays 3-d": (dict(ok, delays=torch.ones(N, N, 1).double()), ValueError, "'delays'"),
        "delays a list": (dict(ok, delays=[1.0] * N), TypeError, "'delays'"),
        "delays integer": (dict(ok, delays=torch.ones(N, dtype=torch.int64)), TypeError, "'delays'"),
        "delays NaN": (dict(ok, delays=torch.tensor([1.0, float("nan"), 1, 1]).double()),
                       ValueError, "'delays' must be finite"),
        "delays inf": (dict(ok, delays=torch.tensor([1.0, float("inf"), 1, 1]).double()),
                       ValueError, "'delays' must be finite"),
        "synaptic with one-to-one": (dict(ok, w_rec=torch.ones(N).double(),
                                          delays=torch.ones(N, N).double()),
                                     ValueError, "one-to-one"),
        "sigma negative": (dict(ok, delay_sigma=-0.1), ValueError, "'delay_sigma'"),
        "sigma tensor negative": (dict(ok, delay_sigma=torch.tensor(-0.1).double()), ValueError,
                                  "'delay_sigma'"),
        "sigma NaN": (dict(ok, delay_sigma=float("nan")), ValueError, "'delay_sigma'"),
        "sigma wrong shape": (dict(ok, delay_sigma=torch.zeros(N + 1).double()), ValueError,
                              "'delay_sigma'"),
        "sigma a string": (dict(ok, delay_sigma="wide"), TypeError, "'delay_sigma'"),
        "history wrong D": (dict(ok, s0=torch.zeros(2, 3, N).double()), ValueError, "'s0'"),
        "history wrong B": (dict(ok, s0=torch.zeros(3, 2, N).double()), ValueError, "s0"),
        "mask wrong shape": (dict(ok, rec_mask=torch.ones(N).double()), ValueError, "'rec_mask'"),
        "mask meta": (dict(ok, rec_mask=torch.ones(3, N, device="meta")), ValueError,
                      "'rec_mask'"),
    }


@pytest.mark.parametrize("case", bad_calls())
def test_bad_delay_arguments_name_the_argument(case):
    changes, exc, message = bad_calls()[case]
    args = make_inputs("recurrent_lif", T=5, B=3, F=5, N=4, requires_grad=False)
    positional = {k: v for k, v in changes.items() if k in args._fields}
    keywords = {k: v for k, v in changes.items() if k not in args._fields}
    with pytest.raises(exc, match=message):
        torch_ext.recurrent_lif_ref(*args._replace(**positional), **keywords)


def test_max_delay_longer_than_the_sequence_and_one_step():
    args = make_inputs("recurrent_lif", T=3, B=2, F=5, N=4, state=True, requires_grad=False)
    delays = torch.tensor([1.0, 2.0, 7.5, 12.0], dtype=torch.float64)
    out = torch_ext.recurrent_lif_ref(*args, delays=delays, max_delay=20, delay_sigma=0.5)
    assert all(torch.isfinite(o).all() for o in out)
    one = torch_ext.recurrent_lif_ref(*args, delays=torch.ones(4, dtype=torch.float64),
                                      max_delay=1)
    plain = torch_ext.recurrent_lif_ref(*args)
    for a, b in zip(one, plain):
        torch.testing.assert_close(a, b, rtol=1e-14, atol=1e-14)
