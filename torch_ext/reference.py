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
             flags, lengths, delays=None):
    """The checks of `op`: the Python ones, then the op's own (shapes, dtypes,
    devices, values of the parameters and of lengths), so that the reference
    accepts and rejects exactly what the op does. Then everything in the
    compute dtype: returns (current, recurrence, params, state, slope),
    current the input currents of all steps ``[T, B, N]`` (one product),
    recurrence the recurrent input's `_Recurrence` (None without w_rec),
    params the neuron parameters as tensors and state the initial state
    (zeros for None), each in the op's order, the order of the dicts.
    `delays`: the delay keywords as a dict (`_Recurrence`)."""
    delays = delays or {}
    history = None
    if delays.get("delays") is not None and initial.get("s0") is not None:
        # A spike history [D, B, N] (checked in _Recurrence) passes the op's
        # checks as its last step S[0], which is also R[0].
        history = initial["s0"]
        if history.dim() == 3:
            initial = dict(initial, s0=history[-1])
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
    recurrence = _Recurrence.checked(w_rec, state[-1], history, N, **delays)
    return current, recurrence, params, state, slope


def _recurrent_input(s, w_rec):
    """S[t-1] @ w_rec.T, or w_rec * S[t-1] for a one-to-one [N] w_rec."""
    return s * w_rec if w_rec.dim() == 1 else s @ w_rec.T


def delay_kernel(x, s):
    """kappa(x; s) = max(0, s - |x|) / s^2, written as (a + |a|) / (2 s^2),
    a = s - |x|, so that autograd's derivative at the kinks (d|v|/dv =
    sign(v), sign(0) = 0) is the one the delays' contract defines."""
    a = s - x.abs()
    return (a + a.abs()) / (2 * s * s)


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
    def checked(cls, w_rec, s0, history, N, delays=None, max_delay=None, delay_sigma=0.0,
                rec_mask=None):
        """The checks of the delay keywords against w_rec ([N, N], [N] or None),
        s0 (the [B, N] initial spikes, zeros for None) and the history s0 was
        given as ([D, B, N], [B, N] or None)."""
        def fail(exc, message):
            raise exc(f"recurrent delays: {message}")

        B = s0.shape[0]
        like = dict(dtype=s0.dtype, device=s0.device)
        if rec_mask is not None:
            if w_rec is None:
                fail(ValueError, "'rec_mask' needs a recurrent weight 'w_rec'")
            _check_tensor("rec_mask", rec_mask, (B, N), s0)
            rec_mask = rec_mask.to(s0.dtype)
        if delays is None:
            if max_delay is not None:
                fail(ValueError, "'max_delay' is given without 'delays'")
            if not (isinstance(delay_sigma, (int, float)) and delay_sigma == 0):
                fail(ValueError, "'delay_sigma' is given without 'delays'")
            return None if w_rec is None else cls(w_rec, rec_mask, history=s0)
        if w_rec is None:
            fail(ValueError, "'delays' needs a recurrent weight 'w_rec'")
        if isinstance(max_delay, bool) or not isinstance(max_delay, int) or max_delay < 1:
            fail(ValueError, f"'max_delay' must be an int >= 1 with 'delays', got {max_delay!r}")
        D = max_delay
        if not isinstance(delays, torch.Tensor) or delays.shape not in ((N,), (N, N)):
            got = tuple(delays.shape) if isinstance(delays, torch.Tensor) else type(delays).__name__
            fail(ValueError, f"'delays' must be a tensor [N] (per source neuron) or [N, N] (per "
                             f"synapse) with N = {N}, got {got}")
        if delays.dim() == 2 and w_rec.dim() == 1:
            fail(ValueError, "'delays' of shape [N, N] (per synapse) with a one-to-one [N] "
                             "'w_rec': use [N] delays (per source neuron)")
        _check_tensor("delays", delays, delays.shape, s0)
        if not torch.isfinite(delays).all():
            fail(ValueError, "'delays' must be finite")
        if isinstance(delay_sigma, torch.Tensor):
            if delay_sigma.shape not in ((), (N,)):
                fail(ValueError, f"'delay_sigma' must be a float, a 0-dim tensor or [N] with "
                                 f"N = {N}, got {tuple(delay_sigma.shape)}")
            _check_tensor("delay_sigma", delay_sigma, delay_sigma.shape, s0)
            sigma = delay_sigma.to(s0.dtype)
        elif isinstance(delay_sigma, (int, float)) and not isinstance(delay_sigma, bool):
            sigma = torch.full((), float(delay_sigma), **like)
        else:
            fail(TypeError, f"'delay_sigma' must be a float or a tensor, got "
                            f"{type(delay_sigma).__name__}")
        if not (torch.isfinite(sigma).all() and (sigma >= 0).all()):
            fail(ValueError, "'delay_sigma' must be finite and >= 0")
        if history is None or history.dim() == 2:
            older = s0.new_zeros(D - 1, B, N)  # steps before S[0]: 0
            history = torch.cat([older, s0.unsqueeze(0)])
        elif history.shape != (D, B, N):
            fail(ValueError, f"'s0' must be [B, N] or the spike history [max_delay, B, N] = "
                             f"{[D, B, N]} with delays, got {list(history.shape)}")
        else:
            history = history.to(s0.dtype)
        # K_k, k = 1..D: [D, N] per source, [D, N, N] per synapse (source j last).
        k = torch.arange(1, D + 1, **like).view(D, *([1] * delays.dim()))
        taps = delay_kernel(delays.to(s0.dtype) - k, 1 + sigma)
        return cls(w_rec, rec_mask, taps, list(history.unbind(0)))

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
                rec = buffer.transpose(0, 1).reshape(-1, D * N) @ weights
        return rec if self.mask is None else self.mask * rec

    def push(self, s):
        """S[t], once the step has taken it."""
        if self.taps is None:
            self.history = s
        else:
            self.history = self.history[1:] + [s]


def _delay_keywords(delays, max_delay, delay_sigma, rec_mask, **_):
    return dict(delays=delays, max_delay=max_delay, delay_sigma=delay_sigma, rec_mask=rec_mask)


def _check_tensor(name, t, shape, like):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"recurrent delays: '{name}' must be a tensor, got {type(t).__name__}")
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"recurrent delays: '{name}' must be {list(shape)}, got {list(t.shape)}")
    if not t.is_floating_point():
        raise TypeError(f"recurrent delays: '{name}' must be floating point, got {t.dtype}")
    if t.device != like.device:
        raise ValueError(f"recurrent delays: '{name}' is on {t.device}, x on {like.device}")


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
        _ref.__doc__ += _docs.REFERENCE_DELAYS
