"""torch_ext.recurrent_lif: the fused op as a differentiable function.

The op `torch.ops.torch_ext.recurrent_lif` carries its own autograd and
autocast, written in C++ and registered under the Autograd and Autocast
dispatch keys: Python, LibTorch programs, torch.compile and torch.export all
get the same gradients, computed by the C++/CUDA backward kernels. This
function only turns Python numbers into tensors and checks Python types."""
import torch

from . import _C  # noqa: F401  (loading it registers torch.ops.torch_ext)
from . import _options


def recurrent_lif(x, w_in, w_rec, bias=None, alpha=0.9, theta=1.0, u0=None, s0=None, *,
                  reset="subtract", detach_reset=False, surrogate="sigmoid", slope=None,
                  save_membrane=True, lengths=None):
    """Runs a recurrent LIF layer over a whole sequence.

    Args:
        x: input ``[T, B, F]`` (time-major).
        w_in: input weights ``[N, F]``, or None (then ``F == N`` and I[t] = x[t] + bias).
        w_rec: recurrent weights ``[N, N]`` (row i = weights into neuron i), or
            ``[N]`` for one-to-one recurrence (neuron i feeds back
            ``w_rec[i] * S_i[t-1]`` to itself only), or None.
        bias: ``[N]`` or None.
        alpha: membrane decay in [0, 1]: a float, a 0-dim tensor or an ``[N]`` tensor.
        theta: threshold: a float, a 0-dim tensor or an ``[N]`` tensor.
        u0, s0: initial membrane and spikes ``[B, N]`` (default zeros).
        reset: "subtract" (default), "zero" or "none".
        detach_reset: if True, no gradient flows through the reset.
        surrogate: "sigmoid" (default), "fast_sigmoid", "atan" or "triangle".
        slope: surrogate slope k > 0; None picks the surrogate's default.
        save_membrane: False is the low-memory mode: autograd keeps nothing of
            size T*B*N beyond the returned spikes, and the backward recomputes
            the membrane (one product and a replay of the time loop with the
            known spikes, so the gradients are bitwise the same).
        lengths: ``[B]`` integers, or None: a variable-length batch. Row b
            takes steps ``t < lengths[b]`` only; its later steps output spikes
            and membrane 0 and pass no gradient, so every row's gradients are
            those of running it alone on its own length.

    Returns:
        ``(spikes, membrane)``, each ``[T, B, N]``. ``(membrane[-1], spikes[-1])``
        continues the sequence when passed as ``(u0, s0)``.

    Raises:
        TypeError, ValueError naming the argument, before any work, for every
        wrong type, shape, dtype, device or value. Forward-mode AD raises
        NotImplementedError; a second derivative raises RuntimeError.
    """
    alpha, theta, slope = _options.check_call(x, alpha, theta, reset, detach_reset, surrogate,
                                              slope)
    _options.check_optional_tensors(w_in=w_in, w_rec=w_rec, bias=bias, u0=u0, s0=s0,
                                    lengths=lengths)
    _options.check_type(save_membrane, "save_membrane", bool, "a bool")
    alpha, theta = _options.as_tensor_param(alpha, x), _options.as_tensor_param(theta, x)
    return torch.ops.torch_ext.recurrent_lif(x, w_in, w_rec, bias, alpha, theta, u0, s0,
                                             reset, detach_reset, surrogate, slope, save_membrane,
                                             lengths)
