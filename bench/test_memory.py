"""Peak resident memory of a training run in a fresh process: fastvae against each peer (same data, one epoch).

Each framework runs as `python -m bench.peers.run NAME` so its peak RSS is its own; a framework that is not
installed is skipped with the reason the runner gives. In the smoke run (benchmarks disabled) the epoch is cut to
6000 images to keep the default test run short."""
import json
import subprocess
import sys
from pathlib import Path

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
