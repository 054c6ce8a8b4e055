"""Helpers shared by the benchmark suites: the seed's shapes, the backends present here, synchronized timing.

Benchmarks reuse the tests' kernel checks (tests/kernel_cases.py), so each one checks its result before timing.
"""
import contextlib
import sys
from pathlib import Path

import numpy as np

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
    import pytest           # (here: step_breakdown and report.py use this module without pytest installed)
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


# The 17 products of one step (bench/test_products.py times them; bench/step_breakdown.py and report.py use them
# too, without pytest)
ROWS = SEED_CFG.batch_size
PRODUCTS_GROUP = "products of one step (numpy BLAS)"


def products():
    """(label, a shape, b shape, transpose a, transpose b) of the step: forward out = inp @ w, weight gradient
    dw = inp.T @ dz, input gradient dinp = dz @ w.T (none for the first layer, whose input is the data)."""
    widths = [784, *SEED_CFG.hidden, 2 * SEED_CFG.latent]
    dec = [SEED_CFG.latent, *reversed(SEED_CFG.hidden), 784]
    layers = list(zip(widths[:-1], widths[1:])) + list(zip(dec[:-1], dec[1:]))
    out = []
    for i, (k, n) in enumerate(layers):
        out.append((f"forward {ROWS}x{k}@{k}x{n}", (ROWS, k), (k, n), False, False))
        out.append((f"dw {k}x{ROWS}@{ROWS}x{n}", (ROWS, k), (ROWS, n), True, False))
        if i != 0:
            out.append((f"dinp {ROWS}x{n}@{n}x{k}", (ROWS, n), (k, n), False, True))
    return out


PRODUCTS = products()


def operands(rand, a_shape, b_shape, ta, tb):
    """Fresh float32 operands of one product of PRODUCTS, transposed views where the step uses them so, and its
    output buffer: (a_op, b_op, out) for out = a_op @ b_op."""
    a = rand.normal(0, 1, a_shape).astype(np.float32)
    b = rand.normal(0, 1, b_shape).astype(np.float32)
    a_op, b_op = (a.T if ta else a), (b.T if tb else b)
    return a_op, b_op, np.empty((a_op.shape[0], b_op.shape[1]), np.float32)


def trainer(be, mnist):
    """A fresh seed-settings state and workspace on `be`, with the data set on the backend: (state, workspace,
    data, the first epoch's order) for step.Stepper (bench/test_training.py, bench/bf16_turns.py)."""
    from fastvae import rng, step
    from fastvae.params import he_init
    layout = Layout(SEED_CFG)
    state = step.State(be, layout, he_init(layout, SEED_CFG.seed), SEED_CFG.seed)
    ws = step.Workspace(be, SEED_CFG, ROWS)
    data = be.asarray(mnist.train_x, dtype=np.uint8)
    order = be.asarray(rng.epoch_permutation(SEED_CFG.seed, 0, len(mnist.train_x)), dtype=np.int64)
    return state, ws, data, order
