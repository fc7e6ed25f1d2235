"""Learnable recurrent delays: the fused op against the expert autograd loop
of the same math, side by side in one run.

    python -m benchmarks.delays            # the targets: axonal D=25 at N=256, synaptic D=16 at N=128, and more D
    python -m benchmarks.delays --smoke    # tiny sizes, seconds: checks that it runs

Case: recurrent_lif, float32, CPU, F = N, x standard normal scaled for a
spike rate of a few percent, delays uniform in [1, D - 2], delay_sigma a
learnable 0-dim tensor of 1.0 (a triangular kernel 3 steps wide), forward +
backward of spikes.sum() + 0.01 * membrane.sum() for w_in, w_rec, the
delays and sigma.

Implementations (interleaved, one repetition of each in turn; medians):

- fused: torch_ext.recurrent_lif with delays;
- autograd: the expert autograd loop a competent user writes (the op's
  reference, torch_ext.recurrent_lif_ref: the taps once per call, DelRec's
  buffer of the last D spikes, one product per step);
- fused_no_delays: the fused op without delays (the layer's cost without
  them, for scale);
- fused_dense: the fused op with TORCH_EXT_BINARY_INPUTS=dense, nothing
  from the spikes that fired: per source P[t], the delays' sums and
  grad_w_rec by dense sums and products instead of by events at the spikes
  (the op as it was before those); per synapse the products C[k] dense.

Writes a JSON file under benchmarks/results/.
"""
import argparse
import datetime
import json
import os
import statistics
import time
from pathlib import Path

import torch

import torch_ext
from benchmarks.spike_inputs import cpu_description

RESULTS = Path(__file__).resolve().parent / "results"
TARGETS = [("axonal", 250, 32, 256, 25), ("synaptic", 200, 32, 128, 16)]
MORE = [("axonal", 250, 32, 256, 5), ("axonal", 250, 32, 256, 50),
        ("synaptic", 200, 32, 128, 4), ("synaptic", 200, 32, 128, 32),
        ("synaptic", 100, 32, 512, 8)]


def case(kind, T, B, N, D, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, B, N, generator=g) * 0.6 + 0.1
    w_in = (torch.randn(N, N, generator=g) / N ** 0.5).requires_grad_()
    w_rec = (torch.randn(N, N, generator=g) * 0.3 / N ** 0.5).requires_grad_()
    shape = (N,) if kind == "axonal" else (N, N)
    delays = (1 + torch.rand(shape, generator=g) * max(D - 3, 0)).requires_grad_()
    sigma = torch.tensor(1.0, requires_grad=True)
    return x, [w_in, w_rec, delays, sigma]


def runner(fn, x, leaves, D, with_delays=True, dense=False):
    """One forward + backward; dense: with TORCH_EXT_BINARY_INPUTS=dense
    (nothing computed from the spikes that fired)."""
    w_in, w_rec, delays, sigma = leaves

    def run():
        before = os.environ.get("TORCH_EXT_BINARY_INPUTS")
        if dense:
            os.environ["TORCH_EXT_BINARY_INPUTS"] = "dense"
        try:
            kw = dict(delays=delays, max_delay=D, delay_sigma=sigma) if with_delays else {}
            spikes, membrane = fn(x, w_in, w_rec, **kw)
            wanted = leaves if with_delays else [w_in, w_rec]
            torch.autograd.grad(spikes.sum() + 0.01 * membrane.sum(), wanted)
        finally:
            if dense:
                os.environ.pop("TORCH_EXT_BINARY_INPUTS")
                if before is not None:
                    os.environ["TORCH_EXT_BINARY_INPUTS"] = before
        return spikes
    return run


def measure(kind, T, B, N, D, reps):
    x, leaves = case(kind, T, B, N, D)
    runs = {"fused": runner(torch_ext.recurrent_lif, x, leaves, D),
            "autograd": runner(torch_ext.recurrent_lif_ref, x, leaves, D),
            "fused_no_delays": runner(torch_ext.recurrent_lif, x, leaves, D, with_delays=False)}
    runs["fused_dense"] = runner(torch_ext.recurrent_lif, x, leaves, D, dense=True)
    rate = runs["fused"]().mean().item()
    for run in runs.values():  # warm-up
        run()
    times = {name: [] for name in runs}
    for _ in range(reps):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    ms = {name: 1e3 * statistics.median(t) for name, t in times.items()}
    return {"kind": kind, "T": T, "B": B, "N": N, "D": D, "rate": rate, "ms": ms,
            "autograd_over_fused": ms["autograd"] / ms["fused"]}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--targets-only", action="store_true")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    cases = ([("axonal", 6, 2, 8, 3), ("synaptic", 6, 2, 8, 3)] if args.smoke
             else TARGETS + ([] if args.targets_only else MORE))
    reps = 1 if args.smoke else args.reps
    print(f"recurrent delays, recurrent_lif float32, forward + backward; {cpu_description()}; "
          f"torch {torch.__version__}")
    print(f"{'kind':>8} {'T':>4} {'B':>3} {'N':>4} {'D':>3} {'rate':>5} {'fused':>9} "
          f"{'autograd':>9} {'autograd/fused':>14} {'no delays':>9} {'dense':>9}")
    rows = []
    for kind, T, B, N, D in cases:
        r = measure(kind, T, B, N, D, reps)
        rows.append(r)
        ms = r["ms"]
        print(f"{kind:>8} {T:>4} {B:>3} {N:>4} {D:>3} {r['rate']:>5.3f} {ms['fused']:>9.1f} "
              f"{ms['autograd']:>9.1f} {r['autograd_over_fused']:>14.1f} "
              f"{ms['fused_no_delays']:>9.1f} "
              + f"{ms['fused_dense']:>9.1f}")
    print("ms: medians of interleaved repetitions; autograd: the expert autograd loop "
          "(recurrent_lif_ref); no delays: the fused op without delays, for scale; dense: "
          "the fused op with TORCH_EXT_BINARY_INPUTS=dense (its sums over the taps and "
          "products dense, not from the spikes that fired)")
    if not args.smoke:
        args.out.mkdir(parents=True, exist_ok=True)
        path = args.out / f"delays-cpu-{datetime.date.today().isoformat()}.json"
        path.write_text(json.dumps({"cpu": cpu_description(), "torch": torch.__version__,
                                    "rows": rows}, indent=1))
        print(f"wrote {path}")
    return rows


if __name__ == "__main__":
    main()
