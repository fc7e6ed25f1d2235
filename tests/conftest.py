from typing import NamedTuple, Optional, Union

import pytest
import torch

import torch_ext  # noqa: F401


class LIFArgs(NamedTuple):
    """The positional tensor arguments of recurrent_lif, in order (None where
    absent; alpha and theta may be Python floats). Iterable, so fn(*args) works;
    args._replace(s0=...) gives a copy with one argument changed."""
    x: torch.Tensor
    w_in: Optional[torch.Tensor]
    w_rec: Optional[torch.Tensor]
    bias: Optional[torch.Tensor]
    alpha: Union[torch.Tensor, float]
    theta: Union[torch.Tensor, float]
    u0: Optional[torch.Tensor]
    s0: Optional[torch.Tensor]


def make_inputs(T=12, B=3, F=5, N=4, *, dtype=torch.float64, device="cpu", w_in=True,
                w_rec=True, bias=True, alpha_shape=(), theta_shape=(), state=False,
                requires_grad=True, seed=0):
    """Random inputs scaled so that roughly a third of the neuron-steps spike.
    Returns the positional arguments of recurrent_lif as an LIFArgs."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0, low=None, high=None):
        if low is not None:
            t = torch.rand(shape, generator=g, dtype=torch.float64) * (high - low) + low
        else:
            t = torch.randn(shape, generator=g, dtype=torch.float64) * scale
        return t.to(dtype=dtype, device=device).requires_grad_(requires_grad)

    F = F if w_in else N
    x = rand(T, B, F, scale=1.0)
    w_in = rand(N, F, scale=1.2 / max(F, 1) ** 0.5) if w_in else None
    w_rec = rand(N, N, scale=0.6 / max(N, 1) ** 0.5) if w_rec else None
    bias = rand(N, scale=0.4) if bias else None
    alpha = rand(*alpha_shape, low=0.6, high=0.95) if alpha_shape is not None else 0.85
    theta = rand(*theta_shape, low=0.8, high=1.2) if theta_shape is not None else 1.0
    u0 = rand(B, N, scale=0.8) if state else None
    s0 = None
    if state:  # binary previous spikes, as a continued sequence would pass them
        s0 = (torch.rand(B, N, generator=g) > 0.5).to(dtype=dtype, device=device)
        s0 = s0.requires_grad_(requires_grad)
    return LIFArgs(x, w_in, w_rec, bias, alpha, theta, u0, s0)


def grad_inputs(args):
    return [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]


def run_with_grads(fn, args, seed=1, **options):
    """Outputs and the gradients of a random linear function of both outputs."""
    spikes, membrane = fn(*args, **options)
    g = torch.Generator().manual_seed(seed)
    w_s = torch.randn(spikes.shape, generator=g, dtype=torch.float64).to(membrane)
    w_u = torch.randn(membrane.shape, generator=g, dtype=torch.float64).to(membrane)
    loss = (spikes.to(membrane.dtype) * w_s).sum() + (membrane * w_u).sum()
    inputs = grad_inputs(args)
    if not loss.requires_grad:  # the reference's empty outputs (T = 0) have no graph
        return spikes, membrane, [torch.zeros_like(a) for a in inputs]
    grads = torch.autograd.grad(loss, inputs, allow_unused=True)
    return spikes, membrane, [torch.zeros_like(a) if g is None else g for a, g in zip(inputs, grads)]


cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
