"""Packaging: pyproject.toml's build requirements and metadata, the licence,
the wheel's metadata as pip computes it (setuptools' PEP 517 metadata hook;
nothing is compiled), which must require the torch it is built with, and the
README's Install commands run as written in a fresh virtual environment that
uses this machine's torch."""
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

def test_pyproject_build_system_and_metadata():
    try:
        import tomllib
    except ImportError:  # Python < 3.11
        tomllib = pytest.importorskip("tomli")
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    build = config["build-system"]
    assert build["requires"] == ["setuptools>=70.1", "cmake>=3.27", "ninja", "torch>=2.4"]
    assert build["build-backend"] == "setuptools.build_meta"
    project = config["project"]
    assert project["name"] == "torch_ext"
    assert (ROOT / project["readme"]).is_file()
    assert project["requires-python"] == ">=3.9" and project["description"]
    assert project["classifiers"]
    # Computed in setup.py: the version, the exact torch, the licence.
    assert set(project["dynamic"]) == {"version", "dependencies", "license"}


def test_licence_is_bsd_3_clause():
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("BSD 3-Clause License")
    assert "the torch_ext authors" in text and "Neither the name of the copyright holder" in text


def test_wheel_metadata_requires_the_torch_it_is_compiled_against(tmp_path):
    for name in ("setup.py", "pyproject.toml", "CMakeLists.txt", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, tmp_path / name)
    for folder in ("torch_ext", "csrc"):
        shutil.copytree(ROOT / folder, tmp_path / folder,
                        ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    out = tmp_path / "metadata"
    out.mkdir()
    code = ("import sys; from setuptools import build_meta; "
            "print(build_meta.prepare_metadata_for_build_wheel(sys.argv[1]))")
    env = dict(os.environ, TORCH_EXT_NO_CUDA="1")
    result = subprocess.run([sys.executable, "-c", code, str(out)], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    dist_info = out / result.stdout.strip().splitlines()[-1]
    metadata = (dist_info / "METADATA").read_text().splitlines()
    torch_version = torch.__version__.split("+")[0]
    assert f"Requires-Dist: torch=={torch_version}" in metadata
    assert "Name: torch_ext" in metadata and "License: BSD-3-Clause" in metadata
    assert "License-File: LICENSE" in metadata
    assert any(dist_info.rglob("LICENSE"))  # dist-info/licenses/ from setuptools 77 on
    assert "SetuptoolsDeprecationWarning" not in result.stderr, result.stderr[-3000:]


def readme_install_commands():
    """The commands of the README's Install section, as a user copies them."""
    section = (ROOT / "README.md").read_text().split("\n## Install\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [shlex.split(line, comments=True) for line in block.splitlines() if line.strip()]


def test_readme_install_works_in_a_venv_using_the_system_torch(tmp_path):
    """`python -m venv --system-site-packages` (torch from the machine, as on
    GPU clusters and in containers), then the README's Install commands: the
    venv's own older setuptools shadows the system's and pip installs no build
    requirement with isolation off, so the commands must bring the build tools.
    The package must then import from the venv, outside the checkout, and run.
    A separate CPU-only build directory: nothing of the checkout's build is used."""
    commands = readme_install_commands()
    assert commands and all(c[:2] == ["pip", "install"] for c in commands), commands
    env_dir = tmp_path / "env"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(env_dir)],
                   check=True, timeout=300)
    python = env_dir / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "CMAKE_ARGS")}
    env.update(TORCH_EXT_BUILD_DIR=str(tmp_path / "build"), TORCH_EXT_NO_CUDA="1",
               PIP_DISABLE_PIP_VERSION_CHECK="1", MAX_JOBS=os.environ.get("MAX_JOBS", "2"))
    for command in commands:
        result = subprocess.run([str(python), "-m", *command], cwd=ROOT, env=env,
                                capture_output=True, text=True, timeout=1200)
        assert result.returncode == 0, f"{shlex.join(command)}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    check = ("import torch, torch_ext; print(torch_ext.__file__); "
             "x = torch.randn(6, 2, 3, dtype=torch.float64, requires_grad=True); "
             "spikes, state = torch_ext.RecurrentLIF(3, 4, dtype=torch.float64)(x * 3); "
             "spikes.sum().backward(); assert x.grad is not None and x.grad.shape == x.shape; "
             "print(torch_ext.build_info()['cuda'])")
    result = subprocess.run([str(python), "-c", check], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    where, cuda = result.stdout.split()
    assert Path(where).resolve().is_relative_to(env_dir.resolve()), where
    assert cuda == "False"  # the build the test asked for, not the checkout's
