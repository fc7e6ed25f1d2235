"""torch_ext.RecurrentLIF: the fused layer as a drop-in nn.Module."""
import math

import torch
from torch import nn

from . import _options
from .functional import recurrent_lif
from .reference import recurrent_lif_ref

BACKENDS = {"fused": recurrent_lif, "autograd": recurrent_lif_ref}


class RecurrentLIF(nn.Module):
    """A recurrent layer of leaky integrate-and-fire neurons.

    ``forward(x, state=None)`` takes ``x`` of shape ``[T, B, F]`` (``[B, T, F]``
    with ``batch_first``) and the state ``(u, s)``, each ``[B, N]``, and returns
    ``(spikes, (u_last, s_last))``, or ``(spikes, membrane, (u_last, s_last))``
    with ``return_membrane=True``. Like ``nn.RNN`` it keeps no state between calls.

    alpha (decay, kept in [0, 1] by clamping) and theta (threshold) are learnable
    Parameters with ``learn_alpha``/``learn_theta``, buffers otherwise; scalars, or
    one value per neuron with ``per_neuron``. ``backend="autograd"`` runs the
    plain-PyTorch reference of the same math instead of the fused op.
    """

    def __init__(self, in_features, hidden_size, bias=True, alpha=0.9, theta=1.0,
                 learn_alpha=False, learn_theta=False, per_neuron=False, reset="subtract",
                 detach_reset=False, surrogate="sigmoid", slope=None, batch_first=False,
                 return_membrane=False, backend="fused", device=None, dtype=None):
        super().__init__()
        if not isinstance(backend, str) or backend not in BACKENDS:
            raise ValueError(f"RecurrentLIF: argument 'backend' must be one of {tuple(BACKENDS)}, got {backend!r}")
        for name, value in (("in_features", in_features), ("hidden_size", hidden_size)):
            # Below 2**63: a size torch can hold (larger ints fail inside torch.empty).
            if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 2**63:
                raise ValueError(f"RecurrentLIF: argument '{name}' must be a positive int, got {value!r}")
        for name, value in (("alpha", alpha), ("theta", theta)):
            # (The functional's message would say that tensors are fine.)
            if isinstance(value, torch.Tensor):
                raise TypeError(f"RecurrentLIF: argument '{name}' must be a float (the initial "
                                f"value; set the layer's {name} after construction for other "
                                "values), got 'torch.Tensor'")
        # The same checks, and so the same errors, as the functional's.
        alpha, theta = _options.check_alpha(alpha), _options.check_theta(theta)
        slope = _options.check_option_types(reset, detach_reset, surrogate, slope)
        self.slope = _options.resolve_slope(reset, detach_reset, surrogate, slope, dtype)
        for name, value in (("bias", bias), ("learn_alpha", learn_alpha),
                            ("learn_theta", learn_theta), ("per_neuron", per_neuron),
                            ("batch_first", batch_first), ("return_membrane", return_membrane)):
            if not isinstance(value, bool):
                raise TypeError(f"RecurrentLIF: argument '{name}' must be a bool, got "
                                f"{_options.type_name(value)}")
        self.in_features, self.hidden_size = in_features, hidden_size
        self.reset, self.detach_reset, self.surrogate = reset, detach_reset, surrogate
        self.batch_first, self.return_membrane, self.backend = batch_first, return_membrane, backend
        self.per_neuron = per_neuron
        self._alpha_init, self._theta_init = alpha, theta

        factory = {"device": device, "dtype": dtype}
        self.w_in = nn.Parameter(torch.empty(hidden_size, in_features, **factory))
        self.w_rec = nn.Parameter(torch.empty(hidden_size, hidden_size, **factory))
        self.bias = nn.Parameter(torch.empty(hidden_size, **factory)) if bias else None
        shape = (hidden_size,) if per_neuron else ()
        for name, learn in (("alpha", learn_alpha), ("theta", learn_theta)):
            value = torch.empty(shape, **factory)
            if learn:
                setattr(self, name, nn.Parameter(value))
            else:
                self.register_buffer(name, value)
        self.reset_parameters()

    def reset_parameters(self):
        """nn.Linear-style uniform initialisation: w_in and bias with bound
        1/sqrt(in_features), w_rec with 1/sqrt(hidden_size); alpha and theta
        back to their constructor values."""
        with torch.no_grad():
            bound_in = 1 / math.sqrt(self.in_features)
            nn.init.uniform_(self.w_in, -bound_in, bound_in)
            if self.bias is not None:
                nn.init.uniform_(self.bias, -bound_in, bound_in)
            bound_rec = 1 / math.sqrt(self.hidden_size)
            nn.init.uniform_(self.w_rec, -bound_rec, bound_rec)
            self.alpha.fill_(self._alpha_init)
            self.theta.fill_(self._theta_init)

    def forward(self, x, state=None):
        _options.check_x(x)
        if x.dim() != 3:
            layout = "[B, T, F]" if self.batch_first else "[T, B, F]"
            raise ValueError(f"RecurrentLIF: argument 'x' must have shape {layout}, got {list(x.shape)}")
        if self.batch_first:
            x = x.transpose(0, 1)
        if state is None:
            u0 = s0 = None
        elif isinstance(state, (tuple, list)) and len(state) == 2:
            u0, s0 = state
        else:
            raise TypeError("RecurrentLIF: argument 'state' must be None or a pair (u, s) of "
                            f"[B, N] tensors, got {_options.type_name(state)}")
        spikes, membrane = BACKENDS[self.backend](
            x, self.w_in, self.w_rec, self.bias, self.alpha.clamp(0, 1), self.theta, u0, s0,
            reset=self.reset, detach_reset=self.detach_reset, surrogate=self.surrogate,
            slope=self.slope)
        if x.shape[0] == 0:  # no step taken: the state is what was given
            final = state if state is not None else (
                membrane.new_zeros(x.shape[1], self.hidden_size),
                spikes.new_zeros(x.shape[1], self.hidden_size))
        else:
            final = (membrane[-1], spikes[-1])
        if self.batch_first:
            spikes, membrane = spikes.transpose(0, 1), membrane.transpose(0, 1)
        return (spikes, membrane, final) if self.return_membrane else (spikes, final)

    def extra_repr(self):
        learn = [n for n in ("alpha", "theta") if isinstance(getattr(self, n), nn.Parameter)]
        return (f"{self.in_features}, {self.hidden_size}, bias={self.bias is not None}, "
                f"alpha={self._alpha_init}, theta={self._theta_init}, learn={learn}, "
                f"per_neuron={self.per_neuron}, reset={self.reset!r}, "
                f"detach_reset={self.detach_reset}, surrogate={self.surrogate!r}, "
                f"slope={self.slope}, batch_first={self.batch_first}, backend={self.backend!r}")
