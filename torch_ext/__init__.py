"""Fused recurrent leaky integrate-and-fire (LIF) layer for PyTorch.

    spikes, membrane = torch_ext.recurrent_lif(x, w_in, w_rec, bias, alpha, theta)
    layer = torch_ext.RecurrentLIF(in_features, hidden_size)
    torch_ext.build_info()   # how the extension was built (python -m torch_ext.info)
"""
import torch  # noqa: F401  (loads libtorch, which _C links against)

from ._C import build_info
from .functional import recurrent_lif
from .module import RecurrentLIF
from .reference import recurrent_lif_ref, surrogate_grad_ref

__all__ = ["recurrent_lif", "recurrent_lif_ref", "surrogate_grad_ref", "RecurrentLIF",
           "build_info"]
__version__ = build_info()["version"]
