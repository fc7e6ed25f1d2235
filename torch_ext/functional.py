"""torch_ext.recurrent_lif, recurrent_adlif and recurrent_cubalif: the fused
ops as differentiable functions.

The ops `torch.ops.torch_ext.<op>` carry their own autograd and autocast,
written in C++ and registered under the Autograd and Autocast dispatch keys:
Python, LibTorch programs, torch.compile and torch.export all get the same
gradients, computed by the C++/CUDA backward kernels. These functions only
turn Python numbers into tensors and check Python types."""
import torch

from . import _C  # noqa: F401  (loading it registers torch.ops.torch_ext)
from . import _docs, _options
from ._neurons import NEURONS


def run_op(op, x, w_in, w_rec, bias, params, initial, reset, detach_reset, surrogate, slope,
           save_state, lengths, delays):
    """Calls torch.ops.torch_ext.<op> after the Python checks. params: the
    neuron parameters by name and initial: the initial state by name (s0
    last), each in the op's order (the registry's, torch_ext._neurons);
    delays: the delay keywords by name."""
    tensors, slope = _options.checked_arguments(
        op, x, w_in, w_rec, bias, params, initial, reset, detach_reset, surrogate, slope,
        {NEURONS[op].save_flag: save_state}, lengths)
    return getattr(torch.ops.torch_ext, op)(*tensors, reset, detach_reset, surrogate, slope,
                                            save_state, lengths,
                                            *_options.checked_delays(op, x, **delays))


def _delays(delays, max_delay, delay_sigma, rec_mask):
    return dict(delays=delays, max_delay=max_delay, delay_sigma=delay_sigma, rec_mask=rec_mask)


def recurrent_lif(x, w_in, w_rec, bias=None, alpha=0.9, theta=1.0, u0=None, s0=None, *,
                  reset="subtract", detach_reset=False, surrogate="sigmoid", slope=None,
                  save_membrane=True, lengths=None, delays=None, max_delay=None, delay_sigma=0.0,
                  rec_mask=None):
    """Runs a recurrent LIF layer over a whole sequence with the fused op
    (C++ on CPU, CUDA on GPU; its backward is the hand-written BPTT of the
    README, "The gradients"). The same arguments and results as
    :func:`torch_ext.recurrent_lif_ref`.
    """
    return run_op("recurrent_lif", x, w_in, w_rec, bias, dict(alpha=alpha, theta=theta),
                  dict(u0=u0, s0=s0), reset, detach_reset, surrogate, slope, save_membrane,
                  lengths, _delays(delays, max_delay, delay_sigma, rec_mask))


def recurrent_adlif(x, w_in, w_rec, bias=None, alpha=0.95, beta=0.99, a=0.5, b=1.0, theta=1.0,
                    v0=None, a0=None, s0=None, *, reset="zero", detach_reset=True,
                    surrogate="sigmoid", slope=None, save_state=True, lengths=None,
                    delays=None, max_delay=None, delay_sigma=0.0, rec_mask=None):
    """Runs a recurrent layer of adaptive LIF neurons (SE-adLIF: a membrane V
    and an adaptation current A per neuron) over a whole sequence with the
    fused op (C++ on CPU, CUDA on GPU, forward and backward). The same
    arguments and results as :func:`torch_ext.recurrent_adlif_ref`.
    """
    return run_op("recurrent_adlif", x, w_in, w_rec, bias,
                  dict(alpha=alpha, beta=beta, a=a, b=b, theta=theta), dict(v0=v0, a0=a0, s0=s0),
                  reset, detach_reset, surrogate, slope, save_state, lengths,
                  _delays(delays, max_delay, delay_sigma, rec_mask))


def recurrent_cubalif(x, w_in, w_rec, bias=None, alpha=0.9, alpha_syn=0.8, theta=1.0, u0=None,
                      j0=None, s0=None, *, reset="subtract", detach_reset=False,
                      surrogate="sigmoid", slope=None, save_state=True, lengths=None,
                      delays=None, max_delay=None, delay_sigma=0.0, rec_mask=None):
    """Runs a recurrent layer of current-based LIF neurons (CUBA: a synaptic
    current J and a membrane U per neuron; NIR's CubaLIF, snnTorch's
    RSynaptic) over a whole sequence with the fused op (C++ on CPU, CUDA on
    GPU, forward and backward). The same arguments and results as
    :func:`torch_ext.recurrent_cubalif_ref`.
    """
    return run_op("recurrent_cubalif", x, w_in, w_rec, bias,
                  dict(alpha=alpha, alpha_syn=alpha_syn, theta=theta), dict(u0=u0, j0=j0, s0=s0),
                  reset, detach_reset, surrogate, slope, save_state, lengths,
                  _delays(delays, max_delay, delay_sigma, rec_mask))


if recurrent_lif.__doc__ is not None:  # None under python -OO
    recurrent_lif.__doc__ += _docs.FUNCTIONAL.format(name="torch_ext.recurrent_lif")
    recurrent_adlif.__doc__ += _docs.ADLIF_FUNCTIONAL.format(name="torch_ext.recurrent_adlif")
    recurrent_cubalif.__doc__ += _docs.CUBA_FUNCTIONAL.format(name="torch_ext.recurrent_cubalif")
    for _op in (recurrent_lif, recurrent_adlif, recurrent_cubalif):
        _op.__doc__ += _docs.DELAYS
