"""torch_ext.RecurrentLIF: the fused layer as a drop-in nn.Module."""
import math
import numbers
import warnings

import torch
from torch import nn
from torch.nn import functional as F

from . import _options
from .functional import recurrent_lif
from .reference import recurrent_lif_ref

RECURRENT = ("all_to_all", "one_to_one", "none")
BACKENDS = {"fused": recurrent_lif, "autograd": recurrent_lif_ref}


class RecurrentLIF(nn.Module):
    r"""A recurrent layer of leaky integrate-and-fire (LIF) neurons, or a stack
    of such layers, run over a whole sequence by one fused op per layer.

    Per layer, time-major, with R[t-1] = S[t-1] (README, "The model")::

        I[t] = x[t] @ w_in.T + bias
        U[t] = alpha * U[t-1] + I[t] + S[t-1] @ w_rec.T - theta * R[t-1]    (reset="subtract")
        S[t] = H(U[t] - theta)                        (H(0) = 0; U == theta does not fire)

    Like ``nn.RNN``, the layer keeps no state between calls: ``forward`` takes
    the state and returns the final one. alpha is clamped into [0, 1] in the
    forward (so an optimiser step may push it out of range harmlessly).

    Args:
        in_features (int): F, the size of each input vector.
        hidden_size (int): N, the number of neurons per layer.
        bias (bool): learn a bias ``[N]`` per layer. Default: ``True``.
        alpha (float or Tensor): initial membrane decay, in [0, 1]: a float or a
            0-dim tensor (one value for all neurons), or an ``[N]`` tensor (one
            per neuron; implies ``per_neuron`` for alpha). Default: ``0.9``.
        theta (float or Tensor): initial threshold, finite: a float, a 0-dim or
            an ``[N]`` tensor, as alpha. Default: ``1.0``.
        learn_alpha (bool): alpha is an ``nn.Parameter`` (else a buffer).
            Default: ``False``.
        learn_theta (bool): theta is an ``nn.Parameter`` (else a buffer).
            Default: ``False``.
        per_neuron (bool): alpha and theta get one value per neuron, shape
            ``[N]``, filled with the initial value. Default: ``False`` (shape
            ``[]``, unless the initial value is an ``[N]`` tensor).
        reset (str): ``"subtract"`` (U -= theta after a spike), ``"zero"``
            (alpha * U is dropped after a spike) or ``"none"``.
            Default: ``"subtract"``.
        detach_reset (bool): no gradient through the reset term (as snnTorch).
            Default: ``False``.
        surrogate (str): the stand-in for dS/dU in the backward pass:
            ``"sigmoid"``, ``"fast_sigmoid"``, ``"atan"`` or ``"triangle"``
            (formulas in the README). Default: ``"sigmoid"``.
        slope (float or None): the surrogate's slope k > 0; ``None`` takes the
            surrogate's default (25, 25, 2, 1 in that order). Default: ``None``.
        batch_first (bool): batched ``x`` and the output spikes are ``[B, T, *]``
            instead of ``[T, B, *]``; the state is unaffected. Default: ``False``.
        return_membrane (bool): ``forward`` also returns the membrane
            potentials. Default: ``False``.
        backend (str): ``"fused"`` (the C++/CUDA op) or ``"autograd"`` (the
            plain-PyTorch reference of the same math). Default: ``"fused"``.
        num_layers (int): L, the number of stacked layers; layer 0 maps
            in_features to hidden_size, the others hidden_size to hidden_size,
            each fed the spikes of the layer below. Default: ``1``.
        dropout (float): with L > 1, the probability of dropping each spike
            between two layers (``F.dropout``: kept spikes are scaled by
            1 / (1 - dropout)), in training mode only, as ``nn.RNN``.
            Default: ``0.0``.
        recurrent (str): ``"all_to_all"``: a dense ``[N, N]`` ``w_rec``;
            ``"one_to_one"``: each neuron feeds back only its own spike,
            ``w_rec`` has shape ``[N]`` and the recurrent term is
            ``w_rec * S[t-1]``, O(N) per step (snnTorch's
            ``RLeaky(all_to_all=False)``); ``"none"``: no recurrence, no
            ``w_rec`` (a feed-forward LIF layer). Default: ``"all_to_all"``.
        save_membrane (bool): False is the low-memory mode: autograd keeps
            nothing of size T*B*N beyond the returned spikes and the backward
            recomputes the membrane (same gradients, bitwise). Default: ``True``.
        device (torch.device or None): where the parameters live. Default: ``None``.
        dtype (torch.dtype or None): dtype of the parameters. Default: ``None``.

    Parameters and buffers (for L = 1 the names carry no suffix, so the
    state_dicts of one-layer layers are unchanged; for L > 1 each gets
    ``_l0`` ... ``_l{L-1}``, like ``nn.RNN``'s ``weight_ih_l0``):

    - ``w_in`` ``[N, F]`` (``[N, N]`` for layers above the first),
      ``w_rec`` ``[N, N]`` (``[N]`` with ``"one_to_one"``; 0-dim for a single
      shared weight, as :meth:`from_snntorch` makes it), ``bias`` ``[N]``:
      ``nn.Linear``-style uniform initialisation, bound 1/sqrt(fan-in) for
      ``w_in`` and ``bias``, 1/sqrt(N) for ``w_rec`` (either form);
    - ``alpha``, ``theta``: shape ``[]`` or ``[N]``; Parameters when learnable,
      buffers otherwise.

    Raises:
        ValueError: a size that is not a positive int, an unknown ``backend``,
            ``reset`` or ``surrogate``, a slope out of range, alpha outside
            [0, 1], a non-finite theta, a tensor alpha/theta of another shape
            than ``[]`` or ``[N]``, a ``dropout`` outside [0, 1].
        TypeError: a flag that is not a bool, an alpha/theta that is neither a
            number nor a real tensor.

    Example::

        >>> layer = torch_ext.RecurrentLIF(40, 128, num_layers=2, dropout=0.2,
        ...                                alpha=torch.linspace(0.8, 0.95, 128),
        ...                                learn_alpha=True, batch_first=True)
        >>> spikes, (u, s) = layer(torch.randn(16, 100, 40))    # [B, T, F]
        >>> spikes.shape, u.shape                                # u, s: [L, B, N]
        (torch.Size([16, 100, 128]), torch.Size([2, 16, 128]))
        >>> more, state = layer(torch.randn(16, 50, 40), (u, s))  # continue
        >>> spikes, (u, s) = layer(torch.randn(100, 40))         # unbatched [T, F]
        >>> spikes.shape, u.shape
        (torch.Size([100, 128]), torch.Size([2, 128]))
    """

    def __init__(self, in_features, hidden_size, bias=True, alpha=0.9, theta=1.0,
                 learn_alpha=False, learn_theta=False, per_neuron=False, reset="subtract",
                 detach_reset=False, surrogate="sigmoid", slope=None, batch_first=False,
                 return_membrane=False, backend="fused", num_layers=1, dropout=0.0,
                 recurrent="all_to_all", save_membrane=True, device=None, dtype=None):
        super().__init__()
        if not isinstance(backend, str) or backend not in BACKENDS:
            raise ValueError(f"RecurrentLIF: argument 'backend' must be one of {tuple(BACKENDS)}, got {backend!r}")
        for name, value in (("in_features", in_features), ("hidden_size", hidden_size),
                            ("num_layers", num_layers)):
            # Below 2**63: a size torch can hold (larger ints fail inside torch.empty).
            if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 2**63:
                raise ValueError(f"RecurrentLIF: argument '{name}' must be a positive int, got {value!r}")
        if (isinstance(dropout, bool) or not isinstance(dropout, numbers.Real)
                or not 0 <= dropout <= 1):
            raise ValueError("RecurrentLIF: argument 'dropout' must be a number in [0, 1] (the "
                             f"probability of dropping a spike between layers), got {dropout!r}")
        # The same checks, and so the same errors, as the functional's.
        alpha = _initial_value(alpha, "alpha", hidden_size)
        theta = _initial_value(theta, "theta", hidden_size)
        slope = _options.check_option_types(reset, detach_reset, surrogate, slope)
        self.slope = _options.resolve_slope(reset, detach_reset, surrogate, slope, dtype)
        for name, value in (("bias", bias), ("learn_alpha", learn_alpha),
                            ("learn_theta", learn_theta), ("per_neuron", per_neuron),
                            ("batch_first", batch_first), ("return_membrane", return_membrane),
                            ("save_membrane", save_membrane)):
            if not isinstance(value, bool):
                raise TypeError(f"RecurrentLIF: argument '{name}' must be a bool, got "
                                f"{_options.type_name(value)}")
        if not isinstance(recurrent, str) or recurrent not in RECURRENT:
            raise ValueError(f"RecurrentLIF: argument 'recurrent' must be one of {RECURRENT}, got "
                             f"{recurrent!r}")
        if dropout > 0 and num_layers == 1:
            warnings.warn("RecurrentLIF: dropout applies between stacked layers, so a non-zero "
                          f"dropout expects num_layers > 1, got dropout={dropout} and "
                          "num_layers=1", stacklevel=2)
        self.in_features, self.hidden_size = in_features, hidden_size
        self.num_layers, self.dropout = num_layers, float(dropout)
        self.reset, self.detach_reset, self.surrogate = reset, detach_reset, surrogate
        self.batch_first, self.return_membrane, self.backend = batch_first, return_membrane, backend
        self.per_neuron, self.recurrent, self.save_membrane = per_neuron, recurrent, save_membrane
        self._alpha_init, self._theta_init = alpha, theta

        factory = {"device": device, "dtype": dtype}
        for layer in range(num_layers):
            fan_in = in_features if layer == 0 else hidden_size
            self.register_parameter(self._name("w_in", layer),
                                    nn.Parameter(torch.empty(hidden_size, fan_in, **factory)))
            rec_shape = (hidden_size,) if recurrent == "one_to_one" else (hidden_size, hidden_size)
            self.register_parameter(self._name("w_rec", layer),
                                    nn.Parameter(torch.empty(rec_shape, **factory))
                                    if recurrent != "none" else None)
            self.register_parameter(self._name("bias", layer),
                                    nn.Parameter(torch.empty(hidden_size, **factory)) if bias
                                    else None)
            for name, init, learn in (("alpha", alpha, learn_alpha), ("theta", theta, learn_theta)):
                per = per_neuron or (isinstance(init, torch.Tensor) and init.dim() == 1)
                value = torch.empty((hidden_size,) if per else (), **factory)
                if learn:
                    self.register_parameter(self._name(name, layer), nn.Parameter(value))
                else:
                    self.register_buffer(self._name(name, layer), value)
        self.reset_parameters()

    def _name(self, name, layer):
        """The attribute name of one layer's tensor: ``w_in`` for a one-layer
        RecurrentLIF, ``w_in_l0``, ``w_in_l1``, ... for a stack."""
        return name if self.num_layers == 1 else f"{name}_l{layer}"

    def _layer(self, layer):
        """(w_in, w_rec, bias, alpha, theta) of one layer."""
        return tuple(getattr(self, self._name(n, layer))
                     for n in ("w_in", "w_rec", "bias", "alpha", "theta"))

    def reset_parameters(self):
        """nn.Linear-style uniform initialisation: w_in and bias with bound
        1/sqrt(fan-in) (in_features for layer 0, hidden_size above), w_rec with
        1/sqrt(hidden_size); alpha and theta back to their constructor values
        (a per-neuron tensor given to the constructor included)."""
        with torch.no_grad():
            for layer in range(self.num_layers):
                w_in, w_rec, bias, alpha, theta = self._layer(layer)
                bound_in = 1 / math.sqrt(w_in.shape[1])
                nn.init.uniform_(w_in, -bound_in, bound_in)
                if bias is not None:
                    nn.init.uniform_(bias, -bound_in, bound_in)
                if w_rec is not None:
                    bound_rec = 1 / math.sqrt(self.hidden_size)
                    nn.init.uniform_(w_rec, -bound_rec, bound_rec)
                for param, init in ((alpha, self._alpha_init), (theta, self._theta_init)):
                    if isinstance(init, torch.Tensor):
                        param.copy_(init)
                    else:
                        param.fill_(init)

    def _w_rec_for_op(self, w_rec):
        """The w_rec the op is given: a 0-dim one-to-one weight (one shared
        value, as from_snntorch makes it) is broadcast to [N]."""
        if self.recurrent != "one_to_one":
            return w_rec
        return w_rec.expand(self.hidden_size)

    def forward(self, x, state=None, lengths=None):
        """Runs the layer(s) over a whole sequence.

        Args:
            x (Tensor): the input sequence: ``[T, B, F]`` (``[B, T, F]`` with
                ``batch_first``), or unbatched ``[T, F]`` (whatever
                ``batch_first``, as ``nn.RNN``). float16, bfloat16, float32 or
                float64, on the parameters' device.
            state (tuple or None): ``(u, s)``, the initial membrane potentials
                and spikes, as the previous call returned them: each ``[B, N]``
                for one layer, ``[L, B, N]`` for L = num_layers > 1; unbatched,
                ``[N]`` and ``[L, N]``. Either may be None; None (the default)
                means zeros. Unlike ``nn.RNN``'s single ``h0``, the state of a
                LIF layer is two tensors, and a one-layer state has no layer
                dimension.
            lengths (Tensor or None): ``[B]`` integers in [0, T], a
                variable-length batch: row b takes steps ``t < lengths[b]``
                only, its later steps output spikes (and membrane) 0, and its
                final state is the one after its last valid step (the given
                state where its length is 0). Default: ``None`` (all T steps).

        Returns:
            ``(spikes, (u_last, s_last))``, or ``(spikes, membrane, (u_last,
            s_last))`` with ``return_membrane=True``: ``spikes`` and
            ``membrane`` of the top layer, ``[T, B, N]`` (``[B, T, N]`` with
            ``batch_first``, ``[T, N]`` unbatched; spikes in x's dtype, the
            membrane in the compute dtype); ``(u_last, s_last)`` shaped like
            ``state``, the membrane and spikes of every layer at the last
            step, which continue the sequence when passed back. With T = 0
            the given state (or zeros) is returned.

        Raises:
            TypeError: x is not a tensor; state is not None or a pair (an
                ``nn.RNN``-style single tensor, say); u or s is neither a
                tensor nor None.
            ValueError: x is not 2- or 3-dimensional; u or s does not have the
                shape above (the message gives the expected shape); the op's
                own checks (feature size, dtypes, devices, non-finite alpha or
                theta), naming the argument.

        Example::

            >>> layer = torch_ext.RecurrentLIF(3, 8)
            >>> spikes, state = layer(torch.randn(20, 4, 3))       # [T, B, F]
            >>> more, state = layer(torch.randn(5, 4, 3), state)  # 5 more steps
        """
        _options.check_x(x)
        if x.dim() not in (2, 3):
            layout = "[B, T, F]" if self.batch_first else "[T, B, F]"
            raise ValueError(f"RecurrentLIF: argument 'x' must have shape {layout} (batched) or "
                             f"[T, F] (unbatched), got {list(x.shape)}")
        batched = x.dim() == 3
        if not batched:
            x = x.unsqueeze(1)
        elif self.batch_first:
            x = x.transpose(0, 1)
        T, B = x.shape[0], x.shape[1]
        states = self._layer_states(state, B, batched)

        fn = BACKENDS[self.backend]
        layer_input, finals = x, []
        for layer, (u0, s0) in enumerate(states):
            w_in, w_rec, bias, alpha, theta = self._layer(layer)
            if layer > 0 and self.dropout > 0 and self.training:
                layer_input = F.dropout(layer_input, self.dropout, training=True)
            spikes, membrane = fn(
                layer_input, w_in, self._w_rec_for_op(w_rec), bias, alpha.clamp(0, 1), theta,
                u0, s0, reset=self.reset, detach_reset=self.detach_reset,
                surrogate=self.surrogate, slope=self.slope, save_membrane=self.save_membrane,
                lengths=lengths)
            u_first = u0 if u0 is not None else membrane.new_zeros(B, self.hidden_size)
            s_first = s0 if s0 is not None else spikes.new_zeros(B, self.hidden_size)
            if T == 0:  # no step taken: the state is what was given, or zeros
                finals.append((u_first, s_first))
            elif lengths is None:
                finals.append((membrane[-1], spikes[-1]))
            else:  # each row's state after its own last step (the given one if it took none)
                finals.append(_state_at(lengths, membrane, spikes, u_first, s_first))
            layer_input = spikes
        final = self._final_state(finals, state, batched, T)
        if not batched:
            spikes, membrane = spikes.squeeze(1), membrane.squeeze(1)
        elif self.batch_first:
            spikes, membrane = spikes.transpose(0, 1), membrane.transpose(0, 1)
        return (spikes, membrane, final) if self.return_membrane else (spikes, final)

    def _state_layout(self, B, batched):
        """The expected shape of u and s: (names, sizes, description)."""
        names = (["L"] if self.num_layers > 1 else []) + (["B"] if batched else []) + ["N"]
        sizes = {"L": self.num_layers, "B": B, "N": self.hidden_size}
        shape = [sizes[n] for n in names]
        where = (f"{'one layer' if self.num_layers == 1 else f'num_layers={self.num_layers}'}, "
                 f"{'batched' if batched else 'unbatched'} input")
        return shape, f"[{', '.join(names)}] = {shape} ({where})"

    def _layer_states(self, state, B, batched):
        """Checks the state; returns one (u0, s0) pair of [B, N] tensors or
        Nones per layer."""
        shape, expected = self._state_layout(B, batched)
        if state is None:
            return [(None, None)] * self.num_layers
        if not isinstance(state, (tuple, list)) or len(state) != 2:
            if isinstance(state, torch.Tensor):
                got = (f"a single tensor of shape {list(state.shape)} (nn.RNN's h0 is one tensor; "
                       "a LIF layer's state is two, its membrane and its spikes, as the previous "
                       "call returned them)")
            elif isinstance(state, (tuple, list)):
                got = f"a {_options.type_name(state)} of {len(state)}"
            else:
                got = _options.type_name(state)
            raise TypeError("RecurrentLIF: argument 'state' must be None or a pair (u, s) of "
                            f"tensors, each {expected}; got {got}")
        for value, name in zip(state, ("u", "s")):
            if value is None:
                continue
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"RecurrentLIF: argument 'state': {name} must be a tensor "
                                f"{expected} or None, got {_options.type_name(value)}")
            if list(value.shape) != shape:
                hint = ""
                if (self.num_layers == 1 and value.dim() == len(shape) + 1
                        and value.shape[0] == 1 and list(value.shape[1:]) == shape):
                    hint = (f"; a one-layer RecurrentLIF's state has no layer dimension, unlike "
                            f"nn.RNN's h0: pass {name}[0]")
                raise ValueError(f"RecurrentLIF: argument 'state': {name} must have shape "
                                 f"{expected}, got {list(value.shape)}{hint}")
        u, s = state

        def per_layer(value, layer):
            if value is None:
                return None
            if self.num_layers > 1:
                value = value[layer]
            return value if batched else value.unsqueeze(0)

        return [(per_layer(u, layer), per_layer(s, layer)) for layer in range(self.num_layers)]

    def _final_state(self, finals, state, batched, T):
        if T == 0 and state is not None:  # given tensors come back as they are
            u, s = state
            if u is not None and s is not None:
                return state
        us, ss = zip(*finals)
        if self.num_layers > 1:
            u, s = torch.stack(us), torch.stack(ss)
            dim = 1
        else:
            (u,), (s,) = us, ss
            dim = 0
        if not batched:
            u, s = u.squeeze(dim), s.squeeze(dim)
        if T == 0 and state is not None:
            u, s = (given if given is not None else made for given, made in zip(state, (u, s)))
        return u, s

    @classmethod
    def from_snntorch(cls, linear, rleaky, *, batch_first=False, return_membrane=False,
                      backend="fused"):
        """A layer that computes what an ``nn.Linear`` followed by an
        ``snntorch.RLeaky`` compute, the way snnTorch's tutorials loop them::

            spk, mem = rleaky.init_rleaky()
            for t in range(T):
                spk, mem = rleaky(linear(x[t]), spk, mem)

        ``layer(x)`` over the whole ``[T, B, F]`` sequence returns the same
        spikes (and, with ``return_membrane``, the same membranes) as that
        loop, and the same gradients: those of the layer's ``w_in``, ``bias``,
        ``w_rec``, ``alpha`` and ``theta`` equal those of ``linear.weight``,
        ``linear.bias`` (= those of ``rleaky.recurrent.bias``), the recurrent
        weight (``rleaky.recurrent.weight``, or ``V``), ``rleaky.beta`` and
        ``rleaky.threshold``, and the input's gradient is the same. The values
        are copied (the layer and the snnTorch modules do not share storage);
        a frozen snnTorch tensor (a buffer, or ``requires_grad=False`` as
        ``learn_recurrent=False`` makes it) gives a buffer or a frozen
        parameter.

        The mapping (README, "Porting from snnTorch"): ``beta`` -> ``alpha``
        (0-dim, or ``[N]`` per neuron; ``learn_beta`` -> ``learn_alpha``),
        ``threshold`` -> ``theta`` (``learn_threshold`` -> ``learn_theta``),
        ``linear.weight`` -> ``w_in``, ``linear.bias + recurrent.bias`` ->
        ``bias``, ``all_to_all=True``: ``recurrent.weight`` -> ``w_rec``
        ``[N, N]``; ``all_to_all=False``: ``V`` -> ``w_rec`` with
        ``recurrent="one_to_one"`` (``[N]``, or 0-dim for a shared V);
        ``reset_mechanism`` ``"subtract"``/``"none"`` -> ``reset``, with
        ``detach_reset=True`` (snnTorch computes its reset from a detached
        spike); ``spike_grad`` ``None``/``surrogate.atan(alpha=k)`` ->
        ``surrogate="atan", slope=k``, ``surrogate.fast_sigmoid(slope=k)`` ->
        ``"fast_sigmoid"``, ``surrogate.sigmoid(slope=k)`` -> ``"sigmoid"``
        (the same formulas; snnTorch's sigmoid form gives NaN where
        exp(-k v) overflows, this layer the true value, ~0).
        ``init_hidden`` and ``output`` change only how snnTorch carries its
        state between calls: the layer keeps none, pass the state yourself.

        Note: a layer built with this layer's own defaults (``surrogate=
        "sigmoid"``, slope 25, ``detach_reset=False``) and the same weights
        spikes exactly like RLeaky but its gradients differ from RLeaky's,
        by orders of magnitude for some entries.

        Args:
            linear (nn.Linear): the input projection, ``[N, F]`` weight.
            rleaky (snntorch.RLeaky): the recurrent LIF neurons, N of them.
            batch_first (bool): as the constructor's. Default: ``False``.
            return_membrane (bool): as the constructor's. Default: ``False``.
            backend (str): as the constructor's. Default: ``"fused"``.

        Returns:
            A one-layer ``RecurrentLIF`` on linear's device, in its dtype.

        Raises:
            ImportError: snnTorch is not installed.
            TypeError: ``linear`` is not an ``nn.Linear`` or ``rleaky`` not an
                ``snntorch.RLeaky`` (an ``RLeaky`` subclass overriding its
                forward included).
            ValueError: naming what cannot be reproduced exactly:
                ``reset_mechanism="zero"`` (snnTorch zeroes the whole new
                membrane, U[t+1] = (1 - R)(beta U[t] + I + V(S)); this layer's
                "zero" only drops alpha U[t]), ``reset_delay=False``, graded
                spikes (``graded_spikes_factor`` != 1 or learnable),
                ``inhibition``, ``state_quant``, ``surrogate_disable``, any
                other surrogate (snnTorch's ``triangular`` is not this layer's
                ``triangle``), a convolutional recurrence, a negative threshold
                with ``"subtract"`` (snnTorch's first reset is H(0 - threshold)),
                mismatched sizes, beta/threshold/V of a shape other than
                ``[]``, ``[1]`` or ``[N]``, non-finite values.

        Example::

            >>> fc = nn.Linear(10, 32)
            >>> lif = snntorch.RLeaky(beta=0.9, linear_features=32)
            >>> layer = torch_ext.RecurrentLIF.from_snntorch(fc, lif)
            >>> spikes, (u, s) = layer(torch.randn(25, 8, 10))   # the loop's spikes
        """
        from ._snntorch import from_snntorch
        return from_snntorch(cls, linear, rleaky, batch_first=batch_first,
                             return_membrane=return_membrane, backend=backend)

    def extra_repr(self):
        def shown(init):
            return f"tensor{list(init.shape)}" if isinstance(init, torch.Tensor) else init
        learn = [n for n in ("alpha", "theta")
                 if isinstance(getattr(self, self._name(n, 0)), nn.Parameter)]
        text = (f"{self.in_features}, {self.hidden_size}, bias={self._layer(0)[2] is not None}, "
                f"alpha={shown(self._alpha_init)}, theta={shown(self._theta_init)}, "
                f"learn={learn}, per_neuron={self.per_neuron}, reset={self.reset!r}, "
                f"detach_reset={self.detach_reset}, surrogate={self.surrogate!r}, "
                f"slope={self.slope}, batch_first={self.batch_first}, backend={self.backend!r}")
        if self.num_layers > 1 or self.dropout:
            text += f", num_layers={self.num_layers}, dropout={self.dropout}"
        if self.recurrent != "all_to_all":
            text += f", recurrent={self.recurrent!r}"
        if not self.save_membrane:
            text += ", save_membrane=False"
        return text


def _initial_value(value, name, hidden_size):
    """The constructor's alpha or theta: a float (checked as the functional
    checks it), or a detached copy of a 0-dim or [hidden_size] real tensor
    whose values pass the same checks."""
    if not isinstance(value, torch.Tensor):
        return _options.check_alpha(value) if name == "alpha" else _options.check_theta(value)
    if value.dtype == torch.bool or value.is_complex():
        raise TypeError(f"RecurrentLIF: argument '{name}' must be a float or a real tensor, got "
                        f"a tensor of dtype {value.dtype}")
    if value.dim() > 1 or (value.dim() == 1 and value.shape[0] != hidden_size):
        raise ValueError(f"RecurrentLIF: argument '{name}' must be a float, a 0-dim tensor or an "
                         f"[N] = [{hidden_size}] tensor (one value per neuron), got a tensor of "
                         f"shape {list(value.shape)}")
    value = value.detach().clone()
    if not value.is_meta and value.numel() > 0:
        values = value.double()
        if name == "alpha" and not bool(((values >= 0) & (values <= 1)).all()):  # NaN too
            raise ValueError("RecurrentLIF: argument 'alpha' must lie in [0, 1], got a tensor "
                             "with values outside [0, 1] or NaN")
        if name == "theta" and not bool(values.isfinite().all()):
            raise ValueError("RecurrentLIF: argument 'theta' must be finite, got a tensor with "
                             "non-finite values")
    return value


def _state_at(lengths, membrane, spikes, u_first, s_first):
    """(u, s) of each batch row after its own last step: membrane and spikes
    [T, B, N] at t = lengths[b] - 1, or the initial state where lengths[b] = 0."""
    # Clamped as the kernels do (on CUDA the op does not check the values).
    lengths = lengths.to(device=membrane.device, dtype=torch.long).clamp(0, membrane.shape[0])
    last = (lengths - 1).clamp(min=0).view(1, -1, 1).expand(1, *membrane.shape[1:])
    took_steps = (lengths > 0).unsqueeze(1)
    return (torch.where(took_steps, membrane.gather(0, last)[0], u_first.to(membrane.dtype)),
            torch.where(took_steps, spikes.gather(0, last)[0], s_first.to(spikes.dtype)))
