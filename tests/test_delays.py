"""Recurrent delays in the fused ops (CPU): outputs and every gradient
(delays, delay_sigma, rec_mask and the [D, B, N] spike history included)
against the plain-autograd reference in float64, for every model, kind of
delay, reset, detach and surrogate; the low-memory mode and thread counts
bitwise; lengths; chunked continuation with the history; unit delays as the
layer without delays. (The reference itself is checked against the closed
forms in test_delays_reference.py; hostile inputs: test_delays_adversarial.py.)"""
import itertools

import pytest
import torch

import torch_ext
from torch_ext._neurons import NEURONS

from neurons import FUSED, OPS, REFERENCE, RESETS, make_inputs

KINDS = ("axonal", "synaptic", "one_to_one", "mask_only")
T, B, N, D = 11, 3, 5, 4


def delay_arguments(kind, seed=0, requires_grad=True, history=True):
    """The delay keywords of `kind` (delays around [0, D + 1], some taps on
    kinks, a per-neuron sigma, a mask) and the s0 to pass (a random binary
    history [D, B, N], or None)."""
    g = torch.Generator().manual_seed(seed)

    def leaf(t):
        return t.to(torch.float64).requires_grad_(requires_grad)

    per_source = torch.tensor([1.0, 2.5, 3.25, 0.5, 4.0], dtype=torch.float64)
    kw = dict(rec_mask=leaf(torch.rand(B, N, generator=g) * 1.5))
    if kind != "mask_only":
        delays = per_source if kind != "synaptic" else (
            per_source.expand(N, N) + torch.rand(N, N, generator=g) * 2 - 1)
        kw.update(delays=leaf(delays.clone()), max_delay=D,
                  delay_sigma=leaf(torch.tensor([0.0, 0.5, 0.25, 1.0, 0.0])))
    s0 = None
    if history:
        s0 = (torch.rand(D, B, N, generator=g) > 0.5).double()
        s0 = s0 if kind != "mask_only" else s0[-1]
        s0.requires_grad_(requires_grad)
    return kw, s0


def inputs(op, kind, seed=0, requires_grad=True, history=True, **kw):
    args = make_inputs(op, T=T, B=B, F=6, N=N, state=True, seed=seed,
                       recurrent="one_to_one" if kind == "one_to_one" else "all_to_all",
                       requires_grad=requires_grad, **kw)
    delays, s0 = delay_arguments(kind, seed, requires_grad, history)
    return args._replace(s0=s0), delays


def leaves(args, delays):
    return ([a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
            + [v for v in delays.values() if isinstance(v, torch.Tensor) and v.requires_grad])


def run(fn, args, delays, weights=None, **options):
    out = fn(*args, **delays, **options)
    if weights is None:
        g = torch.Generator().manual_seed(11)
        weights = [torch.randn(o.shape, generator=g, dtype=torch.float64) for o in out]
    grads = torch.autograd.grad(out, leaves(args, delays), weights, allow_unused=True)
    return out, grads


def assert_matches_reference(op, args, delays, **options):
    got, got_grads = run(FUSED[op], args, delays, **options)
    want, want_grads = run(REFERENCE[op], args, delays, **options)
    margin = (want[1] - (args.theta if "theta" in args._fields else 1.0)).abs().min()
    assert margin > 1e-9, "a membrane at the threshold: pick another seed"
    assert torch.equal(got[0], want[0])
    for a, b in zip(got[1:], want[1:]):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    # The sums run in other orders (the products, the taps): float64 rounding.
    for a, b in zip(got_grads, want_grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    return got


@pytest.mark.parametrize("detach", [False, True])
@pytest.mark.parametrize("reset", RESETS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("op", OPS)
def test_fused_matches_reference(op, kind, reset, detach):
    args, delays = inputs(op, kind, params="neuron")
    spikes = assert_matches_reference(op, args, delays, reset=reset, detach_reset=detach)[0]
    assert 0 < spikes.mean() < 1


@pytest.mark.parametrize("surrogate", ["fast_sigmoid", "atan", "triangle"])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("op", OPS)
def test_surrogates_and_scalar_parameters(op, kind, surrogate):
    args, delays = inputs(op, kind, seed=1, params="scalar")
    assert_matches_reference(op, args, delays, surrogate=surrogate)


@pytest.mark.parametrize("sigma", ["float", "0-dim", "none"])
@pytest.mark.parametrize("kind", ["axonal", "synaptic"])
def test_sigma_given_every_way_and_no_history(kind, sigma):
    args, delays = inputs("recurrent_lif", kind, seed=2, history=False)
    if sigma == "float":
        delays["delay_sigma"] = 0.75
    elif sigma == "0-dim":
        delays["delay_sigma"] = torch.tensor(0.75, dtype=torch.float64, requires_grad=True)
    else:
        del delays["delay_sigma"]
    assert_matches_reference("recurrent_lif", args, delays)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("op", OPS)
def test_lengths(op, kind):
    args, delays = inputs(op, kind, seed=3)
    assert_matches_reference(op, args, delays, lengths=torch.tensor([T, 4, 0]))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("op", OPS)
def test_low_memory_mode_is_bitwise_the_same(op, kind):
    args, delays = inputs(op, kind, seed=4)
    flag = NEURONS[op].save_flag
    saved, saved_grads = run(FUSED[op], args, delays, **{flag: True})
    replayed, replayed_grads = run(FUSED[op], args, delays, **{flag: False})
    for a, b in zip(saved + saved_grads, replayed + replayed_grads):
        assert torch.equal(a, b)


@pytest.mark.parametrize("kind", KINDS)
def test_bitwise_the_same_for_any_thread_count(kind):
    args, delays = inputs("recurrent_adlif", kind, seed=5)
    args = args._replace(x=args.x.detach().repeat(1, 20, 1).requires_grad_())
    delays["rec_mask"] = delays["rec_mask"].detach().repeat(20, 1).requires_grad_()
    if args.s0 is not None:
        args = args._replace(s0=args.s0.detach().repeat_interleave(20, dim=-2).requires_grad_())
    for name in ("v0", "a0"):
        args = args._replace(**{name: getattr(args, name).detach().repeat(20, 1).requires_grad_()})
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = run(torch_ext.recurrent_adlif, args, delays)
        torch.set_num_threads(2)
        two = run(torch_ext.recurrent_adlif, args, delays)
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(one[0] + one[1], two[0] + two[1]):
        assert torch.equal(a, b)


@pytest.mark.parametrize("mode", ["gather", "dense"])
@pytest.mark.parametrize("op", OPS)
def test_per_synapse_products_from_the_spikes_that_fired(op, mode, monkeypatch):
    """Per synapse, C[k] = sum_t g[t].T @ S[t-k] adds rows of g at the
    spikes (TORCH_EXT_BINARY_INPUTS=gather forces it at this small N; by
    default below the binary inputs' crossover density) or is a dense
    product: both the reference's gradients, with the mask, lengths and a
    binary history; the gather also with every thread count bitwise."""
    monkeypatch.setenv("TORCH_EXT_BINARY_INPUTS", mode)
    args, delays = inputs(op, "synaptic", seed=4)
    lengths = torch.tensor([T, 7, 0])
    assert_matches_reference(op, args, delays)
    assert_matches_reference(op, args, delays, lengths=lengths)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = run(FUSED[op], args, delays)
        torch.set_num_threads(2)
        two = run(FUSED[op], args, delays)
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(one[0] + one[1], two[0] + two[1]):
        assert torch.equal(a, b)


def test_per_synapse_gather_is_bitwise_the_same_for_any_thread_count(monkeypatch):
    """The products from the spikes split N into tiles over threads (32
    float64 columns each): at N = 100, four tiles, 1 and 2 threads give the
    same bits."""
    monkeypatch.setenv("TORCH_EXT_BINARY_INPUTS", "gather")
    g = torch.Generator().manual_seed(8)
    n, d = 100, 5
    x = (torch.rand(20, 4, n, generator=g, dtype=torch.float64) * 0.8).requires_grad_()
    w_in = (torch.randn(n, n, generator=g, dtype=torch.float64) / n ** 0.5).requires_grad_()
    w_rec = (torch.randn(n, n, generator=g, dtype=torch.float64) / n ** 0.5).requires_grad_()
    delays = (1 + (d - 1) * torch.rand(n, n, generator=g, dtype=torch.float64)).requires_grad_()
    sigma = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    leaves_ = [x, w_in, w_rec, delays, sigma]

    def grads():
        spikes, membrane = torch_ext.recurrent_lif(x, w_in, w_rec, delays=delays, max_delay=d,
                                                   delay_sigma=sigma)
        assert 0 < spikes.mean() < 0.3
        return torch.autograd.grad(spikes.sum() + membrane.sum(), leaves_)

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = grads()
        torch.set_num_threads(2)
        two = grads()
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(one, two):
        assert torch.equal(a, b)


def per_source_case(op, kind, dtype, n, d, steps, seed):
    """A per-source case at 10-15 % spikes with a random binary history,
    delays spread over [0.5, d + 0.5] (kinks included), a per-neuron sigma
    (P[t] non-zero at under 30 % of its entries), a mask and lengths."""
    g = torch.Generator().manual_seed(seed)
    args = make_inputs(op, T=steps, B=4, F=7, N=n, state=True, seed=seed, dtype=dtype,
                       bias=False,
                       recurrent="one_to_one" if kind == "one_to_one" else "all_to_all")
    args = args._replace(x=(args.x.detach() * 0.6).requires_grad_())
    delays = 0.5 + d * torch.rand(n, generator=g, dtype=torch.float64)
    delays[: n // 4] = delays[: n // 4].round()
    kw = dict(delays=delays.to(dtype).requires_grad_(), max_delay=d,
              delay_sigma=torch.rand(n, generator=g).to(dtype).requires_grad_(),
              rec_mask=(0.5 + torch.rand(4, n, generator=g)).to(dtype).requires_grad_())
    history = (torch.rand(d, 4, n, generator=g) < 0.05).to(dtype).requires_grad_()
    lengths = torch.tensor([steps, steps - 3, 1, 0])
    return args._replace(s0=history), kw, lengths


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("d", [1, 3, 64, 65])
@pytest.mark.parametrize("kind", ["axonal", "one_to_one"])
@pytest.mark.parametrize("op", OPS)
def test_per_source_spike_events_give_the_dense_sums(op, kind, d, dtype, monkeypatch):
    """Per source (D <= 64, a binary history) the loops sum over the taps by
    events at the spikes: P[t] = sum_k K_k * S[t-k] and the delays' E[k] in
    the order of the dense sums (TORCH_EXT_BINARY_INPUTS=dense), so every
    output is the same to the bit, float32 included, and so are the
    gradients of x, w_in, the delays, sigma, the mask and the history. All
    to-all, sum_t g[t].T @ P[t] adds rows of g at P's non-zeros (forced with
    TORCH_EXT_BINARY_INPUTS=gather; by default below the binary inputs'
    crossover density, never at this N): the dense product's sum in another
    order (float64: 1e-12) in w_rec's gradient and in an input gain's (its
    drive). D = 65 takes the dense path either way. With lengths, the
    low-memory mode, D > T, and N over one 64-bit word."""
    args, kw, lengths = per_source_case(op, kind, dtype, n=70, d=d, steps=40, seed=9)
    flag = NEURONS[op].save_flag
    exact = [args.x, args.w_in, args.s0] + [kw[name] for name in
                                            ("delays", "delay_sigma", "rec_mask")]
    exact_at = [i for i, a in enumerate(leaves(args, kw)) if any(a is e for e in exact)]
    for mode, options in itertools.product(["default", "gather"],
                                           [{}, dict(lengths=lengths), {flag: False}]):
        monkeypatch.setenv("TORCH_EXT_BINARY_INPUTS", mode)
        events, events_grads = run(FUSED[op], args, kw, **options)
        monkeypatch.setenv("TORCH_EXT_BINARY_INPUTS", "dense")
        dense, dense_grads = run(FUSED[op], args, kw, **options)
        assert 0.05 < events[0].mean() < 0.2
        for a, b in zip(events, dense):
            assert torch.equal(a, b)
        for i, (a, b) in enumerate(zip(events_grads, dense_grads)):
            if i in exact_at or kind == "one_to_one" or d > 64 or mode == "default":
                assert torch.equal(a, b)
            elif dtype == torch.float32:
                # Sums of T * B = 160 terms in another order: apart by up to
                # 160 roundings of their magnitudes' sum (a few times the
                # largest result here).
                bound = 4 * 160 * torch.finfo(dtype).eps * b.abs().max()
                torch.testing.assert_close(a, b, rtol=0, atol=bound.item())
            else:
                torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", ["synaptic", "axonal"])
@pytest.mark.parametrize("op", OPS)
def test_gather_and_events_fall_back_where_they_would_differ(op, kind, monkeypatch):
    """What the per-synapse gather and the per-source events (both forced:
    TORCH_EXT_BINARY_INPUTS=gather) would get wrong stays dense: an infinite
    incoming gradient (a skipped zero spike would drop the NaN of 0 * inf)
    and a history that is not binary (values other than 0 and 1 are
    weights, not spikes): the reference's values, NaN where it has NaN (per
    source, in the delays' gradient)."""
    monkeypatch.setenv("TORCH_EXT_BINARY_INPUTS", "gather")
    args, delays = inputs(op, kind, seed=6)
    real_history = args.s0.detach() * torch.linspace(0.5, 2.0, N, dtype=torch.float64)
    assert_matches_reference(op, args._replace(s0=real_history.requires_grad_()), delays)
    out = FUSED[op](*args, **delays)
    weights = [torch.zeros_like(o) for o in out]
    weights[0][(3, 1, 2) if kind == "synaptic" else (6, 1, 2)] = float("inf")
    got = torch.autograd.grad(out, leaves(args, delays), weights, allow_unused=True)
    want_out = REFERENCE[op](*args, **delays)
    want = torch.autograd.grad(want_out, leaves(args, delays), weights, allow_unused=True)
    assert any(g is not None and g.isnan().any() for g in want)
    if kind == "axonal":
        assert want[-2].isnan().any()  # the delays' gradient
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, equal_nan=True)


@pytest.mark.parametrize("kind", ["axonal", "synaptic", "one_to_one"])
@pytest.mark.parametrize("op", OPS)
def test_chunks_continued_with_the_history_equal_the_whole_run(op, kind):
    args, delays = inputs(op, kind, seed=6, requires_grad=False, w_in=False)
    whole = FUSED[op](*args, **delays)
    first = FUSED[op](*args._replace(x=args.x[:5]), **delays)
    states = {name: out[-1] for name, out in zip(NEURONS[op].initial_names[:-1], first[1:])}
    history = torch.cat([args.s0, first[0]])[-D:]
    second = FUSED[op](*args._replace(x=args.x[5:], s0=history, **states), **delays)
    for w, a, b in zip(whole, first, second):
        assert torch.equal(w, torch.cat([a, b]))


@pytest.mark.parametrize("kind", ["axonal", "synaptic"])
@pytest.mark.parametrize("op", OPS)
def test_unit_delays_are_the_layer_without_delays(op, kind):
    """delays = 1, sigma = 0: the same spikes and states to the bit (the
    recurrent input sums the same rows); the gradients to rounding (the
    delays' weight gradient is a dense product where the plain op gathers)."""
    args = make_inputs(op, T=T, B=B, F=6, N=N, state=True, seed=7)
    ones = torch.ones(N, dtype=torch.float64) if kind == "axonal" else torch.ones(N, N).double()
    delays = dict(delays=ones.requires_grad_(), max_delay=2)
    plain, plain_grads = run(FUSED[op], args, {})
    got, got_grads = run(FUSED[op], args, delays, weights=None)
    for a, b in zip(got, plain):
        assert torch.equal(a, b)
    for a, b in zip(got_grads, plain_grads):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_autocast_keeps_the_delays_float32():
    torch.manual_seed(0)
    x = torch.randn(20, 4, 8)
    w_in, w_rec = torch.randn(6, 8) * 0.5, torch.randn(6, 6) * 0.3
    delays = torch.tensor([1.0, 2.5, 3.0, 1.5, 2.0, 4.0], requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        spikes, u = torch_ext.recurrent_lif(x, w_in, w_rec, delays=delays, max_delay=4,
                                            delay_sigma=0.5)
    direct = torch_ext.recurrent_lif(x, w_in.bfloat16(), w_rec.bfloat16(), delays=delays,
                                     max_delay=4, delay_sigma=0.5)
    assert torch.equal(spikes, direct[0]) and torch.equal(u, direct[1])
    (grad,) = torch.autograd.grad(u.sum(), [delays])
    assert grad.dtype == torch.float32 and torch.isfinite(grad).all()


def test_delays_on_meta_give_the_shapes():
    args, delays = inputs("recurrent_cubalif", "synaptic", requires_grad=False)
    meta = [a.to("meta") if isinstance(a, torch.Tensor) else a for a in args]
    kw = {k: v.to("meta") if isinstance(v, torch.Tensor) else v for k, v in delays.items()}
    out = torch_ext.recurrent_cubalif(*meta, **kw)
    assert [o.shape for o in out] == [(T, B, N)] * 3 and out[0].device.type == "meta"


def test_compile_fullgraph_with_delays_matches_eager():
    args, delays = inputs("recurrent_lif", "axonal", seed=8)

    def f(*a, **kw):
        return torch_ext.recurrent_lif(*a, **kw)

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    eager, eager_grads = run(f, args, delays)
    got, got_grads = run(compiled, args, delays)
    for a, b in zip(got + got_grads, eager + eager_grads):
        assert torch.equal(a, b)


@pytest.mark.parametrize("given", ["delays", "rec_mask"])
def test_backward_op_asked_for_absent_delay_arguments_returns_nothing_for_them(given):
    """needs_grad set for delays, delay_sigma and rec_mask when only one of
    them was passed: the absent ones get empty gradients (as every absent
    input does), and nothing reads them."""
    args = make_inputs("recurrent_lif", T=6, B=2, F=4, N=3, state=True, params="scalar",
                       requires_grad=False)
    kw = (dict(delays=torch.tensor([1.0, 2.5, 2.0], dtype=torch.float64), max_delay=3,
               delay_sigma=None, rec_mask=None) if given == "delays" else
          dict(delays=None, max_delay=None, delay_sigma=None,
               rec_mask=torch.rand(2, 3, dtype=torch.float64)))
    options = ("subtract", False, "sigmoid", None)
    spikes, u = torch.ops.torch_ext.recurrent_lif(*args, *options, True, None, *kw.values())
    grads = torch.ops.torch_ext._recurrent_lif_backward(
        torch.ones_like(spikes), torch.ones_like(u), *args, spikes, u, *options, [True] * 11,
        None, *kw.values())
    names = ["delays", "delay_sigma", "rec_mask"]
    for name, grad in zip(names, grads[-3:]):
        if name == given:
            assert grad.shape == kw[name].shape and torch.isfinite(grad).all()
        else:
            assert grad.numel() == 0, name
