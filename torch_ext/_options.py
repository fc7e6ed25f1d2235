"""Python-side checks of the arguments the ops' schemas cannot check
themselves (Python types, Python numbers for the neuron parameters). The
option names, default slopes, the neuron models' parameters and every value
check live once, in C++ (csrc/core/options.h, csrc/core/driver.cpp,
csrc/neurons/); torch_ext._C exposes them, so the functional, the module,
the reference, the C++ op and its Meta kernel raise the same errors. Every
message names the op (or module) the user called: `op` is always given."""
import math
import numbers

import torch

from . import _C
from ._neurons import NEURONS

RESETS = _C.RESETS  # ("subtract", "zero", "none")
SURROGATE_SLOPES = _C.SURROGATE_SLOPES  # surrogate name -> default slope k


def _fail(exc, name, what, value, op):
    raise exc(f"{op}: argument '{name}' {what}, got {value!r}")


def type_name(value):
    """The name of value's type, with its module unless built in, so that
    numpy.bool is not reported as 'bool' (nor torch.Tensor as 'Tensor')."""
    kind = type(value)
    if kind.__module__ == "builtins":
        return kind.__name__
    return f"{kind.__module__}.{kind.__qualname__}"


def check_type(value, name, kind, what, op):
    """`value` must be an instance of `kind` (bool is never taken for a number)."""
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        _fail(TypeError, name, f"must be {what}", type_name(value), op)


def number(value, name, op):
    """A Python number (not bool) as a float, with errors naming the argument."""
    check_type(value, name, numbers.Real, "a float or a tensor", op)
    try:
        return float(value)
    except OverflowError:
        _fail(ValueError, name, "is too large for a float", value, op)


def check_param(value, name, op, decay):
    """A neuron parameter given as a Python number, as a float: a decay
    must lie in [0, 1], anything else be finite."""
    value = number(value, name, op)
    if decay:
        if not 0.0 <= value <= 1.0:  # also False for NaN
            _fail(ValueError, name, "must lie in [0, 1]", value, op)
    elif not math.isfinite(value):
        _fail(ValueError, name, "must be finite", value, op)
    return value


def check_option_types(reset, detach_reset, surrogate, slope, op):
    check_type(reset, "reset", str, "a str", op)
    check_type(detach_reset, "detach_reset", bool, "a bool", op)
    if not isinstance(surrogate, str):  # e.g. a callable: list the names
        _fail(ValueError, "surrogate",
              f"must be one of {', '.join(map(repr, SURROGATE_SLOPES))} (callables are not "
              "supported)", surrogate, op)
    if slope is not None:
        check_type(slope, "slope", numbers.Real, "a float or None", op)
        return number(slope, "slope", op)
    return None


@torch.compiler.disable  # a call into C++ that torch.compile need not trace
def resolve_slope(op, reset, detach_reset, surrogate, slope, dtype):
    """The C++ check of the options' values; returns the slope to use."""
    return _C.resolve_slope(op, reset, detach_reset, surrogate, slope, dtype == torch.float64)


def check_x(x, op):
    check_type(x, "x", torch.Tensor, "a tensor", op)


def check_optional_tensors(op, **named):
    """Each of w_in, w_rec, bias, the initial state and lengths is a tensor or
    None (the op's schema would reject anything else with a RuntimeError)."""
    for name, value in named.items():
        if value is not None:
            check_type(value, name, torch.Tensor, "a tensor or None", op)


def check_call(op, x, params, reset, detach_reset, surrogate, slope, flags, **optional_tensors):
    """Type checks of a functional op and its reference, before any work.
    params: the neuron parameters by name, in the op's order; flags: the
    bool options by name (the low-memory flag); optional_tensors: w_in,
    w_rec, bias, the initial state and lengths by name. Returns (the
    parameters' values in params' order, Python numbers as floats, slope)."""
    check_x(x, op)
    slope = check_option_types(reset, detach_reset, surrogate, slope, op)
    decay = {p.name: p.decay for p in NEURONS[op].params}
    params = [value if isinstance(value, torch.Tensor)
              else check_param(value, name, op, decay[name])
              for name, value in params.items()]
    check_optional_tensors(op, **optional_tensors)
    for name, value in flags.items():
        check_type(value, name, bool, "a bool", op)
    return params, slope


def checked_delays(op, x, delays=None, max_delay=None, delay_sigma=0.0, rec_mask=None):
    """The Python checks of the recurrent delays' arguments; returns them as
    the op takes them: (delays, max_delay, delay_sigma, rec_mask), a float
    sigma as a 0-dim tensor in the compute dtype (no gradient), the default
    sigma 0.0 without delays as None. The op checks the rest (shapes,
    dtypes, devices, values)."""
    check_optional_tensors(op, delays=delays, rec_mask=rec_mask)
    if max_delay is not None:
        check_type(max_delay, "max_delay", numbers.Integral, "an int or None", op)
        if not -2 ** 63 <= max_delay < 2 ** 63:
            _fail(ValueError, "max_delay", "is too large", max_delay, op)
        max_delay = int(max_delay)
    if not isinstance(delay_sigma, torch.Tensor):
        value = number(delay_sigma, "delay_sigma", op)
        if delays is None and value == 0:
            return delays, max_delay, None, rec_mask  # the default: no delays, no spread
        if not (math.isfinite(value) and value >= 0):
            _fail(ValueError, "delay_sigma", "must be finite and >= 0", delay_sigma, op)
        if value > torch.finfo(compute_dtype(x.dtype)).max:
            _fail(ValueError, "delay_sigma", f"is too large for {compute_dtype(x.dtype)}",
                  delay_sigma, op)
        delay_sigma = as_tensor_param(value, x)
    return delays, max_delay, delay_sigma, rec_mask


def checked_arguments(op, x, w_in, w_rec, bias, params, initial, reset, detach_reset, surrogate,
                      slope, flags, lengths):
    """check_call, then each Python-number parameter as a 0-dim tensor:
    returns (tensors, slope), tensors the op's positional arguments before
    its options, (x, w_in, w_rec, bias, *params, *initial). params and
    initial (the initial state) are dicts by name in the op's order."""
    values, slope = check_call(op, x, params, reset, detach_reset, surrogate, slope, flags,
                               w_in=w_in, w_rec=w_rec, bias=bias, **initial, lengths=lengths)
    values = [as_tensor_param(value, x) for value in values]
    return (x, w_in, w_rec, bias, *values, *initial.values()), slope


def as_tensor_param(value, x):
    """A neuron parameter (already checked): a Python number becomes a 0-dim tensor
    in the compute dtype on x's device, filled there (no host-to-device copy,
    so no synchronisation and nothing illegal in CUDA-graph capture); tensors
    pass as they are (the op checks their shape, dtype, device and values)."""
    if isinstance(value, torch.Tensor):
        return value
    return torch.full((), value, dtype=compute_dtype(x.dtype), device=x.device)


def compute_dtype(dtype):
    """float64 stays float64; everything else computes in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32
