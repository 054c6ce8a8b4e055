"""The floor under the cpu backend: the 17 matrix products of one training step, each alone, in NumPy's BLAS at
the seed's shapes (batch 150), exactly as the cpu backend calls them; with the BLAS's own threads (2 here) and
with one thread (the rate of a single core). Summed by bench/report.py into the products' share of an epoch."""
import contextlib

import numpy as np
import pytest

from benchlib import SEED_CFG

ROWS = SEED_CFG.batch_size
GROUP = "products of one step (numpy BLAS)"


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


def _threads(n):
    if n is None:
        return contextlib.nullcontext()
    threadpoolctl = pytest.importorskip("threadpoolctl", reason="threadpoolctl is in the bench extra")
    return threadpoolctl.threadpool_limits(n, user_api="blas")


PRODUCTS = products()


def operands(rand, a_shape, b_shape, ta, tb):
    """Fresh float32 operands of one product of PRODUCTS, transposed views where the step uses them so, and its
    output buffer: (a_op, b_op, out) for out = a_op @ b_op."""
    a = rand.normal(0, 1, a_shape).astype(np.float32)
    b = rand.normal(0, 1, b_shape).astype(np.float32)
    a_op, b_op = (a.T if ta else a), (b.T if tb else b)
    return a_op, b_op, np.empty((a_op.shape[0], b_op.shape[1]), np.float32)


@pytest.mark.benchmark(group=GROUP)
@pytest.mark.parametrize("threads", [None, 1], ids=["blas-default", "1-thread"])
@pytest.mark.parametrize("label,a_shape,b_shape,ta,tb", PRODUCTS, ids=[p[0] for p in PRODUCTS])
def test_product(benchmark, rand, label, a_shape, b_shape, ta, tb, threads):
    a_op, b_op, out = operands(rand, a_shape, b_shape, ta, tb)
    with _threads(threads):
        np.matmul(a_op, b_op, out=out)
        expected = a_op.astype(np.float64) @ b_op.astype(np.float64)
        # float32 products of K terms: error <= K * eps32 * sum |a||b| (the bound, not a tuned number)
        bound = a_op.shape[1] * np.finfo(np.float32).eps * (np.abs(a_op) @ np.abs(b_op))
        assert np.all(np.abs(out - expected) <= bound)
        benchmark.extra_info.update(flops=2 * a_op.shape[0] * a_op.shape[1] * b_op.shape[1], product=label,
                                    threads=threads or "default")
        benchmark.pedantic(np.matmul, args=(a_op, b_op), kwargs={"out": out}, rounds=200, warmup_rounds=10)
