"""RecurrentLIF.from_snntorch: an nn.Linear followed by an snntorch.RLeaky,
ported exactly, or rejected with the reason.

What snnTorch 1.0's RLeaky computes per step (its forward, _base_sub /
_base_int and SpikingNeuron.fire / mem_reset), with I = linear(x[t]):

    R    = spike_grad(mem - threshold).detach()           from the previous mem
    mem  = beta.clamp(0, 1) * mem + I + recurrent(spk) - R * threshold
    spk  = spike_grad(mem - threshold) * graded_spikes_factor

and the loop starts from mem = spk = 0. With graded_spikes_factor = 1, R is
the previous step's spike, detached: this layer's model with
detach_reset=True, R[t-1] = S[t-1], except at the first step, where snnTorch's
R = H(0 - threshold): hence the check that the threshold is not negative.
"""
import math

import torch
from torch import nn


def _fail(what):
    raise ValueError(f"RecurrentLIF.from_snntorch: {what}")


def _import_snntorch():
    try:
        import snntorch
        from snntorch import surrogate
    except ImportError as e:
        raise ImportError("RecurrentLIF.from_snntorch needs snnTorch (pip install snntorch)") \
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


def _surrogate(spike_grad, surrogate):
    """This layer's (surrogate, slope) for an RLeaky's spike_grad.

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
                _fail(f"the surrogate's {parameter} must be a number, got {slope!r}")
            if not (math.isfinite(slope) and slope > 0):
                _fail(f"the surrogate {name}'s {parameter} must be positive and finite, got "
                      f"{slope}")
            return name, slope
    qualname = getattr(spike_grad, "__qualname__", type(spike_grad).__qualname__)
    factory = qualname.split(".")[0]
    if getattr(spike_grad, "__module__", None) == surrogate.__name__ and \
            factory in _UNSUPPORTED_SURROGATES:
        _fail(f"the RLeaky's spike_grad is snntorch.surrogate.{factory}, which has no exact "
              f"equivalent here: {_UNSUPPORTED_SURROGATES[factory]}. Supported: {_SUPPORTED}")
    _fail(f"the RLeaky's spike_grad ({qualname}) is not one of snnTorch's surrogates this layer "
          f"reproduces exactly: {_SUPPORTED}")


def _shaped(value, name, N):
    """beta, threshold or V as this layer holds it: 0-dim, or [N] per neuron
    (a [1] tensor is one shared value, unless N == 1)."""
    if value is None:
        _fail(f"the RLeaky's {name} is None")
    value = torch.as_tensor(value).detach()
    if value.is_complex() or value.dtype == torch.bool:
        _fail(f"the RLeaky's {name} must be real, got dtype {value.dtype}")
    if value.dim() == 0 or (value.shape == (1,) and N != 1):
        value = value.reshape(())
    elif value.shape != (N,):
        _fail(f"the RLeaky's {name} must have shape [], [1] or [N] = [{N}] (one per neuron), got "
              f"{list(value.shape)}")
    if not bool(torch.isfinite(value).all()):
        _fail(f"the RLeaky's {name} must be finite")
    return value.clone()


def from_snntorch(cls, linear, rleaky, *, batch_first, return_membrane, backend):
    """See RecurrentLIF.from_snntorch."""
    snntorch, surrogate = _import_snntorch()
    RLeaky = snntorch.RLeaky
    if not isinstance(linear, nn.Linear):
        raise TypeError("RecurrentLIF.from_snntorch: argument 'linear' must be an nn.Linear (the "
                        f"input projection), got {type(linear).__qualname__}")
    if nn.parameter.is_lazy(linear.weight):
        _fail("argument 'linear' is an uninitialised LazyLinear; run it once first")
    if not isinstance(rleaky, RLeaky):
        raise TypeError("RecurrentLIF.from_snntorch: argument 'rleaky' must be an "
                        f"snntorch.RLeaky, got {type(rleaky).__qualname__}")
    if type(rleaky).forward is not RLeaky.forward:
        raise TypeError("RecurrentLIF.from_snntorch: argument 'rleaky' is a subclass of "
                        f"snntorch.RLeaky ({type(rleaky).__qualname__}) with its own forward, "
                        "which cannot be translated")

    # Options that change the math and have no equivalent here.
    if not getattr(rleaky, "reset_delay", True):
        _fail("reset_delay=False (the reset applied in the step of the spike) is not supported: "
              "this layer's reset lands at the next step (reset_delay=True)")
    if rleaky.inhibition:
        _fail("inhibition=True (only the neuron with the highest membrane fires) is not "
              "supported")
    if rleaky.state_quant:
        _fail("state_quant (a quantised membrane) is not supported")
    if rleaky.surrogate_disable:
        _fail("surrogate_disable=True (no gradient through the spikes) is not supported")
    graded = rleaky.graded_spikes_factor
    if (isinstance(graded, nn.Parameter) and graded.requires_grad) or \
            not bool((torch.as_tensor(graded) == 1).all()):
        _fail("graded spikes (graded_spikes_factor != 1, or learnable) are not supported: this "
              "layer's spikes are 0 or 1")
    # The state function chosen at construction is what runs (changing
    # rleaky.reset_mechanism afterwards does not change it).
    state_function = getattr(rleaky.state_function, "__func__", None)
    if state_function is RLeaky._base_sub:
        reset = "subtract"
    elif state_function is RLeaky._base_int:
        reset = "none"
    elif state_function is RLeaky._base_zero:
        _fail("reset_mechanism='zero' is not supported: RLeaky's 'zero' sets the whole new "
              "membrane to zero, U[t+1] = (1 - R) * (beta * U[t] + I[t+1] + V(S[t])), while this "
              "layer's reset='zero' only drops the decayed membrane, U[t+1] = alpha * (1 - R) * "
              "U[t] + I[t+1] + V(S[t]); use 'subtract' or 'none'")
    else:
        _fail(f"the RLeaky's state function ({rleaky.state_function!r}) is not one of RLeaky's "
              "own; it cannot be translated")

    N = linear.out_features
    recurrent = rleaky.recurrent
    if rleaky.all_to_all:
        if not isinstance(recurrent, nn.Linear):
            _fail(f"the RLeaky's recurrence is a {type(recurrent).__qualname__}; only a dense "
                  "nn.Linear (linear_features=N) or one-to-one (all_to_all=False) recurrence is "
                  "supported, not a convolutional one")
        if (recurrent.in_features, recurrent.out_features) != (N, N):
            _fail(f"the RLeaky's recurrent nn.Linear is {recurrent.in_features} -> "
                  f"{recurrent.out_features} but linear has out_features = {N}: both must be N")
        w_rec, rec_bias = recurrent.weight.detach(), recurrent.bias
        learn_rec = recurrent.weight.requires_grad
    else:
        V = getattr(recurrent, "V", None)
        if type(recurrent).__name__ != "RecurrentOneToOne" or V is None:
            _fail(f"the RLeaky's one-to-one recurrence ({type(recurrent).__qualname__}) has no "
                  "weight V")
        w_rec, rec_bias = _shaped(V, "V", N), None
        learn_rec = isinstance(V, nn.Parameter) and V.requires_grad

    beta, threshold = _shaped(rleaky.beta, "beta", N), _shaped(rleaky.threshold, "threshold", N)
    if reset == "subtract" and bool((threshold < 0).any()):
        _fail("a negative threshold is not supported with reset_mechanism='subtract': snnTorch's "
              "first reset is H(0 - threshold) = 1, where this layer starts without a reset")
    name, slope = _surrogate(rleaky.spike_grad, surrogate)

    biases = [b for b in (linear.bias, rec_bias) if b is not None]
    dtype, device = linear.weight.dtype, linear.weight.device
    layer = cls(linear.in_features, N, bias=bool(biases), alpha=beta.clamp(0, 1), theta=threshold,
                learn_alpha=isinstance(rleaky.beta, nn.Parameter),
                learn_theta=isinstance(rleaky.threshold, nn.Parameter), reset=reset,
                detach_reset=True, surrogate=name, slope=slope, batch_first=batch_first,
                return_membrane=return_membrane, backend=backend, recurrent="all_to_all" if rleaky.all_to_all else "one_to_one",
                device=device, dtype=dtype)
    with torch.no_grad():
        layer.w_in.copy_(linear.weight)
        if biases:
            layer.bias.copy_(sum(b.detach().to(device=device, dtype=dtype) for b in biases))
        if w_rec.dim() == 0:  # one V shared by all neurons: one weight, as in snnTorch
            layer.w_rec = nn.Parameter(torch.empty((), device=device, dtype=dtype))
        layer.w_rec.copy_(w_rec)
        # beta as it is: RLeaky clamps it in its forward, as this layer clamps alpha.
        layer.alpha.copy_(beta)
    layer._alpha_init, layer._theta_init = beta, threshold
    layer.w_in.requires_grad_(linear.weight.requires_grad)
    if biases:
        layer.bias.requires_grad_(any(b.requires_grad for b in biases))
    layer.w_rec.requires_grad_(learn_rec)
    for ours, theirs in ((layer.alpha, rleaky.beta), (layer.theta, rleaky.threshold)):
        if isinstance(ours, nn.Parameter):
            ours.requires_grad_(theirs.requires_grad)
    return layer
