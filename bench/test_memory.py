"""Peak resident memory of a training run in a fresh process: fastvae against each peer (same data, one epoch).

Each framework runs as `python -m bench.peers.run NAME` so its peak RSS is its own; a framework that is not
installed is skipped with the reason the runner gives. In the smoke run (benchmarks disabled) the epoch is cut to
6000 images to keep the default test run short."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchlib import FRAMEWORKS, MEMORY_GROUP

ROOT = Path(__file__).resolve().parents[1]

@pytest.mark.benchmark(group=MEMORY_GROUP)
@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_peak_memory_of_one_epoch(benchmark, framework):
    images = ["--images", "6000"] if benchmark.disabled else []
    result = {}

    def run():
        proc = subprocess.run([sys.executable, "-m", "bench.peers.run", framework, "--epochs", "1", *images],
                              cwd=ROOT, capture_output=True, text=True, timeout=900)
        if proc.returncode == 2:
            pytest.skip(proc.stderr.strip().splitlines()[-1])
        assert proc.returncode == 0, proc.stderr
        result.update(json.loads(proc.stdout.strip().splitlines()[-1]))

    benchmark.pedantic(run, rounds=1, iterations=1)
    assert result["peak_rss_mb"] > 50 and 90 < result["loss"] < 400     # trained, not diverged
    benchmark.extra_info.update(framework=FRAMEWORKS[framework], peak_rss_mb=result["peak_rss_mb"],
                                images=result["images"], seconds_per_epoch=result["seconds_per_epoch"])


def test_a_runs_peak_is_its_own_not_its_parents():
    """A runner started by a process far larger than itself reports its own peak: ru_maxrss, which the runner read
    until 2026-12-06, carries the parent's size at the fork across exec (four frameworks at one figure, 415.1 MB,
    the benchmark's pytest process)."""
    ballast = np.ones(100_000_000)                        # 800 MB, every page touched: this process's RSS
    probe = "from bench.peers.run import _peak_rss_mb; print(_peak_rss_mb())"
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         check=True).stdout
    assert ballast.nbytes / 2**20 > 700 > float(out) > 5       # the runner's own imports: tens of MB
