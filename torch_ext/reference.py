"""Plain-PyTorch reference of the recurrent LIF layer: the same math as the
fused op, differentiated by autograd step by step. It is the oracle of the tests
and the baseline of the benchmarks, so it is written the way a competent user
writes the loop: one matrix product for the input currents of all steps,
unbind over time, one stack at the end; its cost is linear in T. It keeps
several tensors per step alive for backward, which is what the fused op avoids."""
import math

import torch

from . import _C  # noqa: F401  (loading it registers torch.ops.torch_ext)
from . import _docs, _options


def surrogate_grad_ref(v, surrogate, slope):
    """sg(v), the stand-in for dH/dv in the backward pass (README table)."""
    k = slope
    if surrogate == "sigmoid":
        e = torch.exp(-k * v.abs())  # stable form of k * s * (1 - s), s = sigmoid(k v)
        return k * e / ((1 + e) * (1 + e))
    if surrogate == "fast_sigmoid":
        d = 1 + k * v.abs()
        return 1 / (d * d)
    if surrogate == "atan":
        z = (math.pi / 2) * k * v
        return (k / 2) / (1 + z * z)
    if surrogate == "triangle":
        return k * torch.clamp(1 - k * v.abs(), min=0)
    raise ValueError(f"unknown surrogate {surrogate!r}")


class _Heaviside(torch.autograd.Function):
    """H(v) = 1 if v > 0 else 0 forward, sg(v) backward."""

    @staticmethod
    def forward(ctx, v, surrogate, slope):
        ctx.save_for_backward(v)
        ctx.surrogate, ctx.slope = surrogate, slope
        return (v > 0).to(v.dtype)

    @staticmethod
    def backward(ctx, grad):
        (v,) = ctx.saved_tensors
        return grad * surrogate_grad_ref(v, ctx.surrogate, ctx.slope), None, None


def recurrent_lif_ref(x, w_in, w_rec, bias=None, alpha=0.9, theta=1.0, u0=None, s0=None, *,
                      reset="subtract", detach_reset=False, surrogate="sigmoid", slope=None,
                      save_membrane=True, lengths=None):
    """The plain-PyTorch reference of :func:`torch_ext.recurrent_lif`: the
    same arguments, checks and results, computed by a Python loop over time
    that autograd differentiates step by step (the tests' oracle; it keeps
    several tensors per step for backward, which the fused op does not).
    """
    # save_membrane is checked but changes nothing here: the same math either way.
    alpha, theta, slope = _options.check_call(
        x, alpha, theta, reset, detach_reset, surrogate, slope, save_membrane,
        w_in=w_in, w_rec=w_rec, bias=bias, u0=u0, s0=s0, lengths=lengths)
    # The op's own checks (shapes, dtypes, devices, values of alpha and lengths),
    # so the reference accepts and rejects exactly what the op does.
    torch.ops.torch_ext._recurrent_lif_check(
        x, w_in, w_rec, bias, _options.as_tensor_param(alpha, x),
        _options.as_tensor_param(theta, x), u0, s0, reset, detach_reset, surrogate, slope, lengths)
    slope = _options.resolve_slope(reset, detach_reset, surrogate, slope, x.dtype)
    compute = _options.compute_dtype(x.dtype)

    def c(t):
        return t.to(compute) if isinstance(t, torch.Tensor) else t

    out_dtype = x.dtype
    x, w_in, w_rec, bias, alpha, theta, u0, s0 = map(c, (x, w_in, w_rec, bias, alpha, theta, u0, s0))
    T, B, F = x.shape
    N = w_in.shape[0] if w_in is not None else F
    current = x @ w_in.T if w_in is not None else x
    if bias is not None:
        current = current + bias
    u = u0 if u0 is not None else x.new_zeros(B, N)
    s = s0 if s0 is not None else x.new_zeros(B, N)
    spikes, membrane = [], []
    # unbind, not current[t]: the backward of each current[t] would build a
    # zero-filled [T, B, N] tensor, which makes the backward quadratic in T.
    for t, current_t in enumerate(current.unbind(0)):
        r = s.detach() if detach_reset else s
        # Summed in the order the equations are written, like the fused op.
        u = alpha * u * (1 - r) if reset == "zero" else alpha * u
        u = u + current_t
        if w_rec is not None:  # all-to-all [N, N], or one-to-one [N]
            u = u + (s * w_rec if w_rec.dim() == 1 else s @ w_rec.T)
        if reset == "subtract":
            u = u - theta * r
        s = _Heaviside.apply(u - theta, surrogate, slope)
        if lengths is not None:  # rows past their length: 0, and no gradient through them
            taken = (t < lengths).unsqueeze(1)
            u, s = torch.where(taken, u, 0.0), torch.where(taken, s, 0.0)
        spikes.append(s)
        membrane.append(u)
    if T == 0:
        empty = x.new_empty(0, B, N)
        return empty.to(out_dtype), empty
    return torch.stack(spikes).to(out_dtype), torch.stack(membrane)


if recurrent_lif_ref.__doc__ is not None:  # None under python -OO
    recurrent_lif_ref.__doc__ += _docs.FUNCTIONAL.format(name="torch_ext.recurrent_lif_ref")
