"""The low-memory mode (save_membrane=False): autograd keeps nothing of size
T*B*N beyond the returned spikes; the backward recomputes the membrane by one
product and a replay of the time loop with the known spikes, so every gradient
is bitwise the one of the default mode."""
import itertools
import weakref

import pytest
import torch

import torch_ext
from benchmarks.bench import saved_bytes
from conftest import make_inputs, run_with_grads

GRID = list(itertools.product(["subtract", "zero", "none"], [False, True],
                              ["sigmoid", "fast_sigmoid", "atan", "triangle"]))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("reset,detach,surrogate", GRID)
def test_gradients_bitwise_equal_to_the_default_mode(reset, detach, surrogate, dtype):
    args = make_inputs(dtype=dtype, alpha_shape=(4,), state=True)
    options = dict(reset=reset, detach_reset=detach, surrogate=surrogate)
    s1, u1, g1 = run_with_grads(torch_ext.recurrent_lif, args, **options)
    s2, u2, g2 = run_with_grads(torch_ext.recurrent_lif, args, save_membrane=False, **options)
    assert torch.equal(s1, s2) and torch.equal(u1, u2)
    for a, b in zip(g1, g2):
        assert torch.equal(a, b)


@pytest.mark.parametrize("w_in,bias,state", [(False, True, False), (True, False, True),
                                              (False, False, False)])
def test_without_projection_bias_or_state(w_in, bias, state):
    args = make_inputs(w_in=w_in, bias=bias, state=state)
    s1, u1, g1 = run_with_grads(torch_ext.recurrent_lif, args)
    s2, u2, g2 = run_with_grads(torch_ext.recurrent_lif, args, save_membrane=False)
    for a, b in zip(g1, g2):
        assert torch.equal(a, b)


@pytest.mark.parametrize("shape", [(0, 3, 5, 4), (6, 0, 5, 4), (6, 3, 5, 0)])
def test_empty_dimensions(shape):
    args = make_inputs(*shape)
    s1, u1, g1 = run_with_grads(torch_ext.recurrent_lif, args)
    s2, u2, g2 = run_with_grads(torch_ext.recurrent_lif, args, save_membrane=False)
    for a, b in zip(g1, g2):
        assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_keeps_nothing_of_size_TBN_beyond_the_spikes(dtype):
    T, B, N = 40, 8, 16
    args = make_inputs(T=T, B=B, F=N, N=N, dtype=dtype, state=True)
    neuron_step_bytes = T * B * N * dtype.itemsize

    def kept(save_membrane):
        # Counting the outputs too: the default mode keeps the membrane alive.
        return saved_bytes(lambda: torch_ext.recurrent_lif(*args, save_membrane=save_membrane),
                           args, count_outputs=True)[0]

    assert kept(True) >= 2 * neuron_step_bytes            # spikes and membrane
    assert kept(False) < neuron_step_bytes + 1024         # the spikes (and 0-dim params)


def test_dropped_membrane_is_freed():
    args = make_inputs(T=30, B=4, F=5, N=8)
    spikes, membrane = torch_ext.recurrent_lif(*args, save_membrane=False)

    alive = weakref.ref(membrane)
    del membrane
    assert alive() is None  # nothing in the graph holds it
    spikes.sum().backward()


def test_option_type_is_checked():
    args = make_inputs()
    with pytest.raises(TypeError, match="'save_membrane'"):
        torch_ext.recurrent_lif(*args, save_membrane="no")
