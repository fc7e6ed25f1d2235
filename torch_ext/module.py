"""torch_ext.RecurrentLIF, RecurrentAdLIF and RecurrentCubaLIF: the fused
layers as drop-in nn.Modules, sharing one stack/state/layout machinery."""
import math
import numbers
import warnings

import torch
from torch import nn
from torch.nn import functional as F

from . import _docs, _options
from ._neurons import NEURONS
from .functional import recurrent_adlif, recurrent_cubalif, recurrent_lif
from .reference import recurrent_adlif_ref, recurrent_cubalif_ref, recurrent_lif_ref

RECURRENT = ("all_to_all", "one_to_one", "none")
DELAY_KINDS = (None, "axonal", "synaptic")


class _RecurrentStack(nn.Module):
    """What the recurrent spiking layers share: the checks of the common
    constructor arguments, L stacked layers with dropout between them, each
    layer's ``w_in``, ``w_rec`` and ``bias`` (named ``w_in`` for one layer,
    ``w_in_l0`` ... for a stack), the input layouts (``batch_first``,
    unbatched ``[T, F]``), the state (one tensor per state variable, ``[B, N]``
    or ``[L, B, N]``), ``lengths`` and the final state.

    A subclass sets ``_BACKENDS`` (backend name -> function), ``_PER_LAYER``
    (the names of one layer's tensors, w_in, w_rec and bias first), ``_STATE``
    (the names of the state variables, the spikes last) and ``_STATE_IS``
    (what the state is, for error messages), and implements
    ``_run_layer(layer, x, initial, lengths)``: one layer over time-major
    ``x``, returning one ``[T, B, N]`` output per state variable, in
    ``_STATE``'s order (the spikes last, which feed the layer above)."""

    _BACKENDS = {}
    _PER_LAYER = ("w_in", "w_rec", "bias")
    _STATE = ()
    _STATE_IS = ""

    def __init__(self, in_features, hidden_size, *, bias, num_layers, dropout, recurrent, reset,
                 detach_reset, surrogate, slope, batch_first, backend, flags, dtype, delays):
        """Checks the common arguments (flags: the subclass's own bool
        arguments by name; delays: the recurrent delays' arguments by name)
        and keeps them as attributes."""
        super().__init__()
        who = type(self).__name__
        if not isinstance(backend, str) or backend not in self._BACKENDS:
            raise ValueError(f"{who}: argument 'backend' must be one of {tuple(self._BACKENDS)}, "
                             f"got {backend!r}")
        for name, value in (("in_features", in_features), ("hidden_size", hidden_size),
                            ("num_layers", num_layers)):
            # Below 2**63: a size torch can hold (larger ints fail inside torch.empty).
            if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 2**63:
                raise ValueError(f"{who}: argument '{name}' must be a positive int, got {value!r}")
        if (isinstance(dropout, bool) or not isinstance(dropout, numbers.Real)
                or not 0 <= dropout <= 1):
            raise ValueError(f"{who}: argument 'dropout' must be a number in [0, 1] (the "
                             f"probability of dropping a spike between layers), got {dropout!r}")
        # The same checks, and so the same errors, as the functional's.
        op = self._BACKENDS["fused"].__name__
        slope = _options.check_option_types(reset, detach_reset, surrogate, slope, op)
        self.slope = _options.resolve_slope(op, reset, detach_reset, surrogate, slope, dtype)
        for name, value in (("bias", bias), *flags.items(), ("batch_first", batch_first)):
            if not isinstance(value, bool):
                raise TypeError(f"{who}: argument '{name}' must be a bool, got "
                                f"{_options.type_name(value)}")
        if not isinstance(recurrent, str) or recurrent not in RECURRENT:
            raise ValueError(f"{who}: argument 'recurrent' must be one of {RECURRENT}, got "
                             f"{recurrent!r}")
        if dropout > 0 and num_layers == 1:
            warnings.warn(f"{who}: dropout applies between stacked layers, so a non-zero "
                          f"dropout expects num_layers > 1, got dropout={dropout} and "
                          "num_layers=1", stacklevel=3)
        self.in_features, self.hidden_size = in_features, hidden_size
        self.num_layers, self.dropout = num_layers, float(dropout)
        self.reset, self.detach_reset, self.surrogate = reset, detach_reset, surrogate
        self.batch_first, self.backend, self.recurrent = batch_first, backend, recurrent
        self._check_delay_options(**delays)

    def _check_delay_options(self, recurrent_delays, max_delay, delay_sigma, learn_delay_spread,
                             delay_init_std):
        """Checks the recurrent delays' constructor arguments and keeps them
        as attributes (delay_init_std resolved: max_delay / 4 by default)."""
        who = type(self).__name__
        if not (recurrent_delays is None or isinstance(recurrent_delays, str)) \
                or recurrent_delays not in DELAY_KINDS:
            raise ValueError(f"{who}: argument 'recurrent_delays' must be one of {DELAY_KINDS}, "
                             f"got {recurrent_delays!r}")
        if not isinstance(learn_delay_spread, bool):
            raise TypeError(f"{who}: argument 'learn_delay_spread' must be a bool, got "
                            f"{_options.type_name(learn_delay_spread)}")
        if recurrent_delays is None:
            # (Anything equal to 0 is the default sigma; anything else, an array
            # of several values included, is given.)
            try:
                sigma_given = not bool(delay_sigma == 0)
            except (TypeError, ValueError, RuntimeError):
                sigma_given = True
            given = [name for name, is_given in (
                ("max_delay", max_delay is not None), ("delay_sigma", sigma_given),
                ("learn_delay_spread", learn_delay_spread),
                ("delay_init_std", delay_init_std is not None)) if is_given]
            if given:
                raise ValueError(f"{who}: argument '{given[0]}' is given without "
                                 "'recurrent_delays' (\"axonal\" or \"synaptic\")")
        else:
            if self.recurrent == "none":
                raise ValueError(f"{who}: argument 'recurrent_delays' delays the recurrent "
                                 "connections, which recurrent='none' does not have")
            if recurrent_delays == "synaptic" and self.recurrent == "one_to_one":
                raise ValueError(f"{who}: argument 'recurrent_delays' is \"synaptic\" (one delay "
                                 "per [N, N] connection) but recurrent='one_to_one' has one "
                                 "connection per neuron: use \"axonal\"")
            if (isinstance(max_delay, bool) or not isinstance(max_delay, numbers.Integral)
                    or not 1 <= max_delay < 2**31):
                raise ValueError(f"{who}: argument 'max_delay' must be an int >= 1 (the longest "
                                 f"delay, in steps) with recurrent_delays, got {max_delay!r}")
            max_delay = int(max_delay)
            delay_sigma = _non_negative(delay_sigma, "delay_sigma", who)
            delay_init_std = (max_delay / 4 if delay_init_std is None
                              else _non_negative(delay_init_std, "delay_init_std", who))
        self.recurrent_delays, self.max_delay = recurrent_delays, max_delay
        self.delay_sigma, self.learn_delay_spread = delay_sigma, learn_delay_spread
        self.delay_init_std = delay_init_std

    def _repr(self, neuron, save_flag):
        """extra_repr: the sizes, the neuron's own arguments, then the
        options every layer stack has (the stack's only where not the
        defaults; the low-memory flag only where False)."""
        text = (f"{self.in_features}, {self.hidden_size}, bias={self._layer(0)[2] is not None}, "
                f"{neuron}, reset={self.reset!r}, detach_reset={self.detach_reset}, "
                f"surrogate={self.surrogate!r}, slope={self.slope}, "
                f"batch_first={self.batch_first}, backend={self.backend!r}")
        if self.num_layers > 1 or self.dropout:
            text += f", num_layers={self.num_layers}, dropout={self.dropout}"
        if self.recurrent != "all_to_all":
            text += f", recurrent={self.recurrent!r}"
        if self.recurrent_delays is not None:
            text += (f", recurrent_delays={self.recurrent_delays!r}, max_delay={self.max_delay}, "
                     f"delay_sigma={self.delay_sigma}")
            if self.learn_delay_spread:
                text += ", learn_delay_spread=True"
        if not getattr(self, save_flag):
            text += f", {save_flag}=False"
        return text

    def _register_layers(self, bias, neuron, device, dtype):
        """Registers, layer by layer, ``w_in``, ``w_rec`` (``[N, N]``, ``[N]``
        one-to-one, or None), ``bias`` (or None), then the neuron's tensors:
        ``neuron(factory)`` returns (name, tensor, learnable) triples,
        learnable ones become Parameters, the others buffers. Their values
        are left to ``reset_parameters``."""
        factory = {"device": device, "dtype": dtype}
        N = self.hidden_size
        for layer in range(self.num_layers):
            fan_in = self.in_features if layer == 0 else N
            self.register_parameter(self._name("w_in", layer),
                                    nn.Parameter(torch.empty(N, fan_in, **factory)))
            rec_shape = (N,) if self.recurrent == "one_to_one" else (N, N)
            self.register_parameter(self._name("w_rec", layer),
                                    nn.Parameter(torch.empty(rec_shape, **factory))
                                    if self.recurrent != "none" else None)
            self.register_parameter(self._name("bias", layer),
                                    nn.Parameter(torch.empty(N, **factory)) if bias else None)
            for name, value, learn in neuron(factory):
                if learn:
                    self.register_parameter(self._name(name, layer), nn.Parameter(value))
                else:
                    self.register_buffer(self._name(name, layer), value)
            if self.recurrent_delays is not None:
                # In the compute dtype: a bfloat16 delay of 25 would move in steps of 1/8.
                delay_factory = {**factory, "dtype": _options.compute_dtype(
                    dtype or torch.get_default_dtype())}
                shape = (N,) if self.recurrent_delays == "axonal" else (N, N)
                self.register_parameter(self._name("delays", layer),
                                        nn.Parameter(torch.empty(shape, **delay_factory)))
                if self.learn_delay_spread:
                    self.register_parameter(self._name("delay_spread", layer),
                                            nn.Parameter(torch.empty(N, **delay_factory)))

    def _name(self, name, layer):
        """The attribute name of one layer's tensor: ``w_in`` for a one-layer
        module, ``w_in_l0``, ``w_in_l1``, ... for a stack."""
        return name if self.num_layers == 1 else f"{name}_l{layer}"

    def _layer(self, layer):
        """One layer's tensors, in ``_PER_LAYER``'s order."""
        return tuple(getattr(self, self._name(n, layer)) for n in self._PER_LAYER)

    def _w_rec_for_op(self, w_rec):
        """The w_rec the op is given: a 0-dim one-to-one weight (one shared
        value, as from_snntorch makes it) is broadcast to [N]."""
        if self.recurrent != "one_to_one":
            return w_rec
        return w_rec.expand(self.hidden_size)

    def _delay_tensors(self, layer):
        """Layer ``layer``'s (delays, delay_spread or None)."""
        spread = (getattr(self, self._name("delay_spread", layer))
                  if self.learn_delay_spread else None)
        return getattr(self, self._name("delays", layer)), spread

    def _delay_arguments(self, layer):
        """The op's delay keywords for layer ``layer`` (none without delays):
        the delays as they are (the forward does not clamp them, which would
        zero their gradient at the bounds), and sigma = delay_sigma, or
        2 * delay_sigma * sigmoid(delay_spread) per neuron with
        learn_delay_spread."""
        if self.recurrent_delays is None:
            return {}
        delays, spread = self._delay_tensors(layer)
        sigma = self.delay_sigma  # the op checks it, as it checks its own delay_sigma
        if spread is not None:  # checked first here where the spread scales it
            op = self._BACKENDS["fused"].__name__
            if not isinstance(sigma, torch.Tensor):
                sigma = _options.number(sigma, "delay_sigma", op)
            elif not (sigma.dim() == 0 or list(sigma.shape) == [self.hidden_size]):
                raise ValueError(f"{op}: argument 'delay_sigma' must be a float, a 0-dim tensor "
                                 f"or [N] = [{self.hidden_size}], got shape {list(sigma.shape)}")
            sigma = 2 * sigma * spread.sigmoid()
        return dict(delays=delays, max_delay=self.max_delay, delay_sigma=sigma)

    def _reset_delays(self):
        """DelRec's initialisation: delays 1 + |N(0, delay_init_std^2)|,
        clamped into [1, max_delay]; the spreads 0 (sigma = delay_sigma)."""
        if self.recurrent_delays is None:
            return
        with torch.no_grad():
            for layer in range(self.num_layers):
                delays, spread = self._delay_tensors(layer)
                values = torch.randn(delays.shape, device=delays.device, dtype=delays.dtype)
                delays.copy_(values.abs_().mul_(self.delay_init_std).add_(1).clamp_(
                    1, self.max_delay))
                if spread is not None:
                    spread.zero_()

    def _each_delay(self, method):
        if self.recurrent_delays is None:
            raise ValueError(f"{type(self).__name__}.{method}: the module has no recurrent "
                             "delays (recurrent_delays=None)")
        return [self._delay_tensors(layer)[0] for layer in range(self.num_layers)]

    @torch.no_grad()
    def clamp_delays_(self):
        """Projects every layer's delays onto [1, max_delay], in place (as
        DelRec does after each optimiser step; the forward does not clamp,
        which would zero the gradient of a delay at a bound). Returns the
        module.

        Raises:
            ValueError: the module has no recurrent delays."""
        for delays in self._each_delay("clamp_delays_"):
            delays.clamp_(1, self.max_delay)
        return self

    @torch.no_grad()
    def round_delays_(self):
        """Rounds every layer's delays to the nearest integer, in place (as
        DelRec does before evaluation: with ``delay_sigma = 0`` a layer of
        integer delays reads single past steps, as hardware with integer
        delays does). Returns the module.

        Raises:
            ValueError: the module has no recurrent delays."""
        for delays in self._each_delay("round_delays_"):
            delays.round_()
        return self

    def _run(self, x, state, lengths):
        """The shared forward: checks x and the state, runs the layers, and
        returns (the top layer's outputs in ``_STATE``'s order, in the
        caller's layout; the final state, shaped like ``state``)."""
        _options.check_x(x, type(self).__name__)
        if x.dim() not in (2, 3):
            layout = "[B, T, F]" if self.batch_first else "[T, B, F]"
            raise ValueError(f"{type(self).__name__}: argument 'x' must have shape {layout} "
                             f"(batched) or [T, F] (unbatched), got {list(x.shape)}")
        batched = x.dim() == 3
        if not batched:
            x = x.unsqueeze(1)
        elif self.batch_first:
            x = x.transpose(0, 1)
        T, B = x.shape[0], x.shape[1]
        states = self._layer_states(state, B, batched)

        layer_input, finals = x, []
        for layer, initial in enumerate(states):
            if layer > 0 and self.dropout > 0 and self.training:
                layer_input = F.dropout(layer_input, self.dropout, training=True)
            outputs = self._run_layer(layer, layer_input, initial, lengths)
            finals.append(tuple(
                _final_value(out, given, lengths, self._history(k))
                for k, (given, out) in enumerate(zip(initial, outputs))))
            layer_input = outputs[-1]
        final = self._final_state(finals, state, batched, T)
        if not batched:
            outputs = tuple(out.squeeze(1) for out in outputs)
        elif self.batch_first:
            outputs = tuple(out.transpose(0, 1) for out in outputs)
        return outputs, final

    def _history(self, k):
        """D for the state variable k that is a spike history (the spikes,
        with recurrent delays), else None."""
        if self.recurrent_delays is None or k != len(self._STATE) - 1:
            return None
        return self.max_delay

    def _state_layout(self, B, batched, history=None):
        """The expected shape of a state tensor (``history``: D for the spike
        history): (shape, description)."""
        names = ((["L"] if self.num_layers > 1 else []) + (["D"] if history else [])
                 + (["B"] if batched else []) + ["N"])
        sizes = {"L": self.num_layers, "D": history, "B": B, "N": self.hidden_size}
        shape = [sizes[n] for n in names]
        where = (f"{'one layer' if self.num_layers == 1 else f'num_layers={self.num_layers}'}, "
                 f"{'batched' if batched else 'unbatched'} input")
        if history:
            where += f", the spike history of max_delay={history} steps, oldest first"
        return shape, f"[{', '.join(names)}] = {shape} ({where})"

    def _layer_states(self, state, B, batched):
        """Checks the state; returns per layer a tuple of [B, N] tensors (the
        spike history [D, B, N] with delays) or Nones, one per state
        variable."""
        shape, expected = self._state_layout(B, batched)
        count = len(self._STATE)
        if state is None:
            return [(None,) * count] * self.num_layers
        who = type(self).__name__
        if not isinstance(state, (tuple, list)) or len(state) != count:
            if isinstance(state, torch.Tensor):
                got = (f"a single tensor of shape {list(state.shape)} (nn.RNN's h0 is one tensor; "
                       f"{self._STATE_IS}, as the previous call returned them)")
            elif isinstance(state, (tuple, list)):
                got = f"a {_options.type_name(state)} of {len(state)}"
            else:
                got = _options.type_name(state)
            kind = {2: "a pair", 3: "a triple"}.get(count, f"a tuple of {count}")
            raise TypeError(f"{who}: argument 'state' must be None or {kind} "
                            f"({', '.join(self._STATE)}) of tensors, each {expected}; got {got}")
        for k, (value, name) in enumerate(zip(state, self._STATE)):
            if value is None:
                continue
            shape, expected = self._state_layout(B, batched, self._history(k))
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"{who}: argument 'state': {name} must be a tensor "
                                f"{expected} or None, got {_options.type_name(value)}")
            if list(value.shape) != shape:
                hint = ""
                if (self.num_layers == 1 and value.dim() == len(shape) + 1
                        and value.shape[0] == 1 and list(value.shape[1:]) == shape):
                    hint = (f"; a one-layer {who}'s state has no layer dimension, unlike "
                            f"nn.RNN's h0: pass {name}[0]")
                raise ValueError(f"{who}: argument 'state': {name} must have shape "
                                 f"{expected}, got {list(value.shape)}{hint}")

        def per_layer(value, layer):
            if value is None:
                return None
            if self.num_layers > 1:
                value = value[layer]
            return value if batched else value.unsqueeze(-2)  # [N] -> [1, N], [D, N] -> [D, 1, N]

        return [tuple(per_layer(value, layer) for value in state)
                for layer in range(self.num_layers)]

    def _final_state(self, finals, state, batched, T):
        if T == 0 and state is not None and all(v is not None for v in state):
            return state  # given tensors come back as they are
        per_variable = list(zip(*finals))  # one tuple of layers per state variable
        if self.num_layers > 1:
            values = [torch.stack(layers) for layers in per_variable]
        else:
            values = [layers[0] for layers in per_variable]
        if not batched:  # the batch dimension, next to last in every layout
            values = [v.squeeze(-2) for v in values]
        if T == 0 and state is not None:
            values = [given if given is not None else made for given, made in zip(state, values)]
        return tuple(values)


class _LeakyStack(_RecurrentStack):
    """What RecurrentLIF and RecurrentCubaLIF share: the neuron's parameters
    (``_OP``'s in torch_ext._neurons: decays and a threshold) given as
    initial values, floats or tensors, each a buffer or a Parameter
    (``learn_<name>``), 0-dim or ``[N]`` (``per_neuron``, or an ``[N]``
    initial value); the decays clamped into [0, 1] in the forward;
    ``return_membrane``; the op's low-memory flag; ``nn.Linear``-style
    initialisation."""

    _OP = ""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        # w_in, w_rec, bias, then the neuron's parameters in the op's order.
        cls._PER_LAYER = _RecurrentStack._PER_LAYER + NEURONS[cls._OP].param_names

    def __init__(self, in_features, hidden_size, *, bias, values, learn, per_neuron, reset,
                 detach_reset, surrogate, slope, batch_first, return_membrane, backend,
                 num_layers, dropout, recurrent, save_state, device, dtype, delays):
        neuron = NEURONS[self._OP]
        super().__init__(in_features, hidden_size, bias=bias, num_layers=num_layers,
                         dropout=dropout, recurrent=recurrent, reset=reset,
                         detach_reset=detach_reset, surrogate=surrogate, slope=slope,
                         batch_first=batch_first, backend=backend,
                         flags={**{f"learn_{n}": learn[n] for n in neuron.param_names},
                                "per_neuron": per_neuron, "return_membrane": return_membrane,
                                neuron.save_flag: save_state}, dtype=dtype, delays=delays)
        # The same checks, and so the same errors, as the functional's.
        self._inits = {p.name: _initial_value(values[p.name], p.name, p.decay, hidden_size,
                                              type(self).__name__, self._OP, device)
                       for p in neuron.params}
        self.return_membrane, self.per_neuron = return_membrane, per_neuron
        setattr(self, neuron.save_flag, save_state)

        def tensors(factory):
            for name, init in self._inits.items():
                per = per_neuron or (isinstance(init, torch.Tensor) and init.dim() == 1)
                yield name, torch.empty((hidden_size,) if per else (), **factory), learn[name]

        self._register_layers(bias, tensors, device, dtype)
        self.reset_parameters()

    def reset_parameters(self):
        """nn.Linear-style uniform initialisation: w_in and bias with bound
        1/sqrt(fan-in) (in_features for layer 0, hidden_size above), w_rec with
        1/sqrt(hidden_size); the neuron's parameters back to their constructor
        values (a per-neuron tensor given to the constructor included)."""
        with torch.no_grad():
            for layer in range(self.num_layers):
                w_in, w_rec, bias, *params = self._layer(layer)
                bound_in = 1 / math.sqrt(w_in.shape[1])
                nn.init.uniform_(w_in, -bound_in, bound_in)
                if bias is not None:
                    nn.init.uniform_(bias, -bound_in, bound_in)
                if w_rec is not None:
                    bound_rec = 1 / math.sqrt(self.hidden_size)
                    nn.init.uniform_(w_rec, -bound_rec, bound_rec)
                for param, init in zip(params, self._inits.values()):
                    if isinstance(init, torch.Tensor):
                        param.copy_(init)
                    else:
                        param.fill_(init)
        self._reset_delays()

    def _run_layer(self, layer, x, initial, lengths):
        neuron = NEURONS[self._OP]
        w_in, w_rec, bias, *params = self._layer(layer)
        params = [p.clamp(0, 1) if spec.decay else p for p, spec in zip(params, neuron.params)]
        spikes, *states = self._BACKENDS[self.backend](
            x, w_in, self._w_rec_for_op(w_rec), bias, *params, *initial, reset=self.reset,
            detach_reset=self.detach_reset, surrogate=self.surrogate, slope=self.slope,
            lengths=lengths, **{neuron.save_flag: getattr(self, neuron.save_flag)},
            **self._delay_arguments(layer))
        return (*states, spikes)

    def _forward(self, x, state, lengths):
        (membrane, *_, spikes), final = self._run(x, state, lengths)
        return (spikes, membrane, final) if self.return_membrane else (spikes, final)

    def extra_repr(self):
        def shown(init):
            return f"tensor{list(init.shape)}" if isinstance(init, torch.Tensor) else init
        learn = [n for n in self._inits if isinstance(getattr(self, self._name(n, 0)), nn.Parameter)]
        values = ", ".join(f"{n}={shown(v)}" for n, v in self._inits.items())
        return self._repr(f"{values}, learn={learn}, per_neuron={self.per_neuron}",
                          NEURONS[self._OP].save_flag)


class RecurrentLIF(_LeakyStack):
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

    _BACKENDS = {"fused": recurrent_lif, "autograd": recurrent_lif_ref}
    _STATE = ("u", "s")
    _STATE_IS = "a LIF layer's state is two, its membrane and its spikes"

    _OP = "recurrent_lif"

    def __init__(self, in_features, hidden_size, bias=True, alpha=0.9, theta=1.0,
                 learn_alpha=False, learn_theta=False, per_neuron=False, reset="subtract",
                 detach_reset=False, surrogate="sigmoid", slope=None, batch_first=False,
                 return_membrane=False, backend="fused", num_layers=1, dropout=0.0,
                 recurrent="all_to_all", save_membrane=True, device=None, dtype=None,
                 recurrent_delays=None, max_delay=None, delay_sigma=0.0,
                 learn_delay_spread=False, delay_init_std=None):
        super().__init__(in_features, hidden_size, bias=bias,
                         values=dict(alpha=alpha, theta=theta),
                         learn=dict(alpha=learn_alpha, theta=learn_theta), per_neuron=per_neuron,
                         reset=reset, detach_reset=detach_reset, surrogate=surrogate, slope=slope,
                         batch_first=batch_first, return_membrane=return_membrane,
                         backend=backend, num_layers=num_layers, dropout=dropout,
                         recurrent=recurrent, save_state=save_membrane, device=device,
                         dtype=dtype, delays=_delay_options(
                             recurrent_delays, max_delay, delay_sigma, learn_delay_spread,
                             delay_init_std))

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
        return self._forward(x, state, lengths)

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

        {shared args}
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

    from_snntorch.__doc__ = _docs.from_snntorch(from_snntorch.__doc__, "RecurrentLIF", "rleaky",
                                                "RLeaky", "LIF")
    from_snntorch = classmethod(from_snntorch)


class RecurrentCubaLIF(_LeakyStack):
    r"""A recurrent layer of current-based leaky integrate-and-fire neurons
    (CUBA LIF: NIR's ``CubaLIF``, snnTorch's ``RSynaptic``, Norse's LIF
    cell), or a stack of such layers, run over a whole sequence by one fused
    op per layer.

    Each neuron has a synaptic current J, which filters everything that
    reaches it, and a membrane U, which integrates J of the same step. Per
    layer, time-major, with R[t-1] = S[t-1] (README, "The current-based
    layer")::

        I[t] = x[t] @ w_in.T + bias
        J[t] = alpha_syn * J[t-1] + I[t] + S[t-1] @ w_rec.T
        U[t] = alpha * U[t-1] + J[t] - theta * R[t-1]      (reset="subtract")
        S[t] = H(U[t] - theta)                    (H(0) = 0; U == theta does not fire)

    Everything else is :class:`RecurrentLIF`'s: the same arguments (plus
    ``alpha_syn`` and ``learn_alpha_syn``), parameters, initialisation,
    stacks, layouts, ``lengths`` and conventions; the state is ``(u, j, s)``.
    alpha and alpha_syn are clamped into [0, 1] in the forward.

    Args:
        in_features (int): F, the size of each input vector.
        hidden_size (int): N, the number of neurons per layer.
        bias (bool): learn a bias ``[N]`` per layer. Default: ``True``.
        alpha (float or Tensor): initial membrane decay, in [0, 1]: a float,
            a 0-dim or an ``[N]`` tensor. Default: ``0.9``.
        alpha_syn (float or Tensor): initial synaptic current decay, in
            [0, 1], as alpha. Default: ``0.8``.
        theta (float or Tensor): initial threshold, finite, as alpha.
            Default: ``1.0``.
        learn_alpha (bool): alpha is an ``nn.Parameter`` (else a buffer).
            Default: ``False``.
        learn_alpha_syn (bool): alpha_syn is an ``nn.Parameter`` (else a
            buffer). Default: ``False``.
        learn_theta (bool): theta is an ``nn.Parameter`` (else a buffer).
            Default: ``False``.
        per_neuron (bool): alpha, alpha_syn and theta get one value per
            neuron, shape ``[N]``. Default: ``False``.
        reset (str): ``"subtract"``, ``"zero"`` (alpha * U is dropped after a
            spike) or ``"none"``. Default: ``"subtract"``.
        detach_reset (bool): no gradient through the reset term (as
            snnTorch). Default: ``False``.
        surrogate (str): ``"sigmoid"``, ``"fast_sigmoid"``, ``"atan"`` or
            ``"triangle"``. Default: ``"sigmoid"``.
        slope (float or None): the surrogate's slope k > 0; ``None`` takes the
            surrogate's default. Default: ``None``.
        batch_first (bool): batched ``x`` and the outputs are ``[B, T, *]``.
            Default: ``False``.
        return_membrane (bool): ``forward`` also returns the membrane U.
            Default: ``False``.
        backend (str): ``"fused"`` or ``"autograd"`` (the plain-PyTorch
            reference). Default: ``"fused"``.
        num_layers (int): L stacked layers. Default: ``1``.
        dropout (float): with L > 1, dropout between layers in training.
            Default: ``0.0``.
        recurrent (str): ``"all_to_all"``, ``"one_to_one"`` or ``"none"``.
            Default: ``"all_to_all"``.
        save_state (bool): False is the low-memory mode (the backward
            recomputes U and J; same gradients, bitwise). Default: ``True``.
        device (torch.device or None): where the parameters live. Default: ``None``.
        dtype (torch.dtype or None): dtype of the parameters. Default: ``None``.

    Parameters and buffers: as :class:`RecurrentLIF`'s, plus ``alpha_syn``
    (shape ``[]`` or ``[N]``; a Parameter with ``learn_alpha_syn``), named
    ``alpha_syn`` for one layer, ``alpha_syn_l0`` ... in a stack.

    Raises:
        ValueError: as :class:`RecurrentLIF` (sizes, ``backend``, ``reset``,
            ``surrogate``, slope, ``dropout``), alpha or alpha_syn outside
            [0, 1], a non-finite theta, a tensor initial value of another
            shape than ``[]`` or ``[N]``.
        TypeError: a flag that is not a bool, an initial value that is
            neither a number nor a real tensor.

    Example::

        >>> layer = torch_ext.RecurrentCubaLIF(40, 128, alpha_syn=0.8, learn_alpha_syn=True)
        >>> spikes, (u, j, s) = layer(torch.randn(100, 16, 40))   # [T, B, F]
        >>> more, state = layer(torch.randn(50, 16, 40), (u, j, s))  # continue
    """

    _BACKENDS = {"fused": recurrent_cubalif, "autograd": recurrent_cubalif_ref}
    _STATE = ("u", "j", "s")
    _STATE_IS = ("a current-based LIF layer's state is three, its membrane, its synaptic "
                 "current and its spikes")
    _OP = "recurrent_cubalif"

    def __init__(self, in_features, hidden_size, bias=True, alpha=0.9, alpha_syn=0.8, theta=1.0,
                 learn_alpha=False, learn_alpha_syn=False, learn_theta=False, per_neuron=False,
                 reset="subtract", detach_reset=False, surrogate="sigmoid", slope=None,
                 batch_first=False, return_membrane=False, backend="fused", num_layers=1,
                 dropout=0.0, recurrent="all_to_all", save_state=True, device=None, dtype=None,
                 recurrent_delays=None, max_delay=None, delay_sigma=0.0,
                 learn_delay_spread=False, delay_init_std=None):
        super().__init__(in_features, hidden_size, bias=bias,
                         values=dict(alpha=alpha, alpha_syn=alpha_syn, theta=theta),
                         learn=dict(alpha=learn_alpha, alpha_syn=learn_alpha_syn,
                                    theta=learn_theta),
                         per_neuron=per_neuron, reset=reset, detach_reset=detach_reset,
                         surrogate=surrogate, slope=slope, batch_first=batch_first,
                         return_membrane=return_membrane, backend=backend,
                         num_layers=num_layers, dropout=dropout, recurrent=recurrent,
                         save_state=save_state, device=device, dtype=dtype,
                         delays=_delay_options(recurrent_delays, max_delay, delay_sigma,
                                               learn_delay_spread, delay_init_std))

    def forward(self, x, state=None, lengths=None):
        """Runs the layer(s) over a whole sequence, as :meth:`RecurrentLIF.forward`.

        Args:
            x (Tensor): the input sequence: ``[T, B, F]`` (``[B, T, F]`` with
                ``batch_first``), or unbatched ``[T, F]``, on the parameters'
                device.
            state (tuple or None): ``(u, j, s)``, the initial membrane
                potentials, synaptic currents and spikes, as the previous call
                returned them: each ``[B, N]`` for one layer, ``[L, B, N]``
                for a stack; unbatched, ``[N]`` and ``[L, N]``. Any may be
                None (zeros). Default: ``None`` (all zeros).
            lengths (Tensor or None): ``[B]`` integers in [0, T]: row b takes
                steps ``t < lengths[b]`` only (its later spikes are 0, its
                final state the one after its last valid step). Default:
                ``None`` (all T steps).

        Returns:
            ``(spikes, (u_last, j_last, s_last))``, or ``(spikes, membrane,
            (u_last, j_last, s_last))`` with ``return_membrane=True``: the
            top layer's spikes (and membrane) laid out like x, and the state
            of every layer at the last step, which continues the sequence
            when passed back.

        Raises:
            TypeError: x is not a tensor; state is not None or a triple.
            ValueError: x is not 2- or 3-dimensional; u, j or s does not have
                the expected shape (the message gives it); the op's own
                checks, naming the argument.

        Example::

            >>> layer = torch_ext.RecurrentCubaLIF(3, 8, return_membrane=True)
            >>> spikes, membrane, (u, j, s) = layer(torch.randn(20, 4, 3))  # [T, B, F]
            >>> more, _, state = layer(torch.randn(5, 4, 3), (u, j, s))    # 5 more steps
        """
        return self._forward(x, state, lengths)

    def from_snntorch(cls, linear, rsynaptic, *, batch_first=False, return_membrane=False,
                      backend="fused"):
        """A layer that computes what an ``nn.Linear`` followed by an
        ``snntorch.RSynaptic`` compute, the way snnTorch's tutorials loop them::

            spk, syn, mem = rsynaptic.reset_mem()
            for t in range(T):
                spk, syn, mem = rsynaptic(linear(x[t]), spk, syn, mem)

        ``layer(x)`` over the whole ``[T, B, F]`` sequence returns the same
        spikes (and, with ``return_membrane``, the same membranes; the final
        ``j`` is the loop's last ``syn``) as that loop, and the same
        gradients: those of the layer's ``w_in``, ``bias``, ``w_rec``,
        ``alpha_syn``, ``alpha`` and ``theta`` equal those of
        ``linear.weight``, ``linear.bias`` (= those of
        ``rsynaptic.recurrent.bias``), the recurrent weight
        (``rsynaptic.recurrent.weight``, or ``V``), ``rsynaptic.alpha``,
        ``rsynaptic.beta`` and ``rsynaptic.threshold``, and the input's
        gradient is the same. The values are copied; a frozen snnTorch tensor
        (a buffer, or ``requires_grad=False``) gives a buffer or a frozen
        parameter. ``init_hidden=True`` RSynaptics are ported alike.

        The mapping (README, "Porting from snnTorch"): ``alpha`` (snnTorch's
        synaptic current decay) -> ``alpha_syn`` (``learn_alpha`` ->
        ``learn_alpha_syn``), ``beta`` (the membrane decay) -> ``alpha``
        (``learn_beta`` -> ``learn_alpha``), ``threshold`` -> ``theta``
        (``learn_threshold`` -> ``learn_theta``), each 0-dim (a float, 0-dim
        or ``[1]``) or ``[N]``, copied as they are (both clamp the decays into
        [0, 1] in the forward, and ``reset_parameters`` restores the ported
        values); otherwise :meth:`RecurrentLIF.from_snntorch`'s: ``w_in``,
        ``bias`` = ``linear.bias + recurrent.bias``, ``w_rec`` ``[N, N]`` or
        one-to-one ``[N]`` / 0-dim (a shared V), ``reset_mechanism``
        ``"subtract"``/``"none"`` with ``detach_reset=True``, and the atan,
        fast_sigmoid and sigmoid surrogates with snnTorch's slope.

        {shared args}
            TypeError: ``linear`` is not an ``nn.Linear``; ``rsynaptic`` is
                not an ``snntorch.RSynaptic`` (an ``RLeaky`` is pointed to
                :meth:`RecurrentLIF.from_snntorch`), or is a subclass
                overriding ``forward``, ``_base_state_function``,
                ``mem_reset`` or ``fire``.
            ValueError: naming what cannot be reproduced exactly:
                ``reset_mechanism="zero"`` (RSynaptic's "zero" sets the whole
                new membrane to zero, U[t+1] = (1 - R)(beta U[t] + J[t+1]);
                this layer's "zero" only drops alpha U[t]),
                ``reset_delay=False``, graded spikes, ``inhibition``,
                ``state_quant``, ``surrogate_disable``, any other surrogate,
                a convolutional recurrence, a recurrent ``nn.Linear`` not
                N -> N, a negative threshold with ``"subtract"``, a state
                function that is not RSynaptic's own, an uninitialised
                ``LazyLinear``, alpha/beta/threshold/V of a shape other than
                ``[]``, ``[1]`` or ``[N]``, non-finite values.

        Example::

            >>> fc = nn.Linear(10, 32)
            >>> syn = snntorch.RSynaptic(alpha=0.8, beta=0.9, linear_features=32)
            >>> layer = torch_ext.RecurrentCubaLIF.from_snntorch(fc, syn)
            >>> spikes, (u, j, s) = layer(torch.randn(25, 8, 10))   # the loop's spikes
        """
        from ._snntorch import from_snntorch
        return from_snntorch(cls, linear, rsynaptic, batch_first=batch_first,
                             return_membrane=return_membrane, backend=backend)

    from_snntorch.__doc__ = _docs.from_snntorch(from_snntorch.__doc__, "RecurrentCubaLIF",
                                                "rsynaptic", "RSynaptic", "current-based LIF")
    from_snntorch = classmethod(from_snntorch)


class RecurrentAdLIF(_RecurrentStack):
    r"""A recurrent layer of adaptive leaky integrate-and-fire neurons
    (SE-adLIF, Baronig et al. 2024), or a stack of such layers, run over a
    whole sequence by one fused op per layer.

    Each neuron has a membrane V and an adaptation current A. Per layer,
    time-major, with R[t] = S[t] (README, "The adaptive layer")::

        I[t] = x[t] @ w_in.T + bias
        V[t] = alpha * reset(V[t-1], R[t-1]) + (1 - alpha) * (I[t] + S[t-1] @ w_rec.T - A[t-1])
        S[t] = H(V[t] - theta)                        (H(0) = 0; V == theta does not fire)
        A[t] = beta * A[t-1] + (1 - beta) * (a * reset(V[t], R[t]) + b * S[t])

    with reset(V, R) = V * (1 - R) for ``reset="zero"``. The decays and
    couplings are learnt per neuron in the parameterisation of the paper's
    code: time constants interpolated in a range, tau_u = w_u * tau_u_max +
    (1 - w_u) * tau_u_min with a learnt w_u in [0, 1], alpha = exp(-dt /
    tau_u) (tau_w and beta alike), and a, b learnt in their ranges and
    scaled by q: the op gets ``q * a`` and ``q * b``. The forward clamps the
    interpolation weights into [0, 1] and a, b into their ranges (so an
    optimiser step may push them out harmlessly; the clamp passes no gradient
    to a value outside).

    Like ``nn.RNN``, the layer keeps no state between calls: ``forward`` takes
    the state (v, a, s) and returns the final one.

    Args:
        in_features (int): F, the size of each input vector.
        hidden_size (int): N, the number of neurons per layer.
        bias (bool): learn a bias ``[N]`` per layer (initialised to zeros).
            Default: ``True``.
        num_layers (int): L, the number of stacked layers; layer 0 maps
            in_features to hidden_size, the others hidden_size to hidden_size,
            each fed the spikes of the layer below. Default: ``1``.
        dropout (float): with L > 1, the probability of dropping each spike
            between two layers (``F.dropout``), in training mode only, as
            ``nn.RNN``. Default: ``0.0``.
        recurrent (str): ``"all_to_all"``: a dense ``[N, N]`` ``w_rec``;
            ``"one_to_one"``: each neuron feeds back only its own spike,
            ``w_rec`` of shape ``[N]``; ``"none"``: no recurrence, no
            ``w_rec``. Default: ``"all_to_all"``.
        tau_u_range (tuple): ``(tau_u_min, tau_u_max)``, the range of the
            membrane time constants, in units of dt, 0 < min <= max.
            Default: ``(5.0, 25.0)``.
        tau_w_range (tuple): ``(tau_w_min, tau_w_max)``, the range of the
            adaptation time constants, as tau_u_range. Default: ``(60.0, 300.0)``.
        a_range (tuple): ``(a_min, a_max)``, the range of a before the
            scaling by q, finite, min <= max. Default: ``(0.0, 1.0)``.
        b_range (tuple): ``(b_min, b_max)``, the range of b before the
            scaling by q, as a_range. Default: ``(0.0, 2.0)``.
        q (float): the scale of a and b, finite. Default: ``120.0``.
        theta (float): the threshold, finite (not learnt). Default: ``1.0``.
        dt (float): the time step, in the time constants' units, > 0.
            Default: ``1.0``.
        reset (str): ``"zero"`` (V * (1 - R)), ``"subtract"`` (V - theta * R)
            or ``"none"``. Default: ``"zero"``.
        detach_reset (bool): no gradient through the resets' R (the spikes
            in ``b * S`` and in the recurrence keep theirs). Default: ``True``.
        surrogate (str): the stand-in for dS/dV in the backward pass:
            ``"sigmoid"``, ``"fast_sigmoid"``, ``"atan"`` or ``"triangle"``.
            Default: ``"sigmoid"``.
        slope (float or None): the surrogate's slope k > 0; ``None`` takes the
            surrogate's default (25, 25, 2, 1 in that order). Default: ``None``.
        batch_first (bool): batched ``x`` and the output spikes are ``[B, T, *]``
            instead of ``[T, B, *]``; the state is unaffected. Default: ``False``.
        backend (str): ``"fused"`` (the C++/CUDA op) or ``"autograd"`` (the
            plain-PyTorch reference of the same math). Default: ``"fused"``.
        save_state (bool): False is the low-memory mode: autograd keeps
            nothing of size T*B*N beyond the returned spikes and the backward
            recomputes the states (same gradients, bitwise). Default: ``True``.
        device (torch.device or None): where the parameters live. Default: ``None``.
        dtype (torch.dtype or None): dtype of the parameters (bfloat16 and
            float16 included: the initialisation runs in float32, then
            casts). Default: ``None``.

    Parameters, all learnt (named as RecurrentLIF's: no suffix for L = 1,
    ``_l0`` ... ``_l{L-1}`` for L > 1):

    - ``w_in`` ``[N, F]`` (``[N, N]`` above the first layer), uniform in
      +-1/sqrt(fan-in); ``w_rec`` ``[N, N]`` orthogonal (gain 1), or ``[N]``
      uniform in [-1, 1] with ``"one_to_one"``; ``bias`` ``[N]`` zeros;
    - ``tau_u``, ``tau_w`` ``[N]``: the time constants' interpolation
      weights in [0, 1], uniform(0, 1);
    - ``a``, ``b`` ``[N]``: uniform in a_range, b_range (before the scaling
      by q).

    :meth:`neuron_parameters` gives the alpha, beta, a and b the op gets.

    Raises:
        ValueError: a size that is not a positive int, an unknown ``backend``,
            ``reset``, ``surrogate`` or ``recurrent``, a slope out of range, a
            range that is not a pair of finite numbers min <= max (time
            constants > 0), a non-finite q or theta, dt <= 0, a ``dropout``
            outside [0, 1].
        TypeError: a flag that is not a bool, a number that is not a real.

    Example::

        >>> layer = torch_ext.RecurrentAdLIF(40, 128, num_layers=2, batch_first=True)
        >>> spikes, (v, a, s) = layer(torch.randn(16, 100, 40))   # [B, T, F]
        >>> spikes.shape, v.shape                                 # v, a, s: [L, B, N]
        (torch.Size([16, 100, 128]), torch.Size([2, 16, 128]))
        >>> more, state = layer(torch.randn(16, 50, 40), (v, a, s))  # continue
    """

    _BACKENDS = {"fused": recurrent_adlif, "autograd": recurrent_adlif_ref}
    _PER_LAYER = ("w_in", "w_rec", "bias", "tau_u", "tau_w", "a", "b")
    _STATE = ("v", "a", "s")
    _STATE_IS = ("an adaptive LIF layer's state is three, its membrane, its adaptation and its "
                 "spikes")

    def __init__(self, in_features, hidden_size, bias=True, num_layers=1, dropout=0.0,
                 recurrent="all_to_all", tau_u_range=(5.0, 25.0), tau_w_range=(60.0, 300.0),
                 a_range=(0.0, 1.0), b_range=(0.0, 2.0), q=120.0, theta=1.0, dt=1.0,
                 reset="zero", detach_reset=True, surrogate="sigmoid", slope=None,
                 batch_first=False, backend="fused", save_state=True, device=None, dtype=None,
                 recurrent_delays=None, max_delay=None, delay_sigma=0.0,
                 learn_delay_spread=False, delay_init_std=None):
        super().__init__(in_features, hidden_size, bias=bias, num_layers=num_layers,
                         dropout=dropout, recurrent=recurrent, reset=reset,
                         detach_reset=detach_reset, surrogate=surrogate, slope=slope,
                         batch_first=batch_first, backend=backend,
                         flags=dict(save_state=save_state), dtype=dtype,
                         delays=_delay_options(recurrent_delays, max_delay, delay_sigma,
                                               learn_delay_spread, delay_init_std))
        self.save_state = save_state
        self.tau_u_range = _range(tau_u_range, "tau_u_range", positive=True)
        self.tau_w_range = _range(tau_w_range, "tau_w_range", positive=True)
        self.a_range = _range(a_range, "a_range")
        self.b_range = _range(b_range, "b_range")
        for name, value in (("q", q), ("theta", theta), ("dt", dt)):
            _options.check_type(value, name, numbers.Real, "a float", "RecurrentAdLIF")
            setattr(self, name, _options.check_param(value, name, "RecurrentAdLIF", decay=False))
        if not self.dt > 0:
            raise ValueError(f"RecurrentAdLIF: argument 'dt' must be > 0, got {dt!r}")

        def neuron(factory):
            for name in ("tau_u", "tau_w", "a", "b"):
                yield name, torch.empty(hidden_size, **factory), True

        self._register_layers(bias, neuron, device, dtype)
        self.reset_parameters()

    def reset_parameters(self):
        """The initialisation of the paper's code: w_in uniform in
        +-1/sqrt(fan-in) (in_features for layer 0, hidden_size above), w_rec
        orthogonal with gain 1 (``[N]`` one-to-one: uniform in [-1, 1]),
        bias zeros, the interpolation weights tau_u and tau_w uniform in
        [0, 1], a and b uniform in a_range and b_range."""
        with torch.no_grad():
            for layer in range(self.num_layers):
                w_in, w_rec, bias, tau_u, tau_w, a, b = self._layer(layer)
                bound_in = 1 / math.sqrt(w_in.shape[1])
                nn.init.uniform_(w_in, -bound_in, bound_in)
                if w_rec is not None and w_rec.dim() == 2:
                    # In float32 or float64: QR has no half-precision kernels.
                    w = torch.empty(w_rec.shape, device=w_rec.device,
                                    dtype=_options.compute_dtype(w_rec.dtype))
                    w_rec.copy_(nn.init.orthogonal_(w, gain=1.0))
                elif w_rec is not None:  # one weight per neuron, the size of an orthogonal one's
                    nn.init.uniform_(w_rec, -1.0, 1.0)
                if bias is not None:
                    nn.init.zeros_(bias)
                nn.init.uniform_(tau_u, 0.0, 1.0)
                nn.init.uniform_(tau_w, 0.0, 1.0)
                nn.init.uniform_(a, *self.a_range)
                nn.init.uniform_(b, *self.b_range)
        self._reset_delays()

    def neuron_parameters(self, layer=0):
        """The neuron parameters layer ``layer`` gives the op, ``(alpha,
        beta, a, b)``, each ``[N]``, differentiable in the module's
        parameters: alpha = exp(-dt / tau_u) with tau_u = w * tau_u_max +
        (1 - w) * tau_u_min and w the parameter ``tau_u`` clamped into
        [0, 1] (beta from ``tau_w`` alike), a and b the parameters clamped
        into a_range and b_range, times q."""
        _, _, _, tau_u, tau_w, a, b = self._layer(layer)

        def decay(weight, bounds):
            low, high = bounds
            weight = weight.clamp(0, 1)
            return torch.exp(-self.dt / (weight * high + (1 - weight) * low))

        return (decay(tau_u, self.tau_u_range), decay(tau_w, self.tau_w_range),
                self.q * a.clamp(*self.a_range), self.q * b.clamp(*self.b_range))

    def _run_layer(self, layer, x, initial, lengths):
        w_in, w_rec, bias = self._layer(layer)[:3]
        alpha, beta, a, b = self.neuron_parameters(layer)
        spikes, membrane, adaptation = self._BACKENDS[self.backend](
            x, w_in, self._w_rec_for_op(w_rec), bias, alpha, beta, a, b, self.theta, *initial,
            reset=self.reset, detach_reset=self.detach_reset, surrogate=self.surrogate,
            slope=self.slope, save_state=self.save_state, lengths=lengths,
            **self._delay_arguments(layer))
        return membrane, adaptation, spikes

    def forward(self, x, state=None, lengths=None):
        """Runs the layer(s) over a whole sequence.

        Args:
            x (Tensor): the input sequence: ``[T, B, F]`` (``[B, T, F]`` with
                ``batch_first``), or unbatched ``[T, F]`` (whatever
                ``batch_first``, as ``nn.RNN``), on the parameters' device.
            state (tuple or None): ``(v, a, s)``, the initial membrane
                potentials, adaptation currents and spikes, as the previous
                call returned them: each ``[B, N]`` for one layer,
                ``[L, B, N]`` for L = num_layers > 1; unbatched, ``[N]`` and
                ``[L, N]``. Any may be None (zeros); None (the default)
                means all zeros.
            lengths (Tensor or None): ``[B]`` integers in [0, T], a
                variable-length batch: row b takes steps ``t < lengths[b]``
                only, its later steps output spikes 0, and its final state is
                the one after its last valid step (the given state where its
                length is 0). Default: ``None`` (all T steps).

        Returns:
            ``(spikes, (v_last, a_last, s_last))``: the top layer's
            ``spikes`` ``[T, B, N]`` (``[B, T, N]`` with ``batch_first``,
            ``[T, N]`` unbatched) in x's dtype, and the membrane, adaptation
            and spikes of every layer at the last step, shaped like
            ``state``, which continue the sequence when passed back. With
            T = 0 the given state (or zeros) is returned.

        Raises:
            TypeError: x is not a tensor; state is not None or a triple;
                v, a or s is neither a tensor nor None.
            ValueError: x is not 2- or 3-dimensional; v, a or s does not have
                the shape above (the message gives the expected shape); the
                op's own checks (feature size, dtypes, devices), naming the
                argument.

        Example::

            >>> layer = torch_ext.RecurrentAdLIF(3, 8)
            >>> spikes, state = layer(torch.randn(20, 4, 3))       # [T, B, F]
            >>> more, state = layer(torch.randn(5, 4, 3), state)  # 5 more steps
        """
        (_, _, spikes), final = self._run(x, state, lengths)
        return spikes, final

    def extra_repr(self):
        return self._repr(f"tau_u_range={self.tau_u_range}, tau_w_range={self.tau_w_range}, "
                          f"a_range={self.a_range}, b_range={self.b_range}, q={self.q}, "
                          f"theta={self.theta}, dt={self.dt}", "save_state")


for _cls in (RecurrentLIF, RecurrentCubaLIF, RecurrentAdLIF):
    if _cls.__doc__ is not None:  # None under python -OO
        _cls.__doc__ += _docs.MODULE_DELAYS


def _non_negative(value, name, who):
    """A constructor's finite number >= 0 (not a bool), as a float."""
    message = f"{who}: argument '{name}' must be a finite number >= 0, got {value!r}"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(message)
    try:
        value = float(value)
    except OverflowError:
        raise ValueError(message) from None
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(message)
    return value


def _delay_options(recurrent_delays, max_delay, delay_sigma, learn_delay_spread, delay_init_std):
    return dict(recurrent_delays=recurrent_delays, max_delay=max_delay, delay_sigma=delay_sigma,
                learn_delay_spread=learn_delay_spread, delay_init_std=delay_init_std)


def _range(value, name, positive=False):
    """A (low, high) pair of finite numbers, low <= high (and low > 0 with
    positive), as a tuple of floats."""
    if (not isinstance(value, (tuple, list)) or len(value) != 2
            or not all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in value)):
        raise TypeError(f"RecurrentAdLIF: argument '{name}' must be a pair (min, max) of numbers, "
                        f"got {value!r}")
    low, high = (float(v) for v in value)
    if not (math.isfinite(low) and math.isfinite(high) and low <= high) or (positive and low <= 0):
        what = "0 < min <= max" if positive else "min <= max"
        raise ValueError(f"RecurrentAdLIF: argument '{name}' must be a pair of finite numbers "
                         f"with {what}, got {value!r}")
    return low, high


def _initial_value(value, name, decay, hidden_size, module, op, device):
    """A constructor's initial value of a neuron parameter: a float (checked
    as the functional `op` checks it, with its message: a decay in [0, 1],
    else finite), or a detached copy of a 0-dim or [hidden_size] real tensor
    whose values pass the same checks."""
    if not isinstance(value, torch.Tensor):
        return _options.check_param(value, name, op, decay)
    if value.dtype == torch.bool or value.is_complex():
        raise TypeError(f"{module}: argument '{name}' must be a float or a real tensor, got "
                        f"a tensor of dtype {value.dtype}")
    if value.is_meta and torch.device(device or "cpu").type != "meta":
        raise ValueError(f"{module}: argument '{name}' is a meta tensor (no values) but the "
                         f"module's parameters are on {torch.device(device or 'cpu')}: give a "
                         "float or a tensor with values (or device='meta')")
    if value.dim() > 1 or (value.dim() == 1 and value.shape[0] != hidden_size):
        raise ValueError(f"{module}: argument '{name}' must be a float, a 0-dim tensor or an "
                         f"[N] = [{hidden_size}] tensor (one value per neuron), got a tensor of "
                         f"shape {list(value.shape)}")
    value = value.detach().clone()
    if not value.is_meta and value.numel() > 0:
        values = value.double()
        if decay and not bool(((values >= 0) & (values <= 1)).all()):  # NaN too
            raise ValueError(f"{module}: argument '{name}' must lie in [0, 1], got a tensor "
                             "with values outside [0, 1] or NaN")
        if not decay and not bool(values.isfinite().all()):
            raise ValueError(f"{module}: argument '{name}' must be finite, got a tensor with "
                             "non-finite values")
    return value


def _final_value(out, given, lengths, history):
    """A state variable's final value from its sequence ``out`` [T, B, N]
    and its initial value ``given`` (None: zeros): each batch row's value
    after its own last step (t = lengths[b] - 1, all T steps without
    lengths; the initial value where it took none); with ``history`` = D the
    spike history [D, B, N] of its last D steps, oldest first, reaching back
    into the initial history where a row took fewer than D steps."""
    T, B, N = out.shape
    if history:
        D = history
        first = (given if given is not None else out.new_zeros(D, B, N)).to(out.dtype)
        if T == 0:
            return first
        # Slot k of row b holds step ends[b] - D + k: from out where >= 0, else
        # from the initial history's slot D + that (no copy of the sequence).
        # Clamped as the kernels do (on CUDA the op does not check the values).
        ends = (torch.full((B,), T, dtype=torch.long, device=out.device) if lengths is None
                else lengths.to(device=out.device, dtype=torch.long).clamp(0, T))
        step = (ends.view(1, B, 1) - D
                + torch.arange(D, device=out.device).view(-1, 1, 1)).expand(D, B, N)
        return torch.where(step >= 0, out.gather(0, step.clamp(min=0)),
                           first.gather(0, (step + D).clamp(max=D - 1)))
    first = given if given is not None else out.new_zeros(B, N)
    if T == 0:  # no step taken: the state is what was given, or zeros
        return first
    if lengths is None:
        return out[-1]
    ends = lengths.to(device=out.device, dtype=torch.long).clamp(0, T)
    last = (ends - 1).clamp(min=0).view(1, -1, 1).expand(1, B, N)
    return torch.where((ends > 0).unsqueeze(1), out.gather(0, last)[0], first.to(out.dtype))
