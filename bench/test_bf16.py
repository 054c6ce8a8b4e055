"""bf16 on AMX tiles (the cpu-bf16 backend) beside float32 BLAS: each of the 17 products of one step at the seed's
shapes (batch 150), amx.matmul next to NumPy's sgemm on the same operands, and one training step cpu vs cpu-bf16.
Skipped, with the reason, on a CPU without AMX. Every product is checked before it is timed (the bf16 bound of
tests/tolerances.py against float64)."""
import numpy as np
import pytest

from benchlib import PRODUCTS, operands
from test_training import ROWS, trainer
from tolerances import TOL, assert_close
from benchlib import FLOPS_PER_IMAGE, SEED_CFG, fit_threads
from fastvae import step
from fastvae.backends import amx, get_backend

pytestmark = pytest.mark.skipif(amx.engine_unavailable_reason() is not None,
                                reason=f"no bf16 products here: {amx.engine_unavailable_reason()}")
PRODUCT_GROUP = "products of one step: bf16 AMX vs fp32 BLAS"


@pytest.mark.benchmark(group=PRODUCT_GROUP)
@pytest.mark.parametrize("engine", ["amx-bf16", "numpy-sgemm"])
@pytest.mark.parametrize("label,a_shape,b_shape,ta,tb", PRODUCTS, ids=[p[0] for p in PRODUCTS])
def test_product(benchmark, rand, label, a_shape, b_shape, ta, tb, engine):
    a_op, b_op, out = operands(rand, a_shape, b_shape, ta, tb)
    fn = amx.matmul if engine == "amx-bf16" else (lambda o, x, y: np.matmul(x, y, out=o))
    fn(out, a_op, b_op)
    assert_close(out, a_op.astype(np.float64) @ b_op.astype(np.float64), TOL["bfloat16"],
                 scale=float(np.max(np.abs(a_op) @ np.abs(b_op))), what=label)
    benchmark.extra_info.update(flops=2 * a_op.shape[0] * a_op.shape[1] * b_op.shape[1], product=label,
                                engine=engine)
    benchmark.pedantic(fn, args=(out, a_op, b_op), rounds=100, warmup_rounds=5)


@pytest.mark.benchmark(group="training step (batch 150): cpu vs cpu-bf16")
@pytest.mark.parametrize("name", ["cpu", "cpu-bf16"])
def test_one_step(benchmark, mnist, name):
    be = get_backend(name)
    state, ws, data, order = trainer(be, mnist)
    stepper = step.Stepper(be, SEED_CFG, state, ws, data)
    k = iter(range(10**9))

    def one():
        start = (next(k) * ROWS) % (len(order) - ROWS)
        stepper(order[start:start + ROWS])

    with fit_threads(be) as count:                 # as a fit runs it: row shards on the cpu backend's workers
        one()
        assert np.isfinite(float(be.to_host(ws.loss).sum()))
        benchmark.extra_info.update(flops=FLOPS_PER_IMAGE * ROWS, images=ROWS, backend=name, threads=count)
        benchmark.pedantic(one, rounds=40, warmup_rounds=3)
