import copy
import pickle

import pytest
import torch

import torch_ext
from torch_ext import RecurrentLIF


def test_shapes_state_and_repr():
    layer = RecurrentLIF(5, 7, dtype=torch.float64)
    x = torch.randn(9, 3, 5, dtype=torch.float64)
    spikes, (u, s) = layer(x)
    assert spikes.shape == (9, 3, 7) and u.shape == s.shape == (3, 7)
    text = repr(layer)
    assert "RecurrentLIF(5, 7" in text and "reset='subtract'" in text
    assert {n for n, _ in layer.named_parameters()} == {"w_in", "w_rec", "bias"}
    assert {n for n, _ in layer.named_buffers()} == {"alpha", "theta"}


def test_learnable_per_neuron_parameters_get_gradients():
    layer = RecurrentLIF(4, 6, learn_alpha=True, learn_theta=True, per_neuron=True,
                         dtype=torch.float64)
    assert layer.alpha.shape == layer.theta.shape == (6,)
    spikes, _ = layer(torch.randn(8, 2, 4, dtype=torch.float64) * 3)
    assert 0 < spikes.mean() < 1
    spikes.sum().backward()
    for p in (layer.w_in, layer.w_rec, layer.bias, layer.alpha, layer.theta):
        assert p.grad is not None and p.grad.shape == p.shape


@pytest.mark.parametrize("reset", ["subtract", "zero", "none"])
def test_fused_and_autograd_backends_agree(reset):
    torch.manual_seed(0)
    fused = RecurrentLIF(5, 6, learn_alpha=True, learn_theta=True, per_neuron=True, reset=reset,
                         return_membrane=True, dtype=torch.float64)
    ref = copy.deepcopy(fused)
    ref.backend = "autograd"
    x = torch.randn(12, 3, 5, dtype=torch.float64) * 2
    outs = []
    for layer in (fused, ref):
        spikes, membrane, (u, s) = layer(x)
        (spikes.sum() + membrane.pow(2).sum() + u.sum()).backward()
        outs.append((spikes, membrane, [p.grad for p in layer.parameters()]))
    assert torch.equal(outs[0][0], outs[1][0])
    torch.testing.assert_close(outs[0][1], outs[1][1], rtol=1e-10, atol=1e-10)
    for a, b in zip(outs[0][2], outs[1][2]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_batch_first_and_state_continuation():
    layer = RecurrentLIF(3, 4, batch_first=True, return_membrane=True, dtype=torch.float64)
    x = torch.randn(2, 10, 3, dtype=torch.float64) * 2
    spikes, membrane, state = layer(x)
    assert spikes.shape == (2, 10, 4) and state[0].shape == (2, 4)
    s1, m1, st1 = layer(x[:, :4])
    s2, m2, st2 = layer(x[:, 4:], st1)
    assert torch.equal(torch.cat([s1, s2], 1), spikes)
    torch.testing.assert_close(torch.cat([m1, m2], 1), membrane, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(st2[0], state[0], rtol=1e-12, atol=1e-12)


def test_empty_sequence_returns_the_given_state():
    layer = RecurrentLIF(3, 4)
    state = (torch.randn(2, 4), torch.ones(2, 4))
    spikes, out_state = layer(torch.zeros(0, 2, 3), state)
    assert spikes.shape == (0, 2, 4)
    assert out_state[0] is state[0] and out_state[1] is state[1]
    spikes, (u, s) = layer(torch.zeros(0, 2, 3))
    assert torch.equal(u, torch.zeros(2, 4)) and torch.equal(s, torch.zeros(2, 4))


def test_alpha_is_clamped_into_range():
    layer = RecurrentLIF(3, 4, learn_alpha=True, dtype=torch.float64)
    with torch.no_grad():
        layer.alpha.fill_(1.7)  # an optimiser step pushed it out of range
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    layer(x)  # no error: the forward passes alpha.clamp(0, 1)
    clamped = copy.deepcopy(layer)
    with torch.no_grad():
        clamped.alpha.fill_(1.0)
    assert torch.equal(layer(x)[0], clamped(x)[0])


def test_no_hidden_state_between_calls():
    layer = RecurrentLIF(3, 4)
    x = torch.randn(6, 2, 3)
    assert torch.equal(layer(x)[0], layer(x)[0])


def test_state_dict_deepcopy_pickle_and_to():
    layer = RecurrentLIF(3, 4, learn_theta=True, per_neuron=True)
    other = RecurrentLIF(3, 4, learn_theta=True, per_neuron=True)
    other.load_state_dict(layer.state_dict())
    x = torch.randn(5, 2, 3)
    assert torch.equal(layer(x)[0], other(x)[0])
    assert torch.equal(copy.deepcopy(layer)(x)[0], layer(x)[0])
    assert torch.equal(pickle.loads(pickle.dumps(layer))(x)[0], layer(x)[0])
    layer64 = layer.to(torch.float64)
    assert layer64.w_in.dtype == layer64.alpha.dtype == torch.float64
    assert layer64(x.double())[0].dtype == torch.float64
