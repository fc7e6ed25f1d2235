"""The short table that gpu_check.sh prints last: GPU, build, correctness,
pytest, the benchmark ratios at the target size and the times at the other
sizes, the mixed-precision rows. Reads what the steps left in the work folder
(steps.tsv, preflight.json, correctness-*.json|txt, bench-main/,
bench-compile/, bench-sizes/ and mixed-<model>.json) and in $OUT (pytest.log); writes $OUT/summary.txt and
$OUT/bench.json (the benchmark runs' JSON in one file).

    python3 -m benchmarks.gpu_summary --work DIR --out DIR --mode full|dry-run
"""
import argparse
import datetime
import json
import re
from pathlib import Path

DESIGNS = ("default", "persistent")


def read_json(path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def read_steps(work):
    """name -> {status, rc, seconds, limit, note}, from steps.tsv."""
    steps = {}
    try:
        lines = (Path(work) / "steps.tsv").read_text().splitlines()
    except OSError:
        return steps
    for text in lines:
        fields = text.split("\t") + [""] * 6
        name, status, rc, seconds, limit, note = fields[:6]
        steps[name] = {"status": status, "rc": rc, "seconds": seconds, "limit": limit, "note": note}
    return steps


def step_text(step):
    if step is None:
        return "no record"
    text = step["status"]
    details = []
    if step["rc"] not in ("", "0", "-"):
        details.append(f"rc {step['rc']}")
    if step["seconds"] not in ("", "-"):
        details.append(f"{step['seconds']} s")
    if step["status"] == "timed out" and step["limit"]:
        details.append(f"limit {step['limit']} s")
    if details:
        text += f" ({', '.join(details)})"
    if step["note"]:
        text += f"; {step['note']}"
    return text


def gpu_text(preflight, mode):
    if preflight is None:
        return "unknown (no preflight result)"
    parts = []
    if preflight.get("nvidia_smi"):
        parts.append(f"nvidia-smi: {preflight['nvidia_smi'].splitlines()[0]}")
    if preflight.get("gpu"):
        parts.append(f"torch: {preflight.get('gpu_name')}, {preflight.get('gpu_memory_gib')} GiB, "
                     f"capability {preflight.get('gpu_capability')}")
    elif preflight.get("gpu") is False:
        parts.append("torch sees no GPU")
    text = "; ".join(parts) or "none found"
    if mode == "dry-run":
        text += " (dry run: CUDA parts skipped, checks on the CPU)"
    return text


def correctness_text(work, design, steps):
    """'N PASS, M FAIL' of one design's run, from its JSON, else from the PASS
    and FAIL lines of its log."""
    result = read_json(Path(work) / f"correctness-{design}.json")
    step = steps.get(f"correctness ({design})")
    if step is not None and step["status"].startswith(("skipped", "not built")):
        return step_text(step)
    if result is not None:
        text = f"{result['passed']} PASS, {result['failed']} FAIL"
        failed = [c["name"] for c in result["cases"] if not c["ok"]]
        if failed:
            text += f" (first: {failed[0]})"
        notes = [n for n in result.get("notes", []) if "not built" in n or "same CUDA kernels" in n
                 or "sees no" in n or n.startswith("design at the target size")]
        for note in notes:
            if "same CUDA kernels" in note:
                text += "; same kernels as default (build has no persistent design)"
            else:
                text += f"; {note}"
        if step is not None and step["status"] != "ok" and step["status"] != "failed":
            text += f"; step {step_text(step)}"
        return text
    try:
        log = (Path(work) / f"correctness-{design}.txt").read_text().splitlines()
    except OSError:
        log = []
    passed = sum(line.startswith("PASS ") for line in log)
    failed = sum(line.startswith("FAIL ") for line in log)
    return f"{passed} PASS, {failed} FAIL so far, no summary: step {step_text(step)}"


def pytest_text(out, steps):
    step = steps.get("pytest")
    if step is not None and step["status"].startswith(("skipped", "not built")):
        return step_text(step), []
    try:
        log = (Path(out) / "pytest.log").read_text().splitlines()
    except OSError:
        return f"no log; step {step_text(step)}", []
    failed = [line for line in log if line.startswith(("FAILED ", "ERROR "))]
    pattern = re.compile(r"\d+ (passed|failed|skipped|errors?|deselected|xfailed|xpassed)|"
                         r"no tests ran")
    summary = next((line.strip("= ").strip() for line in reversed(log) if pattern.search(line)),
                   None)
    if summary is None:
        summary = "no summary line"
    if step is not None and step["status"] == "timed out":
        summary += f"; step {step_text(step)}"
    return summary, failed


def bench_rows(work, name):
    files = sorted((Path(work) / name).glob("*.json"))
    return read_json(files[-1]) if files else None


def fmt(value, digits=2):
    return "-" if value is None else f"{value:.{digits}f}"


def bench_lines(main, probe, steps):
    """The benchmark part of the table: one line per TF32 setting."""
    lines = []
    if main is None:
        lines.append(f"benchmark:    no result: {step_text(steps.get('benchmark'))}")
        return lines
    rows = main["rows"]
    size = rows[0]
    lines.append(f"benchmark at T={size['T']}, B={size['B']}, F=N={size['N']} on "
                 f"{main['machine']['device']}, float32, forward + backward, median of "
                 f"{main['machine']['reps']}:")
    header = (f"  {'tf32':<5}{'fused ms':>10}{'loop ms':>10}{'compiled ms':>13}{'floor ms':>10}"
              f"{'fused/floor':>13}{'loop/fused':>12}   other ms")
    lines.append(header)
    by_tf32 = {}
    for r in rows:
        by_tf32.setdefault(r["tf32"], {})[r["impl"]] = r["fwd_bwd_ms"]
    main_columns = ("fused", "autograd", "compiled", "floor")
    for tf32, ms in by_tf32.items():
        label = "-" if tf32 is None else ("on" if tf32 else "off")
        fused, loop, floor = ms.get("fused"), ms.get("autograd"), ms.get("floor")
        ratio = (lambda a, b: None if a is None or not b else a / b)
        others = ", ".join(f"{name} {fmt(value)}" for name, value in ms.items()
                           if name not in main_columns)
        lines.append(f"  {label:<5}{fmt(fused):>10}{fmt(loop):>10}{fmt(ms.get('compiled')):>13}"
                     f"{fmt(floor):>10}{fmt(ratio(fused, floor)):>13}{fmt(ratio(loop, fused)):>12}"
                     f"   {others}")
    if not any("compiled" in ms for ms in by_tf32.values()):
        note = next((n for n in main.get("notes", []) if "compile" in n), None)
        lines.append("  compiled at this size: not run" + (f" ({note})" if note else
                                                             " (not asked for)"))
    if probe is None:
        step = steps.get("compile probe")
        if step is not None:
            lines.append(f"  torch.compile probe: no result: {step_text(step)}")
    else:
        p_rows = probe["rows"]
        p = p_rows[0]
        for tf32 in dict.fromkeys(r["tf32"] for r in p_rows):
            ms = {r["impl"]: r["fwd_bwd_ms"] for r in p_rows if r["tf32"] == tf32}
            label = "" if tf32 is None else f", TF32 {'on' if tf32 else 'off'}"
            lines.append(f"  torch.compile probe at T={p['T']}, B={p['B']}, F=N={p['N']}{label}: "
                         f"compiled {fmt(ms.get('compiled'))} ms, fused {fmt(ms.get('fused'))} ms, "
                         f"loop {fmt(ms.get('autograd'))} ms")
    return lines


def other_size_lines(bench, steps):
    """One line per further size and TF32 setting: each implementation's ms."""
    if bench is None:
        step = steps.get("other sizes")
        return [] if step is None else [f"  other sizes: no result: {step_text(step)}"]
    lines = []
    sizes = {}
    for r in bench["rows"]:
        sizes.setdefault((r["T"], r["B"], r["N"], r["tf32"]), {})[r["impl"]] = r["fwd_bwd_ms"]
    for (T, B, N, tf32), ms in sizes.items():
        label = "" if tf32 is None else f", TF32 {'on' if tf32 else 'off'}"
        loop_over_fused = None if not ms.get("fused") or "autograd" not in ms else \
            ms["autograd"] / ms["fused"]
        lines.append(f"  T={T}, B={B}, F=N={N}{label}: " + ", ".join(
            f"{name} {fmt(value)} ms" for name, value in ms.items()) +
            f"; loop/fused {fmt(loop_over_fused)}")
    return lines


MIXED_MODELS = ("lif", "adaptive", "cuba")


def mixed_precision_lines(work, steps):
    """One line per model and size of the mixed-precision step
    (benchmarks/mixed_precision.py --json, $WORK/mixed-<model>.json): float32
    with TF32 off and on, under autocast, the expert loop under autocast, and
    the gradient errors against each one's float32 run."""
    lines = []
    for model in MIXED_MODELS:
        result = read_json(Path(work) / f"mixed-{model}.json")
        step = steps.get(f"mixed precision ({model})")
        if result is None:
            if step is not None:
                lines.append(f"  mixed precision ({model}): no result: {step_text(step)}")
            continue
        low = result["dtype"]
        for r in result["rows"]:
            ms, err = r["ms"], r["errors"]
            cells = [f"{name} {fmt(value)} ms" for name, value in ms.items()]
            ratio = ms[r["default"]] / ms["fused f32"] if ms.get("fused f32") else None
            lines.append(f"  mixed {model} T={r['T']}, B={r['B']}, F=N={r['N']}: "
                         + ", ".join(cells) + f"; {low}/f32 {fmt(ratio)}; grad error fused "
                         f"{fmt(err['fused'], 3)} expert {fmt(err['expert'], 3)}")
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--mode", choices=("full", "dry-run"), default="full")
    parser.add_argument("--seconds", type=int, help="the run's wall time so far")
    args = parser.parse_args(argv)

    steps = read_steps(args.work)
    preflight = read_json(args.work / "preflight.json")
    main_bench, probe = bench_rows(args.work, "bench-main"), bench_rows(args.work, "bench-compile")
    other_sizes = bench_rows(args.work, "bench-sizes")
    (args.out / "bench.json").write_text(json.dumps({"main": main_bench, "compile_probe": probe,
                                                     "other_sizes": other_sizes}, indent=1))
    pytest_summary, failed = pytest_text(args.out, steps)
    when = datetime.datetime.now().isoformat(sep=" ", timespec="minutes")
    took = f", {args.seconds} s" if args.seconds is not None else ""
    pf = (f"{preflight['OK']} OK, {preflight['MISSING']} MISSING, {preflight['WARN']} WARN"
          if preflight else f"no result; step {step_text(steps.get('preflight'))}")
    label = "full run" if args.mode == "full" else "dry run"
    table = [f"==== GPU check summary ({label}, {when}{took}) ====",
             f"GPU:          {gpu_text(preflight, args.mode)}",
             f"preflight:    {pf}",
             f"build:        {step_text(steps.get('build'))}"]
    for design in DESIGNS:
        table.append(f"correctness:  {design + ':':<12}{correctness_text(args.work, design, steps)}")
    table.append(f"pytest:       {pytest_summary}")
    for line in failed[:5]:
        table.append(f"              {line}")
    if len(failed) > 5:
        table.append(f"              ... {len(failed) - 5} more in pytest.log")
    table += bench_lines(main_bench, probe, steps)
    table += other_size_lines(other_sizes, steps)
    table += mixed_precision_lines(args.work, steps)
    table.append("steps:        " + ", ".join(
        f"{name} {step['status']}" + (f" {step['seconds']} s" if step["seconds"] not in ("", "-")
                                      else "") for name, step in steps.items()))
    text = "\n".join(table)
    print(text)
    (args.out / "summary.txt").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
