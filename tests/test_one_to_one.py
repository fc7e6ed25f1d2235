"""One-to-one recurrence: w_rec of shape [N], neuron i feeding back
w_rec[i] * S_i[t-1] to itself only, at O(N) per step; the same as the
all-to-all op with w_rec = diag(v), and as the reference."""
import pytest
import torch

import torch_ext
from conftest import make_inputs, run_with_grads

OPTIONS = [dict(reset=r, detach_reset=d, surrogate=s)
           for r in ("subtract", "zero", "none") for d in (False, True)
           for s in ("sigmoid", "atan")]


def with_vector_w_rec(args, seed=3):
    g = torch.Generator().manual_seed(seed)
    N = args.w_rec.shape[0]
    v = (torch.randn(N, generator=g, dtype=torch.float64) * 0.8).to(args.w_rec.dtype)
    return args._replace(w_rec=v.requires_grad_())


@pytest.mark.parametrize("options", OPTIONS)
def test_matches_the_dense_op_with_a_diagonal_w_rec(options):
    args = with_vector_w_rec(make_inputs(state=True, alpha_shape=(4,)))
    dense = args._replace(w_rec=torch.diag(args.w_rec.detach()).requires_grad_())
    s1, u1, g1 = run_with_grads(torch_ext.recurrent_lif, args, **options)
    s2, u2, g2 = run_with_grads(torch_ext.recurrent_lif, dense, **options)
    assert torch.equal(s1, s2)
    torch.testing.assert_close(u1, u2, rtol=1e-12, atol=1e-12)
    for name, a, b in zip(args._fields, g1, g2):
        if name == "w_rec":
            b = torch.diagonal(b)  # the dense gradient's diagonal is the vector's gradient
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, msg=name)
    assert s1.mean() > 0.05


@pytest.mark.parametrize("options", OPTIONS)
def test_matches_the_reference(options):
    args = with_vector_w_rec(make_inputs(state=True))
    s1, u1, g1 = run_with_grads(torch_ext.recurrent_lif, args, **options)
    s2, u2, g2 = run_with_grads(torch_ext.recurrent_lif_ref, args, **options)
    assert torch.equal(s1, s2)
    torch.testing.assert_close(u1, u2, rtol=1e-12, atol=1e-12)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_low_memory_mode_and_float32():
    args = with_vector_w_rec(make_inputs(dtype=torch.float32, state=True))
    s1, u1, g1 = run_with_grads(torch_ext.recurrent_lif, args)
    s2, u2, g2 = run_with_grads(torch_ext.recurrent_lif, args, save_membrane=False)
    for a, b in zip(g1, g2):
        assert torch.equal(a, b)


def test_wrong_vector_length_names_w_rec():
    args = make_inputs()
    with pytest.raises(ValueError, match="'w_rec'.*one-to-one"):
        torch_ext.recurrent_lif(*args._replace(w_rec=torch.zeros(5, dtype=torch.float64)))
