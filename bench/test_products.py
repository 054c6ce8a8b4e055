"""The floor under the cpu backend: the 17 matrix products of one training step, each alone, in NumPy's BLAS at
the seed's shapes (batch 150), exactly as the cpu backend calls them; with the BLAS's own threads (2 here) and
with one thread (the rate of a single core). Summed by bench/report.py into the products' share of an epoch."""
import contextlib

import numpy as np
import pytest

from benchlib import PRODUCTS, PRODUCTS_GROUP as GROUP, operands


def _threads(n):
    if n is None:
        return contextlib.nullcontext()
    threadpoolctl = pytest.importorskip("threadpoolctl", reason="threadpoolctl is in the bench extra")
    return threadpoolctl.threadpool_limits(n, user_api="blas")




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
