"""Correctness of the fused op on a device, without pytest: one PASS/FAIL line
per case, a summary line, exit status 1 if any case failed (2 if nothing could
be checked), every case run whatever happened before it.

    python3 -m benchmarks.gpu_correctness                     # CUDA: small grid + target size
    python3 -m benchmarks.gpu_correctness --device cpu --no-target   # CPU: the same code, seconds

Cases:

- small: every reset x surrogate x detach_reset option, in float64 and in
  float32, at a small size (--small), with all eight inputs differentiated
  (x, w_in, w_rec, bias, alpha, theta, u0, s0; alpha per neuron and theta
  shared, or the other way round, alternating). The fused op on the device is
  compared with the reference (torch_ext.recurrent_lif_ref) on the same device
  and, when the device is not the CPU, with the fused op on the CPU. The inputs
  are drawn (seed by seed) until, in a float64 run, every membrane keeps a
  margin of MARGIN from the threshold: the float32 input projections of two
  devices round differently, and a membrane that close to the threshold could
  legitimately fire in one and not in the other.
- target: float32 at the target size (--target, default T=1000, B=64,
  F=N=1024), fused op vs reference on the device, forward and all eight
  gradients, for two option sets. Inputs, weights, bias, initial state and
  threshold lie on a coarse binary grid, so that every matrix product is exact
  in float32 (and in TF32) whatever its summation order; both implementations
  add the membrane's terms in the same order, so spikes and membranes must be
  identical over all T steps (no threshold tie can flip one of 65 million
  neuron-steps), and the gradients, which do round differently, are compared
  with TARGET_TOL.

Where the build under test has them (detected, see features()), the same
comparisons also cover the low-memory mode (save_membrane=False, its backward
recomputes the membrane) and a one-to-one w_rec of shape [N], at the small
size (every reset, detach_reset False and True, float64 and float32) and at
the target size.

Errors are max|got - want| / max(1, max|want|) per tensor (relative to the
tensor's scale, absolute below 1); spikes must be equal.

The environment variable TORCH_EXT_CUDA_PERSISTENT=1 selects the CUDA design
under test ("persistent" instead of "default"; the op reads it at every call);
the check reports whether the build knows such a design (build_info()), and if
not, that this run exercised the same kernels as the default one. On CUDA it
also notes which design the small and the target size take now
(torch_ext._C.cuda_design_for): sizes whose slice of W_rec does not fit in a
block's shared memory, and options the persistent design does not cover
(one-to-one w_rec, the low-memory backward's replay), run the per-step design.
"""
import argparse
import json
import math
import os
import sys
import time
import traceback

import torch

RESETS = ("subtract", "zero", "none")
SURROGATES = ("sigmoid", "fast_sigmoid", "atan", "triangle")
TOL = {torch.float64: 1e-10, torch.float32: 1e-4}  # small cases
TARGET_TOL = 1e-4  # float32 gradients at the target size (about 1e-6 seen at T=1000, B=16, N=256)
TARGET_MEMBRANE_TOL = 0.0  # target size: exact arithmetic, see the module docstring
MARGIN = 1e-3  # small cases: |membrane - theta| > MARGIN in every neuron-step
GRAD_NAMES = ("x", "w_in", "w_rec", "bias", "alpha", "theta", "u0", "s0")
TARGET_OPTIONS = [  # the benchmark's options, then a contrasting set
    dict(reset="subtract", detach_reset=True, surrogate="sigmoid", slope=25.0),
    dict(reset="zero", detach_reset=False, surrogate="triangle", slope=None),
]


def sizes(text):
    values = tuple(int(v) for v in text.split(","))
    if len(values) != 4 or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected T,B,F,N (positive), got {text!r}")
    return values


def design():
    return "persistent" if os.environ.get("TORCH_EXT_CUDA_PERSISTENT") == "1" else "default"


# ---------------------------------------------------------------- inputs

def features():
    """The optional features of the build under test: "low_memory" (the
    save_membrane argument) and "one_to_one" (w_rec of shape [N])."""
    import inspect

    import torch_ext
    found = {"low_memory": "save_membrane" in inspect.signature(torch_ext.recurrent_lif).parameters}
    try:
        torch_ext.recurrent_lif(torch.zeros(2, 1, 3), torch.zeros(2, 3), torch.zeros(2))
        found["one_to_one"] = True
    except Exception:  # noqa: BLE001 - any refusal means: not supported
        found["one_to_one"] = False
    return found


def small_inputs(T, B, F, N, seed, alpha_per_neuron, one_to_one=False):
    """float64 CPU inputs, scaled so that about a third of the neuron-steps
    spike: [x, w_in, w_rec, bias, alpha, theta, u0, s0]; w_rec is [N] if
    one_to_one."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape, scale):
        return torch.randn(*shape, generator=g, dtype=torch.float64) * scale

    def uniform(*shape, low, high):
        return torch.rand(shape, generator=g, dtype=torch.float64) * (high - low) + low

    alpha = uniform(N, low=0.6, high=0.95) if alpha_per_neuron else uniform(low=0.6, high=0.95)
    theta = uniform(low=0.8, high=1.2) if alpha_per_neuron else uniform(N, low=0.8, high=1.2)
    x, w_in = randn(T, B, F, scale=1.0), randn(N, F, scale=1.2 / F ** 0.5)
    w_rec = randn(N, scale=0.8) if one_to_one else randn(N, N, scale=0.6 / N ** 0.5)
    return [x, w_in, w_rec, randn(N, scale=0.4), alpha, theta,
            randn(B, N, scale=0.8), (torch.rand(B, N, generator=g) > 0.5).double()]


def margin_inputs(size, reset, alpha_per_neuron, one_to_one=False, first_seed=0, tries=200):
    """small_inputs of the first seed whose float64 membranes (reference, CPU)
    all keep MARGIN from the threshold and whose spike rate is not trivial.
    Returns (inputs, seed, smallest distance, spike rate)."""
    import torch_ext
    for seed in range(first_seed, first_seed + tries):
        args = small_inputs(*size, seed, alpha_per_neuron, one_to_one)
        with torch.no_grad():
            spikes, membrane = torch_ext.recurrent_lif_ref(*args, reset=reset)
        distance = (membrane - args[5]).abs().min().item()
        rate = spikes.mean().item()
        if distance > MARGIN and 0.05 < rate < 0.95:
            return args, seed, distance, rate
    raise RuntimeError(f"no seed in {tries} keeps a margin of {MARGIN} from the threshold")


def grid_inputs(T, B, F, N, seed, device, one_to_one=False):
    """float32 inputs on binary grids (x: 1/4, weights, bias, u0: 2^-10,
    theta 1.0), each with few significant bits, so that x @ w_in.T + bias and
    S @ w_rec.T are exact in float32 (and TF32) in any summation order.
    alpha (per neuron) is any float32: alpha * u is one rounding, the same in
    every implementation. Spike rate about that of the benchmark. w_rec is
    [N] if one_to_one."""
    g = torch.Generator().manual_seed(seed)

    def on_grid(t, step, limit):
        return (t / step).round().clamp(-limit, limit) * step

    step = 2.0 ** -10
    x = on_grid(torch.randn(T, B, F, generator=g), 0.25, 16)  # |x| <= 4
    w_in = on_grid(torch.randn(N, F, generator=g) * 1.5 / F ** 0.5, step, 1023)
    w_rec = on_grid(torch.randn(N, N, generator=g) * 0.5 / N ** 0.5, step, 1023)
    if one_to_one:
        w_rec = on_grid(torch.randn(N, generator=g) * 0.5, step, 1023)
    bias = on_grid(torch.randn(N, generator=g) * 0.1, step, 1023)
    u0 = on_grid(torch.randn(B, N, generator=g) * 0.5, step, 1023)
    s0 = (torch.rand(B, N, generator=g) > 0.8).float()
    alpha = torch.rand(N, generator=g) * 0.15 + 0.8
    theta = torch.tensor(1.0)
    # Exact products: every partial sum is a multiple of the grid step of its
    # terms with magnitude below 2^24 steps.
    bound = F * x.abs().max().item() * w_in.abs().max().item() + bias.abs().max().item()
    assert bound < 2.0 ** 24 * 0.25 * step, "sizes too large for exact input products"
    assert N * w_rec.abs().max().item() < 2.0 ** 24 * step, "N too large for exact recurrence"
    return [t.to(device) for t in (x, w_in, w_rec, bias, alpha, theta, u0, s0)]


# ---------------------------------------------------------------- running

def leaf(args, device, dtype):
    return [a.detach().to(device=device, dtype=dtype).requires_grad_() for a in args]


def loss_weights(shape, device, dtype, seed=1):
    g = torch.Generator(device=device).manual_seed(seed)
    return (torch.randn(shape, generator=g, device=device, dtype=dtype),
            torch.randn(shape, generator=g, device=device, dtype=dtype))


def run(fn, args, weights, options, extra=None):
    """(spikes, membrane, grads): the outputs and the gradients of all eight
    inputs for a random linear function of both outputs. `extra`: options
    passed to fn besides `options` (the fused op's save_membrane)."""
    spikes, membrane = fn(*args, **options, **(extra or {}))
    w_s, w_u = weights
    loss = (spikes.to(membrane.dtype) * w_s).sum() + (membrane * w_u).sum()
    grads = torch.autograd.grad(loss, args, allow_unused=True)
    grads = [torch.zeros_like(a) if g is None else g for a, g in zip(args, grads)]
    return spikes.detach(), membrane.detach(), [g.detach() for g in grads]


def err(got, want):
    """max|got - want| / max(1, max|want|), in float64 on want's device; inf
    for a shape mismatch or a non-finite value."""
    got, want = got.detach().to(want.device, torch.float64), want.detach().double()
    if got.shape != want.shape:
        return math.inf
    if want.numel() == 0:
        return 0.0
    diff = (got - want).abs().max().item()
    scale = max(1.0, want.abs().max().item())
    return diff / scale if math.isfinite(diff) else math.inf


def compare(got, want, tol, membrane_tol=None, every_grad=False):
    """(ok, text) for two results of run(): spikes equal, membrane within
    membrane_tol (default tol), every gradient within tol. The text names the
    worst gradient, or with every_grad lists them all."""
    membrane_tol = tol if membrane_tol is None else membrane_tol
    s1, u1, g1 = got
    s2, u2, g2 = want
    if s1.shape != s2.shape:
        return False, f"spike shapes differ {tuple(s1.shape)} vs {tuple(s2.shape)}"
    flips = int((s1.to(s2.device) != s2).sum().item())
    u_err = err(u1, u2)
    g_errs = [err(a, b) for a, b in zip(g1, g2)]
    worst = max(range(len(g_errs)), key=g_errs.__getitem__)
    ok = flips == 0 and u_err <= membrane_tol and all(e <= tol for e in g_errs)
    text = (f"spikes {'equal' if flips == 0 else f'{flips} differ'}, membrane {u_err:.1e}, "
            f"grads max {g_errs[worst]:.1e} ({GRAD_NAMES[worst]})")
    if every_grad:
        text += " [" + " ".join(f"{n} {e:.1e}" for n, e in zip(GRAD_NAMES, g_errs)) + "]"
    return ok, text


def options_text(options):
    return " ".join(f"{k}={v}" for k, v in options.items() if v is not None)


VARIANTS = {  # name -> (fused op's extra options, one-to-one w_rec)
    "dense": ({}, False),
    "low_memory": ({"save_membrane": False}, False),
    "one_to_one": ({}, True),
}


def small_specs(found):
    """[(dtype, options, alpha_per_neuron, variant)]: every reset x surrogate x
    detach_reset option in float64 and float32 with the dense w_rec; then, for
    each optional feature found, every reset x detach_reset option (sigmoid)."""
    specs = []
    for dtype in (torch.float64, torch.float32):
        for reset in RESETS:
            for surrogate in SURROGATES:
                for detach in (False, True):
                    specs.append((dtype, dict(reset=reset, detach_reset=detach,
                                              surrogate=surrogate), "dense"))
    for variant in ("low_memory", "one_to_one"):
        if found.get(variant):
            specs += [(dtype, dict(reset=reset, detach_reset=detach, surrogate="sigmoid"), variant)
                      for dtype in (torch.float64, torch.float32) for reset in RESETS
                      for detach in (False, True)]
    return [(dtype, options, index % 2 == 0, variant)
            for index, (dtype, options, variant) in enumerate(specs)]


def small_cases(device, size, found):
    """Yields (name, check) for each of small_specs(found); check() -> (ok, text)."""
    import torch_ext
    cpu = torch.device("cpu")
    chosen = {}  # (reset, alpha_per_neuron, one_to_one) -> inputs with a margin
    for dtype, options, per_neuron, variant in small_specs(found):
        extra, one_to_one = VARIANTS[variant]
        name = (f"small {'x'.join(map(str, size))} {str(dtype)[6:]:<7} {options_text(options)} "
                f"alpha={'[N]' if per_neuron else '0-dim'}"
                + ("" if variant == "dense" else f" {variant.replace('_', '-')}"))

        def check(dtype=dtype, options=options, extra=extra,
                  key=(options["reset"], per_neuron, one_to_one)):
            if key not in chosen:
                chosen[key] = margin_inputs(size, *key)
            args, seed, distance, rate = chosen[key]
            tol = TOL[dtype]
            weights = loss_weights(args[0].shape[:2] + (size[3],), cpu, torch.float64)
            dev_weights = [w.to(device, dtype) for w in weights]
            fused = run(torch_ext.recurrent_lif, leaf(args, device, dtype), dev_weights, options,
                        extra)
            ref = run(torch_ext.recurrent_lif_ref, leaf(args, device, dtype), dev_weights, options)
            ok, text = compare(fused, ref, tol)
            text = f"vs reference on {device.type}: {text}"
            if device.type != "cpu":
                cpu_w = [w.to(cpu, dtype) for w in weights]
                cpu_out = run(torch_ext.recurrent_lif, leaf(args, cpu, dtype), cpu_w, options,
                              extra)
                ok_cpu, text_cpu = compare(fused, cpu_out, tol)
                ok = ok and ok_cpu
                text += f"; vs fused op on cpu: {text_cpu}"
            return ok, (f"{text}; tol {tol:.0e}, seed {seed}, margin {distance:.1e}, "
                        f"spike rate {rate:.2f}")

        yield name, check


def target_specs(found):
    """[(options, variant)]: TARGET_OPTIONS with the dense w_rec, then the
    benchmark's options for each optional feature found."""
    return [(options, "dense") for options in TARGET_OPTIONS] + [
        (TARGET_OPTIONS[0], variant) for variant in ("low_memory", "one_to_one")
        if found.get(variant)]


def target_cases(device, size, found):
    import torch_ext
    T, B, F, N = size
    for number, (options, variant) in enumerate(target_specs(found)):
        extra, one_to_one = VARIANTS[variant]
        name = (f"target {T}x{B}x{F}x{N} float32 {options_text(options)}"
                + ("" if variant == "dense" else f" {variant.replace('_', '-')}"))

        def check(options=options, seed=number, extra=extra, one_to_one=one_to_one):
            args = grid_inputs(T, B, F, N, seed, device, one_to_one)
            weights = loss_weights((T, B, N), device, torch.float32, seed=seed + 1)
            fused = run(torch_ext.recurrent_lif, leaf(args, device, torch.float32), weights, options,
                        extra)
            rate = fused[0].mean().item()
            ref = run(torch_ext.recurrent_lif_ref, leaf(args, device, torch.float32), weights,
                      options)
            ok, text = compare(fused, ref, TARGET_TOL, membrane_tol=TARGET_MEMBRANE_TOL,
                               every_grad=True)
            if not 0.01 < rate < 0.99:
                ok, text = False, text + f"; trivial spike rate {rate:.3f} (inputs too weak/strong)"
            return ok, (f"vs reference on {device.type}: {text}; tol: membrane "
                        f"{TARGET_MEMBRANE_TOL:g}, grads {TARGET_TOL:.0e}; spike rate {rate:.3f}")

        yield name, check


# ---------------------------------------------------------------- main

def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--small", type=sizes, default=(16, 3, 5, 8), metavar="T,B,F,N")
    parser.add_argument("--target", type=sizes, default=(1000, 64, 1024, 1024), metavar="T,B,F,N")
    parser.add_argument("--no-target", action="store_true", help="small cases only")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    result = {"design": design(), "device": args.device, "cases": [], "notes": []}

    def note(text):
        print("note:", text, flush=True)
        result["notes"].append(text)

    def finish(code):
        passed = sum(c["ok"] for c in result["cases"])
        failed = len(result["cases"]) - passed
        result.update(passed=passed, failed=failed, exit_code=code,
                      seconds=round(time.perf_counter() - started, 1))
        print(f"SUMMARY design={result['design']} device={args.device}: "
              f"{len(result['cases'])} cases, {passed} PASS, {failed} FAIL "
              f"({result['seconds']} s)", flush=True)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(result, f, indent=1)
        return code

    print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), design {design()}, "
          f"device {args.device}", flush=True)
    try:
        import torch_ext
        info = torch_ext.build_info()
    except Exception as e:  # not built, or built for another Python/torch
        note(f"not built: import torch_ext failed: {type(e).__name__}: {e}")
        return finish(2)
    print("build_info:", info, flush=True)
    device = torch.device(args.device)
    if device.type == "cuda":
        if not info.get("cuda"):
            note("not built with CUDA: build_info()['cuda'] is False")
            return finish(2)
        if not torch.cuda.is_available():
            note("torch sees no CUDA device")
            return finish(2)
        print("GPU:", torch.cuda.get_device_name(device), flush=True)
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        note("TF32 off for the reference's products (the target's grid inputs are exact "
             "either way)")
    if design() == "persistent":
        if any("persistent" in str(key).lower() or "persistent" in str(value).lower()
               for key, value in info.items()):
            note("TORCH_EXT_CUDA_PERSISTENT=1: build_info() names a persistent design")
        else:
            note("TORCH_EXT_CUDA_PERSISTENT=1, but build_info() names no persistent design: "
                 "this run exercises the same CUDA kernels as the default run")
        design_for = getattr(torch_ext._C, "cuda_design_for", None)
        if device.type == "cuda" and design_for is not None:
            sized = [("small", args.small)] + ([] if args.no_target else [("target", args.target)])
            for label, (T, B, _, N) in sized:
                name, why = design_for(T, B, N, False)
                note(f"design at the {label} size, float32 (all-to-all w_rec): {name} ({why})")

    try:
        found = features()
    except Exception as e:  # noqa: BLE001 - check the rest all the same
        note(f"feature detection failed ({type(e).__name__}: {e}): optional features not checked")
        found = {}
    result["features"] = found
    note("optional features of this build: " + ", ".join(
        f"{name} {'checked' if present else 'absent, not checked'}"
        for name, present in found.items()))
    cases = list(small_cases(device, args.small, found))
    if not args.no_target:
        cases += list(target_cases(device, args.target, found))
    for name, check in cases:
        case_start = time.perf_counter()
        try:
            ok, text = check()
        except Exception as e:  # a crash is a failure of this case, not of the run
            ok, text = False, f"{type(e).__name__}: {e}"
            traceback.print_exc(limit=3)
        if device.type == "cuda":
            try:
                torch.cuda.synchronize(device)
            except Exception as e:
                ok, text = False, f"{text}; synchronize: {type(e).__name__}: {e}"
        seconds = time.perf_counter() - case_start
        print(f"{'PASS' if ok else 'FAIL'}  {name}: {text} [{seconds:.1f} s]", flush=True)
        result["cases"].append({"name": name, "ok": bool(ok), "text": text,
                                "seconds": round(seconds, 2)})
    return finish(0 if all(c["ok"] for c in result["cases"]) else 1)


if __name__ == "__main__":
    sys.exit(main())
