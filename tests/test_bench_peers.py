"""The benchmark's peers compute what the fused op computes, and its smoke mode runs."""
import pytest
import torch

from benchmarks import bench, peers


def outputs_and_grads(run, x, params, seed=3):
    """Spikes, membrane and the gradients of a random linear function of both,
    for x and the weights."""
    spikes, membrane = run(x)
    g = torch.Generator().manual_seed(seed)
    loss = (spikes * torch.randn(spikes.shape, generator=g, dtype=spikes.dtype)).sum() \
        + (membrane * torch.randn(membrane.shape, generator=g, dtype=membrane.dtype)).sum()
    tensors = [x, params["w_in"], params["w_rec"], params["bias"]]
    return spikes, membrane, torch.autograd.grad(loss, tensors)


@pytest.mark.parametrize("peer", [peers.python_function, peers.reference])
def test_peer_matches_fused_op_float64(peer):
    T, B, F, N = 30, 4, 6, 5
    params = peers.make_params(F, N, "cpu", dtype=torch.float64, seed=2)
    x = torch.randn(T, B, F, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    x.requires_grad_()
    s_fused, u_fused, g_fused = outputs_and_grads(peers.fused(params), x, params)
    assert 0.05 < s_fused.mean() < 0.95
    # Float64 rounding moves membranes by ~1e-15; none is that close to theta.
    assert (u_fused - params["theta"]).abs().min() > 1e-9
    spikes, membrane, grads = outputs_and_grads(peer(params), x, params)
    assert torch.equal(spikes, s_fused)
    torch.testing.assert_close(membrane, u_fused, rtol=1e-12, atol=1e-12)
    for got, want in zip(grads, g_fused):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("peer", [peers.python_function_adaptive, peers.reference_adaptive])
def test_adaptive_peer_matches_fused_op_float64(peer):
    T, B, F, N = 30, 4, 6, 5
    params = peers.make_adaptive_params(F, N, "cpu", dtype=torch.float64, seed=2)
    x = torch.randn(T, B, F, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    x.requires_grad_()
    tensors = [x, *(p for p in params.values() if isinstance(p, torch.Tensor))]

    def outputs_and_all_grads(run):
        outputs = run(x)
        g = torch.Generator().manual_seed(3)
        loss = sum((o * torch.randn(o.shape, generator=g, dtype=o.dtype)).sum() for o in outputs)
        return outputs, torch.autograd.grad(loss, tensors)

    fused, g_fused = outputs_and_all_grads(peers.fused_adaptive(params))
    assert 0.05 < fused[0].mean() < 0.95
    assert (fused[1] - params["theta"]).abs().min() > 1e-9  # no float64 tie at threshold
    outputs, grads = outputs_and_all_grads(peer(params))
    assert torch.equal(outputs[0], fused[0])
    for got, want in zip(outputs[1:], fused[1:]):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    for got, want in zip(grads, g_fused):  # x, w_in, w_rec, bias, alpha, beta, a, b
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_adaptive_smoke_mode(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    rows = bench.main(["--smoke", "--model", "adaptive", "--out", str(tmp_path)])
    assert {r["impl"] for r in rows} == {"fused", "fused_lm", "autograd", "python_fn", "floor"}
    assert "recurrent_adlif" in capsys.readouterr().out
    assert all(p.name.startswith("bench-adaptive-") for p in tmp_path.iterdir())


def test_python_function_without_input_gradient():
    params = peers.make_params(3, 4, "cpu", dtype=torch.float64)
    x = torch.randn(5, 2, 3, dtype=torch.float64)  # grad_x is skipped, the rest computed
    spikes, _ = peers.python_function(params)(x)
    grads = torch.autograd.grad(spikes.sum(), [params["w_rec"]])
    assert grads[0].shape == (4, 4)


def test_floor_runs():
    params = peers.make_params(6, 5, "cpu")
    peers.floor(params)(torch.randn(7, 3, 6), backward=True)


def test_smoke_mode(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    rows = bench.main(["--smoke", "--out", str(tmp_path)])
    impls = {r["impl"] for r in rows}
    assert {"fused", "autograd", "python_fn", "floor"} <= impls
    assert all(r["saved_bytes"] > 0 for r in rows if r["impl"] != "floor")
    printed = capsys.readouterr().out
    assert "fused / floor" in printed
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".csv", ".json", ".png"]


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


@pytest.mark.parametrize("model", ["lif", "adaptive"])
def test_mixed_precision_benchmark_runs(model, capsys):
    from benchmarks import mixed_precision
    rows = mixed_precision.main(["--model", model, "--size", "6,2,8", "--reps", "1"])
    assert set(rows[0]["ms"]) == {"fused f32", "fused bfloat16", "expert bfloat16",
                                  "expert f32", "floor f32", "floor bfloat16"}
    assert set(rows[0]["errors"]) == {"fused", "expert"}
    assert "err fused" in capsys.readouterr().out
