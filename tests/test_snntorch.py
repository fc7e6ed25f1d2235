"""The benchmark's snnTorch configuration computes what the fused op computes."""
import pytest
import torch

import torch_ext
from benchmarks import peers

pytest.importorskip("snntorch")


def test_snntorch_rleaky_matches_fused_op():
    T, B, N = 40, 8, 32
    params = peers.make_params(N, N, "cpu", seed=0)
    params["w_in"] = None  # snnTorch's RLeaky adds its inputs directly
    with torch.no_grad():
        params["w_rec"].mul_(0.4)
        params["bias"].abs_()
    # Inputs that keep U - theta above -3.4: below about -3.5, snnTorch's sigmoid
    # surrogate (exp(-k v) / (exp(-k v) + 1)^2 with k = 25) overflows to NaN.
    x = 0.3 * torch.randn(T, B, N, generator=torch.Generator().manual_seed(5)) + 0.3
    spikes, membrane = torch_ext.recurrent_lif(x, None, params["w_rec"], params["bias"],
                                               params["alpha"], params["theta"], **peers.OPTIONS)
    distance = membrane - params["theta"]
    assert distance.min() > -3.4
    # float32 rounding moves these membranes by ~1e-6 at most over 40 steps; a
    # membrane closer than that to theta could legitimately spike in one
    # implementation and not the other.
    assert distance.abs().min() > 1e-5
    assert 0.05 < spikes.mean() < 0.95
    weights = torch.randn(T, B, N, generator=torch.Generator().manual_seed(6))
    tensors = [params["w_rec"], params["bias"]]

    grads = torch.autograd.grad((spikes * weights).sum(), tensors)
    snn_spikes, snn_membrane = peers.snntorch_rleaky(params)(x)
    snn_grads = torch.autograd.grad((snn_spikes * weights).sum(), tensors)
    assert torch.equal(snn_spikes, spikes)
    torch.testing.assert_close(snn_membrane, membrane, rtol=1e-5, atol=1e-5)
    # Agreement to 1e-4 relative to each gradient's scale: the entries are sums
    # of T*B float32 terms and reach ~1e3, so single entries near zero carry
    # absolute rounding differences of ~1e-3 (float64 would agree to ~1e-12).
    for ours, theirs in zip(grads, snn_grads):
        assert (ours - theirs).abs().max() <= 1e-4 * theirs.abs().max()
