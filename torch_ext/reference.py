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
             flags, lengths, delays):
    """The checks of `op`: the Python ones, then the op's own (shapes, dtypes,
    devices, values of the parameters, of lengths and of the delays'
    arguments), so that the reference accepts and rejects exactly what the op
    does. Then everything in the compute dtype: returns (current, recurrence,
    params, state, slope), current the input currents of all steps
    ``[T, B, N]`` (one product), recurrence the recurrent input's
    `_Recurrence` (None without w_rec), params the neuron parameters as
    tensors and state the initial state (zeros for None; s0 then S[0] of a
    spike history), each in the op's order, the order of the dicts.
    `delays`: the delay keywords by name."""
    tensors, slope = _options.checked_arguments(op, x, w_in, w_rec, bias, params, initial, reset,
                                                detach_reset, surrogate, slope, flags, lengths)
    delay_args = _options.checked_delays(op, x, **delays)
    getattr(torch.ops.torch_ext, f"_{op}_check")(*tensors, reset, detach_reset, surrogate, slope,
                                                 lengths, *delay_args)
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
    history = state[-1] if state[-1].dim() == 3 else None  # the spike history [D, B, N]
    if history is not None:
        state[-1] = history[-1]
    delays, max_delay, sigma, mask = [t.to(compute) if isinstance(t, torch.Tensor) else t
                                      for t in delay_args]
    recurrence = _Recurrence.build(w_rec, state[-1], history, delays, max_delay, sigma, mask)
    return current, recurrence, params, state, slope


def _recurrent_input(s, w_rec):
    """S[t-1] @ w_rec.T, or w_rec * S[t-1] for a one-to-one [N] w_rec."""
    return s * w_rec if w_rec.dim() == 1 else s @ w_rec.T


def delay_kernel(x, s):
    """kappa(x; s) = max(0, s - |x|) / s^2, written as (a/2 + |a|/2) / s^2,
    a = s - |x|, so that autograd's derivative at the kinks (d|v|/dv =
    sign(v), sign(0) = 0) is the one the delays' contract defines (and the
    value, a or 0 over s^2, is the fused op's to the bit)."""
    a = s - x.abs()
    return (0.5 * a + 0.5 * a.abs()) / (s * s)


class _Recurrence:
    """The recurrent input of each step and the spike history it reads.

    Without delays: rec[t] = S[t-1] @ w_rec.T (one-to-one: w_rec * S[t-1]).
    With delays (D = max_delay), each recurrent connection reads the spike
    history through the triangular kernel:

        rec_i[t] = m_i * sum_j w_rec[i,j] sum_{k=1..D} kappa(delta_ij - k; s_j) S_j[t-k]

    s = 1 + delay_sigma (per source j), delta = delays ([N, N] per synapse;
    [N] per source neuron, delta_ij = delays[j]), m = rec_mask ([B, N], 1 if
    None). As the expert loop a user writes (DelRec's buffer): the taps K_k
    once per call, the last D spikes in a buffer, one product per step (per
    source: P[t] = sum_k K_k * S[t-k], then P[t] @ w_rec.T; per synapse:
    the buffer [B, D*N] times the stacked W_k = w_rec * K_k)."""

    def __init__(self, w_rec, mask, taps=None, history=None):
        self.w_rec, self.mask, self.taps, self.history = w_rec, mask, taps, history

    @classmethod
    def build(cls, w_rec, s0, history, delays, max_delay, sigma, mask):
        """From checked arguments in the compute dtype: s0 the [B, N] spikes
        S[0], history the [D, B, N] spike history if s0 was given as one."""
        if w_rec is None:
            return None
        if delays is None:
            return cls(w_rec, mask, history=s0)
        D, (B, N) = max_delay, s0.shape
        if history is None:  # steps before S[0]: 0
            history = torch.cat([s0.new_zeros(D - 1, B, N), s0.unsqueeze(0)])
        # K_k, k = 1..D: [D, N] per source, [D, N, N] per synapse (source j last).
        k = torch.arange(1, D + 1, dtype=s0.dtype, device=s0.device)
        s = 1 + sigma if sigma is not None else torch.ones((), dtype=s0.dtype, device=s0.device)
        taps = delay_kernel(delays - k.view(D, *([1] * delays.dim())), s)
        return cls(w_rec, mask, taps, list(history.unbind(0)))

    def input(self):
        """rec[t] from the spikes before t."""
        if self.taps is None:
            rec = _recurrent_input(self.history, self.w_rec)
        else:
            buffer = torch.stack(self.history[::-1])  # [D, B, N], S[t-1] first (k = 1)
            if self.taps.dim() == 2:  # per source
                rec = _recurrent_input((self.taps.unsqueeze(1) * buffer).sum(0), self.w_rec)
            else:  # per synapse: [B, D*N] @ [D*N, N]
                D, N = self.taps.shape[0], self.taps.shape[1]
                weights = (self.w_rec * self.taps).transpose(1, 2).reshape(D * N, N)
                rec = buffer.transpose(0, 1).reshape(buffer.shape[1], D * N) @ weights
        return rec if self.mask is None else self.mask * rec

    def push(self, s):
        """S[t], once the step has taken it."""
        if self.taps is None:
            self.history = s
        else:
            self.history = self.history[1:] + [s]


def _delay_keywords(delays, max_delay, delay_sigma, rec_mask, **_):
    return dict(delays=delays, max_delay=max_delay, delay_sigma=delay_sigma, rec_mask=rec_mask)


def _reset(v, r, theta, reset):
    """reset(V, R): V * (1 - R) ("zero"), V - theta * R ("subtract"), V ("none")."""
    if reset == "zero":
        return v * (1 - r)
    if reset == "subtract":
        return v - theta * r
    return v


def _scan(step, current, recurrence, state, lengths, spike_dtype):
    """Runs ``state = step(current[t], rec[t], *state)`` over t = 0..T-1, rec[t]
    the recurrent input from `recurrence` (None without w_rec), and stacks
    each state component over time. The state's first component is the
    spikes, returned in spike_dtype; the others stay in the compute dtype.
    With lengths, rows past their length get a zero state (output 0), and so
    no gradient through those steps."""
    B, N = current.shape[1], current.shape[2]
    outputs = []
    # unbind, not current[t]: the backward of each current[t] would build a
    # zero-filled [T, B, N] tensor, which makes the backward quadratic in T.
    for t, current_t in enumerate(current.unbind(0)):
        rec = recurrence.input() if recurrence is not None else None
        state = step(current_t, rec, *state)
        if lengths is not None:  # rows past their length: 0, and no gradient through them
            taken = (t < lengths).unsqueeze(1)
            state = tuple(torch.where(taken, value, 0.0) for value in state)
        if recurrence is not None:
            recurrence.push(state[0])
        outputs.append(state)
    if not outputs:
        stacked = [current.new_empty(0, B, N) for _ in state]
    else:
        stacked = [torch.stack(values) for values in zip(*outputs)]
    return (stacked[0].to(spike_dtype), *stacked[1:])


def recurrent_lif_ref(x, w_in, w_rec, bias=None, alpha=0.9, theta=1.0, u0=None, s0=None, *,
                      reset="subtract", detach_reset=False, surrogate="sigmoid", slope=None,
                      save_membrane=True, lengths=None, delays=None, max_delay=None,
                      delay_sigma=0.0, rec_mask=None):
    """The plain-PyTorch reference of :func:`torch_ext.recurrent_lif`: the
    same arguments, checks and results, computed by a Python loop over time
    that autograd differentiates step by step (the tests' oracle; it keeps
    several tensors per step for backward, which the fused op does not).
    """
    # save_membrane is checked but changes nothing here: the same math either way.
    current, recurrence, (alpha, theta), (u, s), slope = _prepare(
        "recurrent_lif", x, w_in, w_rec, bias, dict(alpha=alpha, theta=theta),
        dict(u0=u0, s0=s0), reset, detach_reset, surrogate, slope,
        dict(save_membrane=save_membrane), lengths, _delay_keywords(**locals()))

    def step(current_t, rec, s, u):
        r = s.detach() if detach_reset else s
        # Summed in the order the equations are written, like the fused op.
        u = alpha * u * (1 - r) if reset == "zero" else alpha * u
        u = u + current_t
        if rec is not None:
            u = u + rec
        if reset == "subtract":
            u = u - theta * r
        return _Heaviside.apply(u - theta, surrogate, slope), u

    return _scan(step, current, recurrence, (s, u), lengths, x.dtype)


def recurrent_adlif_ref(x, w_in, w_rec, bias=None, alpha=0.95, beta=0.99, a=0.5, b=1.0, theta=1.0,
                        v0=None, a0=None, s0=None, *, reset="zero", detach_reset=True,
                        surrogate="sigmoid", slope=None, save_state=True, lengths=None,
                        delays=None, max_delay=None, delay_sigma=0.0, rec_mask=None):
    """The plain-PyTorch reference of :func:`torch_ext.recurrent_adlif`: the
    same arguments, checks and results, computed by a Python loop over time
    that autograd differentiates step by step (the tests' oracle).
    """
    # save_state is checked but changes nothing here: the same math either way.
    current, recurrence, (alpha, beta, a, b, theta), (v, w, s), slope = _prepare(
        "recurrent_adlif", x, w_in, w_rec, bias,
        dict(alpha=alpha, beta=beta, a=a, b=b, theta=theta), dict(v0=v0, a0=a0, s0=s0),
        reset, detach_reset, surrogate, slope, dict(save_state=save_state), lengths,
        _delay_keywords(**locals()))

    def step(current_t, rec, s, v, w):  # w: the adaptation A
        r = s.detach() if detach_reset else s  # R: only the resets see it detached
        # Summed in the order the equations are written, like the fused op.
        total = current_t + rec if rec is not None else current_t
        v = alpha * _reset(v, r, theta, reset) + (1 - alpha) * (total - w)
        s = _Heaviside.apply(v - theta, surrogate, slope)
        r = s.detach() if detach_reset else s
        w = beta * w + (1 - beta) * (a * _reset(v, r, theta, reset) + b * s)
        return s, v, w

    return _scan(step, current, recurrence, (s, v, w), lengths, x.dtype)


def recurrent_cubalif_ref(x, w_in, w_rec, bias=None, alpha=0.9, alpha_syn=0.8, theta=1.0,
                          u0=None, j0=None, s0=None, *, reset="subtract", detach_reset=False,
                          surrogate="sigmoid", slope=None, save_state=True, lengths=None,
                          delays=None, max_delay=None, delay_sigma=0.0, rec_mask=None):
    """The plain-PyTorch reference of :func:`torch_ext.recurrent_cubalif`:
    the same arguments, checks and results, computed by a Python loop over
    time that autograd differentiates step by step (the tests' oracle).
    """
    # save_state is checked but changes nothing here: the same math either way.
    current, recurrence, (alpha, alpha_syn, theta), (u, j, s), slope = _prepare(
        "recurrent_cubalif", x, w_in, w_rec, bias,
        dict(alpha=alpha, alpha_syn=alpha_syn, theta=theta), dict(u0=u0, j0=j0, s0=s0),
        reset, detach_reset, surrogate, slope, dict(save_state=save_state), lengths,
        _delay_keywords(**locals()))

    def step(current_t, rec, s, u, j):
        r = s.detach() if detach_reset else s
        # Summed in the order the equations are written, like the fused op.
        j = alpha_syn * j + current_t
        if rec is not None:
            j = j + rec
        u = alpha * u * (1 - r) if reset == "zero" else alpha * u
        u = u + j
        if reset == "subtract":
            u = u - theta * r
        return _Heaviside.apply(u - theta, surrogate, slope), u, j

    return _scan(step, current, recurrence, (s, u, j), lengths, x.dtype)


if recurrent_lif_ref.__doc__ is not None:  # None under python -OO
    recurrent_lif_ref.__doc__ += _docs.FUNCTIONAL.format(name="torch_ext.recurrent_lif_ref")
    recurrent_adlif_ref.__doc__ += _docs.ADLIF_FUNCTIONAL.format(
        name="torch_ext.recurrent_adlif_ref")
    recurrent_cubalif_ref.__doc__ += _docs.CUBA_FUNCTIONAL.format(
        name="torch_ext.recurrent_cubalif_ref")
    for _ref in (recurrent_lif_ref, recurrent_adlif_ref, recurrent_cubalif_ref):
        _ref.__doc__ += _docs.DELAYS
