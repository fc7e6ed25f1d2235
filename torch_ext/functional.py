"""torch_ext.recurrent_lif: the fused op as a differentiable function.

Autograd is registered on the op itself (torch.library.register_autograd), so
the op is differentiable wherever it is called from, passes
torch.library.opcheck, and torch.compile traces it without a graph break. Both
passes run the C++/CUDA ops; nothing falls back to autograd."""
import torch

from . import _C  # noqa: F401  (loading it registers torch.ops.torch_ext)
from . import _fake  # noqa: F401  (shape functions for torch.compile)
from . import _options

_ops = torch.ops.torch_ext


def _setup_context(ctx, inputs, output):
    x, w_in, w_rec, bias, alpha, theta, u0, s0, reset, detach_reset, surrogate, slope = inputs
    spikes, membrane = output
    # Saved: inputs and the two outputs, nothing per step besides.
    ctx.save_for_backward(x, w_in, w_rec, alpha, theta, u0, s0, spikes, membrane)
    ctx.options = (reset, detach_reset, surrogate, slope)
    # An output nobody used arrives as None instead of a tensor of zeros.
    ctx.set_materialize_grads(False)


def _backward(ctx, grad_spikes, grad_membrane):
    if torch.is_grad_enabled():  # the engine enables grad exactly for create_graph=True
        raise RuntimeError(
            "recurrent_lif: the backward pass is once-differentiable; second derivatives "
            "(create_graph=True through this op) are not supported")
    x, w_in, w_rec, alpha, theta, u0, s0, spikes, membrane = ctx.saved_tensors
    reset, detach_reset, surrogate, slope = ctx.options
    needs = list(ctx.needs_input_grad[:8])
    grads = _ops.recurrent_lif_backward(
        grad_spikes, grad_membrane, x, w_in, w_rec, alpha, theta, u0, s0, spikes, membrane,
        reset, detach_reset, surrogate, slope, needs)
    return tuple(g if need else None for g, need in zip(grads, needs)) + (None,) * 4


torch.library.register_autograd("torch_ext::recurrent_lif_forward", _backward,
                                setup_context=_setup_context)


def _autocast_inputs(x, w_in, w_rec, bias):
    """Under torch.autocast, the matrix-product operands take the autocast dtype;
    alpha, theta and the state stay as given (float32)."""
    device_type = x.device.type
    if device_type not in ("cpu", "cuda") or not torch.is_autocast_enabled(device_type):
        return x, w_in, w_rec, bias
    dtype = torch.get_autocast_dtype(device_type)

    def cast(t):
        return t.to(dtype) if t is not None and t.is_floating_point() else t

    return cast(x), cast(w_in), cast(w_rec), cast(bias)


def recurrent_lif(x, w_in, w_rec, bias=None, alpha=0.9, theta=1.0, u0=None, s0=None, *,
                  reset="subtract", detach_reset=False, surrogate="sigmoid", slope=None):
    """Runs a recurrent LIF layer over a whole sequence.

    Args:
        x: input ``[T, B, F]`` (time-major).
        w_in: input weights ``[N, F]``, or None (then ``F == N`` and I[t] = x[t] + bias).
        w_rec: recurrent weights ``[N, N]`` (row i = weights into neuron i), or None.
        bias: ``[N]`` or None.
        alpha: membrane decay in [0, 1]: a float, a 0-dim tensor or an ``[N]`` tensor.
        theta: threshold: a float, a 0-dim tensor or an ``[N]`` tensor.
        u0, s0: initial membrane and spikes ``[B, N]`` (default zeros).
        reset: "subtract" (default), "zero" or "none".
        detach_reset: if True, no gradient flows through the reset.
        surrogate: "sigmoid" (default), "fast_sigmoid", "atan" or "triangle".
        slope: surrogate slope k > 0; None picks the surrogate's default.

    Returns:
        ``(spikes, membrane)``, each ``[T, B, N]``. ``(membrane[-1], spikes[-1])``
        continues the sequence when passed as ``(u0, s0)``.
    """
    slope = _options.check_call(x, alpha, theta, reset, detach_reset, surrogate, slope)
    alpha, theta = _options.as_tensor_param(alpha, x), _options.as_tensor_param(theta, x)
    x, w_in, w_rec, bias = _autocast_inputs(x, w_in, w_rec, bias)
    return _ops.recurrent_lif_forward(x, w_in, w_rec, bias, alpha, theta, u0, s0,
                                      reset, detach_reset, surrogate, slope)
