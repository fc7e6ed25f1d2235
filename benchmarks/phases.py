"""Where a fused forward + backward spends its time, per phase, next to the
floor (the matrix products alone, peers.floor) and the page faults of a call.

    python -m benchmarks.phases                       # every model at T=300, B=32, F=N=128
    python -m benchmarks.phases --model lif --size 1000,32,128
    python -m benchmarks.phases --smoke               # tiny sizes: checks that it runs

Phases, from torch.profiler's self times (per call, averaged over --calls):
the backward op's own time (its reverse time loop, with the per-step
recurrent product, and the spike-driven w_rec gradient), the forward op's own
time (its time loop), the dense products it hands to ATen (input projection,
grad_x, grad_w_in), copies (aten::copy_: dtype conversions, broadcasts,
transposes) and everything else. The ratio fused / floor and the page faults
(minor faults per fused call; bench.minor_faults says why they matter) come
from separate timed calls, fused and floor interleaved, medians; so does the
fused op with its buffer cache turned off (TORCH_EXT_BUFFER_CACHE_MB=0 for
that call: its buffers from malloc, as before the cache).
"""
import argparse
import os
import statistics

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks import bench, peers

PHASES = ("backward loop", "forward loop", "products", "copies", "other")


def phase_of(name):
    if name.startswith("torch_ext::_recurrent") and name.endswith("_backward"):
        return "backward loop"
    if name.startswith("torch_ext::recurrent"):
        return "forward loop"
    if name in ("aten::mm", "aten::addmm", "aten::addmm_"):
        return "products"
    if name == "aten::copy_":
        return "copies"
    return "other"


def measure(model, T, B, N, calls, reps):
    params = peers.MODELS[model]["make_params"](N, N, "cpu")
    x = torch.randn(T, B, N, generator=torch.Generator().manual_seed(1)).requires_grad_()
    inputs = [x, *(p for p in params.values() if isinstance(p, torch.Tensor))]
    fused = bench.with_backward(peers.fused(params, model), inputs)
    floor = peers.floor(params)
    for _ in range(3):
        fused(x, True)
        floor(x, True)
    times = {"fused": [], "no_cache": [], "floor": []}
    faults = {"fused": [], "no_cache": []}
    for _ in range(reps):
        for name in ("no_cache", "fused"):
            if name == "no_cache":
                os.environ["TORCH_EXT_BUFFER_CACHE_MB"] = "0"
            else:  # (the call with the cache off emptied it: refill it, untimed)
                fused(x, True)
            before = bench.minor_faults()
            times[name].append(bench.timed(fused, x, True, x.device))
            faults[name].append(bench.minor_faults() - before)
            os.environ.pop("TORCH_EXT_BUFFER_CACHE_MB", None)
        times["floor"].append(bench.timed(floor, x, True, x.device))
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(calls):
            fused(x, True)
    ms = dict.fromkeys(PHASES, 0.0)
    copies = 0
    for event in prof.key_averages():
        phase = phase_of(event.key)
        ms[phase] += event.self_cpu_time_total / 1e3 / calls
        if phase == "copies":
            copies += event.count / calls
    fused_ms, no_cache_ms, floor_ms = (1e3 * statistics.median(times[k])
                                       for k in ("fused", "no_cache", "floor"))
    return {"model": model, "T": T, "B": B, "N": N, **ms, "copy_calls": copies,
            "page_faults": statistics.median(faults["fused"]),
            "page_faults_no_cache": statistics.median(faults["no_cache"]), "fused_ms": fused_ms,
            "no_cache_ms": no_cache_ms, "floor_ms": floor_ms,
            "fused_over_floor": fused_ms / floor_ms, "no_cache_over_floor": no_cache_ms / floor_ms}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=list(peers.MODELS), action="append")
    parser.add_argument("--size", type=bench.size_arg, default=(300, 32, 128), metavar="T,B,N")
    parser.add_argument("--calls", type=int, default=20, help="profiled calls")
    parser.add_argument("--reps", type=int, default=15, help="timed calls of fused and floor")
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    if args.smoke:
        args.size, args.calls, args.reps = (20, 4, 16), 2, 2
    rows = [measure(model, *args.size, args.calls, args.reps)
            for model in args.model or list(peers.MODELS)]
    print(f"ms per forward + backward, T, B, F=N = {args.size}, "
          f"{torch.get_num_threads()} threads, float32:")
    print(f"{'model':>9} " + " ".join(f"{p:>13}" for p in PHASES)
          + f" {'copy_ calls':>11} {'page faults':>11} {'fused/floor':>11}"
          + f" {'faults, no cache':>16} {'no cache/floor':>14}")
    for r in rows:
        print(f"{r['model']:>9} " + " ".join(f"{r[p]:>13.2f}" for p in PHASES)
              + f" {r['copy_calls']:>11.0f} {r['page_faults']:>11.0f}"
              + f" {r['fused_over_floor']:>11.2f} {r['page_faults_no_cache']:>16.0f}"
              + f" {r['no_cache_over_floor']:>14.2f}")
    print("times (ms): " + ", ".join(f"{r['model']} fused {r['fused_ms']:.1f}, no cache "
                                      f"{r['no_cache_ms']:.1f}, floor {r['floor_ms']:.1f}"
                                      for r in rows))
    return rows


if __name__ == "__main__":
    main()
