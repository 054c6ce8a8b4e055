"""bf16 on AMX beside float32 BLAS, in turns (on a shared machine only alternation gives comparable numbers).

python bench/bf16_turns.py [--rounds N]: the 17 products of one step at the seed's shapes, amx.matmul and NumPy's
sgemm alternating product by product, then one training step of cpu and cpu-bf16 alternating step by step;
medians. Set OPENBLAS_NUM_THREADS=1 to compare one core with one core (the AMX kernels use one thread).
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import PRODUCTS, ROWS, SEED_CFG, operands, trainer  # noqa: E402  (benchlib also puts tests/ on the path)
from fastvae import machine, step  # noqa: E402
from fastvae.backends import amx, get_backend  # noqa: E402
from fastvae.data import load_mnist  # noqa: E402

ENGINES = {"amx-bf16": amx.matmul, "sgemm": lambda out, a, b: np.matmul(a, b, out=out)}


def products(rounds):
    rand = np.random.default_rng(1)
    ops = [(p[0], *operands(rand, *p[1:])) for p in PRODUCTS]
    times = {(label, e): [] for label, *_ in ops for e in ENGINES}
    for _ in range(rounds + 2):                       # the first two rounds warm up (compiles, caches)
        for label, a, b, out in ops:
            for engine, fn in ENGINES.items():
                t = time.perf_counter()
                fn(out, a, b)
                times[label, engine].append(time.perf_counter() - t)
    print(f"{'product':28s} {'amx-bf16 us':>11s} {'GFLOP/s':>7s} {'sgemm us':>9s} {'GFLOP/s':>7s}")
    total = dict.fromkeys(ENGINES, 0.0)
    for label, a, b, _ in ops:
        flops = 2 * a.shape[0] * a.shape[1] * b.shape[1]
        med = {e: statistics.median(times[label, e][2:]) for e in ENGINES}
        for e in ENGINES:
            total[e] += med[e]
        print(f"{label:28s} {med['amx-bf16'] * 1e6:11.1f} {flops / med['amx-bf16'] / 1e9:7.0f} "
              f"{med['sgemm'] * 1e6:9.1f} {flops / med['sgemm'] / 1e9:7.0f}")
    print("the 17 products (sum of medians): " + ", ".join(f"{e} {t * 1e3:.2f} ms" for e, t in total.items()))


def steps(rounds):
    mnist = load_mnist()
    runners = {}
    for name in ("cpu", "cpu-bf16"):
        be = get_backend(name)
        state, ws, data, order = trainer(be, mnist)
        runners[name] = (step.Stepper(be, SEED_CFG, state, ws, data), order)
    times = {name: [] for name in runners}
    for k in range(rounds + 3):
        for name, (stepper, order) in runners.items():
            start = (k * ROWS) % (len(order) - ROWS)
            t = time.perf_counter()
            stepper(order[start:start + ROWS])
            times[name].append(time.perf_counter() - t)
    for name, v in times.items():
        print(f"one step, {name:9s}: median {statistics.median(v[3:]) * 1e3:.2f} ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=40)
    args = parser.parse_args()
    amx.require()
    print(machine.describe())
    products(args.rounds)
    steps(args.rounds)
