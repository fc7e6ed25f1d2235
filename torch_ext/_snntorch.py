"""from_snntorch: an nn.Linear followed by an snntorch.RLeaky (RecurrentLIF)
or an snntorch.RSynaptic (RecurrentCubaLIF), ported exactly, or rejected
with the reason.

What snnTorch 1.0's RLeaky computes per step (its forward, _base_sub /
_base_int and SpikingNeuron.fire / mem_reset), with I = linear(x[t]):

    R    = spike_grad(mem - threshold).detach()           from the previous mem
    mem  = beta.clamp(0, 1) * mem + I + recurrent(spk) - R * threshold
    spk  = spike_grad(mem - threshold) * graded_spikes_factor

and the loop starts from mem = spk = 0. With graded_spikes_factor = 1, R is
the previous step's spike, detached: this layer's model with
detach_reset=True, R[t-1] = S[t-1], except at the first step, where snnTorch's
R = H(0 - threshold): hence the check that the threshold is not negative.

RSynaptic's step is the same with a synaptic current in front of the
membrane (its _base_state_function), from syn = 0:

    syn  = alpha.clamp(0, 1) * syn + I + recurrent(spk)
    mem  = beta.clamp(0, 1) * mem + syn - R * threshold

which is RecurrentCubaLIF's J and U with alpha -> alpha_syn, beta -> alpha.
Both ports are the one function below, driven by a _Kind.
"""
import math
from typing import NamedTuple, Tuple

import torch
from torch import nn

from ._neurons import NEURONS


class _Kind(NamedTuple):
    """One snnTorch neuron class and the layer it ports to."""
    layer: str        # this package's layer class: its from_snntorch
    neuron: str       # the snnTorch class, snntorch.<neuron>
    argument: str     # from_snntorch's argument naming the neuron
    params: Tuple[Tuple[str, str], ...]  # (snnTorch attribute, this layer's parameter)
    zero: Tuple[str, str]  # reset 'zero': snnTorch's new membrane, this layer's


_KINDS = {
    "recurrent_lif": _Kind(
        "RecurrentLIF", "RLeaky", "rleaky", (("beta", "alpha"), ("threshold", "theta")),
        ("U[t+1] = (1 - R) * (beta * U[t] + I[t+1] + V(S[t]))",
         "U[t+1] = alpha * (1 - R) * U[t] + I[t+1] + V(S[t])")),
    "recurrent_cubalif": _Kind(
        "RecurrentCubaLIF", "RSynaptic", "rsynaptic",
        (("alpha", "alpha_syn"), ("beta", "alpha"), ("threshold", "theta")),
        ("U[t+1] = (1 - R) * (beta * U[t] + J[t+1]), with J[t+1] = alpha * J[t] + I[t+1] + "
         "V(S[t])", "U[t+1] = alpha * (1 - R) * U[t] + J[t+1], with J[t+1] = alpha_syn * J[t] + "
         "I[t+1] + V(S[t])")),
}

# The methods one snnTorch step calls besides the state function: a subclass
# overriding any of them computes something else.
_STEP_METHODS = ("forward", "_base_state_function", "mem_reset", "fire")


def _fail(kind, what):
    raise ValueError(f"{kind.layer}.from_snntorch: {what}")


def _import_snntorch(kind):
    try:
        import snntorch
        from snntorch import surrogate
    except ImportError as e:
        raise ImportError(f"{kind.layer}.from_snntorch needs snnTorch (pip install snntorch)") \
            from e
    return snntorch, surrogate


# snnTorch surrogates with no exact equivalent here, and why.
_UNSUPPORTED_SURROGATES = {
    "triangular": "its gradient is a signed constant (threshold below the threshold, "
                  "-threshold above), not this layer's 'triangle' k * max(0, 1 - k|v|)",
    "heaviside": "its gradient is the spike itself",
    "straight_through_estimator": "its gradient is 1 everywhere",
    "spike_rate_escape": "k * exp(-beta |v - 1|) has no counterpart here",
    "SSO": "its gradient is random",
    "LSO": "its gradient is random (LSO calls the stochastic spike operator)",
    "SFS": "its gradient is cut off below B",
    "custom_surrogate": "a custom gradient cannot be translated",
}
_SUPPORTED = ("snntorch.surrogate.atan(alpha) (also spike_grad=None), "
              "surrogate.fast_sigmoid(slope), surrogate.sigmoid(slope)")


def _surrogate(kind, spike_grad, surrogate):
    """This layer's (surrogate, slope) for the neuron's spike_grad.

    snnTorch's surrogate factories return a closure over the slope; the
    closure's code object identifies the factory. The formulas are the same
    as this layer's (README table), with k = snnTorch's parameter:
      atan(alpha):        alpha / 2 / (1 + (pi/2 * alpha * v)^2)
      fast_sigmoid(slope): 1 / (slope * |v| + 1)^2
      sigmoid(slope):     slope * exp(-slope v) / (exp(-slope v) + 1)^2
    (the last written without the overflow: snnTorch's form gives NaN where
    exp(-slope v) overflows, this layer the true value, about 0)."""
    exact = {"atan": (surrogate.atan, "alpha"), "fast_sigmoid": (surrogate.fast_sigmoid, "slope"),
             "sigmoid": (surrogate.sigmoid, "slope")}
    code = getattr(spike_grad, "__code__", None)
    for name, (factory, parameter) in exact.items():
        if code is not None and code is factory().__code__:
            cells = dict(zip(code.co_freevars, (c.cell_contents for c in spike_grad.__closure__)))
            slope = cells[parameter]
            try:
                slope = float(slope)
            except (TypeError, ValueError, RuntimeError):
                _fail(kind, f"the surrogate's {parameter} must be a number, got {slope!r}")
            if not (math.isfinite(slope) and slope > 0):
                _fail(kind, f"the surrogate {name}'s {parameter} must be positive and finite, "
                            f"got {slope}")
            return name, slope
    qualname = getattr(spike_grad, "__qualname__", type(spike_grad).__qualname__)
    factory = qualname.split(".")[0]
    if getattr(spike_grad, "__module__", None) == surrogate.__name__ and \
            factory in _UNSUPPORTED_SURROGATES:
        _fail(kind, f"the {kind.neuron}'s spike_grad is snntorch.surrogate.{factory}, which has "
                    f"no exact equivalent here: {_UNSUPPORTED_SURROGATES[factory]}. Supported: "
                    f"{_SUPPORTED}")
    _fail(kind, f"the {kind.neuron}'s spike_grad ({qualname}) is not one of snnTorch's "
                f"surrogates this layer reproduces exactly: {_SUPPORTED}")


def _shaped(kind, value, name, N):
    """A decay, the threshold or V as this layer holds it: 0-dim, or [N] per
    neuron (a [1] tensor is one shared value, unless N == 1)."""
    if value is None:
        _fail(kind, f"the {kind.neuron}'s {name} is None")
    value = torch.as_tensor(value).detach()
    if value.is_complex() or value.dtype == torch.bool:
        _fail(kind, f"the {kind.neuron}'s {name} must be real, got dtype {value.dtype}")
    if value.dim() == 0 or (value.shape == (1,) and N != 1):
        value = value.reshape(())
    elif value.shape != (N,):
        _fail(kind, f"the {kind.neuron}'s {name} must have shape [], [1] or [N] = [{N}] (one per "
                    f"neuron), got {list(value.shape)}")
    if not bool(torch.isfinite(value).all()):
        _fail(kind, f"the {kind.neuron}'s {name} must be finite")
    return value.clone()


def _check_type(kind, snntorch, neuron):
    """TypeError unless `neuron` is the kind's snnTorch class whose step is
    snnTorch's own; returns that class."""
    expected = getattr(snntorch, kind.neuron)
    if not isinstance(neuron, expected):
        hint = ""
        for other in _KINDS.values():
            if other is not kind and isinstance(neuron, getattr(snntorch, other.neuron)):
                hint = f"; for an snntorch.{other.neuron} use {other.layer}.from_snntorch"
        raise TypeError(f"{kind.layer}.from_snntorch: argument '{kind.argument}' must be an "
                        f"snntorch.{kind.neuron}, got {type(neuron).__qualname__}{hint}")
    for method in _STEP_METHODS:
        if getattr(type(neuron), method) is not getattr(expected, method):
            raise TypeError(f"{kind.layer}.from_snntorch: argument '{kind.argument}' is a "
                            f"subclass of snntorch.{kind.neuron} ({type(neuron).__qualname__}) "
                            f"with its own {method}, which cannot be translated")
    return expected


def from_snntorch(cls, linear, neuron, *, batch_first, return_membrane, backend):
    """See RecurrentLIF.from_snntorch and RecurrentCubaLIF.from_snntorch:
    `cls` (which of them) picks the snnTorch class `neuron` must be."""
    kind = _KINDS[cls._OP]
    snntorch, surrogate = _import_snntorch(kind)
    if not isinstance(linear, nn.Linear):
        raise TypeError(f"{kind.layer}.from_snntorch: argument 'linear' must be an nn.Linear "
                        f"(the input projection), got {type(linear).__qualname__}")
    if nn.parameter.is_lazy(linear.weight):
        _fail(kind, "argument 'linear' is an uninitialised LazyLinear; run it once first")
    Neuron = _check_type(kind, snntorch, neuron)

    # Options that change the math and have no equivalent here.
    if not getattr(neuron, "reset_delay", True):
        _fail(kind, "reset_delay=False (the reset applied in the step of the spike) is not "
                    "supported: this layer's reset lands at the next step (reset_delay=True)")
    if neuron.inhibition:
        _fail(kind, "inhibition=True (only the neuron with the highest membrane fires) is not "
                    "supported")
    if neuron.state_quant:
        _fail(kind, "state_quant (a quantised membrane) is not supported")
    if neuron.surrogate_disable:
        _fail(kind, "surrogate_disable=True (no gradient through the spikes) is not supported")
    graded = neuron.graded_spikes_factor
    if (isinstance(graded, nn.Parameter) and graded.requires_grad) or \
            not bool((torch.as_tensor(graded) == 1).all()):
        _fail(kind, "graded spikes (graded_spikes_factor != 1, or learnable) are not supported: "
                    "this layer's spikes are 0 or 1")
    # The state function chosen at construction is what runs (changing
    # reset_mechanism afterwards does not change it).
    state_function = getattr(neuron.state_function, "__func__", None)
    if state_function is Neuron._base_sub:
        reset = "subtract"
    elif state_function is Neuron._base_int:
        reset = "none"
    elif state_function is Neuron._base_zero:
        theirs, ours = kind.zero
        _fail(kind, f"reset_mechanism='zero' is not supported: {kind.neuron}'s 'zero' sets the "
                    f"whole new membrane to zero, {theirs}, while this layer's reset='zero' only "
                    f"drops the decayed membrane, {ours}; use 'subtract' or 'none'")
    else:
        function = neuron.state_function
        function = getattr(function, "__qualname__", type(function).__qualname__)
        _fail(kind, f"the {kind.neuron}'s state function ({function}) is not one of "
                    f"{kind.neuron}'s own; it cannot be translated")

    N = linear.out_features
    recurrent = neuron.recurrent
    if neuron.all_to_all:
        if not isinstance(recurrent, nn.Linear):
            _fail(kind, f"the {kind.neuron}'s recurrence is a {type(recurrent).__qualname__}; "
                        "only a dense nn.Linear (linear_features=N) or one-to-one "
                        "(all_to_all=False) recurrence is supported, not a convolutional one")
        if (recurrent.in_features, recurrent.out_features) != (N, N):
            _fail(kind, f"the {kind.neuron}'s recurrent nn.Linear is {recurrent.in_features} -> "
                        f"{recurrent.out_features} but linear has out_features = {N}: both must "
                        "be N")
        w_rec, rec_bias = recurrent.weight.detach(), recurrent.bias
        learn_rec = recurrent.weight.requires_grad
    else:
        V = getattr(recurrent, "V", None)
        if type(recurrent).__name__ != "RecurrentOneToOne" or V is None:
            _fail(kind, f"the {kind.neuron}'s one-to-one recurrence "
                        f"({type(recurrent).__qualname__}) has no weight V")
        w_rec, rec_bias = _shaped(kind, V, "V", N), None
        learn_rec = isinstance(V, nn.Parameter) and V.requires_grad

    # (snnTorch tensor, this layer's name, value) per neuron parameter.
    params = [(getattr(neuron, theirs), ours, _shaped(kind, getattr(neuron, theirs), theirs, N))
              for theirs, ours in kind.params]
    threshold = next(value for _, ours, value in params if ours == "theta")
    if reset == "subtract" and bool((threshold < 0).any()):
        _fail(kind, "a negative threshold is not supported with reset_mechanism='subtract': "
                    "snnTorch's first reset is H(0 - threshold) = 1, where this layer starts "
                    "without a reset")
    name, slope = _surrogate(kind, neuron.spike_grad, surrogate)

    # The constructor takes decays in [0, 1]; the values as they are are
    # copied in below (snnTorch clamps its decays in its forward, as this
    # layer does).
    decay = {p.name: p.decay for p in NEURONS[cls._OP].params}
    values = {ours: value.clamp(0, 1) if decay[ours] else value for _, ours, value in params}
    learn = {f"learn_{ours}": isinstance(theirs, nn.Parameter) for theirs, ours, _ in params}
    biases = [b for b in (linear.bias, rec_bias) if b is not None]
    dtype, device = linear.weight.dtype, linear.weight.device
    layer = cls(linear.in_features, N, bias=bool(biases), **values, **learn, reset=reset,
                detach_reset=True, surrogate=name, slope=slope, batch_first=batch_first,
                return_membrane=return_membrane, backend=backend,
                recurrent="all_to_all" if neuron.all_to_all else "one_to_one",
                device=device, dtype=dtype)
    with torch.no_grad():
        layer.w_in.copy_(linear.weight)
        if biases:
            layer.bias.copy_(sum(b.detach().to(device=device, dtype=dtype) for b in biases))
        if w_rec.dim() == 0:  # one V shared by all neurons: one weight, as in snnTorch
            layer.w_rec = nn.Parameter(torch.empty((), device=device, dtype=dtype))
        layer.w_rec.copy_(w_rec)
        for _, ours, value in params:
            getattr(layer, ours).copy_(value)
    # reset_parameters restores the ported values.
    layer._inits.update({ours: value for _, ours, value in params})
    layer.w_in.requires_grad_(linear.weight.requires_grad)
    if biases:
        layer.bias.requires_grad_(any(b.requires_grad for b in biases))
    layer.w_rec.requires_grad_(learn_rec)
    for theirs, ours, _ in params:
        if isinstance(getattr(layer, ours), nn.Parameter):
            getattr(layer, ours).requires_grad_(theirs.requires_grad)
    return layer
