"""Fused recurrent spiking layers for PyTorch: leaky integrate-and-fire (LIF),
adaptive (SE-adLIF) and current-based (CUBA) neurons.

    spikes, membrane = torch_ext.recurrent_lif(x, w_in, w_rec, bias, alpha, theta)
    layer = torch_ext.RecurrentLIF(in_features, hidden_size)
    spikes, membrane, adaptation = torch_ext.recurrent_adlif(x, w_in, w_rec, bias)  # adaptive LIF
    layer = torch_ext.RecurrentAdLIF(in_features, hidden_size)
    spikes, membrane, current = torch_ext.recurrent_cubalif(x, w_in, w_rec, bias)  # current-based
    layer = torch_ext.RecurrentCubaLIF(in_features, hidden_size)
    torch_ext.build_info()   # how the extension was built (python -m torch_ext.info)
    torch_ext.buffer_cache_info(); torch_ext.release_buffer_cache()  # the ops' CPU buffer cache
    graph = torch_ext.to_nir(lif_layer); module = torch_ext.from_nir(graph)  # NIR, needs `nir`
"""
import torch  # noqa: F401  (loads libtorch, which _C links against)

from ._C import buffer_cache_info, build_info, release_buffer_cache
from .functional import recurrent_adlif, recurrent_cubalif, recurrent_lif
from .module import RecurrentAdLIF, RecurrentCubaLIF, RecurrentLIF
from ._nir import from_nir, to_nir
from .reference import (recurrent_adlif_ref, recurrent_cubalif_ref, recurrent_lif_ref,
                        surrogate_grad_ref)

__all__ = ["recurrent_lif", "recurrent_lif_ref", "surrogate_grad_ref", "RecurrentLIF",
           "recurrent_adlif", "recurrent_adlif_ref", "RecurrentAdLIF", "recurrent_cubalif",
           "recurrent_cubalif_ref", "RecurrentCubaLIF", "build_info", "buffer_cache_info",
           "release_buffer_cache", "to_nir", "from_nir"]
__version__ = build_info()["version"]
