"""Fake (meta) kernels: output shapes, dtypes and strides of the C++ ops without
running them, so torch.compile can trace the layer and opcheck can verify it."""
import torch

from . import _C  # noqa: F401
from ._options import compute_dtype

if hasattr(torch.library, "register_fake"):  # torch >= 2.4
    _register_fake = torch.library.register_fake
else:  # pragma: no cover
    _register_fake = torch.library.impl_abstract


@_register_fake("torch_ext::recurrent_lif_forward")
def _forward_fake(x, w_in, w_rec, bias, alpha, theta, u0, s0, reset, detach_reset, surrogate, slope):
    T, B, F = x.shape
    N = w_in.shape[0] if w_in is not None else F
    return x.new_empty((T, B, N)), x.new_empty((T, B, N), dtype=compute_dtype(x.dtype))


@_register_fake("torch_ext::recurrent_lif_backward")
def _backward_fake(grad_spikes, grad_membrane, x, w_in, w_rec, alpha, theta, u0, s0, spikes,
                   membrane, reset, detach_reset, surrogate, slope, needs_grad):
    # Gradient i is shaped like input i (bias has shape [N] and x's dtype); one
    # not needed is a fresh empty tensor (outputs never alias each other).
    bias_like = membrane.new_empty(membrane.shape[-1:], dtype=x.dtype)
    inputs = (x, w_in, w_rec, bias_like, alpha, theta, u0, s0)
    return tuple(t.new_empty(t.shape) if need and t is not None else x.new_empty((0,))
                 for t, need in zip(inputs, needs_grad))
