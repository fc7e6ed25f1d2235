"""Fused recurrent leaky integrate-and-fire (LIF) layer for PyTorch.

    spikes, membrane = torch_ext.recurrent_lif(x, w_in, w_rec, bias, alpha, theta)
    layer = torch_ext.RecurrentLIF(in_features, hidden_size)
"""
from .functional import recurrent_lif
from .module import RecurrentLIF
from .reference import recurrent_lif_ref, surrogate_grad_ref

__all__ = ["recurrent_lif", "recurrent_lif_ref", "surrogate_grad_ref", "RecurrentLIF"]
__version__ = "0.1.0"
