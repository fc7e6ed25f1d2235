"""Fused recurrent LIF op vs the plain-autograd reference, the reference under
torch.compile, and snnTorch's RLeaky, all computing the same math (see
peers.py): time and activation memory, measured side by side in one run.

    python -m benchmarks.bench                   # CPU: targets + sweeps over T, B, N
    python -m benchmarks.bench --quick           # fewer points
    python -m benchmarks.bench --device cuda     # on a GPU (both TF32 settings)

Per configuration, after warm-up, the implementations run interleaved (one
repetition of each in turn), so that drifts of the machine hit all alike;
medians and quartiles are reported and ratios are taken against the fused op
of the same run. Memory: bytes kept alive for backward (saved_tensors_hooks,
each storage once, leaving out inputs, parameters and the returned spikes and
membrane) and, on CUDA, the peak allocated during forward + backward beyond
what was allocated before. (The fused op's backward reads the returned
membrane, so that output stays alive with the graph even if the caller drops it.)
Writes a CSV and a JSON file and PNG plots under benchmarks/results/.
"""
import argparse
import datetime
import json
import platform
import statistics
import time
from pathlib import Path

import torch

import torch_ext
from benchmarks import peers

RESULTS = Path(__file__).resolve().parent / "results"


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def saved_bytes(run, keep):
    """(bytes, outputs): the bytes autograd keeps alive for backward while
    `run()` builds its graph, each storage counted once, leaving out the
    storages of the tensors in `keep` (inputs, parameters) and of the returned
    outputs; and those outputs."""
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        outputs = run()
    own = {t.untyped_storage().data_ptr() for t in (*keep, *outputs) if isinstance(t, torch.Tensor)}
    return sum(n for ptr, n in storages.items() if ptr not in own), outputs


def timed(fn, x, params, backward, device):
    grads = [p for p in params.values() if isinstance(p, torch.Tensor)]
    sync(device)
    start = time.perf_counter()
    spikes, _ = fn(x)
    if backward:
        torch.autograd.grad(spikes.sum(), grads)
    sync(device)
    return time.perf_counter() - start


def peak_bytes(fn, x, params, device):
    if device.type != "cuda":
        return None
    grads = [p for p in params.values() if isinstance(p, torch.Tensor)]
    sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    torch.autograd.grad(fn(x)[0].sum(), grads)
    sync(device)
    return torch.cuda.max_memory_allocated(device) - before


def implementations(params, T, args):
    impls = {"fused": peers.fused(params), "autograd": peers.reference(params)}
    notes = []
    if args.compile:
        if T <= args.compile_max_t:
            impls["compiled"] = peers.reference(params, compile=True)
        else:
            notes.append(f"torch.compile skipped at T={T} > --compile-max-t (it unrolls the loop)")
    if not args.no_snntorch:
        snn = peers.snntorch_rleaky(params)
        if snn is None:
            notes.append("snnTorch not installed (pip install -e .[bench])")
        else:
            impls["snntorch"] = snn
    return impls, notes


def measure(T, B, N, args, device):
    params = peers.make_params(N, N, device)
    x = torch.randn(T, B, N, generator=torch.Generator().manual_seed(1)).to(device)
    impls, notes = implementations(params, T, args)
    times = {name: {"fwd": [], "fwd_bwd": []} for name in impls}
    for name, fn in impls.items():  # warm-up (and compilation)
        for _ in range(args.warmup):
            timed(fn, x, params, True, device)
    for _ in range(args.reps):
        for name, fn in impls.items():
            times[name]["fwd"].append(timed(fn, x, params, False, device))
            times[name]["fwd_bwd"].append(timed(fn, x, params, True, device))
    rows = []
    fused_fb = statistics.median(times["fused"]["fwd_bwd"])
    fused_f = statistics.median(times["fused"]["fwd"])
    for name, fn in impls.items():
        q = {k: statistics.quantiles(v, n=4) if len(v) > 1 else [v[0]] * 3 for k, v in times[name].items()}
        rows.append({
            "impl": name, "T": T, "B": B, "N": N, "device": device.type,
            "tf32": torch.backends.cuda.matmul.allow_tf32 if device.type == "cuda" else None,
            "fwd_ms": 1e3 * statistics.median(times[name]["fwd"]),
            "fwd_bwd_ms": 1e3 * statistics.median(times[name]["fwd_bwd"]),
            "fwd_bwd_q1_ms": 1e3 * q["fwd_bwd"][0], "fwd_bwd_q3_ms": 1e3 * q["fwd_bwd"][2],
            "fwd_ratio": statistics.median(times[name]["fwd"]) / fused_f,
            "fwd_bwd_ratio": statistics.median(times[name]["fwd_bwd"]) / fused_fb,
            "saved_bytes": saved_bytes(lambda: fn(x), [x, *params.values()])[0],
            "peak_bytes": peak_bytes(fn, x, params, device),
            "spike_rate": peers.fused(params)(x)[0].mean().item() if name == "fused" else None,
        })
    return rows, notes


def configurations(args, device):
    if device.type == "cuda":
        base, targets = (1000, 64, 1024), [(1000, 64, 1024), (1000, 16, 256), (1000, 64, 4096)]
        sweep_T, sweep_B, sweep_N = [100, 300, 1000, 3000], [8, 16, 64, 256], [256, 1024, 2048, 4096]
    else:
        base, targets = (300, 32, 128), [(300, 32, 128), (200, 32, 512)]
        sweep_T, sweep_B, sweep_N = [50, 100, 300, 1000], [8, 16, 32, 64], [64, 128, 256, 512]
    if args.quick:
        sweep_T, sweep_B, sweep_N = sweep_T[:3], sweep_B[:2], sweep_N[:3]
    configs = [("target", t) for t in targets]
    configs += [("T", (T, base[1], base[2])) for T in sweep_T]
    configs += [("B", (base[0], B, base[2])) for B in sweep_B]
    configs += [("N", (base[0], base[1], N)) for N in sweep_N]
    return configs


def print_table(rows):
    header = f"{'sweep':>6} {'T':>5} {'B':>4} {'N':>5} {'impl':>9} {'tf32':>5} {'fwd ms':>9} " \
             f"{'fwd+bwd ms':>11} {'x fused':>8} {'saved MiB':>10} {'peak MiB':>9}"
    print(header)
    print("-" * len(header))
    for r in rows:
        peak = "-" if r["peak_bytes"] is None else f"{r['peak_bytes'] / 2**20:.1f}"
        tf32 = "-" if r["tf32"] is None else ("on" if r["tf32"] else "off")
        print(f"{r['sweep']:>6} {r['T']:>5} {r['B']:>4} {r['N']:>5} {r['impl']:>9} {tf32:>5} "
              f"{r['fwd_ms']:>9.2f} {r['fwd_bwd_ms']:>11.2f} {r['fwd_bwd_ratio']:>8.2f} "
              f"{r['saved_bytes'] / 2**20:>10.2f} {peak:>9}")


def plot(rows, stem):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def series(sweep, key, impl):
        pts = sorted((r[sweep], r[key]) for r in rows
                     if r["sweep"] == sweep and r["impl"] == impl and not r.get("tf32"))
        return [p[0] for p in pts], [p[1] for p in pts]

    impls = sorted({r["impl"] for r in rows}, key=["fused", "autograd", "compiled", "snntorch"].index)
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for color, impl in zip(plt.rcParams["axes.prop_cycle"].by_key()["color"], impls):
        style = dict(marker="o", color=color)
        axes[0].plot(*series("T", "fwd_bwd_ms", impl), label=impl, **style)
        if impl != "fused" and series("N", "fwd_bwd_ratio", impl)[0]:
            axes[1].plot(*series("N", "fwd_bwd_ratio", impl), label=f"{impl} / fused", **style)
        axes[2].plot(*series("T", "saved_bytes", impl), label=impl, **style)
    axes[0].set(xlabel="T", ylabel="forward + backward [ms]", title="time vs T", xscale="log", yscale="log")
    axes[1].set(xlabel="N", ylabel="time ratio (higher: fused faster)", title="speed-up vs N", xscale="log")
    axes[1].axhline(1, color="gray", lw=0.5)
    axes[2].set(xlabel="T", ylabel="bytes saved for backward", title="activation memory vs T",
                xscale="log")
    axes[2].set_yscale("symlog", linthresh=1.0)  # the fused op saves 0 bytes
    axes[2].set_ylim(bottom=0)
    for ax in axes:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(f"{stem}.png", dpi=110)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--reps", type=int, default=7, help="timed repetitions per implementation")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="fewer sweep points")
    parser.add_argument("--targets-only", action="store_true", help="only the target sizes, no sweeps")
    parser.add_argument("--compile", action="store_true", help="include the reference under torch.compile")
    parser.add_argument("--compile-max-t", type=int, default=100,
                        help="skip torch.compile above this T (compile time grows with T)")
    parser.add_argument("--no-snntorch", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    try:
        from tqdm import tqdm
    except ImportError:  # e.g. a bare GPU machine: no progress bar
        def tqdm(items, **_):
            return items

    device = torch.device(args.device)
    configs = configurations(args, device)
    if args.targets_only:
        configs = [c for c in configs if c[0] == "target"]
    tf32_settings = [False, True] if device.type == "cuda" else [None]
    rows, notes = [], set()
    for sweep, (T, B, N) in tqdm(configs, desc="benchmark", unit="config"):
        for tf32 in tf32_settings:
            if tf32 is not None:
                torch.backends.cuda.matmul.allow_tf32 = tf32
            new_rows, new_notes = measure(T, B, N, args, device)
            for r in new_rows:
                r["sweep"] = sweep
            rows += new_rows
            notes.update(new_notes)

    machine = {
        "machine": platform.node(), "processor": platform.processor() or platform.machine(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "reps": args.reps, "dtype": "float32",
    }
    print_table(rows)
    for note in sorted(notes):
        print("note:", note)
    print("machine:", ", ".join(f"{k}={v}" for k, v in machine.items()))
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"bench-{machine['device'].replace(' ', '_')}-{machine['date'][:10]}"
    import csv
    with open(f"{stem}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    Path(f"{stem}.json").write_text(json.dumps({"machine": machine, "notes": sorted(notes),
                                                "rows": rows}, indent=1))
    if not args.targets_only:
        plot(rows, stem)
    print(f"wrote {stem}.csv, .json" + ("" if args.targets_only else ", .png"))
    return rows


if __name__ == "__main__":
    main()
