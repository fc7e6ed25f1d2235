"""The benchmark's peers compute what the fused op computes, and its smoke mode runs."""
from pathlib import Path

import pytest
import torch

from benchmarks import bench, peers


PEERS = [(model, peer) for model, spec in peers.MODELS.items()
         for peer in (peers.python_function, peers.reference)]
# snnTorch's surrogates return float32 spikes: its peers run in float32 only.
SNNTORCH_PEERS = [model for model, spec in peers.MODELS.items() if spec["snntorch"] is not None]


@pytest.mark.parametrize("model,peer", PEERS, ids=[f"{m}-{p.__name__}" for m, p in PEERS])
def test_peer_matches_fused_op_float64(model, peer):
    """Each layer's peers compute the fused op's spikes, states and gradients
    of x and every parameter (float64: rounding moves membranes by ~1e-15,
    none is that close to theta)."""
    spec = peers.MODELS[model]
    T, B, F, N = 30, 4, 6, 5
    params = spec["make_params"](F, N, "cpu", dtype=torch.float64, seed=2)
    x = torch.randn(T, B, F, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    x.requires_grad_()
    tensors = [x, *(p for p in params.values() if isinstance(p, torch.Tensor))]

    def outputs_and_grads(run):
        outputs = run(x)
        g = torch.Generator().manual_seed(3)
        loss = sum((o * torch.randn(o.shape, generator=g, dtype=o.dtype)).sum() for o in outputs)
        return outputs, torch.autograd.grad(loss, tensors)

    fused, g_fused = outputs_and_grads(peers.fused(params, model))
    assert 0.05 < fused[0].mean() < 0.95
    assert (fused[1] - params["theta"]).abs().min() > 1e-9  # no float64 tie at threshold
    outputs, grads = outputs_and_grads(peer(params, model))
    assert torch.equal(outputs[0], fused[0])
    for got, want in zip(outputs[1:], fused[1:]):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    for got, want in zip(grads, g_fused):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("model", SNNTORCH_PEERS)
def test_snntorch_peer_matches_fused_op_float32(model):
    """snnTorch's loop computes the same forward: the same spikes (the inputs
    keep every membrane 1e-4 from theta, so float32 rounding cannot flip one)
    and states to float32 rounding. (Its gradients are not compared: its
    sigmoid surrogate overflows to NaN in float32 where k |v| > 88, the
    benchmark times them all the same.)"""
    pytest.importorskip("snntorch")
    spec = peers.MODELS[model]
    params = spec["make_params"](6, 5, "cpu", seed=2)
    x = torch.randn(30, 4, 6, generator=torch.Generator().manual_seed(4))
    fused, outputs = peers.fused(params, model)(x), spec["snntorch"](params)(x)
    assert 0.05 < fused[0].mean() < 0.95 and (fused[1] - params["theta"]).abs().min() > 1e-4
    assert torch.equal(outputs[0], fused[0])
    for got, want in zip(outputs[1:], fused[1:]):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_python_function_without_input_gradient():
    params = peers.make_params(3, 4, "cpu", dtype=torch.float64)
    x = torch.randn(5, 2, 3, dtype=torch.float64)  # grad_x is skipped, the rest computed
    spikes, _ = peers.python_function(params)(x)
    grads = torch.autograd.grad(spikes.sum(), [params["w_rec"]])
    assert grads[0].shape == (4, 4)


def test_floor_runs():
    params = peers.make_params(6, 5, "cpu")
    peers.floor(params)(torch.randn(7, 3, 6), backward=True)
    peers.floor(params, x_grad=False)(torch.randn(7, 3, 6), backward=True)


def test_spike_input_benchmark_runs(capsys):
    from benchmarks import spike_inputs
    result = spike_inputs.main(["--smoke", "--rates", "0.05"])
    assert [c["case"] for c in result["cases"]] == ["shd", "stack", "stack"]
    for case in result["cases"]:
        assert set(case["ms"]) == {"fused", "fused_dense", "autograd", "python_fn", "floor"}
        assert 0 < case["input_rate"] < 1
    assert {r["rate"] for r in result["crossover"]} == {0.02, 0.2}
    assert "gather / dense" in capsys.readouterr().out


@pytest.mark.parametrize("model", peers.MODELS)
def test_smoke_mode(model, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    rows = bench.main(["--smoke", "--model", model, "--out", str(tmp_path)])
    impls = {r["impl"] for r in rows}
    assert {"fused", "fused_lm", "autograd", "python_fn", "floor"} <= impls
    assert ("snntorch" in impls) == (model != "adaptive")  # snnTorch has no adaptive neuron
    assert all(r["saved_bytes"] > 0 for r in rows if r["impl"] != "floor")
    printed = capsys.readouterr().out
    assert "fused / floor" in printed and f"torch_ext.{peers.MODELS[model]['op']}" in printed
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".csv", ".json", ".png"]
    prefix = "bench-" if model == "lif" else f"bench-{model}-"
    assert all(p.name.startswith(prefix) for p in tmp_path.iterdir())


def test_an_implementation_runs_forward_and_backward_under_its_environment(monkeypatch):
    """fused_persistent's design switch is read by the op at every call, the
    backward's included: it must be set for both and restored after."""
    monkeypatch.delenv("TORCH_EXT_CUDA_PERSISTENT", raising=False)
    seen = []

    class Probe(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            seen.append(("forward", bench.os.environ.get("TORCH_EXT_CUDA_PERSISTENT")))
            return x.clone()

        @staticmethod
        def backward(ctx, grad):
            seen.append(("backward", bench.os.environ.get("TORCH_EXT_CUDA_PERSISTENT")))
            return grad

    x = torch.randn(3, requires_grad=True)
    run = bench.with_backward(lambda x: (Probe.apply(x), None), [x],
                              bench.ENVIRONMENT["fused_persistent"])
    run(x, True)
    assert seen == [("forward", "1"), ("backward", "1")]
    assert "TORCH_EXT_CUDA_PERSISTENT" not in bench.os.environ


@pytest.mark.parametrize("model", ["lif", "adaptive", "cuba"])
def test_mixed_precision_benchmark_runs(model, capsys):
    from benchmarks import mixed_precision
    rows = mixed_precision.main(["--model", model, "--size", "6,2,8", "--reps", "1"])
    assert set(rows[0]["ms"]) == {"fused f32", "fused bfloat16 MKL products",
                                  "fused bfloat16 f32 products",
                                  "expert bfloat16", "expert f32", "floor f32", "floor bfloat16"}
    assert set(rows[0]["errors"]) == {"fused", "expert"}
    assert rows[0]["phases"]["op"] > 0 and rows[0]["phases"]["conversions"] >= 0
    out = capsys.readouterr().out
    assert "err fused" in out and "conversions %" in out


def test_phase_profile_runs(capsys):
    from benchmarks import phases
    rows = phases.main(["--smoke", "--model", "lif"])
    assert rows[0]["backward loop"] > 0 and rows[0]["forward loop"] > 0
    assert rows[0]["fused_over_floor"] > 0
    assert "page faults" in capsys.readouterr().out


def test_delays_benchmark_runs(capsys):
    from benchmarks import delays
    rows = delays.main(["--smoke"])
    assert [r["kind"] for r in rows] == ["axonal", "synaptic"]
    # Also the op with nothing computed from the spikes that fired.
    assert [set(r["ms"]) for r in rows] == [
        {"fused", "autograd", "fused_no_delays", "fused_dense"}] * 2
    assert "autograd/fused" in capsys.readouterr().out


def test_against_commit_benchmark_runs_both_checkouts(capsys):
    """benchmarks/against_commit.py with this checkout as the other one: two
    workers, each importing its checkout's build, take turns; the ratio of
    equal builds is a number near 1 (not asserted: tiny sizes are noise)."""
    from benchmarks import against_commit
    root = Path(__file__).resolve().parents[1]
    rows = against_commit.main(["--other", str(root), "--size", "5,2,8", "--reps", "2",
                                "--inner", "1"])
    assert [(r["T"], r["B"], r["N"]) for r in rows] == [(5, 2, 8)]
    assert rows[0]["new_ms"] > 0 and rows[0]["old_ms"] > 0
    assert "new/old" in capsys.readouterr().out
