"""Validation of the Python-level options shared by the fused op, the reference
and the module, so each misuse is reported once, the same way, before any work."""
import math
import numbers

import torch

RESETS = ("subtract", "zero", "none")
# Surrogate name -> default slope k (README, "Surrogate gradients").
SURROGATE_SLOPES = {"sigmoid": 25.0, "fast_sigmoid": 25.0, "atan": 2.0, "triangle": 1.0}


def check_reset(reset):
    if not isinstance(reset, str) or reset not in RESETS:
        raise ValueError(f"recurrent_lif: argument 'reset' must be one of {RESETS}, got {reset!r}")
    return reset


def resolve_surrogate(surrogate, slope):
    """Checks the surrogate name and slope; returns the slope to use as a float."""
    if not isinstance(surrogate, str) or surrogate not in SURROGATE_SLOPES:
        raise ValueError(
            "recurrent_lif: argument 'surrogate' must be one of "
            f"{tuple(SURROGATE_SLOPES)} (callables are not supported), got {surrogate!r}")
    if slope is None:
        return SURROGATE_SLOPES[surrogate]
    if isinstance(slope, bool) or not isinstance(slope, numbers.Real):
        raise TypeError(f"recurrent_lif: argument 'slope' must be a float or None, got {type(slope).__name__}")
    if not math.isfinite(slope) or slope <= 0:
        raise ValueError(f"recurrent_lif: argument 'slope' must be finite and > 0, got {slope}")
    return float(slope)


def check_float_alpha(alpha):
    if not 0.0 <= alpha <= 1.0:  # also False for NaN
        raise ValueError(f"recurrent_lif: argument 'alpha' must lie in [0, 1], got {alpha}")


def check_float_theta(theta):
    if not math.isfinite(theta):
        raise ValueError(f"recurrent_lif: argument 'theta' must be finite, got {theta}")


def check_neuron_number(value, name, check):
    """alpha or theta given as a Python number: type and value checks."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"recurrent_lif: argument '{name}' must be a float or a tensor, got {type(value).__name__}")
    check(float(value))


def as_tensor_param(value, x):
    """alpha or theta (already checked) as a tensor: a Python number becomes a
    0-dim tensor in the compute dtype on x's device; tensors pass as they are
    (the op checks their shape, dtype, device and, for alpha on CPU, values)."""
    if isinstance(value, torch.Tensor):
        return value
    return torch.tensor(float(value), dtype=compute_dtype(x.dtype), device=x.device)


def compute_dtype(dtype):
    """float64 stays float64; everything else computes in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def check_call(x, alpha, theta, reset, detach_reset, surrogate, slope):
    """The checks shared by recurrent_lif and recurrent_lif_ref, made before
    any work; returns the slope to use."""
    check_x(x)
    check_reset(reset)
    if not isinstance(detach_reset, bool):
        raise TypeError(
            f"recurrent_lif: argument 'detach_reset' must be a bool, got {type(detach_reset).__name__}")
    for value, name, check in ((alpha, "alpha", check_float_alpha), (theta, "theta", check_float_theta)):
        if not isinstance(value, torch.Tensor):
            check_neuron_number(value, name, check)
    return resolve_surrogate(surrogate, slope)


def check_x(x):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"recurrent_lif: argument 'x' must be a tensor, got {type(x).__name__}")
