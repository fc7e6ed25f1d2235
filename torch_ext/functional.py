"""torch_ext.recurrent_lif: the fused op as a differentiable function.

The op `torch.ops.torch_ext.recurrent_lif` carries its own autograd and
autocast, written in C++ and registered under the Autograd and Autocast
dispatch keys: Python, LibTorch programs, torch.compile and torch.export all
get the same gradients, computed by the C++/CUDA backward kernels. This
function only turns Python numbers into tensors and checks Python types."""
import torch

from . import _C  # noqa: F401  (loading it registers torch.ops.torch_ext)
from . import _docs, _options


def recurrent_lif(x, w_in, w_rec, bias=None, alpha=0.9, theta=1.0, u0=None, s0=None, *,
                  reset="subtract", detach_reset=False, surrogate="sigmoid", slope=None,
                  save_membrane=True, lengths=None):
    """Runs a recurrent LIF layer over a whole sequence with the fused op
    (C++ on CPU, CUDA on GPU; its backward is the hand-written BPTT of the
    README, "The gradients"). The same arguments and results as
    :func:`torch_ext.recurrent_lif_ref`.
    """
    alpha, theta, slope = _options.check_call(
        x, alpha, theta, reset, detach_reset, surrogate, slope, save_membrane,
        w_in=w_in, w_rec=w_rec, bias=bias, u0=u0, s0=s0, lengths=lengths)
    alpha, theta = _options.as_tensor_param(alpha, x), _options.as_tensor_param(theta, x)
    return torch.ops.torch_ext.recurrent_lif(x, w_in, w_rec, bias, alpha, theta, u0, s0,
                                             reset, detach_reset, surrogate, slope, save_membrane,
                                             lengths)


if recurrent_lif.__doc__ is not None:  # None under python -OO
    recurrent_lif.__doc__ += _docs.FUNCTIONAL.format(name="torch_ext.recurrent_lif")
