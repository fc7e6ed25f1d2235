"""The GPU check's Python parts (benchmarks/gpu_*.py) keep working on a machine
without a GPU: the correctness script on the CPU at tiny sizes, its comparison,
the preflight, the summary table from partial results, and the shell script's
syntax. Seconds."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import gpu_correctness, gpu_summary

ROOT = Path(__file__).resolve().parent.parent


def run_module(module, *args, env=None):
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=full_env,
                          capture_output=True, text=True, timeout=300)


def test_correctness_script_passes_on_cpu(tmp_path):
    out = run_module("benchmarks.gpu_correctness", "--device", "cpu", "--small", "6,2,3,4",
                     "--target", "30,2,8,8", "--json", str(tmp_path / "r.json"),
                     env={"TORCH_EXT_CUDA_PERSISTENT": ""})
    assert out.returncode == 0, out.stdout + out.stderr
    result = json.loads((tmp_path / "r.json").read_text())
    n_small = len(gpu_correctness.RESETS) * len(gpu_correctness.SURROGATES) * 2 * 2
    assert result["design"] == "default"
    assert result["passed"] >= n_small + len(gpu_correctness.TARGET_OPTIONS)  # + features found
    assert result["failed"] == 0
    lines = out.stdout.splitlines()
    assert sum(line.startswith("PASS ") for line in lines) == result["passed"]
    assert any(line.startswith("SUMMARY design=default device=cpu") for line in lines)


def test_persistent_design_is_named_and_reported_as_the_build_has_it():
    import torch_ext
    out = run_module("benchmarks.gpu_correctness", "--device", "cpu", "--small", "4,2,3,4",
                     "--no-target", env={"TORCH_EXT_CUDA_PERSISTENT": "1"})
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUMMARY design=persistent" in out.stdout
    built = "persistent" in torch_ext.build_info().get("cuda_designs", [])
    assert ("build_info() names a persistent design" in out.stdout) == built
    assert ("same CUDA kernels as the default run" in out.stdout) == (not built)


def test_optional_features_are_checked_where_the_build_has_them(monkeypatch, tmp_path):
    """Stand-ins with the low-memory argument and a one-to-one w_rec (as
    diag(w_rec)) make the script add those cases; it then checks them."""
    import torch_ext
    real, real_ref = torch_ext.recurrent_lif, torch_ext.recurrent_lif_ref

    def dense(w_rec):
        return torch.diag(w_rec) if w_rec is not None and w_rec.dim() == 1 else w_rec

    def fused(x, w_in, w_rec, *rest, save_membrane=True, **options):
        return real(x, w_in, dense(w_rec), *rest, **options)

    def reference(x, w_in, w_rec, *rest, **options):
        return real_ref(x, w_in, dense(w_rec), *rest, **options)

    monkeypatch.setattr(torch_ext, "recurrent_lif", fused)
    monkeypatch.setattr(torch_ext, "recurrent_lif_ref", reference)
    monkeypatch.delenv("TORCH_EXT_CUDA_PERSISTENT", raising=False)
    assert gpu_correctness.main(["--device", "cpu", "--small", "6,2,3,4", "--target", "30,2,8,8",
                                 "--json", str(tmp_path / "r.json")]) == 0
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["features"] == {"low_memory": True, "one_to_one": True}
    names = [case["name"] for case in result["cases"]]
    for variant in ("low-memory", "one-to-one"):
        assert sum(variant in n and n.startswith("small") for n in names) == 12, variant
        assert sum(variant in n and n.startswith("target") for n in names) == 1, variant
    assert result["failed"] == 0


def result(spikes, membrane, grads):
    return spikes, membrane, grads


def test_compare_fails_on_a_flipped_spike_a_gradient_error_or_nan():
    s = torch.tensor([0.0, 1.0, 0.0])
    u = torch.tensor([0.5, 1.5, 0.2])
    g = [torch.tensor([1.0, 2.0]), torch.tensor([3.0])]
    assert gpu_correctness.compare(result(s, u, g), result(s, u, g), 1e-4)[0]
    flipped = torch.tensor([1.0, 1.0, 0.0])
    assert not gpu_correctness.compare(result(flipped, u, g), result(s, u, g), 1e-4)[0]
    off = [g[0] * (1 + 1e-3), g[1]]
    ok, text = gpu_correctness.compare(result(s, u, off), result(s, u, g), 1e-4)
    assert not ok and "(x)" in text
    nan = [g[0], torch.tensor([float("nan")])]
    assert not gpu_correctness.compare(result(s, u, nan), result(s, u, g), 1e-4)[0]
    assert not gpu_correctness.compare(result(s, u + 1e-6, g), result(s, u, g), 1e-4,
                                       membrane_tol=0.0)[0]


def test_grid_inputs_make_the_products_exact_in_float32():
    x, w_in, w_rec, bias, *_ = gpu_correctness.grid_inputs(5, 3, 64, 32, seed=0, device="cpu")
    exact = x.double() @ w_in.double().T + bias.double()
    assert torch.equal((x @ w_in.T + bias).double(), exact)
    spikes = (torch.rand(3, 32, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    assert torch.equal((spikes @ w_rec.T).double(), spikes.double() @ w_rec.double().T)


def test_preflight_runs_and_reports_every_check(tmp_path):
    out = run_module("benchmarks.gpu_preflight", "--json", str(tmp_path / "p.json"))
    assert out.returncode == 0, out.stdout + out.stderr
    for name in ("Python headers", "torch", "pybind11 headers", "cmake", "ninja", "GPU (nvidia-smi)",
                 "free disk"):
        assert any(line[8:].startswith(name) for line in out.stdout.splitlines()), name
    facts = json.loads((tmp_path / "p.json").read_text())
    assert facts["OK"] + facts["MISSING"] + facts["WARN"] > 10


def test_summary_table_from_partial_results(tmp_path, capsys):
    work, out = tmp_path / "work", tmp_path / "out"
    work.mkdir()
    out.mkdir()
    steps = [("preflight", "ok", "0", "3", "60", ""),
             ("build", "failed", "1", "40", "300", ""),
             ("import torch_ext", "not built", "-", "-", "-", "see build.log"),
             ("correctness (default)", "not built", "-", "-", "-", "no extension to check"),
             ("correctness (persistent)", "not built", "-", "-", "-", "no extension to check"),
             ("pytest", "timed out", "124", "150", "150", "")]
    (work / "steps.tsv").write_text("".join("\t".join(s) + "\n" for s in steps))
    (out / "pytest.log").write_text("..F\nFAILED tests/test_cuda.py::test_x - boom\n")
    assert gpu_summary.main(["--work", str(work), "--out", str(out), "--mode", "full"]) == 0
    table = (out / "summary.txt").read_text()
    assert "build:        failed (rc 1, 40 s)" in table
    assert "default:    not built" in table
    assert "FAILED tests/test_cuda.py::test_x" in table
    assert "benchmark:    no result" in table
    assert table.strip() in capsys.readouterr().out
    assert json.loads((out / "bench.json").read_text()) == {"main": None, "compile_probe": None,
                                                            "other_sizes": None}


@pytest.mark.skipif(not any((Path(p) / "bash").exists() for p in os.get_exec_path()),
                    reason="no bash")
def test_gpu_check_script_parses():
    subprocess.run(["bash", "-n", str(ROOT / "benchmarks" / "gpu_check.sh")], check=True)


def test_summary_lists_the_mixed_precision_rows(tmp_path, capsys):
    """The mixed-precision step's JSON (benchmarks/mixed_precision.py --json,
    here on the CPU at a tiny size) becomes one line per model and size; a
    model whose step left no result says why."""
    from benchmarks import mixed_precision
    work, out = tmp_path / "work", tmp_path / "out"
    work.mkdir()
    out.mkdir()
    mixed_precision.main(["--model", "lif", "--size", "6,2,8", "--reps", "1",
                          "--json", str(work / "mixed-lif.json")])
    steps = [("mixed precision (lif)", "ok", "0", "5", "60", ""),
             ("mixed precision (adaptive)", "timed out", "124", "60", "60", "")]
    (work / "steps.tsv").write_text("".join("\t".join(s) + "\n" for s in steps))
    assert gpu_summary.main(["--work", str(work), "--out", str(out), "--mode", "dry-run"]) == 0
    table = (out / "summary.txt").read_text()
    line = next(line for line in table.splitlines() if "mixed lif T=6, B=2, F=N=8:" in line)
    assert "fused f32" in line and "expert bfloat16" in line and "bfloat16/f32" in line
    assert "grad error fused" in line
    assert "mixed precision (adaptive): no result: timed out" in table
    capsys.readouterr()
