"""torch_ext._C (pybind11): the build's facts, the option tables, and the op
seen from torch.export."""
import subprocess
import sys

import torch

import torch_ext
from torch_ext import _C


def test_build_info_describes_this_build():
    info = torch_ext.build_info()
    assert info["version"] == torch_ext.__version__
    assert info["torch_version"] == torch.__version__.split("+")[0]
    has_cuda_kernel = torch._C._dispatch_has_kernel_for_dispatch_key(
        "torch_ext::recurrent_lif", "CUDA")
    assert info["cuda"] == has_cuda_kernel
    assert (info["cuda_archs"] is None) == (not info["cuda"])
    assert isinstance(info["cpu_simd_clones"], list)


def test_info_command_prints_build_and_runtime():
    out = subprocess.run([sys.executable, "-m", "torch_ext.info"], capture_output=True, text=True,
                         check=True).stdout
    assert "torch_ext build:" in out and "torch_ext runtime:" in out and "threads" in out


def test_option_tables_come_from_the_cpp_tables():
    assert _C.RESETS == ("subtract", "zero", "none")
    assert _C.SURROGATE_SLOPES == {"sigmoid": 25.0, "fast_sigmoid": 25.0, "atan": 2.0,
                                   "triangle": 1.0}
    # Each default slope is the one the op uses when slope=None.
    x = torch.randn(6, 2, 3, dtype=torch.float64)
    for surrogate, slope in _C.SURROGATE_SLOPES.items():
        assert _C.resolve_slope("recurrent_lif", "subtract", False, surrogate, None, True) == slope
        w = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
        default = torch.autograd.grad(
            torch_ext.recurrent_lif(x, w, None, surrogate=surrogate)[0].sum(), [w])
        explicit = torch.autograd.grad(
            torch_ext.recurrent_lif(x, w, None, surrogate=surrogate, slope=slope)[0].sum(), [w])
        assert torch.equal(default[0], explicit[0])


def test_torch_export_keeps_the_op_and_runs_it():
    layer = torch_ext.RecurrentLIF(3, 5, dtype=torch.float64)
    x = torch.randn(7, 2, 3, dtype=torch.float64)
    exported = torch.export.export(layer, (x,))
    assert "torch_ext.recurrent_lif" in str(exported.graph_module.code)
    spikes, (u, s) = exported.module()(x)
    want, (u_want, s_want) = layer(x)
    assert torch.equal(spikes, want) and torch.equal(u, u_want)
