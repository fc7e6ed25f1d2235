"""What the happy path never shows: random shapes and options, extreme values,
long sequences, many calls, several threads."""
import concurrent.futures
import math

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import torch_ext
from benchmarks.bench import saved_bytes
from conftest import make_inputs, run_with_grads
from torch_ext._options import SURROGATE_SLOPES


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(T=st.integers(0, 50), B=st.integers(0, 8), F=st.integers(1, 64), N=st.integers(1, 64),
       reset=st.sampled_from(["subtract", "zero", "none"]), detach=st.booleans(),
       surrogate=st.sampled_from(sorted(SURROGATE_SLOPES)), per_neuron=st.booleans(),
       bias=st.booleans(), state=st.booleans(), w_in=st.booleans(), w_rec=st.booleans(),
       dtype=st.sampled_from([torch.float32, torch.float64]), seed=st.integers(0, 2**16))
def test_property_fused_matches_reference(T, B, F, N, reset, detach, surrogate, per_neuron, bias,
                                          state, w_in, w_rec, dtype, seed):
    shape = (N,) if per_neuron else ()
    args = make_inputs(T, B, F, N, dtype=dtype, w_in=w_in, w_rec=w_rec, bias=bias,
                       alpha_shape=shape, theta_shape=shape, state=state, seed=seed)
    options = dict(reset=reset, detach_reset=detach, surrogate=surrogate)
    ref = run_with_grads(torch_ext.recurrent_lif_ref, args, **options)
    if dtype == torch.float32:
        # float32: a membrane within rounding distance of theta may fire in one
        # implementation and not the other; such examples say nothing.
        ref_membrane = ref[1]
        assume(ref_membrane.numel() == 0 or (ref_membrane - args.theta).abs().min() > 1e-4)
    got = run_with_grads(torch_ext.recurrent_lif, args, **options)
    tol = 1e-10 if dtype == torch.float64 else 2e-4
    assert torch.equal(got[0], ref[0])
    torch.testing.assert_close(got[1], ref[1], rtol=tol, atol=tol)
    for a, b in zip(got[2], ref[2]):
        scale = b.abs().max().item() if b.numel() else 1.0
        torch.testing.assert_close(a, b, rtol=tol, atol=tol * max(1.0, scale))


EXTREMES = [0.0, 1e-30, 1e-3, 1.0, 3.5, 10.0, 1e4, 1e10, 1e30]


@pytest.mark.parametrize("surrogate", sorted(SURROGATE_SLOPES))
@pytest.mark.parametrize("slope", [None, 0.1, 1e4])
def test_surrogate_gradients_finite_for_extreme_membranes(surrogate, slope):
    # alpha = 0, no weights: U[t] = x[t] - theta R[t-1], so dL/dx[t] = sg(U[t] - theta).
    values = torch.tensor([s * v for v in EXTREMES for s in (1, -1)], dtype=torch.float32)
    x = (values + 1.0).view(-1, 1, 1).repeat(1, 1, 2).requires_grad_()
    spikes, membrane = torch_ext.recurrent_lif(x, None, None, None, 0.0, 1.0, reset="subtract",
                                               detach_reset=True, surrogate=surrogate, slope=slope)
    (grad,) = torch.autograd.grad(spikes.sum(), [x])
    assert torch.isfinite(grad).all()
    k = slope if slope is not None else SURROGATE_SLOPES[surrogate]
    want = torch_ext.surrogate_grad_ref((membrane - 1.0).double(), surrogate, k).float()
    torch.testing.assert_close(grad, want, rtol=1e-5, atol=1e-30)
    assert torch.isfinite(torch_ext.surrogate_grad_ref(values, surrogate, k)).all()


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_input_propagates(bad):
    args = make_inputs(T=8, B=2, state=True)
    x = args.x.detach().clone()
    x[3, 1, 0] = bad
    args = args._replace(x=x.requires_grad_())
    spikes, membrane = torch_ext.recurrent_lif(*args, reset="zero")
    assert not torch.isfinite(membrane[3:, 1]).all()   # reaches the later steps of row 1
    assert torch.isfinite(membrane[:3]).all() and torch.isfinite(membrane[:, 0]).all()
    grads = torch.autograd.grad(membrane.sum() + spikes.sum(), [args.x, args.w_in])
    assert all(g.shape == a.shape for g, a in zip(grads, [args.x, args.w_in]))


def test_long_sequence_keeps_nothing_per_step():
    T, B, N = 100_000, 2, 4
    args = make_inputs(T=T, B=B, F=N, N=N, dtype=torch.float32, state=True)
    kept, (spikes, membrane) = saved_bytes(lambda: torch_ext.recurrent_lif(*args), args)
    assert kept <= T * B * N / 8
    grads = torch.autograd.grad(spikes.sum() + membrane.sum(), [args.x, args.w_rec])
    assert all(torch.isfinite(g).all() for g in grads)
    assert 0 < spikes.mean() < 1


def _rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


@pytest.mark.skipif(not hasattr(__import__("os"), "sysconf"), reason="needs /proc")
def test_no_leak_over_many_calls():
    args = make_inputs(T=5, B=2, F=3, N=4, dtype=torch.float32, state=True)
    inputs = [a for a in args if isinstance(a, torch.Tensor)]

    def step():
        spikes, membrane = torch_ext.recurrent_lif(*args)
        torch.autograd.grad(spikes.sum() + membrane.sum(), inputs)

    for _ in range(500):
        step()
    before = _rss_bytes()
    for _ in range(10_000):
        step()
    assert _rss_bytes() - before < 16 * 2**20


def test_concurrent_calls_equal_sequential_calls():
    inputs = [make_inputs(T=30, B=4, F=8, N=16, dtype=torch.float32, state=True, seed=s)
              for s in range(16)]
    sequential = [run_with_grads(torch_ext.recurrent_lif, a) for a in inputs]
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        concurrent_results = list(pool.map(lambda a: run_with_grads(torch_ext.recurrent_lif, a), inputs))
    for (s1, u1, g1), (s2, u2, g2) in zip(sequential, concurrent_results):
        assert torch.equal(s1, s2) and torch.equal(u1, u2)
        assert all(torch.equal(a, b) for a, b in zip(g1, g2))
