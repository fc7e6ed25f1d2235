"""Mixed precision, side by side in one run: the fused op in float32 and
under torch.autocast (bfloat16 by default), the expert autograd loop under the
same autocast, the floor in float32 and in the low-precision dtype (the
matrix products alone, peers.floor, with torch's products), and the gradient
error of each implementation under autocast against its own float32 run.

    python -m benchmarks.mixed_precision                 # CPU, bfloat16, the target sizes
    python -m benchmarks.mixed_precision --model adaptive
    python -m benchmarks.mixed_precision --size 30,8,32  # other sizes (T,B,N)
    python -m benchmarks.mixed_precision --device cuda   # on a GPU: TF32, autocast, tensor cores

Forward + backward of spikes.sum() for x and every weight (as bench.py),
median of --reps interleaved repetitions. The error is max over the
gradients of |g_autocast - g_float32| / |g_float32| (2-norms)."""
import argparse
import json
import os
import statistics
import time
from unittest import mock

import torch

import torch_ext
from benchmarks import peers
from benchmarks.bench import size_arg


def timed(run, reps):
    run()  # warm-up
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return times


def measure(T, B, N, args):
    dtype = getattr(torch, args.dtype)
    device = torch.device(args.device)
    params = peers.MODELS[args.model]["make_params"](N, N, device)
    x = torch.randn(T, B, N, generator=torch.Generator().manual_seed(1)).to(device)
    x.requires_grad_()
    inputs = [x, *(p for p in params.values() if isinstance(p, torch.Tensor))]
    fused = peers.fused(params, args.model)
    expert = peers.reference(params, args.model)

    def synchronized(go):
        def timed_go():
            out = go()
            if device.type == "cuda":
                torch.cuda.synchronize()
            return out
        return timed_go

    def run(fn, amp, products="auto", tf32=False):
        def go():
            saved = torch.backends.cuda.matmul.allow_tf32
            torch.backends.cuda.matmul.allow_tf32 = tf32
            try:
                with mock.patch.dict(os.environ, {"TORCH_EXT_LOW_PRECISION_PRODUCTS": products}):
                    with torch.autocast(device.type, dtype=dtype, enabled=amp):
                        spikes = fn(x)[0]
                    return torch.autograd.grad(spikes.float().sum(), inputs)
            finally:
                torch.backends.cuda.matmul.allow_tf32 = saved
        return synchronized(go)

    def floor(low):
        p = {k: (v.detach().to(dtype) if low and isinstance(v, torch.Tensor) else v)
             for k, v in params.items()}
        xs = x.detach().to(dtype) if low else x
        return synchronized(lambda: peers.floor(p)(xs, True))

    runs = {"fused f32": run(fused, False)}
    if device.type == "cpu":  # the product paths (CPU only)
        runs[f"fused {args.dtype} MKL products"] = run(fused, True, "on")
        runs[f"fused {args.dtype} f32 products"] = run(fused, True, "off")
    else:  # CUDA: TF32 for float32; under autocast the default (float32
        # products of the rounded operands) and the tensor-core products (on)
        runs["fused f32 TF32"] = run(fused, False, tf32=True)
        runs[f"fused {args.dtype}"] = run(fused, True)
        runs[f"fused {args.dtype} tensor cores"] = run(fused, True, "on")
    runs.update({f"expert {args.dtype}": run(expert, True), "expert f32": run(expert, False),
                 "floor f32": floor(False), f"floor {args.dtype}": floor(True)})
    times = {name: [] for name in runs}
    for _ in range(args.reps):  # interleaved
        for name, go in runs.items():
            times[name] += timed(go, 1)
    # The default path's conversions (on CUDA the CPU profiler sees no kernel time).
    phases = op_phases(run(fused, True)) if device.type == "cpu" else None
    errors = {}
    for name, fn in (("fused", fused), ("expert", expert)):
        exact, low = run(fn, False)(), run(fn, True)()
        errors[name] = max(((a.float() - b).norm() / b.norm()).item() for a, b in zip(low, exact))
    return {name: 1e3 * statistics.median(t) for name, t in times.items()}, errors, phases


CROSSOVERS = {  # test hook path: (what is compared, the sizes)
    "w_rec_grad": ("grad_w_rec: row adds at the spikes against one low-precision product",
                   ((200, 32, 128), (200, 32, 512))),
    "forward_recurrence": ("the forward's recurrent input: the gather of the columns that "
                           "fired against one bfloat16 product per step and block of rows",
                           ((300, 32, 128), (200, 32, 512))),
}


def path_crossover(args, path, scales=(0.25, 0.4, 0.6, 0.8, 1.0, 1.5, 2.5)):
    """Under autocast on the low-precision path, one of the op's choices by
    spike density (CROSSOVERS), each side forced by the op's test hook, at
    spike rates set by x's scale: forward + backward, medians of --reps
    interleaved repetitions. The op picks the product above a fixed density;
    this is where that comes from."""
    dtype = getattr(torch, args.dtype)
    what, sizes = CROSSOVERS[path]
    print(f"under autocast {args.dtype}, {args.model}: {what} ({torch.get_num_threads()} threads)")
    print(f"{'T':>4} {'B':>3} {'N':>4} {'rate %':>7} {'adds ms':>12} {'product ms':>11} "
          f"{'product / adds':>15}")
    rows = []
    for T, B, N in sizes:
        params = peers.MODELS[args.model]["make_params"](N, N, "cpu")
        fused = peers.fused(params, args.model)
        inputs = [p for p in params.values() if isinstance(p, torch.Tensor)]
        base = torch.randn(T, B, N, generator=torch.Generator().manual_seed(1))
        for scale in scales:
            x = base * scale

            def go(mode):
                def run():
                    torch_ext._C._set_low_precision_path_forced(path, 1 if mode == "dense" else 0)
                    try:
                        with torch.autocast("cpu", dtype=dtype):
                            spikes = fused(x)[0]
                        torch.autograd.grad(spikes.float().sum(), inputs)
                    finally:
                        torch_ext._C._set_low_precision_path_forced(path, -1)
                    return spikes
                return run
            rate = 100 * go("gather")().float().mean().item()
            times = {"gather": [], "dense": []}
            for _ in range(args.reps):
                for mode in times:
                    times[mode] += timed(go(mode), 1)
            adds, product = (1e3 * statistics.median(times[m]) for m in ("gather", "dense"))
            rows.append({"T": T, "B": B, "N": N, "rate": rate, "adds_ms": adds,
                         "product_ms": product})
            print(f"{T:>4} {B:>3} {N:>4} {rate:>7.1f} {adds:>12.1f} {product:>11.1f} "
                  f"{product / adds:>15.2f}")
    return rows


def op_phases(go, calls=5):
    """ms per call of the fused op's own time (its forward and backward ops,
    with everything they call: the autocast kernel's casts included) by
    phase: dtype conversions (Tensor.to(dtype), allocation included) and the
    rest (its loops, its products and everything else)."""
    from torch.profiler import ProfilerActivity, profile
    go()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(calls):
            go()
    ms = {"op": 0.0, "conversions": 0.0}

    def ancestors(event):
        while event is not None:
            yield event.name
            event = event.cpu_parent

    for e in prof.events():
        names = list(ancestors(e))
        if not any(n.startswith("torch_ext::") for n in names):
            continue
        self_ms = e.self_cpu_time_total / 1e3 / calls
        ms["op"] += self_ms
        # Tensor.to(dtype), with its allocation, and the op's own rounding pass
        if "aten::_to_copy" in names or "torch_ext::rounded_through" in names:
            ms["conversions"] += self_ms
    ms["rest"] = ms["op"] - ms["conversions"]
    return ms


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=list(peers.MODELS), default="lif")
    parser.add_argument("--dtype", choices=["bfloat16", "float16"], default="bfloat16")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--size", type=size_arg, action="append", metavar="T,B,N")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    parser.add_argument("--w-rec-crossover", action="store_true",
                        help="time grad_w_rec's two paths under autocast by spike rate")
    parser.add_argument("--forward-crossover", action="store_true",
                        help="time the forward recurrent input's two paths under autocast by "
                             "spike rate")
    args = parser.parse_args(argv)
    if args.w_rec_crossover:
        return path_crossover(args, "w_rec_grad")
    if args.forward_crossover:
        return path_crossover(args, "forward_recurrence")
    sizes = args.size or [(200, 32, 512), (300, 32, 128)]
    low = args.dtype
    cpu = args.device == "cpu"
    where = (f"{torch.get_num_threads()} threads, CPU capability "
             f"{torch.backends.cpu.get_cpu_capability()}, low-precision products in this build: "
             f"{torch_ext.build_info()['cpu_low_precision_products']}" if cpu
             else torch.cuda.get_device_name())
    print(f"model {args.model}, autocast {low}; torch {torch.__version__}, {where}")
    if cpu:
        default_mkl = "MKL" in torch_ext.build_info()["cpu_product_paths"][low]
        default = f"fused {low} {'MKL' if default_mkl else 'f32'} products"
        fused_columns = [("MKL products", f"fused {low} MKL products"),
                         ("f32 products", f"fused {low} f32 products")]
    else:
        default = f"fused {low}"
        fused_columns = [("f32 TF32", "fused f32 TF32"), (f"autocast {low}", default),
                         ("tensor cores", f"fused {low} tensor cores")]
    header = f"{'T':>4} {'B':>3} {'N':>4} {'fused f32':>10} "
    for label, _ in fused_columns:
        header += f"{label:>15} {'ratio':>6} "
    header += (f"{'expert ' + low:>15} {'expert/fused':>12} {'expert f32':>10} "
               f"{'floor f32':>10} {'floor ' + low:>15} {'err fused':>10} {'err expert':>10}")
    print(header)
    rows = []
    for T, B, N in sizes:
        ms, err, phases = measure(T, B, N, args)
        rows.append({"T": T, "B": B, "N": N, "ms": ms, "errors": err, "phases": phases,
                     "default": default})
        line = f"{T:>4} {B:>3} {N:>4} {ms['fused f32']:>10.1f} "
        for _, key in fused_columns:
            line += f"{ms[key]:>15.1f} {ms[key] / ms['fused f32']:>6.2f} "
        line += (f"{ms['expert ' + low]:>15.1f} {ms['expert ' + low] / ms[default]:>12.1f} "
                 f"{ms['expert f32']:>10.1f} {ms['floor f32']:>10.1f} "
                 f"{ms['floor ' + low]:>15.1f} {err['fused']:>10.3f} {err['expert']:>10.3f}")
        print(line)
    if cpu:
        print("ms: forward + backward, median; MKL products / f32 products: fused under autocast "
              "with TORCH_EXT_LOW_PRECISION_PRODUCTS=on / off (the default here: "
              f"{torch_ext.build_info()['cpu_product_paths'][low]}); ratio: that / fused float32; "
              "expert/fused: against the default path; "
              "err: max relative gradient error against the same implementation's float32 run")
    else:
        print("ms: forward + backward, median; fused f32 with TF32 off, f32 TF32 with "
              f"torch.backends.cuda.matmul.allow_tf32; autocast {low}: fused under autocast "
              "(the default: float32 products of the rounded operands); tensor cores: the same "
              "with TORCH_EXT_LOW_PRECISION_PRODUCTS=on; "
              "ratio: that / fused float32; err: max relative gradient error against the same "
              "implementation's float32 run")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": args.model, "dtype": low, "device": args.device, "rows": rows}, f)
    if not cpu:
        return rows
    print(f"\nthe fused op's own time under autocast {low}, by phase (profiler, ms per call):")
    print(f"{'T':>4} {'B':>3} {'N':>4} {'op':>8} {'conversions':>12} {'rest':>8} "
          f"{'conversions %':>13}")
    for r in rows:
        p = r["phases"]
        print(f"{r['T']:>4} {r['B']:>3} {r['N']:>4} {p['op']:>8.2f} {p['conversions']:>12.2f} "
              f"{p['rest']:>8.2f} {100 * p['conversions'] / p['op']:>13.1f}")
    print("conversions: Tensor.to(dtype) and the op's rounding of x (torch_ext::rounded_through, "
          "done piece by piece inside the products) within its forward and backward (the autocast "
          "kernel's casts and allocation included), on the default path, on the calling thread "
          "(which runs its share of the parallel pieces; the profiler does not see the others); "
          "rest: its loops and products")
    return rows


if __name__ == "__main__":
    main()
