"""Variable-length batches: lengths [B]; row b takes steps t < lengths[b],
outputs 0 after them, and gets the gradients of running it alone on its own
length. Done in the kernels (a row stops updating), not by splitting the batch."""
import pytest
import torch

import torch_ext
from torch_ext import RecurrentLIF
from conftest import make_inputs

LENGTHS = [12, 7, 0]  # T = 12 (the default of make_inputs), B = 3


def loss_of(spikes, membrane, weights):
    return (spikes * weights[0]).sum() + (membrane * weights[1]).sum()


def random_weights(T, B, N, seed=5):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(T, B, N, generator=g, dtype=torch.float64) for _ in range(2)]


@pytest.mark.parametrize("fn", [torch_ext.recurrent_lif, torch_ext.recurrent_lif_ref])
@pytest.mark.parametrize("options", [dict(), dict(reset="zero", surrogate="atan"),
                                     dict(detach_reset=True, save_membrane=False)])
def test_each_row_as_if_run_alone(fn, options):
    args = make_inputs(state=True, alpha_shape=(4,))
    T, B, N = args.x.shape[0], args.x.shape[1], args.w_in.shape[0]
    lengths = torch.tensor(LENGTHS)
    weights = random_weights(T, B, N)
    spikes, membrane = fn(*args, lengths=lengths, **options)
    params = [args.w_in, args.w_rec, args.bias, args.alpha, args.theta]
    grads = torch.autograd.grad(loss_of(spikes, membrane, weights), [args.x, args.u0, args.s0, *params])

    want_params = [torch.zeros_like(p) for p in params]
    for b, length in enumerate(LENGTHS):
        assert not spikes[length:, b].any() and not membrane[length:, b].any()
        if length == 0:
            assert not grads[0][:, b].any() and not grads[1][b].any() and not grads[2][b].any()
            continue
        row = args._replace(x=args.x[:length, b:b + 1], u0=args.u0[b:b + 1], s0=args.s0[b:b + 1])
        s_b, u_b = fn(*row, **options)
        assert torch.equal(spikes[:length, b:b + 1], s_b)
        torch.testing.assert_close(membrane[:length, b:b + 1], u_b, rtol=1e-12, atol=1e-12)
        g = torch.autograd.grad(
            loss_of(s_b, u_b, [w[:length, b:b + 1] for w in weights]), [row.x, row.u0, row.s0, *params])
        torch.testing.assert_close(grads[0][:length, b:b + 1], g[0], rtol=1e-10, atol=1e-12)
        assert not grads[0][length:, b].any()
        torch.testing.assert_close(grads[1][b:b + 1], g[1], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(grads[2][b:b + 1], g[2], rtol=1e-10, atol=1e-12)
        want_params = [w + gi for w, gi in zip(want_params, g[3:])]
    for got, want in zip(grads[3:], want_params):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_full_lengths_equal_no_lengths():
    args = make_inputs(state=True)
    T, B = args.x.shape[:2]
    a = torch_ext.recurrent_lif(*args)
    b = torch_ext.recurrent_lif(*args, lengths=torch.full((B,), T))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_module_state_is_the_one_after_each_rows_last_step():
    torch.manual_seed(0)
    layer = RecurrentLIF(5, 6, num_layers=2, dtype=torch.float64)
    x = torch.randn(9, 3, 5, dtype=torch.float64) * 2
    lengths = torch.tensor([9, 4, 0])
    state = (torch.randn(2, 3, 6, dtype=torch.float64), torch.zeros(2, 3, 6, dtype=torch.float64))
    spikes, (u, s) = layer(x, state, lengths=lengths)
    for b, length in enumerate(lengths.tolist()):
        row_state = (state[0][:, b:b + 1], state[1][:, b:b + 1])
        if length == 0:
            assert torch.equal(u[:, b], state[0][:, b]) and torch.equal(s[:, b], state[1][:, b])
            continue
        s_b, (u_b, s_last) = layer(x[:length, b:b + 1], row_state)
        assert torch.equal(spikes[:length, b:b + 1], s_b)
        torch.testing.assert_close(u[:, b:b + 1], u_b, rtol=1e-12, atol=1e-12)
        assert torch.equal(s[:, b:b + 1], s_last)


@pytest.mark.parametrize("bad,exc", [(torch.tensor([12, 13, 0]), ValueError),
                                     (torch.tensor([1, -1, 0]), ValueError),
                                     (torch.tensor([1, 2]), ValueError),
                                     (torch.tensor([1.0, 2.0, 3.0]), TypeError),
                                     ([1, 2, 3], TypeError)])
def test_bad_lengths_name_the_argument(bad, exc):
    args = make_inputs()
    with pytest.raises(exc, match="'lengths'"):
        torch_ext.recurrent_lif(*args, lengths=bad)


@pytest.mark.parametrize("one_to_one", [False, True])
def test_a_row_of_length_0_passes_nothing_back_through_a_non_finite_w_rec(one_to_one):
    """Its zero gradient times an infinite recurrent weight must not reach s0
    as NaN: the row alone takes no step and passes nothing back."""
    args = make_inputs(state=True)
    w_rec = args.w_rec.detach().clone()
    if one_to_one:
        w_rec = w_rec.diagonal().clone()
    w_rec[..., 0] = float("inf")
    args = args._replace(w_rec=w_rec.requires_grad_())
    spikes, membrane = torch_ext.recurrent_lif(*args, lengths=torch.tensor(LENGTHS))
    grad_u0, grad_s0 = torch.autograd.grad(membrane.sum(), [args.u0, args.s0])
    assert not grad_s0[2].any() and not grad_u0[2].any()
