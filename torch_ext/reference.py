"""Plain-PyTorch references of every neuron op (LIF, adaptive SE-adLIF,
current-based CUBA): the same math as the fused ops, differentiated by
autograd step by step, one `step` function per model and the rest shared. They are the oracles of the tests and the baselines of the
benchmarks, so they are written the way a competent user writes the loop: one
matrix product for the input currents of all steps, unbind over time, one
stack at the end; their cost is linear in T. They keep several tensors per
step alive for backward, which is what the fused ops avoid."""
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


class _RoundedFor(torch.autograd.Function):
    """x's values rounded to dtype (kept in x's dtype) forward; the gradient
    passes as it is (the rounding is what the op's products see of x, and
    the op returns x's gradient unrounded)."""

    @staticmethod
    def forward(ctx, x, dtype):
        return x.to(dtype).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


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


def _prepare(op, x, w_in, w_rec, bias, params, initial, reset, detach_reset, surrogate, slope,
             flags, lengths):
    """The checks of `op`: the Python ones, then the op's own (shapes, dtypes,
    devices, values of the parameters and of lengths), so that the reference
    accepts and rejects exactly what the op does. Then everything in the
    compute dtype: returns (current, w_rec, params, state, slope), current
    the input currents of all steps ``[T, B, N]`` (one product), params the
    neuron parameters as tensors and state the initial state (zeros for
    None), each in the op's order, the order of the dicts."""
    tensors, slope = _options.checked_arguments(op, x, w_in, w_rec, bias, params, initial, reset,
                                                detach_reset, surrogate, slope, flags, lengths)
    getattr(torch.ops.torch_ext, f"_{op}_check")(*tensors, reset, detach_reset, surrogate, slope,
                                                 lengths)
    slope = _options.resolve_slope(op, reset, detach_reset, surrogate, slope, x.dtype)
    compute = _options.compute_dtype(x.dtype)
    if w_in is not None and w_in.dtype != x.dtype:
        # A float32 x with bfloat16/float16 weights: the product takes x
        # rounded to them, and x's gradient passes the rounding as it is.
        x = _RoundedFor.apply(x, w_in.dtype)
        tensors = (x, *tensors[1:])
    x, w_in, w_rec, bias, *rest = [t.to(compute) if t is not None else None for t in tensors]
    params, initial = rest[:len(params)], rest[len(params):]
    T, B, F = x.shape
    N = w_in.shape[0] if w_in is not None else F
    current = x @ w_in.T if w_in is not None else x
    if bias is not None:
        current = current + bias
    state = [value if value is not None else x.new_zeros(B, N) for value in initial]
    return current, w_rec, params, state, slope


def _recurrent_input(s, w_rec):
    """S[t-1] @ w_rec.T, or w_rec * S[t-1] for a one-to-one [N] w_rec."""
    return s * w_rec if w_rec.dim() == 1 else s @ w_rec.T


def _reset(v, r, theta, reset):
    """reset(V, R): V * (1 - R) ("zero"), V - theta * R ("subtract"), V ("none")."""
    if reset == "zero":
        return v * (1 - r)
    if reset == "subtract":
        return v - theta * r
    return v


def _scan(step, current, state, lengths, spike_dtype):
    """Runs ``state = step(current[t], *state)`` over t = 0..T-1 and stacks
    each state component over time. The state's first component is the
    spikes, returned in spike_dtype; the others stay in the compute dtype.
    With lengths, rows past their length get a zero state (output 0), and so
    no gradient through those steps."""
    B, N = current.shape[1], current.shape[2]
    outputs = []
    # unbind, not current[t]: the backward of each current[t] would build a
    # zero-filled [T, B, N] tensor, which makes the backward quadratic in T.
    for t, current_t in enumerate(current.unbind(0)):
        state = step(current_t, *state)
        if lengths is not None:  # rows past their length: 0, and no gradient through them
            taken = (t < lengths).unsqueeze(1)
            state = tuple(torch.where(taken, value, 0.0) for value in state)
        outputs.append(state)
    if not outputs:
        stacked = [current.new_empty(0, B, N) for _ in state]
    else:
        stacked = [torch.stack(values) for values in zip(*outputs)]
    return (stacked[0].to(spike_dtype), *stacked[1:])


def recurrent_lif_ref(x, w_in, w_rec, bias=None, alpha=0.9, theta=1.0, u0=None, s0=None, *,
                      reset="subtract", detach_reset=False, surrogate="sigmoid", slope=None,
                      save_membrane=True, lengths=None):
    """The plain-PyTorch reference of :func:`torch_ext.recurrent_lif`: the
    same arguments, checks and results, computed by a Python loop over time
    that autograd differentiates step by step (the tests' oracle; it keeps
    several tensors per step for backward, which the fused op does not).
    """
    # save_membrane is checked but changes nothing here: the same math either way.
    current, w_rec, (alpha, theta), (u, s), slope = _prepare(
        "recurrent_lif", x, w_in, w_rec, bias, dict(alpha=alpha, theta=theta),
        dict(u0=u0, s0=s0), reset, detach_reset, surrogate, slope,
        dict(save_membrane=save_membrane), lengths)

    def step(current_t, s, u):
        r = s.detach() if detach_reset else s
        # Summed in the order the equations are written, like the fused op.
        u = alpha * u * (1 - r) if reset == "zero" else alpha * u
        u = u + current_t
        if w_rec is not None:  # all-to-all [N, N], or one-to-one [N]
            u = u + _recurrent_input(s, w_rec)
        if reset == "subtract":
            u = u - theta * r
        return _Heaviside.apply(u - theta, surrogate, slope), u

    return _scan(step, current, (s, u), lengths, x.dtype)


def recurrent_adlif_ref(x, w_in, w_rec, bias=None, alpha=0.95, beta=0.99, a=0.5, b=1.0, theta=1.0,
                        v0=None, a0=None, s0=None, *, reset="zero", detach_reset=True,
                        surrogate="sigmoid", slope=None, save_state=True, lengths=None):
    """The plain-PyTorch reference of :func:`torch_ext.recurrent_adlif`: the
    same arguments, checks and results, computed by a Python loop over time
    that autograd differentiates step by step (the tests' oracle).
    """
    # save_state is checked but changes nothing here: the same math either way.
    current, w_rec, (alpha, beta, a, b, theta), (v, w, s), slope = _prepare(
        "recurrent_adlif", x, w_in, w_rec, bias,
        dict(alpha=alpha, beta=beta, a=a, b=b, theta=theta), dict(v0=v0, a0=a0, s0=s0),
        reset, detach_reset, surrogate, slope, dict(save_state=save_state), lengths)

    def step(current_t, s, v, w):  # w: the adaptation A
        r = s.detach() if detach_reset else s  # R: only the resets see it detached
        # Summed in the order the equations are written, like the fused op.
        total = current_t + _recurrent_input(s, w_rec) if w_rec is not None else current_t
        v = alpha * _reset(v, r, theta, reset) + (1 - alpha) * (total - w)
        s = _Heaviside.apply(v - theta, surrogate, slope)
        r = s.detach() if detach_reset else s
        w = beta * w + (1 - beta) * (a * _reset(v, r, theta, reset) + b * s)
        return s, v, w

    return _scan(step, current, (s, v, w), lengths, x.dtype)


def recurrent_cubalif_ref(x, w_in, w_rec, bias=None, alpha=0.9, alpha_syn=0.8, theta=1.0,
                          u0=None, j0=None, s0=None, *, reset="subtract", detach_reset=False,
                          surrogate="sigmoid", slope=None, save_state=True, lengths=None):
    """The plain-PyTorch reference of :func:`torch_ext.recurrent_cubalif`:
    the same arguments, checks and results, computed by a Python loop over
    time that autograd differentiates step by step (the tests' oracle).
    """
    # save_state is checked but changes nothing here: the same math either way.
    current, w_rec, (alpha, alpha_syn, theta), (u, j, s), slope = _prepare(
        "recurrent_cubalif", x, w_in, w_rec, bias,
        dict(alpha=alpha, alpha_syn=alpha_syn, theta=theta), dict(u0=u0, j0=j0, s0=s0),
        reset, detach_reset, surrogate, slope, dict(save_state=save_state), lengths)

    def step(current_t, s, u, j):
        r = s.detach() if detach_reset else s
        # Summed in the order the equations are written, like the fused op.
        j = alpha_syn * j + current_t
        if w_rec is not None:
            j = j + _recurrent_input(s, w_rec)
        u = alpha * u * (1 - r) if reset == "zero" else alpha * u
        u = u + j
        if reset == "subtract":
            u = u - theta * r
        return _Heaviside.apply(u - theta, surrogate, slope), u, j

    return _scan(step, current, (s, u, j), lengths, x.dtype)


if recurrent_lif_ref.__doc__ is not None:  # None under python -OO
    recurrent_lif_ref.__doc__ += _docs.FUNCTIONAL.format(name="torch_ext.recurrent_lif_ref")
    recurrent_adlif_ref.__doc__ += _docs.ADLIF_FUNCTIONAL.format(
        name="torch_ext.recurrent_adlif_ref")
    recurrent_cubalif_ref.__doc__ += _docs.CUBA_FUNCTIONAL.format(
        name="torch_ext.recurrent_cubalif_ref")
