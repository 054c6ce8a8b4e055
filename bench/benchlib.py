"""Helpers shared by the benchmark suites: the seed's shapes, the backends present here, synchronized timing.

Benchmarks reuse the tests' kernel checks (tests/kernel_cases.py), so each one checks its result before timing.
"""
import contextlib
import sys
from pathlib import Path

import numpy as np

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))   # kernel_cases, tolerances

from fastvae.config import Config  # noqa: E402
from fastvae.params import Layout  # noqa: E402

SEED_CFG = Config()       # 784 -> 500 -> 500 -> 2 x 20 -> 500 -> 500 -> 784, batch 150, Adam lr 0.001
EPOCH_GROUP = "epoch (60000 images, batch 150)"          # fastvae and its peers side by side
MEMORY_GROUP = "peak memory (one epoch, fresh process)"
# the runner's name for each framework (python -m bench.peers.run NAME) -> its label in the report
FRAMEWORKS = {"fastvae": "fastvae", "fastvae-bf16": "fastvae cpu-bf16", "torch": "torch eager",
              "torch-bf16": "torch eager, bf16 autocast", "torch-compile": "torch.compile", "jax": "jax jit"}
# forward, input gradient and weight gradient: 2 FLOPs per weight each; the first layer needs no input gradient
FLOPS_PER_IMAGE = 6 * Layout(SEED_CFG).n_weights - 2 * 784 * SEED_CFG.hidden[0]      # ~7.1 MFLOP


def backend_params(include_reference=True):
    """pytest params for every backend usable here; the gpu one is skipped with the reason when absent."""
    from fastvae.backends import gpu
    names = ["cpu", "gpu"] + (["reference"] if include_reference else [])
    reason = gpu.unavailable_reason()
    return [pytest.param(n, marks=pytest.mark.skipif(n == "gpu" and reason is not None, reason=str(reason)))
            for n in names]


@contextlib.contextmanager
def fit_threads(be):
    """The thread count a fit starts with (fastvae.threads.detect), set as a fit sets it: the cpu backend's workers
    run row shards with one-thread BLAS; other host backends get it as OpenBLAS's count. Put back afterwards."""
    from fastvae import threads
    if be.xp is not np:
        yield None
        return
    libs = threads.Libraries(be.workers)
    count = threads.detect().threads
    libs.set(count)
    try:
        yield count
    finally:
        libs.close()


def timed(benchmark, be, fn, *, flops, nbytes, setup=None, rounds=30):
    """Time fn() (synchronized), after `setup()` restores any input the kernel overwrites."""
    def call():
        fn()
        be.synchronize()

    benchmark.extra_info.update(flops=int(flops), bytes=int(nbytes), backend=be.name)
    if setup is None:
        benchmark.pedantic(call, rounds=rounds, iterations=1, warmup_rounds=2)
    else:
        benchmark.pedantic(call, setup=setup, rounds=rounds, warmup_rounds=2)
