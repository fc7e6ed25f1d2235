"""Build of torch_ext: setuptools drives the project's CMake build
(CMakeLists.txt, the only build description), which compiles the op library
libtorch_ext and the Python extension torch_ext._C linking it; both are then
installed into the package directory.

The CMake build directory is build/cmake in this checkout (TORCH_EXT_BUILD_DIR
overrides it), the same one the C++ tests use, so a source compiles once
whichever of `pip install --no-build-isolation .`, `setup.py build_ext
--inplace` and `cmake --build build/cmake` runs first. Environment:
  TORCH_EXT_NO_CUDA=1     build CPU-only even where CUDA could be built
  FORCE_CUDA=1            fail instead of falling back to a CPU-only build
  TORCH_CUDA_ARCH_LIST    GPU architectures (default "8.0;9.0")
  MAX_JOBS                parallel compile jobs (default: ninja's own choice)
  CMAKE_ARGS              further arguments for the CMake configure step
                          (e.g. -DBUILD_TESTING=ON, which the tests use)
The CUDA decision (nvcc of torch's CUDA major version found, never
torch.cuda.is_available(), False on a build machine without a GPU) and the
torch >= 2.4 check are made by CMakeLists.txt.
"""
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import torch
from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
# One version, CMakeLists.txt's project(... VERSION ...).
VERSION = re.search(r"project\(torch_ext VERSION ([0-9.]+)",
                    (ROOT / "CMakeLists.txt").read_text()).group(1)


def tool(module, attribute, name):
    """A build tool from its pip package if that is installed (its directory
    need not be on PATH, e.g. in a venv that is not activated), else from PATH."""
    try:
        directory = getattr(__import__(module), attribute)
        if (Path(directory) / name).is_file():
            return str(Path(directory) / name)
    except ImportError:
        pass
    found = shutil.which(name)
    if found is None:
        sys.exit(f"torch_ext: building needs {name}; install it first: pip install {module}")
    return found


def build_dir():
    return Path(os.environ.get("TORCH_EXT_BUILD_DIR", ROOT / "build" / "cmake"))


def cmake():
    return tool("cmake", "CMAKE_BIN_DIR", "cmake")


class CMakeBuild(build_ext):
    """Configures and builds the CMake project, then installs its `python`
    component (_C and libtorch_ext) where setuptools expects the extension."""

    def build_extension(self, ext):
        configure = [cmake(), "-S", str(ROOT), "-B", str(build_dir()), "-G", "Ninja",
                     f"-DCMAKE_MAKE_PROGRAM={tool('ninja', 'BIN_DIR', 'ninja')}",
                     "-DCMAKE_BUILD_TYPE=Release", f"-DPython3_EXECUTABLE={sys.executable}",
                     "-DTORCH_EXT_PYTHON=ON"]
        if not (build_dir() / "CMakeCache.txt").is_file():
            # A first configure: the library alone. An existing build keeps its
            # choice (the C++ tests' build turns them on).
            configure.append("-DBUILD_TESTING=OFF")
        configure += shlex.split(os.environ.get("CMAKE_ARGS", ""))
        build = [cmake(), "--build", str(build_dir()), "--target", "_C"]
        if os.environ.get("MAX_JOBS"):
            build += ["-j", os.environ["MAX_JOBS"]]
        for command in (configure, build):
            run(command)
        install_python_component(Path(self.get_ext_fullpath(ext.name)).resolve().parent.parent)

    def copy_extensions_to_source(self):
        # --inplace: setuptools would copy _C alone; the library it links goes with it.
        install_python_component(ROOT)


def install_python_component(prefix):
    run([cmake(), "--install", str(build_dir()), "--component", "python", "--prefix", str(prefix)])


def run(command):
    print("torch_ext:", shlex.join(command), flush=True)
    subprocess.run(command, check=True)


# The static metadata (name, description, readme, Python versions,
# classifiers, extras) is in pyproject.toml; the version, the dependencies and
# the licence (see pyproject.toml for why) are given here. The extension links
# against this torch's libraries and uses its C++ ABI, so the package requires
# this very torch version (the local label, such as +cu130, dropped: pip
# matches 2.14.1+cu130 to ==2.14.1).
TORCH_VERSION = torch.__version__.split("+")[0]

setup(
    version=VERSION,
    packages=find_packages(include=["torch_ext", "torch_ext.*"]),
    ext_modules=[Extension("torch_ext._C", sources=[])],
    cmdclass={"build_ext": CMakeBuild},
    install_requires=[f"torch=={TORCH_VERSION}"],
    license="BSD-3-Clause",
)
