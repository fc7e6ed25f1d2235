"""Build of torch_ext: the recurrent LIF op as a PyTorch C++/CUDA extension.

CUDA sources are compiled when nvcc and a CUDA-built torch of the same CUDA
major version are found (never decided by torch.cuda.is_available(), which is
False on a build machine without a GPU). Environment:
  TORCH_EXT_NO_CUDA=1     build CPU-only even where CUDA could be built
  FORCE_CUDA=1            fail instead of falling back to a CPU-only build
  TORCH_CUDA_ARCH_LIST    GPU architectures (default "8.0;9.0")
  MAX_JOBS                parallel compile jobs (ninja)
"""
import os
import re
import subprocess
import warnings
from pathlib import Path

import torch
from setuptools import find_packages, setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

ROOT = Path(__file__).resolve().parent
VERSION = "0.2.0"
LIBRARY_SOURCES = ["csrc/recurrent_lif.cpp", "csrc/autograd.cpp", "csrc/api.cpp",
                   "csrc/cpu/recurrent_lif_cpu.cpp"]
CPU_SOURCES = LIBRARY_SOURCES + ["csrc/python_module.cpp"]
CUDA_SOURCES = ["csrc/cuda/recurrent_lif_cuda.cu"]


def nvcc_cuda_version():
    if CUDA_HOME is None:
        return None
    try:
        out = subprocess.run([str(Path(CUDA_HOME) / "bin" / "nvcc"), "--version"],
                             capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    match = re.search(r"release (\d+)\.(\d+)", out)
    return match.group(1, 2) if match else None


def cuda_build_problem():
    """Why CUDA cannot be built here, or None if it can."""
    if os.environ.get("TORCH_EXT_NO_CUDA", "0") == "1":
        return "TORCH_EXT_NO_CUDA=1"
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is not built with CUDA"
    nvcc = nvcc_cuda_version()
    if nvcc is None:
        return "nvcc was not found (set CUDA_HOME)"
    if nvcc[0] != torch.version.cuda.split(".")[0]:
        return f"nvcc is CUDA {'.'.join(nvcc)} but torch is built for CUDA {torch.version.cuda}"
    return None


problem = cuda_build_problem()
with_cuda = problem is None
if problem and os.environ.get("FORCE_CUDA", "0") == "1":
    raise RuntimeError(f"FORCE_CUDA=1 but CUDA cannot be built: {problem}")
if problem and problem != "TORCH_EXT_NO_CUDA=1":
    warnings.warn(f"torch_ext: building CPU-only, because {problem}")
if with_cuda:
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")


def compile_flags():
    """{"cxx": [...], "nvcc": [...]} from csrc/compile_flags.txt, which the
    CMake build reads too."""
    flags = {}
    for line in (ROOT / "csrc" / "compile_flags.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            language, *values = line.split()
            flags[language] = values
    return flags


# -fopenmp: without it at::parallel_for compiles to a serial loop (torch's
# wheels use OpenMP).
flags = compile_flags()
cxx_flags = flags["cxx"] + ["-fopenmp"]
link_flags = ["-fopenmp"]
# torch_ext.build_info() reports the version and the CUDA architectures.
macros = [("TORCH_EXT_VERSION", f'"{VERSION}"')]
include_dirs = [str(ROOT / "csrc" / "include")]
if with_cuda:
    macros += [("WITH_CUDA", None),
               ("TORCH_EXT_CUDA_ARCHS", f'"{os.environ["TORCH_CUDA_ARCH_LIST"]}"')]
    extension = CUDAExtension(
        "torch_ext._C", CPU_SOURCES + CUDA_SOURCES, define_macros=macros, include_dirs=include_dirs,
        extra_compile_args={"cxx": cxx_flags, "nvcc": flags["nvcc"]},
        extra_link_args=link_flags)
else:
    extension = CppExtension("torch_ext._C", CPU_SOURCES, define_macros=macros,
                             include_dirs=include_dirs, extra_compile_args={"cxx": cxx_flags},
                             extra_link_args=link_flags)

# The static metadata (name, description, readme, Python versions,
# classifiers, extras) is in pyproject.toml; the version, the dependencies and
# the licence (see pyproject.toml for why) are given here. The extension links
# against this torch's libraries and uses its C++ ABI, so the package requires this very torch version (the local
# label, such as +cu130, dropped: pip matches 2.14.1+cu130 to ==2.14.1).
TORCH_VERSION = torch.__version__.split("+")[0]

setup(
    version=VERSION,
    packages=find_packages(include=["torch_ext", "torch_ext.*"]),
    ext_modules=[extension],
    cmdclass={"build_ext": BuildExtension},
    install_requires=[f"torch=={TORCH_VERSION}"],
    license="BSD-3-Clause",
)
