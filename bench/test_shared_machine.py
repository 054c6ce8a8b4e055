"""Issue 18's table as a benchmark: epochs idle, with one core kept busy, under a 1-CPU cgroup quota and a 1-CPU
affinity mask, fastvae as it was, fastvae now (threads sized and adapted) and at 1 thread, in turns
(bench/shared_machine.py; the README's table comes from `python -m bench.shared_machine`). The smoke run
(benchmarks disabled) trains one round of 600 images under a 1-CPU affinity, fastvae alone, and checks that it
detected 1 thread and recorded it."""
import pytest

from shared_machine import run_situation

VARIANTS = ("as-it-was", "fastvae", "one-thread")


def run(situations, variants, images, rounds):
    return {s: run_situation(s, variants, images, rounds, None, lambda msg: None) for s in situations}


@pytest.mark.benchmark(group="shared machine (issue 18)")
def test_epochs_on_a_shared_machine(benchmark):
    smoke = benchmark.disabled
    images, rounds = (600, 1) if smoke else (60000, 3)
    situations = ("affinity",) if smoke else ("idle", "busy", "quota", "affinity")
    variants = ("fastvae",) if smoke else VARIANTS
    results = {}
    benchmark.pedantic(lambda: results.update(run(situations, variants, images, rounds)), rounds=1, iterations=1)
    for situation, r in results.items():
        if "skipped" in r:
            continue
        paced = r["variants"]["fastvae"]
        assert all(100 < loss < 700 for loss in paced["loss"]), (situation, paced["loss"])
        assert paced["threads"][0]["count"] >= 1
    if "affinity" in results and "skipped" not in results["affinity"]:
        assert results["affinity"]["variants"]["fastvae"]["threads"][0]["count"] == 1
    benchmark.extra_info.update(images=images, rounds=rounds, results=results)
