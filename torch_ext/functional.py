"""torch_ext.recurrent_lif and torch_ext.recurrent_adlif: the fused ops as
differentiable functions.

The ops `torch.ops.torch_ext.recurrent_lif` and `recurrent_adlif` carry their
own autograd and autocast, written in C++ and registered under the Autograd
and Autocast dispatch keys: Python, LibTorch programs, torch.compile and
torch.export all get the same gradients, computed by the C++/CUDA backward
kernels. These functions only turn Python numbers into tensors and check
Python types."""
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
    tensors, slope = _options.checked_arguments(
        "recurrent_lif", x, w_in, w_rec, bias, dict(alpha=alpha, theta=theta),
        dict(u0=u0, s0=s0), reset, detach_reset, surrogate, slope,
        dict(save_membrane=save_membrane), lengths)
    return torch.ops.torch_ext.recurrent_lif(*tensors, reset, detach_reset, surrogate, slope,
                                             save_membrane, lengths)


def recurrent_adlif(x, w_in, w_rec, bias=None, alpha=0.95, beta=0.99, a=0.5, b=1.0, theta=1.0,
                    v0=None, a0=None, s0=None, *, reset="zero", detach_reset=True,
                    surrogate="sigmoid", slope=None, save_state=True, lengths=None):
    """Runs a recurrent layer of adaptive LIF neurons (SE-adLIF: a membrane V
    and an adaptation current A per neuron) over a whole sequence with the
    fused op (C++ on CPU, CUDA on GPU, forward and backward). The same
    arguments and results as :func:`torch_ext.recurrent_adlif_ref`.
    """
    tensors, slope = _options.checked_arguments(
        "recurrent_adlif", x, w_in, w_rec, bias,
        dict(alpha=alpha, beta=beta, a=a, b=b, theta=theta), dict(v0=v0, a0=a0, s0=s0),
        reset, detach_reset, surrogate, slope, dict(save_state=save_state), lengths)
    return torch.ops.torch_ext.recurrent_adlif(*tensors, reset, detach_reset, surrogate, slope,
                                               save_state, lengths)


if recurrent_lif.__doc__ is not None:  # None under python -OO
    recurrent_lif.__doc__ += _docs.FUNCTIONAL.format(name="torch_ext.recurrent_lif")
    recurrent_adlif.__doc__ += _docs.ADLIF_FUNCTIONAL.format(name="torch_ext.recurrent_adlif")
