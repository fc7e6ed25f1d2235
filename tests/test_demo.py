import json

from torch_ext import demo


def test_demo_learns_and_writes_summary_and_plots(tmp_path):
    summary = demo.main(["--epochs", "2", "--limit", "600", "--hidden", "64", "--lr", "1e-2",
                         "--pixel-epochs", "2", "--pixel-hidden", "32", "--timing-batches", "1",
                         "--out", str(tmp_path)])
    assert summary["test_accuracy"] > 0.3  # chance is 0.1
    written = json.loads((tmp_path / "summary.json").read_text())
    for key in ("test_accuracy", "epoch_seconds_fused", "epoch_seconds_autograd", "max_grad_diff"):
        assert key in written
    assert written["max_grad_diff"] < 1e-10  # float64: the two backends agree
    # The pixel-by-pixel task: the three layers, and the LIF layer with
    # learnable delays, trained, timed with both backends.
    assert set(written["pixel"]) >= {"lif", "adlif", "cuba", "lif_delays"}
    for kind in ("lif", "adlif", "cuba", "lif_delays"):
        result = written["pixel"][kind]
        assert len(result["history"]["test_acc"]) == 2
        for key in ("test_accuracy", "epoch_seconds_fused", "epoch_seconds_autograd", "speedup"):
            assert result[key] > 0
        assert result["max_grad_diff"] < 1e-10
    # The delays are tested rounded into [1, max_delay], as DelRec evaluates them.
    delayed = written["pixel"]["lif_delays"]
    delays = delayed["delays"]
    assert len(delays) == 32 and "test_accuracy_unrounded" in delayed
    assert all(d == round(d) and 1 <= d <= delayed["max_delay"] for d in delays)
    for png in ("training_curves.png", "spike_raster.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"
