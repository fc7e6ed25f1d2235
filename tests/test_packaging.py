"""Packaging: pyproject.toml's build requirements and metadata, the licence,
and the wheel's metadata as pip computes it (setuptools' PEP 517 metadata
hook; nothing is compiled), which must require the torch it is built with."""
import os
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
    assert build["requires"] == ["setuptools>=64", "wheel", "torch>=2.4", "numpy"]
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
    for name in ("setup.py", "pyproject.toml", "README.md", "LICENSE"):
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
