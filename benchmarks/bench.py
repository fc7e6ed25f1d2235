"""Fused recurrent LIF op vs the ways it is written without it, all computing
the same math (see peers.py), and vs the floor of the matrix products that no
exact implementation avoids: time and activation memory, measured side by side
in one run.

    python -m benchmarks.bench                   # CPU: targets + sweeps over T, B, N
    python -m benchmarks.bench --quick           # fewer sweep points
    python -m benchmarks.bench --smoke           # tiny sizes, seconds: checks that it runs
    python -m benchmarks.bench --device cuda     # on a GPU (both TF32 settings)
    python -m benchmarks.bench --model adaptive  # the adaptive (SE-adLIF) layer instead
    python -m benchmarks.bench --model cuba      # the current-based (CUBA) layer instead

Per configuration, after warm-up, the implementations run interleaved (one
repetition of each in turn), so that drifts of the machine hit all alike;
medians and quartiles are reported and ratios are taken against the fused op
of the same run. Every implementation computes the gradients of x and of the
weights, as a layer inside a network does. Memory: bytes kept alive for
backward (saved_tensors_hooks, each storage once, leaving out the inputs and
parameters; outputs that a backward reads count, such as the fused op's
returned spikes and membrane, which stay alive with the graph even if the
caller drops them) and, on CUDA, the peak allocated during forward + backward
beyond what was allocated before.
Writes a CSV and a JSON file and PNG plots under benchmarks/results/.
"""
import argparse
import csv
import datetime
import json
import os
import platform
import resource
import statistics
import time
from pathlib import Path
from unittest import mock

import torch

import torch_ext
from benchmarks import peers

RESULTS = Path(__file__).resolve().parent / "results"

# What each row of the table is, in the order printed and plotted, for a
# model's op and layer (peers.MODELS).
def baselines(model="lif"):
    spec = peers.MODELS[model]
    op = spec["op"]
    return {
        "fused": f"torch_ext.{op}, the fused op",
        "fused_lm": f"the fused op in its low-memory mode ({spec['low_memory']}=False: the "
                    "backward recomputes the states)",
        "autograd": f"torch_ext.{op}_ref: the expert autograd loop (one input product, unbind "
                    "over time, stack), differentiated by autograd",
        "python_fn": "hand-written torch.autograd.Function, Python loops forward and backward, "
                     "weight gradients as single products (benchmarks/python_function.py)",
        "fused_persistent": "the fused op with the persistent CUDA design asked for "
                            "(TORCH_EXT_CUDA_PERSISTENT=1, forward and backward; sizes it does "
                            "not fit take the per-step design: torch_ext._C.cuda_design_for "
                            "says which)",
        "compiled": "the expert autograd loop under torch.compile",
        "snntorch": f"snnTorch's {spec['snntorch_name']}, stepped in a Python loop",
        "floor": "the dense matrix products alone (peers.floor): a lower bound for a dense "
                 "implementation",
    }


BASELINES = baselines()


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def saved_bytes(run, keep, count_outputs=False):
    """(bytes, outputs): the bytes autograd keeps alive for backward while
    `run()` builds its graph, each storage counted once, leaving out the
    storages of the tensors in `keep` (inputs, parameters) and, unless
    `count_outputs`, of the returned outputs; and those outputs. The
    benchmark counts outputs: a backward that reads them keeps them alive even
    if the caller drops them."""
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        outputs = run()
    left_out = keep if count_outputs else [*keep, *outputs]
    own = {t.untyped_storage().data_ptr() for t in left_out if isinstance(t, torch.Tensor)}
    return sum(n for ptr, n in storages.items() if ptr not in own), outputs


# Environment variables an implementation runs under (set for its forward and
# backward only; the op reads them at every call).
ENVIRONMENT = {"fused_persistent": {"TORCH_EXT_CUDA_PERSISTENT": "1"}}


def with_backward(fn, inputs, variables=None):
    """run(x, backward) for fn(x) -> (spikes, membrane): the forward, then
    optionally the gradients of spikes.sum() for `inputs`, under the
    environment `variables`."""
    def run(x, backward):
        with mock.patch.dict(os.environ, variables or {}):
            spikes = fn(x)[0]
            if backward:
                torch.autograd.grad(spikes.sum(), inputs)
    return run


def timed(run, x, backward, device):
    sync(device)
    start = time.perf_counter()
    run(x, backward)
    sync(device)
    return time.perf_counter() - start


def minor_faults():
    """This process's minor page faults so far: a fresh page costs one at its
    first touch, and the default allocator (glibc's malloc) returns freed
    memory to the system once more than a few times the largest tensor lies
    free at the top of the heap, so a call whose buffers outgrow that faults
    them in again at every call (measured in the N=128 case: about 2000
    faults per fused forward + backward with glibc's defaults, none with
    MALLOC_TRIM_THRESHOLD_ and MALLOC_MMAP_THRESHOLD_ set high or another
    allocator). The fused op now takes its own buffers from its buffer cache
    (torch_ext.buffer_cache_info), which keeps them mapped between calls."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def peak_bytes(run, x, device):
    if device.type != "cuda":
        return None
    sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    run(x, True)
    sync(device)
    return torch.cuda.max_memory_allocated(device) - before


def model_bytes(fn, x, params, device):
    """What a 2-layer model (the layer, then a Linear readout of every step's
    spikes, loss = mean) keeps alive from its forward to its backward: saved
    tensors and the outputs a backward reads, each storage once, leaving out
    the input and the parameters (the activation memory of training)."""
    N = params["w_in"].shape[0]
    readout = torch.nn.Linear(N, 10).to(device)
    keep = [x, *(p for p in params.values() if isinstance(p, torch.Tensor)), *readout.parameters()]
    return saved_bytes(lambda: (readout(fn(x)[0]).mean(),), keep, count_outputs=True)[0]


def implementations(params, T, args):
    """name -> fn(x) -> (spikes, membrane[, second state]), and notes on what was left out."""
    spec = peers.MODELS[args.model]
    model = args.model
    impls = {"fused": peers.fused(params, model),
             "fused_lm": peers.fused(params, model, low_memory=True),
             "autograd": peers.reference(params, model),
             "python_fn": peers.python_function(params, model)}
    designs = torch_ext.build_info().get("cuda_designs", [])
    if torch.device(args.device).type == "cuda" and "persistent" in designs:
        impls["fused_persistent"] = peers.fused(params, model)
    notes = []
    if args.compile:
        if T <= args.compile_max_t:
            impls["compiled"] = peers.reference(params, model, compile=True)
        else:
            notes.append(f"torch.compile skipped at T={T} > --compile-max-t (it unrolls the loop)")
    if not args.no_snntorch and spec["snntorch"] is not None:  # snnTorch has no adaptive neuron
        snn = spec["snntorch"](params)
        if snn is None:
            notes.append("snnTorch not installed (pip install -e .[bench])")
        else:
            impls["snntorch"] = snn
    return impls, notes


def measure(T, B, N, args, device):
    params = peers.MODELS[args.model]["make_params"](N, N, device)
    x = torch.randn(T, B, N, generator=torch.Generator().manual_seed(1)).to(device).requires_grad_()
    inputs = [x, *(p for p in params.values() if isinstance(p, torch.Tensor))]
    impls, notes = implementations(params, T, args)
    runs = {name: with_backward(fn, inputs, ENVIRONMENT.get(name)) for name, fn in impls.items()}
    runs["floor"] = peers.floor(params)
    times = {name: {"fwd": [], "fwd_bwd": [], "faults": []} for name in runs}
    for run in runs.values():  # warm-up (and compilation)
        for _ in range(args.warmup):
            run(x, True)
    for _ in range(args.reps):
        for name, run in runs.items():
            times[name]["fwd"].append(timed(run, x, False, device))
            faults = minor_faults()
            times[name]["fwd_bwd"].append(timed(run, x, True, device))
            times[name]["faults"].append(minor_faults() - faults)
    rows = []
    fused_f = statistics.median(times["fused"]["fwd"])
    fused_fb = statistics.median(times["fused"]["fwd_bwd"])
    for name, run in runs.items():
        fwd, fwd_bwd = times[name]["fwd"], times[name]["fwd_bwd"]
        q = statistics.quantiles(fwd_bwd, n=4) if len(fwd_bwd) > 1 else [fwd_bwd[0]] * 3
        is_peer = name in impls  # the floor builds no graph and returns nothing
        rows.append({
            "impl": name, "T": T, "B": B, "N": N, "device": device.type,
            "tf32": torch.backends.cuda.matmul.allow_tf32 if device.type == "cuda" else None,
            "fwd_ms": 1e3 * statistics.median(fwd),
            "fwd_bwd_ms": 1e3 * statistics.median(fwd_bwd),
            "fwd_bwd_q1_ms": 1e3 * q[0], "fwd_bwd_q3_ms": 1e3 * q[2],
            "fwd_ratio": statistics.median(fwd) / fused_f,
            "fwd_bwd_ratio": statistics.median(fwd_bwd) / fused_fb,
            "page_faults": statistics.median(times[name]["faults"]),
            "saved_bytes": saved_bytes(lambda: impls[name](x), inputs, count_outputs=True)[0]
            if is_peer else None,
            "peak_bytes": peak_bytes(run, x, device) if is_peer else None,
            "model_bytes": model_bytes(impls[name], x, params, device)
            if name in ("fused", "fused_lm", "autograd") else None,
            "spike_rate": impls["fused"](x)[0].mean().item() if name == "fused" else None,
        })
    return rows, notes


def configurations(args, device):
    """[(sweeps, (T, B, N))]: each size once, with the sweeps it belongs to
    ("target", "T", "B", "N"). Sizes given with --size replace all others."""
    if args.size:
        return [("target", size) for size in dict.fromkeys(args.size)]
    if args.smoke:
        base, targets = (20, 4, 16), [(20, 4, 16)]
        sweep_T, sweep_B, sweep_N = [10, 20], [2, 4], [8, 16]
    elif device.type == "cuda":
        base, targets = (1000, 64, 1024), [(1000, 64, 1024), (1000, 16, 256), (1000, 64, 4096)]
        sweep_T, sweep_B, sweep_N = [100, 300, 1000, 3000], [8, 16, 64, 256], [256, 1024, 2048, 4096]
    else:
        base = (300, 32, 128)
        targets = [(300, 32, 128), (200, 32, 512), (1000, 32, 128), (100, 128, 256)]
        sweep_T, sweep_B, sweep_N = [50, 100, 300, 1000], [8, 16, 32, 64], [64, 128, 256, 512]
    if args.quick:
        sweep_T, sweep_B, sweep_N = sweep_T[:3], sweep_B[:2], sweep_N[:3]
    sweeps = {}
    for size in targets:
        sweeps.setdefault(size, []).append("target")
    if not args.targets_only:
        for T in sweep_T:
            sweeps.setdefault((T, base[1], base[2]), []).append("T")
        for B in sweep_B:
            sweeps.setdefault((base[0], B, base[2]), []).append("B")
        for N in sweep_N:
            sweeps.setdefault((base[0], base[1], N), []).append("N")
    return [("+".join(names), size) for size, names in sweeps.items()]


def size_arg(text):
    """"T,B,N" -> (T, B, N)."""
    try:
        T, B, N = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected T,B,N, got {text!r}") from None
    return T, B, N


def in_sweep(row, sweep):
    return sweep in row["sweep"].split("+")


def mib(n):
    return "-" if n is None else f"{n / 2**20:.2f}"


def print_table(rows, described=BASELINES):
    header = f"{'sweep':>12} {'T':>5} {'B':>4} {'N':>5} {'impl':>9} {'tf32':>4} {'fwd ms':>9} " \
             f"{'fwd+bwd ms':>11} {'x fused':>7} {'faults':>6} {'saved MiB':>9} {'peak MiB':>8}"
    print(header)
    print("-" * len(header))
    for r in rows:
        tf32 = "-" if r["tf32"] is None else ("on" if r["tf32"] else "off")
        print(f"{r['sweep']:>12} {r['T']:>5} {r['B']:>4} {r['N']:>5} {r['impl']:>9} {tf32:>4} "
              f"{r['fwd_ms']:>9.2f} {r['fwd_bwd_ms']:>11.2f} {r['fwd_bwd_ratio']:>7.2f} "
              f"{r['page_faults']:>6.0f} "
              f"{mib(r['saved_bytes']):>9} {mib(r['peak_bytes']):>8}")
    print("\nimpl:")
    for name in sorted({r["impl"] for r in rows}, key=list(BASELINES).index):
        print(f"  {name:>9}: {described[name]}")
    print("x fused: forward + backward time over the fused op's in the same run (floor < 1).\n"
          "faults: minor page faults per forward + backward (median; bench.minor_faults).\n"
          "saved MiB: kept alive for backward, inputs and parameters left out; the fused op's\n"
          "  count includes its returned spikes and membrane, which its backward reads.")


def print_ratios(rows, layer="RecurrentLIF"):
    """At the target sizes: how far the fused op is from the floor, and how
    much slower the expert loop and the hand-written Function are."""
    print("\nforward + backward time ratios at the target sizes (measured in the same run):")
    header = f"{'T':>5} {'B':>4} {'N':>5} {'tf32':>4} {'fused / floor':>14} " \
             f"{'autograd / fused':>17} {'python_fn / fused':>18} {'fused_lm / fused':>17} " \
             f"{'2-layer memory autograd / fused_lm':>35}"
    print(header)
    print("-" * len(header))
    by_size, memory = {}, {}
    for r in rows:
        if in_sweep(r, "target"):
            size = (r["T"], r["B"], r["N"], r["tf32"])
            by_size.setdefault(size, {})[r["impl"]] = r["fwd_bwd_ms"]
            memory.setdefault(size, {})[r["impl"]] = r.get("model_bytes")
    for size, ms in by_size.items():
        T, B, N, tf32 = size
        tf32 = "-" if tf32 is None else ("on" if tf32 else "off")
        mem = memory[size]
        print(f"{T:>5} {B:>4} {N:>5} {tf32:>4} {ms['fused'] / ms['floor']:>14.2f} "
              f"{ms['autograd'] / ms['fused']:>17.2f} {ms['python_fn'] / ms['fused']:>18.2f} "
              f"{ms['fused_lm'] / ms['fused']:>17.2f} {mem['autograd'] / mem['fused_lm']:>35.2f}")
    print(f"2-layer memory: what {layer} -> Linear keeps alive from forward to backward "
          "(bench.model_bytes).")


def plot(rows, stem):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogFormatter, NullFormatter

    plain = FuncFormatter(lambda v, _: f"{v:g}")
    rows = [r for r in rows if not r["tf32"]]  # on CUDA: the TF32-off rows

    def series(sweep, key, impl):
        pts = sorted((r[sweep], r[key]) for r in rows
                     if in_sweep(r, sweep) and r["impl"] == impl and r[key] is not None)
        return [p[0] for p in pts], [p[1] for p in pts]

    def fixed(sweep):
        """The sizes held fixed in a sweep, e.g. "B=32, F=N=128"."""
        r = next(r for r in rows if in_sweep(r, sweep))
        sizes = {"T": f"T={r['T']}", "B": f"B={r['B']}", "N": f"F=N={r['N']}"}
        return ", ".join(text for name, text in sizes.items() if name != sweep)

    impls = sorted({r["impl"] for r in rows}, key=list(BASELINES).index)
    colors = dict(zip(impls, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    colors["floor"] = "black"
    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5))
    panels = [(axes[0, 0], "T", "fwd_bwd_ms"), (axes[0, 1], "B", "fwd_bwd_ms"),
              (axes[1, 0], "N", "fwd_bwd_ms"), (axes[1, 1], "T", "saved_bytes")]
    for ax, sweep, key in panels:
        for impl in impls:
            xs, ys = series(sweep, key, impl)
            if not xs:
                continue
            if key == "saved_bytes":
                ys = [y / 2**20 for y in ys]
            label = impl
            if key == "saved_bytes" and impl == "fused":
                label = "fused (counts its returned spikes and membrane: its backward reads them)"
            ax.plot(xs, ys, marker="o", color=colors[impl], label=label,
                    linestyle="--" if impl == "floor" else "-")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(sorted({r[sweep] for r in rows if in_sweep(r, sweep)}))
        ax.xaxis.set_major_formatter(plain)
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False))  # plain numbers, thinned
        ax.set_xlabel("F = N" if sweep == "N" else sweep)
        ax.legend(fontsize=8)
        ax.grid(True, which="major", alpha=0.3)
        if key == "saved_bytes":
            ax.set(ylabel="MiB kept alive for backward",
                   title=f"activation memory vs T ({fixed(sweep)})")
        else:
            ax.set(ylabel="forward + backward [ms]", title=f"time vs {sweep} ({fixed(sweep)})")
    fig.tight_layout()
    fig.savefig(f"{stem}.png", dpi=110)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", choices=list(peers.MODELS), default="lif",
                        help="the layer: recurrent LIF (default), adaptive SE-adLIF or "
                             "current-based CUBA")
    parser.add_argument("--reps", type=int, default=7, help="timed repetitions per implementation")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="fewer sweep points")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny sizes, 2 repetitions: checks that everything runs (results "
                             "named *-smoke.*, meaningless as timings)")
    parser.add_argument("--targets-only", action="store_true", help="only the target sizes, no sweeps")
    parser.add_argument("--size", type=size_arg, action="append", metavar="T,B,N",
                        help="measure this size (F = N) instead of the targets and sweeps; "
                             "repeatable (gpu_check.sh: the main target alone)")
    parser.add_argument("--compile", action="store_true", help="include the reference under torch.compile")
    parser.add_argument("--compile-max-t", type=int, default=100,
                        help="skip torch.compile above this T (compile time grows with T)")
    parser.add_argument("--no-snntorch", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.smoke:
        args.reps, args.warmup = min(args.reps, 2), min(args.warmup, 1)
    if args.size:
        args.targets_only = True  # no sweeps, hence no plot
    try:
        from tqdm import tqdm
    except ImportError:  # e.g. a bare GPU machine: no progress bar
        def tqdm(items, **_):
            return items

    device = torch.device(args.device)
    configs = configurations(args, device)
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
        "reps": args.reps, "dtype": "float32", "model": args.model,
    }
    described = baselines(args.model)
    print_table(rows, described)
    print_ratios(rows, peers.MODELS[args.model]["layer"])
    for note in sorted(notes):
        print("note:", note)
    print("machine:", ", ".join(f"{k}={v}" for k, v in machine.items()))
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / (f"bench-{'' if args.model == 'lif' else args.model + '-'}"
                       f"{machine['device'].replace(' ', '_')}-{machine['date'][:10]}")
    if args.smoke:
        stem = stem.with_name(stem.name + "-smoke")
    with open(f"{stem}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    Path(f"{stem}.json").write_text(json.dumps({"machine": machine, "baselines": described,
                                                "notes": sorted(notes), "rows": rows}, indent=1))
    if not args.targets_only:
        plot(rows, stem)
    print(f"wrote {stem}.csv, .json" + ("" if args.targets_only else ", .png"))
    return rows


if __name__ == "__main__":
    main()
