"""Markdown tables from a pytest-benchmark JSON: epoch per framework (with ratios and peak memory), step,
kernels, first-call cost.  Usage: python bench/report.py bench/results/FILE.json"""
import json
import statistics
import sys

from benchlib import EPOCH_GROUP as EPOCH, MEMORY_GROUP as MEMORY


def framework(b):
    info = b["extra_info"]
    where = info.get("backend") or ("cuda" if info.get("device") == "gpu" else None)
    return info.get("framework", "fastvae") + (f" ({where})" if where else "")


def epoch_table(benches):
    epochs = [b for b in benches if b["group"] == EPOCH]
    memory = {b["extra_info"]["framework"]: b["extra_info"]["peak_rss_mb"] for b in benches
              if b["group"] == MEMORY}
    if not epochs:
        return []
    # each peer against fastvae on the same kind of device (cpu peers vs the cpu backend, cuda vs gpu)
    ours = {}
    for b in epochs:
        if b["extra_info"].get("framework") == "fastvae":
            device = b["extra_info"].get("device", "cpu")
            ours[device] = min(ours.get(device, float("inf")), b["stats"]["median"])
    rows = ["| framework | s / epoch (median) | min | images / s | GFLOP/s | peak RSS (MB) "
            "| time ÷ fastvae's (same device) |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for b in sorted(epochs, key=lambda b: (b["extra_info"].get("device", "cpu"), b["stats"]["median"])):
        s, info = b["stats"], b["extra_info"]
        device = info.get("device", "cpu")
        mem = memory.get(info.get("framework")) if device == "cpu" else None
        ratio = f"{s['median'] / ours[device]:.2f}" if device in ours else "–"
        rows.append(f"| {framework(b)} | {s['median']:.3f} | {s['min']:.3f} | {info['images'] / s['median']:,.0f} "
                    f"| {info['flops'] / s['median'] / 1e9:.0f} | {f'{mem:.0f}' if mem else '–'} | {ratio} |")
    return ["### One epoch of the seed's settings", "", *rows, ""]


def kernel_table(benches):
    kernels = [b for b in benches if b["group"].startswith(("kernel ", "training step"))]
    if not kernels:
        return []
    rows = ["| kernel (batch 150) | backend | median µs | GFLOP/s | GB/s |", "| --- | --- | ---: | ---: | ---: |"]
    for b in sorted(kernels, key=lambda b: (b["group"], b["stats"]["median"])):
        s, info = b["stats"]["median"], b["extra_info"]
        gbs = f"{info['bytes'] / s / 1e9:.1f}" if "bytes" in info else "–"
        rows.append(f"| {b['group'].removeprefix('kernel ')} | {info['backend']} | {s * 1e6:,.0f} "
                    f"| {info['flops'] / s / 1e9:.1f} | {gbs} |")
    return ["### Kernels and one training step", "", *rows, ""]


def turns_table(benches):
    """Epochs in turns, one process per framework: per-round ratios (bench/test_side_by_side.py)."""
    from test_side_by_side import GROUP
    found = [b for b in benches if b["group"] == GROUP]
    if not found:
        return []
    info = found[0]["extra_info"]
    frameworks = info["frameworks"]
    bf16 = any("median_ratio_to_fastvae_bf16" in f for f in frameworks.values())
    rows = ["| framework | s / epoch (median) | min | max | images / s (median) | GFLOP/s (median) | time ÷ fastvae's: "
            "median of the rounds' ratios (range) |" + (" time ÷ fastvae cpu-bf16's |" if bf16 else ""),
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |" + (" ---: |" if bf16 else "")]
    for name, f in sorted(frameworks.items(), key=lambda kv: statistics.median(kv[1]["seconds"])):
        secs, med, r = f["seconds"], statistics.median(f["seconds"]), f["ratio_to_fastvae"]
        rows.append(f"| {name} | {med:.3f} | {min(secs):.3f} | {max(secs):.3f} | {info['images'] / med:,.0f} "
                    f"| {info['flops'] / med / 1e9:.0f} | {f['median_ratio_to_fastvae']:.2f} "
                    f"({min(r):.2f}–{max(r):.2f}) |" + (f" {f['median_ratio_to_fastvae_bf16']:.2f} |" if bf16 else ""))
    skipped = "; ".join(f"{k}: {v}" for k, v in info.get("skipped", {}).items())
    return [f"### Epochs in turns ({info['rounds']} rounds, one process per framework, {info['images']} images)", "",
            *rows, *(["", f"Skipped: {skipped}"] if skipped else []), *_threads_lines(frameworks), ""]


def _threads_lines(frameworks):
    """fastvae's thread count per epoch and what its pacer changed within them (runs from 2026-12-06 14:40 UTC on)."""
    lines = []
    for name, f in frameworks.items():
        records = [r for r in f.get("threads", ()) if r]
        if not records:
            continue
        changes = [f"{c['threads']} at step {c['step']} ({c['reason']})" for r in records for c in r["changes"]
                   if not c["reason"].startswith("start")]
        lines.append(f"{name}: threads per epoch {', '.join(str(r['count']) for r in records)}; "
                     + ("changed by the pacer: " + "; ".join(changes) if changes else "no change by the pacer"))
    return ["", *lines] if lines else []


def products_table(benches, steps_per_epoch=400):
    """The step's 17 matrix products, each timed alone: their sum is the floor under a cpu step and epoch."""
    from benchlib import PRODUCTS_GROUP as GROUP
    products = [b for b in benches if b["group"] == GROUP]
    if not products:
        return []
    rows = ["| BLAS threads | products | sum of medians (ms / step) | GFLOP/s | slowest: rate | fastest: rate "
            "| × 400 steps (s / epoch) |", "| --- | ---: | ---: | ---: | --- | --- | ---: |"]
    for threads in sorted({b["extra_info"]["threads"] for b in products}, key=str):
        some = [b for b in products if b["extra_info"]["threads"] == threads]
        total = sum(b["stats"]["median"] for b in some)
        flops = sum(b["extra_info"]["flops"] for b in some)
        rate = {b["extra_info"]["product"]: b["extra_info"]["flops"] / b["stats"]["median"] / 1e9 for b in some}
        lo, hi = min(rate, key=rate.get), max(rate, key=rate.get)
        rows.append(f"| {threads} | {len(some)} | {total * 1e3:.2f} | {flops / total / 1e9:.0f} | {lo}: "
                    f"{rate[lo]:.0f} | {hi}: {rate[hi]:.0f} | {total * steps_per_epoch:.2f} |")
    return ["### The products of one step, each alone (the floor)", "", *rows, ""]


def first_call_table(benches):
    first = [b for b in benches if b["group"].startswith("first call")]
    rows = ["| Numba cache | import fastvae (s) | first step (s) | second step (s) |", "| --- | ---: | ---: | ---: |"]
    for b in sorted(first, key=lambda b: b["name"]):
        i = b["extra_info"]
        rows.append(f"| {b['params']['cache']} | {i['import_s']:.2f} | {i['first_step_s']:.2f} "
                    f"| {i['second_step_s']:.4f} |")
    return ["### First call (a fresh process)", "", *rows, ""] if first else []


def breakdown_table(benches):
    from step_breakdown import GROUP, table
    found = [b for b in benches if b["group"] == GROUP]
    if not found:
        return []
    lines = []
    for bench in found:
        result = bench["extra_info"]["breakdown"]
        lines += [f"### One {result.get('backend', 'cpu')} step, part by part ({result['threads']} threads, shards of "
                  f"{result['shard_rows']} rows)", "", table(result), ""]
    return lines


# Issue 14's done-when, for fastvae's fp32 epoch in the turns and its cpu step: each peer's median ratio at least this
# (time ÷ fastvae's), and the step at most this many times the 17 products alone in OpenBLAS's threads.
TARGETS = {"torch eager": 1.3, "jax jit": 1.2, "torch.compile": 1.2}
STEP_TARGET = 1.25


def targets_lines(benches):
    """Issue 14's targets against this run, one line each: met or not, with the figure and its rounds' range. Only
    what the run measured (a run without the turns or the cpu breakdown says so)."""
    from step_breakdown import GROUP as BREAKDOWN
    from test_side_by_side import GROUP
    lines = []
    turns = [b for b in benches if b["group"] == GROUP]
    frameworks = turns[0]["extra_info"]["frameworks"] if turns else {}
    for name, target in TARGETS.items():
        f = frameworks.get(name)
        if f is None:
            lines.append(f"- fastvae ≥ {target}× faster than {name}: not measured in this run")
            continue
        median, low = f["median_ratio_to_fastvae"], min(f["ratio_to_fastvae"])
        verdict = "met" if median >= target else "NOT met"
        lines.append(f"- fastvae ≥ {target}× faster than {name}: {verdict}, {median:.2f}× (median of the rounds; "
                     f"lowest round {low:.2f}×{', under the target' if low < target <= median else ''})")
    cpu = [b["extra_info"]["breakdown"] for b in benches if b["group"] == BREAKDOWN
           and b["extra_info"]["breakdown"].get("backend", "cpu") == "cpu"]
    if cpu:
        ms = cpu[0]["ms"]
        ratio = ms.get("step in chunks", ms["step"]) / ms["products alone (17, full batch, OpenBLAS's threads)"]
        lines.append(f"- the fp32 step ≤ {STEP_TARGET}× its 17 products alone in OpenBLAS's threads: "
                     f"{'met' if ratio <= STEP_TARGET else 'NOT met'}, {ratio:.2f}×")
    else:
        lines.append(f"- the fp32 step ≤ {STEP_TARGET}× its products: not measured in this run (no cpu breakdown)")
    return ["### Issue 14's targets (one run: its turns and its cpu step breakdown)", "", *lines, ""]


def memory_table(benches, epochs_shown):
    """Peak memory per framework where the run has bench/test_memory.py's results but no epoch table to put them in
    (the epoch table has a peak RSS column of its own)."""
    found = [b["extra_info"] for b in benches if b["group"] == MEMORY]
    if not found or epochs_shown:
        return []
    rows = ["| framework | peak RSS of one epoch (MB) |", "| --- | ---: |"]
    rows += [f"| {i['framework']} | {i['peak_rss_mb']:.1f} |" for i in sorted(found, key=lambda i: i["peak_rss_mb"])]
    return ["### Peak memory of one epoch (a fresh process per framework)", "", *rows, ""]


def load(path):
    """The pytest-benchmark JSON at `path`; SystemExit with one line when it is missing or is not one."""
    try:
        with open(path) as f:
            doc = json.load(f)
    except OSError as e:
        raise SystemExit(f"report.py: cannot read {path} ({e.strerror})") from None
    except ValueError:
        raise SystemExit(f"report.py: {path} is not JSON; pass a file written by pytest --benchmark-json") from None
    if isinstance(doc, dict) and isinstance(doc.get("breakdown"), dict) and "machine" in doc:
        return doc                          # python -m bench.step_breakdown --json's (main prints its table)
    if not isinstance(doc, dict) or "machine_info" not in doc or "benchmarks" not in doc:
        raise SystemExit(f"report.py: {path} is not a pytest-benchmark JSON (no machine_info and benchmarks); pass "
                         "a file written by pytest --benchmark-json or python -m bench.step_breakdown --json")
    return doc


def breakdown_file(doc):
    """The lines of python -m bench.step_breakdown --json's file: its machine, its table."""
    from step_breakdown import table
    m, result = doc["machine"], doc["breakdown"]
    return [f"Machine: {m.get('cpu', '?')}, {m.get('cores', '?')} cores; Python {m.get('python')}, numpy "
            f"{doc.get('numpy', '?')}; run {doc.get('datetime', '?')[:16]} UTC (python -m bench.step_breakdown "
            f"{' '.join(doc.get('argv', []))}).", "",
            f"### One {result.get('backend', 'cpu')} step, part by part ({result['threads']} threads, shards of "
            f"{result['shard_rows']} rows)", "", table(result), ""]


def main(path):
    doc = load(path)
    if "breakdown" in doc:
        print("\n".join(breakdown_file(doc)))
        return
    m = doc["machine_info"]
    fm = m.get("fastvae_machine", {})
    env = ", ".join(f"{k}={v}" for k, v in m.get("env", {}).items()) or "none"
    lines = [f"Machine: {fm.get('cpu', m.get('cpu', {}).get('brand_raw', '?'))}, {fm.get('cores', '?')} cores; "
             f"Python {m.get('python_version')}, numpy {m.get('numpy')}, numba {m.get('numba')}; "
             f"BLAS/thread environment: {env}; run {doc['datetime'][:16]} UTC.", ""]
    benches = doc["benchmarks"]
    epochs = epoch_table(benches)
    turns = turns_table(benches)
    lines += (targets_lines(benches) if turns else []) + turns + epochs + memory_table(benches, bool(epochs))
    lines += products_table(benches)
    lines += breakdown_table(benches) + kernel_table(benches) + first_call_table(benches)
    print("\n".join(lines))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python bench/report.py bench/results/FILE.json (a file written by pytest "
                         "--benchmark-json, or by python -m bench.step_breakdown --json)")
    main(sys.argv[1])
