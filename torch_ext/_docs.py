"""The docstring texts of the functional ops (torch_ext.recurrent_lif,
recurrent_adlif, recurrent_cubalif) and their plain-PyTorch references,
which take the same arguments and return the same results: each model's
equations and own arguments, and the parts every op shares, written once."""

# The arguments every op takes before its neuron parameters.
_INPUTS = """
        x (Tensor): the input ``[T, B, F]`` (time-major), float16, bfloat16,
            float32 or float64 (the half types compute in float32).
        w_in (Tensor or None): input weights ``[N, F]``; None: no projection,
            ``F == N`` and I[t] = x[t] + bias.
        w_rec (Tensor or None): recurrent weights ``[N, N]``, row i = the
            weights into neuron i; or ``[N]``, one-to-one recurrence (neuron
            i feeds back ``w_rec[i] * S_i[t-1]`` to itself only, O(N) per
            step); None: no recurrence (a feed-forward layer).
        bias (Tensor or None): ``[N]``. Default: ``None``."""

# A decay parameter named alpha, the first of every model's.
_ALPHA = """
        alpha (float or Tensor): membrane decay, in [0, 1]: a float (no
            gradient), a 0-dim tensor (one value, its gradient the full sum)
            or an ``[N]`` tensor (one per neuron); a CUDA tensor's values are
            not checked (that would cost a host synchronisation). Default: ``{alpha}``."""

_S0 = """
        s0 (Tensor or None): initial spikes ``[B, N]`` (any real values; they
            feed the recurrence and the first reset). Default: ``None`` (zeros)."""

_SURROGATE = """
        surrogate (str): ``"sigmoid"``, ``"fast_sigmoid"``, ``"atan"`` or
            ``"triangle"`` (keyword only; formulas in the README).
            Default: ``"sigmoid"``.
        slope (float or None): the surrogate's slope k > 0 (keyword only);
            None takes the surrogate's default: 25, 25, 2, 1 in the order
            above. Default: ``None``."""


def _low_memory(flag, states):
    return f"""
        {flag} (bool): False is the low-memory mode (keyword only):
            autograd keeps nothing of size T*B*N beyond the returned spikes,
            and the backward recomputes {states} (one product and a replay
            of the time loop with the known spikes, so the gradients are
            bitwise the same). The reference computes the same with either
            value. Default: ``True``."""


def _lengths(outputs):
    return f"""
        lengths (Tensor or None): ``[B]`` integers in [0, T], a
            variable-length batch (keyword only): row b takes steps
            ``t < lengths[b]`` only; its later steps output {outputs} 0 and
            pass no gradient, so each row's gradients are those of running it
            alone on its own length; on CUDA its values are not checked (past
            T acts as T, below 0 as 0). Default: ``None``."""


def _raises(values):
    return f"""

    Raises:
        TypeError: an argument of the wrong type (a non-tensor where a tensor
            is needed, a non-bool flag, a tensor of the wrong dtype), naming
            the argument, before any work.
        ValueError: a wrong shape, device, option name or value ({values}, a
            slope out of range), naming the argument, before any work.
        RuntimeError: a second derivative (the op is once-differentiable).
        NotImplementedError: forward-mode AD."""


_EXAMPLE_INPUTS = """

    Example::

        >>> x = torch.randn(100, 16, 40)                    # [T, B, F]
        >>> w_in = (0.2 * torch.randn(128, 40)).requires_grad_()
        >>> w_rec = (0.05 * torch.randn(128, 128)).requires_grad_()"""

FUNCTIONAL = """
    Time-major, t = 1..T, with R[t-1] = S[t-1] (R[0] = s0)::

        I[t] = x[t] @ w_in.T + bias
        U[t] = alpha * U[t-1] + I[t] + S[t-1] @ w_rec.T - theta * R[t-1]   reset="subtract"
        U[t] = alpha * U[t-1] * (1 - R[t-1]) + I[t] + S[t-1] @ w_rec.T      reset="zero"
        U[t] = alpha * U[t-1] + I[t] + S[t-1] @ w_rec.T                     reset="none"
        S[t] = H(U[t] - theta),   H(v) = 1 if v > 0 else 0

    and the backward pass replaces dS/dU by the surrogate sg(U - theta).

    Args:""" + _INPUTS + _ALPHA.format(alpha=0.9) + """
        theta (float or Tensor): threshold, finite; a float, a 0-dim or an
            ``[N]`` tensor, as alpha. Default: ``1.0``.
        u0 (Tensor or None): initial membrane ``[B, N]``. Default: ``None`` (zeros).""" + _S0 + """
        reset (str): ``"subtract"``, ``"zero"`` or ``"none"`` (keyword only).
            Default: ``"subtract"``.
        detach_reset (bool): no gradient through the reset term (keyword
            only). Default: ``False``.""" + _SURROGATE + _low_memory(
    "save_membrane", "the membrane") + _lengths("spikes and membrane") + """

    Returns:
        ``(spikes, membrane)``, each ``[T, B, N]``: S in x's dtype and U (the
        membrane before the reset its own spike causes) in the compute dtype
        (float32, or float64 for float64 input). ``(membrane[-1], spikes[-1])``
        passed as ``(u0, s0)`` continues the sequence. Every tensor argument
        is differentiable.""" + _raises(
    "alpha outside [0, 1], a non-finite float theta") + _EXAMPLE_INPUTS + """
        >>> spikes, membrane = {name}(x, w_in, w_rec, alpha=0.9, theta=1.0,
        ...                                 detach_reset=True, surrogate="atan")
        >>> spikes.shape
        torch.Size([100, 16, 128])
        >>> more, _ = {name}(x, w_in, w_rec, u0=membrane[-1], s0=spikes[-1])
"""

ADLIF_FUNCTIONAL = """
    Time-major, t = 1..T, with R[t] = S[t] in value (R[0] = s0)::

        I[t] = x[t] @ w_in.T + bias
        Q[t] = reset(V[t-1], R[t-1])
        V[t] = alpha * Q[t] + (1 - alpha) * (I[t] + S[t-1] @ w_rec.T - A[t-1])
        S[t] = H(V[t] - theta),   H(v) = 1 if v > 0 else 0
        A[t] = beta * A[t-1] + (1 - beta) * (a * reset(V[t], R[t]) + b * S[t])

    where reset(V, R) is ``V * (1 - R)`` (reset="zero"), ``V - theta * R``
    ("subtract") or ``V`` ("none"). The adaptation A, driven by the membrane
    (a, sub-threshold) and by the spikes (b, spike-triggered), is subtracted
    from the input current; with a = b = 0 and reset "zero" or "none" this
    is the LIF layer of :func:`torch_ext.recurrent_lif` with its input scaled
    by (1 - alpha) (with "subtract" the adaptive neuron subtracts
    alpha * theta * R).
    The backward pass replaces dS/dV by the surrogate sg(V - theta).

    Args:""" + _INPUTS + _ALPHA.format(alpha=0.95) + """
        beta (float or Tensor): adaptation decay, in [0, 1], as alpha.
            Default: ``0.99``.
        a (float or Tensor): the adaptation's coupling to the membrane,
            finite; a float, a 0-dim or an ``[N]`` tensor, as alpha.
            Default: ``0.5``.
        b (float or Tensor): the adaptation's jump per spike, finite, as a.
            Default: ``1.0``.
        theta (float or Tensor): threshold, finite, as a. Default: ``1.0``.
        v0 (Tensor or None): initial membrane ``[B, N]``. Default: ``None`` (zeros).
        a0 (Tensor or None): initial adaptation ``[B, N]``. Default: ``None`` (zeros).""" + _S0 + """
        reset (str): ``"zero"``, ``"subtract"`` or ``"none"`` (keyword only).
            Default: ``"zero"``.
        detach_reset (bool): no gradient through R, the spikes in the two
            resets (keyword only); the spikes in ``b * S[t]`` and in the
            recurrent input always pass their gradient. Default: ``True``.""" + _SURROGATE + \
    _low_memory("save_state", "the membrane and the adaptation") + _lengths(
        "spikes, membrane and adaptation") + """

    Returns:
        ``(spikes, membrane, adaptation)``, each ``[T, B, N]``: S in x's
        dtype, V (before the reset its own spike causes) and A in the
        compute dtype (float32, or float64 for float64 input).
        ``(membrane[-1], adaptation[-1], spikes[-1])`` passed as
        ``(v0, a0, s0)`` continues the sequence. Every tensor argument is
        differentiable.""" + _raises(
    "alpha or beta outside [0, 1], a non-finite float a, b or theta") + _EXAMPLE_INPUTS + """
        >>> spikes, v, adaptation = {name}(x, w_in, w_rec, alpha=0.9, beta=0.98,
        ...                                     a=0.5, b=2.0)
        >>> spikes.shape
        torch.Size([100, 16, 128])
        >>> more = {name}(x, w_in, w_rec, v0=v[-1], a0=adaptation[-1], s0=spikes[-1])
"""

CUBA_FUNCTIONAL = """
    Time-major, t = 1..T, with R[t-1] = S[t-1] (R[0] = s0)::

        I[t] = x[t] @ w_in.T + bias
        J[t] = alpha_syn * J[t-1] + I[t] + S[t-1] @ w_rec.T
        U[t] = alpha * U[t-1] + J[t] - theta * R[t-1]          reset="subtract"
        U[t] = alpha * U[t-1] * (1 - R[t-1]) + J[t]            reset="zero"
        U[t] = alpha * U[t-1] + J[t]                           reset="none"
        S[t] = H(U[t] - theta),   H(v) = 1 if v > 0 else 0

    The synaptic current J filters everything that reaches the neuron, and
    the membrane takes the current of the same step. With alpha_syn = 0 this
    is the LIF layer of :func:`torch_ext.recurrent_lif`. The backward pass
    replaces dS/dU by the surrogate sg(U - theta).

    Args:""" + _INPUTS + _ALPHA.format(alpha=0.9) + """
        alpha_syn (float or Tensor): synaptic current decay, in [0, 1], as
            alpha. Default: ``0.8``.
        theta (float or Tensor): threshold, finite, as alpha. Default: ``1.0``.
        u0 (Tensor or None): initial membrane ``[B, N]``. Default: ``None`` (zeros).
        j0 (Tensor or None): initial synaptic current ``[B, N]``. Default:
            ``None`` (zeros).""" + _S0 + """
        reset (str): ``"subtract"``, ``"zero"`` or ``"none"`` (keyword only).
            Default: ``"subtract"``.
        detach_reset (bool): no gradient through the reset term (keyword
            only). Default: ``False``.""" + _SURROGATE + _low_memory(
    "save_state", "the membrane and the current") + _lengths(
    "spikes, membrane and current") + """

    Returns:
        ``(spikes, membrane, current)``, each ``[T, B, N]``: S in x's dtype,
        U (before the reset its own spike causes) and J in the compute dtype
        (float32, or float64 for float64 input). ``(membrane[-1],
        current[-1], spikes[-1])`` passed as ``(u0, j0, s0)`` continues the
        sequence. Every tensor argument is differentiable.""" + _raises(
    "alpha or alpha_syn outside [0, 1], a non-finite float theta") + _EXAMPLE_INPUTS + """
        >>> spikes, u, j = {name}(x, w_in, w_rec, alpha=0.9, alpha_syn=0.8)
        >>> spikes.shape
        torch.Size([100, 16, 128])
        >>> more = {name}(x, w_in, w_rec, u0=u[-1], j0=j[-1], s0=spikes[-1])
"""


# The recurrent delays, which every op and reference takes.
DELAYS = """
    Recurrent delays (CPU; on CUDA only with TORCH_EXT_CUDA_DELAYS=1, never
    run on a GPU so far). With ``delays`` each recurrent
    connection reads the spike history through a triangular kernel: the
    recurrent input ``S[t-1] @ w_rec.T`` above becomes, with D = max_delay
    and s_j = 1 + delay_sigma_j::

        rec_i[t] = m_i * sum_j w_rec[i,j] * sum_(k=1..D) kappa(delta_ij - k; s_j) * S_j[t-k]
        kappa(x; s) = max(0, s - |x|) / s^2

    Taps outside 1..D are dropped (nothing renormalised); delays = 1 with
    sigma = 0 is the layer without delays. At the kinks kappa is
    differentiated as autograd differentiates ``(a + |a|) / (2 s^2)``,
    a = s - |x|, d|v|/dv = sign(v), sign(0) = 0: an integer delay with
    sigma = 0 gets the central difference. ``rec_mask`` (m) also applies
    without delays. Every tensor of them is differentiable.

    Delay arguments (keyword only):
        delays (Tensor or None): real delays, any finite value, in x's or
            the compute dtype: ``[N, N]`` per synapse (row i = into neuron
            i) or ``[N]`` per source neuron (axonal, delta_ij = delays[j];
            the only kind with a one-to-one w_rec). Needs w_rec.
            Default: ``None`` (no delays).
        max_delay (int or None): D >= 1, the longest tap; required with
            delays. Default: ``None``.
        delay_sigma (float or Tensor): the kernel's spread sigma >= 0: a
            float (no gradient), a 0-dim or an ``[N]`` tensor (per source
            neuron); only with delays. Default: ``0.0`` (linear
            interpolation between the two nearest steps).
        rec_mask (Tensor or None): ``[B, N]``, multiplies every step's
            recurrent input (DelRec's recurrent dropout); needs w_rec.
            Default: ``None``.

    With delays, s0 may be the spike history ``[D, B, N]`` = S[1-D..0],
    oldest first (a ``[B, N]`` s0 is S[0], earlier steps 0), and with the
    other states' last steps ``s0=torch.cat([history, spikes])[-D:]``
    continues the sequence exactly (a first chunk's history: zeros, or
    ``torch.cat([zeros(D - 1, B, N), s0[None]])``).
"""


MODULE_DELAYS = """
    Recurrent delays (DelRec, README "Recurrent delays"; CUDA as the
    functional's): each layer's
    recurrent input reads the spike history through a triangular kernel at
    learnt real delays (the functional's ``delays``, whose formula its
    docstring gives)::

        rec_i[t] = sum_j w_rec[i,j] * sum_(k=1..D) kappa(delta_ij - k; s_j) * S_j[t-k]

    Delay arguments (keyword):
        recurrent_delays (str or None): ``"axonal"``: one delay per source
            neuron, Parameter ``delays`` ``[N]`` (the only kind with
            ``recurrent="one_to_one"``); ``"synaptic"``: one per connection,
            ``delays`` ``[N, N]`` (row i = into neuron i). Default: ``None``
            (no delays; the arguments below must keep their defaults).
        max_delay (int or None): D >= 1, the longest tap, in steps; required
            with delays. Default: ``None``.
        delay_sigma (float): the kernel's spread sigma >= 0 (s = 1 + sigma),
            an attribute to anneal during training (DelRec: 10 *
            0.95^(100 e / E) at epoch e of E, to 0). Default: ``0.0``.
        learn_delay_spread (bool): adds a Parameter ``delay_spread`` ``[N]``
            (zeros): sigma_j = 2 * delay_sigma * sigmoid(delay_spread_j).
            Default: ``False``.
        delay_init_std (float or None): the delays start at 1 + |N(0,
            std^2)| clamped into [1, D] (DelRec's initialisation).
            Default: ``None`` (max_delay / 4).

    The parameters are named ``delays`` and ``delay_spread`` (``_l0`` ...
    in a stack), in float32 for a half-precision module. The forward does
    not clamp the delays (that would zero their gradient at the bounds):
    call :meth:`clamp_delays_` after each optimiser step and
    :meth:`round_delays_` (with ``delay_sigma = 0``) for integer delays,
    as DelRec does. The state's spikes are the spike history of the last D
    steps, oldest first: ``[D, B, N]`` (``[L, D, B, N]`` for a stack,
    ``[D, N]`` unbatched); a given state continues the sequence exactly.
    ``to_nir`` refuses a layer with delays.
"""


def from_snntorch(doc, layer, argument, neuron, what):
    """A from_snntorch docstring completed with the parts both share (None
    stays None, as under python -OO)."""
    if doc is None:
        return None
    return doc.replace("{shared args}", f"""Args:
            linear (nn.Linear): the input projection, ``[N, F]`` weight.
            {argument} (snntorch.{neuron}): the recurrent {what} neurons, N of them.
            batch_first (bool): as the constructor's. Default: ``False``.
            return_membrane (bool): as the constructor's. Default: ``False``.
            backend (str): as the constructor's. Default: ``"fused"``.

        Returns:
            A one-layer ``{layer}`` on linear's device, in its dtype.

        Raises:
            ImportError: snnTorch is not installed.""")
