"""This checkout's fused op against another checkout's, side by side.

    git worktree add /tmp/old <commit> && (cd /tmp/old && python3 setup.py build_ext --inplace)
    python3 -m benchmarks.against_commit --other /tmp/old [--model lif] [--reps 7]

"No slower than before" can only be shown in one run: times on a shared
machine move 10-30 % between runs. Each checkout runs in its own worker
process (its own build of torch_ext); the workers take turns, one size at a
time, in alternating order, so both see the same machine. Each time is one
forward + backward of spikes.sum() with respect to x and every weight (the
benchmark's default math: reset detached, sigmoid surrogate, float32), on
the same seeded inputs; the table gives the medians and new / old.
"""
import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
# The LIF benchmark's sizes (benchmarks.bench's targets): T, B, N (F = N).
SIZES = [(300, 32, 128), (200, 32, 512), (1000, 32, 128), (100, 128, 256)]


def size_arg(text):
    """"T,B,N" (benchmarks.bench's form, not imported: it imports torch_ext,
    which must come from each worker's own checkout)."""
    try:
        T, B, N = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected T,B,N, got {text!r}") from None
    return T, B, N


def worker(root, model, threads, forward_only):
    """Serves timing requests on stdin ("T B N reps" per line) with the
    torch_ext of checkout `root`; answers one JSON list of seconds per line."""
    sys.path.insert(0, str(root))
    import torch
    import torch_ext

    if not Path(torch_ext.__file__).resolve().is_relative_to(Path(root).resolve()):
        raise SystemExit(f"imported {torch_ext.__file__}, not the checkout {root}")
    torch.set_num_threads(threads)
    op = {"lif": torch_ext.recurrent_lif, "adlif": torch_ext.recurrent_adlif,
          "cuba": torch_ext.recurrent_cubalif}[model]
    for line in sys.stdin:
        T, B, N, reps = (int(v) for v in line.split())
        g = torch.Generator().manual_seed(0)
        x = (torch.rand(T, B, N, generator=g) * 2).requires_grad_()
        weights = [(torch.randn(N, N, generator=g) / N ** 0.5).requires_grad_(),
                   (torch.randn(N, N, generator=g) / N ** 0.5).requires_grad_(),
                   torch.zeros(N).requires_grad_()]

        def run():
            with torch.set_grad_enabled(not forward_only):
                spikes = op(x, *weights, detach_reset=True, surrogate="sigmoid")[0]
            if not forward_only:
                torch.autograd.grad(spikes.sum(), [x, *weights])

        run()  # warm-up
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
        print(json.dumps(times), flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--other", type=Path, required=True,
                        help="the other checkout (built in place), e.g. a git worktree")
    parser.add_argument("--model", choices=["lif", "adlif", "cuba"], default="lif")
    parser.add_argument("--reps", type=int, default=7, help="rounds; each times both checkouts")
    parser.add_argument("--inner", type=int, default=3, help="timed calls per turn")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--forward-only", action="store_true",
                        help="time the forward alone, without autograd")
    parser.add_argument("--size", type=size_arg, action="append", metavar="T,B,N")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args.worker, args.model, args.threads, args.forward_only)

    checkouts = {"new": HERE, "old": args.other.resolve()}
    workers = {name: subprocess.Popen(
        [sys.executable, "-m", "benchmarks.against_commit", "--other", str(root), "--worker",
         str(root), "--model", args.model, "--threads", str(args.threads)]
        + (["--forward-only"] if args.forward_only else []),
        cwd=HERE, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        for name, root in checkouts.items()}
    sizes = args.size or SIZES
    times = {(size, name): [] for size in sizes for name in checkouts}
    try:
        for round_ in range(args.reps):
            for size in sizes:
                order = list(checkouts) if round_ % 2 == 0 else list(checkouts)[::-1]
                for name in order:
                    proc = workers[name]
                    proc.stdin.write(f"{size[0]} {size[1]} {size[2]} {args.inner}\n")
                    proc.stdin.flush()
                    answer = proc.stdout.readline()
                    if not answer:
                        raise SystemExit(f"the worker for {checkouts[name]} stopped")
                    times[size, name] += json.loads(answer)
    finally:
        for proc in workers.values():
            proc.stdin.close()
            proc.wait()

    rows = []
    print(f"{args.model}, {'forward' if args.forward_only else 'fwd+bwd'}, float32, {args.threads} threads, medians of "
          f"{args.reps * args.inner} calls (new: {checkouts['new']}, old: {checkouts['old']})")
    print(f"{'T':>5} {'B':>4} {'N':>4} {'new ms':>9} {'old ms':>9} {'new/old':>8}")
    for size in sizes:
        new, old = (statistics.median(times[size, n]) * 1e3 for n in ("new", "old"))
        rows.append(dict(T=size[0], B=size[1], N=size[2], new_ms=new, old_ms=old,
                         ratio=new / old))
        print(f"{size[0]:>5} {size[1]:>4} {size[2]:>4} {new:9.2f} {old:9.2f} {new / old:8.3f}")
    if args.out:
        args.out.write_text(json.dumps(dict(model=args.model, threads=args.threads,
                                            forward_only=args.forward_only, rows=rows),
                                       indent=2))
    return rows


if __name__ == "__main__":
    main()
