"""Markdown tables from a pytest-benchmark JSON: epoch per framework (with ratios and peak memory), step,
kernels, first-call cost.  Usage: python bench/report.py bench/results/FILE.json"""
import json
import sys

from benchlib import EPOCH_GROUP as EPOCH, MEMORY_GROUP as MEMORY


def framework(b):
    info = b["extra_info"]
    return info.get("framework", "fastvae") + (f" ({info['backend']})" if "backend" in info else "")


def epoch_table(benches):
    epochs = [b for b in benches if b["group"] == EPOCH]
    memory = {b["extra_info"]["framework"]: b["extra_info"]["peak_rss_mb"] for b in benches
              if b["group"] == MEMORY}
    if not epochs:
        return []
    ours = min((b["stats"]["median"] for b in epochs if b["extra_info"].get("framework") == "fastvae"),
               default=None)
    rows = ["| framework | s / epoch (median) | min | images / s | GFLOP/s | peak RSS (MB) | time ÷ fastvae's |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for b in sorted(epochs, key=lambda b: b["stats"]["median"]):
        s, info = b["stats"], b["extra_info"]
        mem = memory.get(info.get("framework"))
        ratio = f"{s['median'] / ours:.2f}" if ours else "–"
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


def first_call_table(benches):
    first = [b for b in benches if b["group"].startswith("first call")]
    rows = ["| Numba cache | import fastvae (s) | first step (s) | second step (s) |", "| --- | ---: | ---: | ---: |"]
    for b in sorted(first, key=lambda b: b["name"]):
        i = b["extra_info"]
        rows.append(f"| {b['params']['cache']} | {i['import_s']:.2f} | {i['first_step_s']:.2f} "
                    f"| {i['second_step_s']:.4f} |")
    return ["### First call (a fresh process)", "", *rows, ""] if first else []


def main(path):
    with open(path) as f:
        doc = json.load(f)
    m = doc["machine_info"]
    fm = m.get("fastvae_machine", {})
    env = ", ".join(f"{k}={v}" for k, v in m.get("env", {}).items()) or "none"
    lines = [f"Machine: {fm.get('cpu', m.get('cpu', {}).get('brand_raw', '?'))}, {fm.get('cores', '?')} cores; "
             f"Python {m.get('python_version')}, numpy {m.get('numpy')}, numba {m.get('numba')}; "
             f"BLAS/thread environment: {env}; run {doc['datetime'][:16]} UTC.", ""]
    benches = doc["benchmarks"]
    lines += epoch_table(benches) + kernel_table(benches) + first_call_table(benches)
    print("\n".join(lines))


if __name__ == "__main__":
    main(sys.argv[1])
