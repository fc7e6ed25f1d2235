"""Binary (spike) inputs: the fused op's gathered input projection against
its dense products, the dense floor and the peers, measured side by side.

    python -m benchmarks.spike_inputs              # both cases at input rates 1-25 %, and the crossover
    python -m benchmarks.spike_inputs --smoke      # tiny sizes, seconds: checks that it runs

Cases (float32, CPU, forward + backward, every weight's gradient):

- shd: event data shaped like the Spiking Heidelberg Digits, T=250, B=32,
  700 input channels of 0/1 spikes at the given rate, RecurrentLIF's op with
  256 neurons; x needs no gradient.
- stack: RecurrentLIF(512, 512, num_layers=2), T=200, B=32, a dense input to
  layer 1 (standard normal, and scaled so that layer 1 fires at each given
  rate), layer 2 reading its spikes; the input needs no gradient, layer 1's
  spikes do.
- crossover: the fused op with the gather forced (TORCH_EXT_BINARY_INPUTS=
  gather) against the dense products forced (=dense), over input densities,
  at three layer sizes: where gather / dense crosses 1 is the density below
  which the op should gather.

Implementations (interleaved, one repetition of each in turn; medians):

- fused: the op as shipped (gathers binary inputs below the crossover density);
- fused_dense: the same op with TORCH_EXT_BINARY_INPUTS=dense (dense input
  products, the op before binary inputs were used);
- autograd: the expert autograd loop (the op's _ref: one input product,
  unbind over time, stack; for the stack, the module's backend="autograd");
- python_fn: the hand-written torch.autograd.Function
  (benchmarks/python_function.py), chained per layer for the stack;
- floor: the dense matrix products alone (peers.floor, per layer), the lower
  bound for any implementation that computes them densely.

Writes a JSON file under benchmarks/results/.
"""
import argparse
import datetime
import json
import os
import platform
import statistics
from pathlib import Path
from unittest import mock

import torch

import torch_ext
from benchmarks import peers
from benchmarks.bench import timed
from benchmarks.python_function import RecurrentLIFFunction

RESULTS = Path(__file__).resolve().parent / "results"
OPTIONS = peers.OPTIONS  # the python_fn's configuration, used by every implementation
DENSE = {"TORCH_EXT_BINARY_INPUTS": "dense"}
GATHER = {"TORCH_EXT_BINARY_INPUTS": "gather"}


def cpu_description():
    """The CPU's model name and its bf16/AVX-512 flags (numbers depend on them)."""
    name, flags = platform.processor() or "unknown", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and name in ("unknown", "", "x86_64"):
                    name = line.split(":", 1)[1].strip()
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    shown = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "avx512_fp16") if f in flags]
    return f"{name} ({', '.join(shown) or 'no AVX2'}), {torch.get_num_threads()} threads"


def with_backward(fn, x, grads_of, environment=None):
    """run(x, backward): fn(x)'s spikes, then optionally the gradients of
    their sum for `grads_of`, under the environment variables given."""
    def run(x, backward):
        with mock.patch.dict(os.environ, environment or {}):
            spikes = fn(x)
            if backward:
                torch.autograd.grad(spikes.sum(), grads_of)
    return run


def floors(*layers):
    """run(x, backward): peers.floor of each (params, x_grad) layer in turn,
    each on an input of its own shape."""
    runs = [(peers.floor(params, x_grad=x_grad), params["w_in"].shape) for params, x_grad in layers]

    def run(x, backward):
        T, B = x.shape[:2]
        for floor_run, (N, F) in runs:
            floor_run(x if x.shape[2] == F else x.new_empty(T, B, F), backward)
    return run


def interleaved(runs, x, reps, warmup):
    """name -> median forward + backward seconds, repetitions interleaved."""
    device = x.device
    for run in runs.values():
        for _ in range(warmup):
            run(x, True)
    times = {name: [] for name in runs}
    for _ in range(reps):
        for name, run in runs.items():
            times[name].append(timed(run, x, True, device))
    return {name: statistics.median(t) for name, t in times.items()}


def binary_input(T, B, F, rate, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(T, B, F, generator=generator) < rate).float()


def shd_case(rate, sizes, args):
    T, B, F, N = sizes
    params = peers.make_params(F, N, torch.device("cpu"))
    weights = [params["w_in"], params["w_rec"], params["bias"]]
    x = binary_input(T, B, F, rate)
    op = peers.fused(params)
    runs = {
        "fused": with_backward(lambda x: op(x)[0], x, weights),
        "fused_dense": with_backward(lambda x: op(x)[0], x, weights, DENSE),
        "autograd": with_backward(lambda x: peers.reference(params)(x)[0], x, weights),
        "python_fn": with_backward(lambda x: peers.python_function(params)(x)[0], x, weights),
        "floor": floors((params, False)),
    }
    ms = {k: 1e3 * v for k, v in interleaved(runs, x, args.reps, args.warmup).items()}
    with torch.no_grad():
        hidden_rate = op(x)[0].mean().item()
    return dict(case="shd", T=T, B=B, F=F, N=N, input_rate=x.mean().item(),
                hidden_rate=hidden_rate, gathered=torch.ops.torch_ext._binary_input_density(
                    x, params["w_in"]) >= 0, ms=ms)


def stack_layers(module):
    """[(w_in, w_rec, bias, alpha, theta)] of a RecurrentLIF stack, per layer."""
    return [tuple(getattr(module, f"{name}_l{l}") for name in ("w_in", "w_rec", "bias", "alpha",
                                                              "theta"))
            for l in range(module.num_layers)]


def scaled_for_rate(module, x, rate):
    """x scaled so that the module's first layer fires at about `rate`
    (bisection on the log of the scale)."""
    low, high = -6.0, 6.0
    first = stack_layers(module)[0]
    for _ in range(20):
        middle = (low + high) / 2
        with torch.no_grad():
            fired = torch_ext.recurrent_lif(x * 2**middle, *first, **OPTIONS)[0].mean().item()
        low, high = (middle, high) if fired < rate else (low, middle)
    return x * 2 ** ((low + high) / 2)


def stack_case(rate, sizes, args):
    T, B, N = sizes
    torch.manual_seed(0)
    fused = torch_ext.RecurrentLIF(N, N, num_layers=2, **OPTIONS)
    by_autograd = torch_ext.RecurrentLIF(N, N, num_layers=2, backend="autograd", **OPTIONS)
    by_autograd.load_state_dict(fused.state_dict())
    weights = list(fused.parameters())
    x = torch.randn(T, B, N, generator=torch.Generator().manual_seed(1))
    if rate is not None:  # None: the unit-variance input as it is
        x = scaled_for_rate(fused, x, rate)
    layers = stack_layers(fused)

    def python_fn(x):
        for w_in, w_rec, bias, alpha, theta in layers:
            x = RecurrentLIFFunction.apply(x, w_in, w_rec, bias, alpha, theta, OPTIONS["slope"])[0]
        return x

    floor_params = [dict(w_in=layer[0], w_rec=layer[1]) for layer in layers]
    runs = {
        "fused": with_backward(lambda x: fused(x)[0], x, weights),
        "fused_dense": with_backward(lambda x: fused(x)[0], x, weights, DENSE),
        "autograd": with_backward(lambda x: by_autograd(x)[0], x, list(by_autograd.parameters())),
        "python_fn": with_backward(python_fn, x, weights),
        "floor": floors((floor_params[0], False), (floor_params[1], True)),
    }
    ms = {k: 1e3 * v for k, v in interleaved(runs, x, args.reps, args.warmup).items()}
    with torch.no_grad():
        spikes_1 = torch_ext.recurrent_lif(x, *layers[0], **OPTIONS)[0]
        gathered = torch.ops.torch_ext._binary_input_density(spikes_1, layers[1][0]) >= 0
    return dict(case="stack", T=T, B=B, F=N, N=N, input_rate=spikes_1.mean().item(),
                hidden_rate=fused(x)[0].mean().item(), gathered=gathered, ms=ms)


def crossover(sizes, rates, args):
    """[(rate, gather ms, dense ms)] for the fused op at these sizes."""
    T, B, F, N = sizes
    params = peers.make_params(F, N, torch.device("cpu"))
    weights = [params["w_in"], params["w_rec"], params["bias"]]
    op = peers.fused(params)
    rows = []
    for rate in rates:
        x = binary_input(T, B, F, rate)
        runs = {"gather": with_backward(lambda x: op(x)[0], x, weights, GATHER),
                "dense": with_backward(lambda x: op(x)[0], x, weights, DENSE)}
        ms = {k: 1e3 * v for k, v in interleaved(runs, x, args.reps, args.warmup).items()}
        rows.append(dict(T=T, B=B, F=F, N=N, rate=rate, gather_ms=ms["gather"],
                         dense_ms=ms["dense"]))
        print(f"  T={T} B={B} F={F} N={N} rate {100 * rate:5.1f} %: gather {ms['gather']:8.2f} ms,"
              f" dense {ms['dense']:8.2f} ms, gather / dense {ms['gather'] / ms['dense']:.2f}",
              flush=True)
    return rows


def print_cases(rows):
    print(f"\n{'case':>6} {'in rate':>7} {'hidden':>6} {'gather':>6} {'fused ms':>9} "
          f"{'fused/floor':>11} {'dense/fused':>11} {'autograd/fused':>14} {'python_fn/fused':>15}")
    for r in rows:
        ms = r["ms"]
        print(f"{r['case']:>6} {100 * r['input_rate']:6.1f}% {100 * r['hidden_rate']:5.1f}% "
              f"{'yes' if r['gathered'] else 'no':>6} {ms['fused']:9.2f} "
              f"{ms['fused'] / ms['floor']:11.2f} {ms['fused_dense'] / ms['fused']:11.2f} "
              f"{ms['autograd'] / ms['fused']:14.2f} {ms['python_fn'] / ms['fused']:15.2f}")
    print("floor: the dense products alone; fused_dense: the op with TORCH_EXT_BINARY_INPUTS=dense;\n"
          "autograd: the expert autograd loop; python_fn: the hand-written autograd.Function.")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks that it runs")
    parser.add_argument("--reps", type=int, default=11)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rates", type=float, nargs="+", default=[0.01, 0.02, 0.05, 0.10, 0.25])
    parser.add_argument("--only", choices=["shd", "stack", "crossover"], nargs="+",
                        default=["shd", "stack", "crossover"])
    args = parser.parse_args(argv)
    if args.smoke:
        args.reps, args.warmup = 2, 1
    shd = (20, 4, 70, 16) if args.smoke else (250, 32, 700, 256)
    stack = (20, 4, 16) if args.smoke else (200, 32, 512)
    crossover_sizes = [shd] if args.smoke else [shd, (300, 32, 128, 128), (200, 32, 512, 512)]
    crossover_rates = [0.02, 0.2] if args.smoke else [0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5]
    print(f"CPU: {cpu_description()}; torch {torch.__version__}", flush=True)
    result = dict(cpu=cpu_description(), torch=torch.__version__,
                  date=datetime.date.today().isoformat(), cases=[], crossover=[])
    for rate in args.rates + [None] if {"shd", "stack"} & set(args.only) else []:
        if "shd" in args.only and rate is not None:
            result["cases"].append(shd_case(rate, shd, args))
            print_cases(result["cases"][-1:])
        if "stack" in args.only:
            result["cases"].append(stack_case(rate, stack, args))
            print_cases(result["cases"][-1:])
    if result["cases"]:
        print("\nall cases:")
        print_cases(result["cases"])
    if "crossover" in args.only:
        print("\ncrossover: the fused op, gather forced vs dense forced")
        for sizes in crossover_sizes:
            result["crossover"].extend(crossover(sizes, crossover_rates, args))
    if not args.smoke:
        RESULTS.mkdir(exist_ok=True)
        path = RESULTS / f"spike-inputs-cpu-{result['date']}.json"
        path.write_text(json.dumps(result, indent=1))
        print(f"\nwrote {path}")
    return result


if __name__ == "__main__":
    main()
