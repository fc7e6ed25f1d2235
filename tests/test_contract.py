"""SPEC-level promises: what is kept for backward, determinism, the grad path."""
import pytest
import torch

import torch_ext
from benchmarks.bench import saved_bytes
from conftest import grad_inputs, make_inputs, run_with_grads


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_saved_for_backward_at_most_one_bit_per_neuron_step(dtype):
    T, B, N = 50, 8, 16
    args = make_inputs(T=T, B=B, F=N, N=N, dtype=dtype, state=True)
    neuron_steps = T * B * N
    fused, _ = saved_bytes(lambda: torch_ext.recurrent_lif(*args), args)
    reference, _ = saved_bytes(lambda: torch_ext.recurrent_lif_ref(*args), args)
    assert fused <= neuron_steps / 8
    assert reference >= 2 * dtype.itemsize * neuron_steps


def test_bitwise_deterministic_whatever_the_thread_count():
    # Large enough that every parallel loop splits into several tasks.
    args = make_inputs(T=20, B=64, F=32, N=256, dtype=torch.float32, alpha_shape=(256,),
                       state=True)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2, 3, 1):
            torch.set_num_threads(n)
            results.append(run_with_grads(torch_ext.recurrent_lif, args))
    finally:
        torch.set_num_threads(threads)
    s0, u0, g0 = results[0]
    for s, u, g in results[1:]:
        assert torch.equal(s, s0) and torch.equal(u, u0)
        for a, b in zip(g, g0):
            assert torch.equal(a, b)


def test_incoming_gradient_of_one_output_only():
    args = make_inputs()
    for pick in (0, 1):
        outs_f = torch_ext.recurrent_lif(*args)
        outs_r = torch_ext.recurrent_lif_ref(*args)
        g_f = torch.autograd.grad(outs_f[pick].pow(2).sum(), grad_inputs(args))
        g_r = torch.autograd.grad(outs_r[pick].pow(2).sum(), grad_inputs(args))
        for a, b in zip(g_f, g_r):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
