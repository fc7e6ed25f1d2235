"""Python-side checks of the arguments the op's schema cannot check itself
(Python types, Python numbers for alpha and theta). The option names, default
slopes and every value check live once, in C++ (csrc/lif_math.h and
csrc/recurrent_lif.cpp); torch_ext._C exposes them, so the functional, the
module, the reference, the C++ op and its Meta kernel raise the same errors."""
import math
import numbers

import torch

from . import _C

RESETS = _C.RESETS  # ("subtract", "zero", "none")
SURROGATE_SLOPES = _C.SURROGATE_SLOPES  # surrogate name -> default slope k


def _fail(exc, name, what, value):
    raise exc(f"recurrent_lif: argument '{name}' {what}, got {value!r}")


def type_name(value):
    """The name of value's type, with its module unless built in, so that
    numpy.bool is not reported as 'bool' (nor torch.Tensor as 'Tensor')."""
    kind = type(value)
    if kind.__module__ == "builtins":
        return kind.__name__
    return f"{kind.__module__}.{kind.__qualname__}"


def check_type(value, name, kind, what):
    """`value` must be an instance of `kind` (bool is never taken for a number)."""
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        _fail(TypeError, name, f"must be {what}", type_name(value))


def number(value, name):
    """A Python number (not bool) as a float, with errors naming the argument."""
    check_type(value, name, numbers.Real, "a float or a tensor")
    try:
        return float(value)
    except OverflowError:
        _fail(ValueError, name, "is too large for a float", value)


def check_alpha(value):
    value = number(value, "alpha")
    if not 0.0 <= value <= 1.0:  # also False for NaN
        _fail(ValueError, "alpha", "must lie in [0, 1]", value)
    return value


def check_theta(value):
    value = number(value, "theta")
    if not math.isfinite(value):
        _fail(ValueError, "theta", "must be finite", value)
    return value


def check_option_types(reset, detach_reset, surrogate, slope):
    check_type(reset, "reset", str, "a str")
    check_type(detach_reset, "detach_reset", bool, "a bool")
    if not isinstance(surrogate, str):  # e.g. a callable: list the names
        _fail(ValueError, "surrogate",
              f"must be one of {', '.join(map(repr, SURROGATE_SLOPES))} (callables are not "
              "supported)", surrogate)
    if slope is not None:
        check_type(slope, "slope", numbers.Real, "a float or None")
        return number(slope, "slope")
    return None


@torch.compiler.disable  # a call into C++ that torch.compile need not trace
def resolve_slope(reset, detach_reset, surrogate, slope, dtype):
    """The C++ check of the options' values; returns the slope to use."""
    return _C.resolve_slope(reset, detach_reset, surrogate, slope, dtype == torch.float64)


def check_x(x):
    check_type(x, "x", torch.Tensor, "a tensor")


def check_optional_tensors(**named):
    """Each of w_in, w_rec, bias, u0, s0 is a tensor or None (the op's schema
    would reject anything else with a RuntimeError)."""
    for name, value in named.items():
        if value is not None:
            check_type(value, name, torch.Tensor, "a tensor or None")


def check_call(x, alpha, theta, reset, detach_reset, surrogate, slope, save_membrane,
               **optional_tensors):
    """Type checks of recurrent_lif and recurrent_lif_ref, before any work;
    returns (alpha, theta, slope) with Python numbers as floats.
    optional_tensors: w_in, w_rec, bias, u0, s0, lengths by name."""
    check_x(x)
    slope = check_option_types(reset, detach_reset, surrogate, slope)
    if not isinstance(alpha, torch.Tensor):
        alpha = check_alpha(alpha)
    if not isinstance(theta, torch.Tensor):
        theta = check_theta(theta)
    check_optional_tensors(**optional_tensors)
    check_type(save_membrane, "save_membrane", bool, "a bool")
    return alpha, theta, slope


def as_tensor_param(value, x):
    """alpha or theta (already checked): a Python number becomes a 0-dim tensor
    in the compute dtype on x's device, filled there (no host-to-device copy,
    so no synchronisation and nothing illegal in CUDA-graph capture); tensors
    pass as they are (the op checks their shape, dtype, device and values)."""
    if isinstance(value, torch.Tensor):
        return value
    return torch.full((), value, dtype=compute_dtype(x.dtype), device=x.device)


def compute_dtype(dtype):
    """float64 stays float64; everything else computes in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32
