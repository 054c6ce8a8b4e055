"""fastvae and its peers timed in turns: one process per framework (`python -m bench.peers.run NAME --serve`),
each training one epoch while the others wait idle on a pipe, round after round. On a shared machine whose speed
drifts from minute to minute (epochs measured 3.0 to 4.9 s here), a ratio taken within one round, between epochs
run seconds apart, is the fair one: the report gives the median of the per-round ratios. Frameworks not installed
are skipped with the runner's reason. The smoke run (benchmarks disabled) is one round on 6000 images."""
import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from benchlib import FLOPS_PER_IMAGE, FRAMEWORKS

ROOT = Path(__file__).resolve().parents[1]
GROUP = "epochs in turns (one process per framework)"
ROUNDS = 5


def start(name, images):
    cmd = [sys.executable, "-m", "bench.peers.run", name, "--serve", *images]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    line = proc.stdout.readline()
    if not line:                                 # exited: not installed (status 2) or failed
        err = proc.stderr.read().strip().splitlines()
        status = proc.wait()
        return None, (err[-1] if err else f"exit status {status}"), status
    return proc, json.loads(line), 0


def ask(proc, epoch):
    proc.stdin.write(f"{epoch}\n")
    proc.stdin.flush()
    return json.loads(proc.stdout.readline())


@pytest.mark.benchmark(group=GROUP)
def test_epochs_in_turns(benchmark):
    images = ["--images", "6000"] if benchmark.disabled else []
    rounds = 1 if benchmark.disabled else ROUNDS
    servers, skipped = {}, {}
    try:
        for name in FRAMEWORKS:
            proc, info, status = start(name, images)
            if proc is None:
                assert status == 2 and name != "fastvae", f"{name}: {info}"
                skipped[name] = info
            else:
                servers[name] = (proc, info)
        times = {name: [] for name in servers}
        losses = {name: [] for name in servers}
        threads = {name: [] for name in servers}       # fastvae's: each epoch's thread count and the pacer's changes

        def run():
            for k in range(rounds):
                for name, (proc, _) in servers.items():
                    answer = ask(proc, k)
                    times[name].append(answer["seconds"])
                    losses[name].append(answer["loss"])
                    threads[name].append(answer.get("threads"))

        benchmark.pedantic(run, rounds=1, iterations=1)
    finally:
        for proc, _ in servers.values():
            proc.stdin.close()
            proc.wait(timeout=60)
    for name, ls in losses.items():
        assert 90 < ls[-1] < 400, f"{name}: an epoch of training ended at {ls[-1]} per image"
    for name in ("fastvae", "fastvae-bf16"):
        for record in threads.get(name, ()):
            assert record["count"] >= 1 and all(c["threads"] >= 1 for c in record["changes"]), record
    n_images = 6000 if images else 60000
    benchmark.extra_info.update(
        images=n_images, flops=FLOPS_PER_IMAGE * n_images, rounds=rounds, skipped=skipped,
        frameworks={FRAMEWORKS[name]: {
            "version": servers[name][1]["version"], "first_call_s": servers[name][1]["first_call_seconds"],
            "seconds": times[name], "loss": losses[name],
            **({"threads": threads[name]} if any(t is not None for t in threads[name]) else {}),
            "ratio_to_fastvae": [t / f for t, f in zip(times[name], times["fastvae"])],
            "median_ratio_to_fastvae": statistics.median(t / f for t, f in zip(times[name], times["fastvae"])),
            # mixed precision's yardstick: the same per-round ratio against fastvae's cpu-bf16, where it ran
            **({"median_ratio_to_fastvae_bf16": statistics.median(
                t / f for t, f in zip(times[name], times["fastvae-bf16"]))} if "fastvae-bf16" in servers else {}),
        } for name in servers})
