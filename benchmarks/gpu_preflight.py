"""Preflight of gpu_check.sh: what the CUDA build and the GPU run need, one
line each, OK / MISSING / WARN / INFO, never stopping on a missing one.

    python3 -m benchmarks.gpu_preflight [--json PATH]

Checks the interpreter, torch and its CUDA version, nvcc (where torch's
cpp_extension will look: CUDA_HOME) and its CUDA version against torch's (the
major versions must match for setup.py to build CUDA), the CUDA headers that
the kernels include, gcc/g++, CMake >= 3.27 and ninja (the build is CMake's,
driven by setup.py, which takes either from its pip package or from PATH),
setuptools, Python.h, the pybind11 headers torch ships, the GPU as nvidia-smi
and as torch see it (name, memory, compute capability against
TORCH_CUDA_ARCH_LIST), free disk, and pytest.
"""
import argparse
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
counts = {"OK": 0, "MISSING": 0, "WARN": 0, "INFO": 0}
facts = {}


def line(status, name, detail):
    counts[status] += 1
    print(f"{status:<8}{name}: {detail}", flush=True)


def command(*argv, timeout=30):
    """stdout (stripped) of a command, or None if it is absent or fails."""
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def first_line(text):
    return text.splitlines()[0] if text else ""


def check_python():
    line("INFO", "python3", f"{sys.executable}, Python {sys.version.split()[0]}")
    include = sysconfig.get_paths()["include"]
    header = Path(include) / "Python.h"
    line("OK" if header.exists() else "MISSING", "Python headers",
         f"{header}" + ("" if header.exists() else " not found (install the python3-dev headers)"))
    try:
        import setuptools
        line("OK", "setuptools", setuptools.__version__)
    except ImportError:
        line("MISSING", "setuptools", "not importable: setup.py cannot run")
    line("INFO", "CPUs", f"{os.cpu_count()} (MAX_JOBS={os.environ.get('MAX_JOBS', 'unset')})")


def check_torch():
    try:
        import torch
    except Exception as e:  # noqa: BLE001 - report anything
        line("MISSING", "torch", f"import failed: {type(e).__name__}: {e}")
        return None
    facts["torch"] = torch.__version__
    facts["torch_cuda"] = torch.version.cuda
    line("OK" if torch.version.cuda else "MISSING", "torch",
         f"{torch.__version__}, built for CUDA {torch.version.cuda}")
    pybind = Path(torch.__file__).parent / "include" / "pybind11" / "pybind11.h"
    line("OK" if pybind.exists() else "MISSING", "pybind11 headers (shipped with torch)", str(pybind))
    return torch


def check_nvcc(torch):
    cuda_home = None
    try:
        from torch.utils.cpp_extension import CUDA_HOME as cuda_home
    except Exception as e:  # noqa: BLE001
        line("MISSING", "torch.utils.cpp_extension", f"{type(e).__name__}: {e}")
    on_path = shutil.which("nvcc")
    line("INFO", "CUDA_HOME (as cpp_extension finds it)",
         f"{cuda_home} (env CUDA_HOME={os.environ.get('CUDA_HOME', 'unset')}); nvcc on PATH: {on_path}")
    nvcc = str(Path(cuda_home) / "bin" / "nvcc") if cuda_home else on_path
    version = command(nvcc, "--version") if nvcc else None
    match = re.search(r"release (\d+)\.(\d+)", version or "")
    if not match:
        line("MISSING", "nvcc", f"{nvcc or 'not found'}: no version (setup.py builds CPU-only; "
             "with FORCE_CUDA=1 the build fails)")
        facts["cuda_buildable"] = False
        return cuda_home
    nvcc_version = f"{match.group(1)}.{match.group(2)}"
    torch_cuda = torch.version.cuda if torch else None
    same_major = torch_cuda is not None and torch_cuda.split(".")[0] == match.group(1)
    facts["nvcc"] = nvcc_version
    facts["cuda_buildable"] = same_major
    line("OK" if same_major else "MISSING", "nvcc vs torch CUDA",
         f"{nvcc}: CUDA {nvcc_version}, torch built for CUDA {torch_cuda}"
         + ("" if same_major else " (major versions differ: setup.py will not build CUDA)"))
    return cuda_home


def check_cuda_headers(cuda_home):
    """The headers that ATen/cuda/CUDAContext.h pulls in."""
    roots = [Path(cuda_home) / "include"] if cuda_home else []
    roots += [Path(p) for p in glob.glob(os.path.join(sysconfig.get_paths()["purelib"], "nvidia",
                                                      "*", "include"))]
    for header in ("cuda_runtime.h", "cublas_v2.h", "cusparse.h", "cusolverDn.h"):
        found = next((r / header for r in roots if (r / header).exists()), None)
        line("OK" if found else "MISSING", f"CUDA header {header}",
             str(found) if found else f"not in {', '.join(map(str, roots)) or 'any CUDA_HOME'}")


def check_compilers():
    for name in ("gcc", "g++", "c++"):
        path = shutil.which(name)
        version = first_line(command(name, "--version")) if path else ""
        line("OK" if path else "MISSING", name, f"{path}: {version}" if path else "not found")
    # setup.py takes each from its pip package if installed, else from PATH.
    for name, module, attribute in (("cmake", "cmake", "CMAKE_BIN_DIR"),
                                    ("ninja", "ninja", "BIN_DIR")):
        path = None
        try:
            candidate = os.path.join(getattr(__import__(module), attribute), name)
            path = candidate if os.path.isfile(candidate) else None
        except ImportError:
            pass
        path = path or shutil.which(name)
        facts[name] = bool(path)
        if not path:
            line("MISSING", name, f"neither the Python package {module} nor {name} on PATH: "
                 "the build (CMake, with the ninja generator) cannot run")
            continue
        version = first_line(command(path, "--version")) or ""
        too_old = False
        if name == "cmake":
            found = re.search(r"(\d+)\.(\d+)", version)
            too_old = found is not None and tuple(map(int, found.groups())) < (3, 27)
        line("MISSING" if too_old else "OK", name,
             f"{path}: {version}" + (" (the build needs CMake >= 3.27)" if too_old else ""))


def check_gpu(torch):
    smi = command("nvidia-smi", "--query-gpu=name,driver_version,memory.total,memory.used,"
                  "compute_cap", "--format=csv,noheader")
    if smi is None:  # older nvidia-smi: no compute_cap field
        smi = command("nvidia-smi", "--query-gpu=name,driver_version,memory.total,memory.used",
                      "--format=csv,noheader")
    driver_cuda = re.search(r"CUDA Version:\s*([\d.]+)", command("nvidia-smi") or "")
    if smi and driver_cuda:
        smi += f" (driver supports CUDA {driver_cuda.group(1)})"
    line("OK" if smi else "MISSING", "GPU (nvidia-smi)",
         smi.replace("\n", " | ") if smi else "nvidia-smi absent or failing")
    facts["nvidia_smi"] = smi
    if torch is None:
        return
    try:
        available = torch.cuda.is_available()
    except Exception as e:  # noqa: BLE001
        available = False
        line("MISSING", "GPU (torch)", f"{type(e).__name__}: {e}")
    facts["gpu"] = available
    if not available:
        line("MISSING", "GPU (torch)", "torch.cuda.is_available() is False")
        return
    props = torch.cuda.get_device_properties(0)
    capability = f"{props.major}.{props.minor}"
    facts["gpu_name"] = props.name
    facts["gpu_memory_gib"] = round(props.total_memory / 2 ** 30, 1)
    facts["gpu_capability"] = capability
    free, total = torch.cuda.mem_get_info(0)
    line("OK", "GPU (torch)", f"{torch.cuda.device_count()} device(s); 0: {props.name}, "
         f"{props.total_memory / 2 ** 30:.1f} GiB ({free / 2 ** 30:.1f} free), "
         f"{props.multi_processor_count} SMs, compute capability {capability}")
    archs = os.environ.get("TORCH_CUDA_ARCH_LIST", "")
    listed = {a.strip().replace("+PTX", "") for a in re.split(r"[;\s]+", archs) if a.strip()}
    if archs and capability not in listed:
        line("WARN", "TORCH_CUDA_ARCH_LIST", f"{archs!r} does not include this GPU's {capability}: "
             "the kernels will not load on it")
    else:
        line("OK", "TORCH_CUDA_ARCH_LIST", f"{archs or 'unset (setup.py: 8.0;9.0)'}; GPU is {capability}")


def check_disk():
    for where in (ROOT, Path(os.environ.get("TMPDIR", "/tmp"))):
        try:
            free = shutil.disk_usage(where).free / 2 ** 30
        except OSError as e:
            line("WARN", f"free disk at {where}", str(e))
            continue
        line("OK" if free > 2 else "MISSING", f"free disk at {where}", f"{free:.1f} GiB")


def check_pytest():
    try:
        import pytest
    except ImportError:
        line("MISSING", "pytest", "not installed: the CUDA tests are skipped; "
             "benchmarks/gpu_correctness.py checks without it")
        facts["pytest"] = False
        return
    facts["pytest"] = True
    plugins = [p for p in ("pytest_timeout", "hypothesis") if _importable(p)]
    line("OK", "pytest", f"{pytest.__version__} (with {', '.join(plugins) or 'no plugins checked'})")


def _importable(name):
    try:
        __import__(name)
        return True
    except ImportError:
        return False


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", help="also write the facts found to this file")
    args = parser.parse_args(argv)
    check_python()
    torch = check_torch()
    cuda_home = check_nvcc(torch)
    check_cuda_headers(cuda_home)
    check_compilers()
    check_gpu(torch)
    check_disk()
    check_pytest()
    persistent = os.environ.get("TORCH_EXT_CUDA_PERSISTENT")
    if persistent is not None:
        line("INFO", "TORCH_EXT_CUDA_PERSISTENT", f"{persistent!r} is set for the whole run")
    print(f"preflight: {counts['OK']} OK, {counts['MISSING']} MISSING, {counts['WARN']} WARN",
          flush=True)
    facts.update(counts)
    if args.json:
        Path(args.json).write_text(json.dumps(facts, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
