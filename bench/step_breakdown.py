"""Where one cpu training step goes, measured inside real steps (issue 14), at the seed's settings on MNIST.

    python -m bench.step_breakdown [--steps 400] [--rounds 3] [--backend cpu|cpu-bf16] [--json FILE]

Three measurements of the same model in one process, alternated in rounds (the machine drifts):
1. the step as a fit runs it: the detected thread count (fastvae.threads), row shards on the backend's workers, one
   product + pass per layer in one Numba call; the shards' phase (forward and the backward of dz and dinp of every
   shard at once) and the update's (weight_update: the weight gradients over the whole batch fused with Adam, its
   chunks claimed by the threads) timed apart (both run in one job of the workers: the shards' phase ends when the
   last shard returns, the update's is the rest of the job);
2. (cpu only) one shard (the batch's first rows, as many as a shard has) alone on one thread with the products
   called from Python (`cpu.FUSED = False`), every product and every fused pass timed: what a shard's work is made
   of;
3. the step's 17 products alone at the full batch in OpenBLAS's own threads (bench/test_products.py's floor).
The difference between the shards' phase and one shard's parts is what running the shards at once costs (the GIL
between calls, caches and memory shared by the threads, the wait for the slower shard).
"""
from __future__ import annotations

import argparse
import collections
import json
import statistics
import time

import numpy as np


def _model(be, cfg, data, batch):
    from fastvae import rng, step
    from fastvae.params import Layout, he_init
    layout = Layout(cfg)
    state = step.State(be, layout, he_init(layout, cfg.seed), cfg.seed)
    ws = step.Workspace(be, cfg, batch)
    order = rng.epoch_permutation(cfg.seed, 0, len(data))
    return state, ws, order


class Timers:
    """Seconds summed per label; wrap(label, fn) times every call of fn."""

    def __init__(self):
        self.seconds = collections.defaultdict(float)

    def wrap(self, label, fn):
        def timed(*args, **kw):
            begin = time.perf_counter()
            out = fn(*args, **kw)
            self.seconds[label] += time.perf_counter() - begin
            return out
        return timed


def _timed_phases(run_phases, timers):
    """Workers.run_phases (the shards, then the update, in one job) timed as the two phases: the shards' until the
    last shard has returned, the update's from then until the job ends."""
    def timed(first, second, parts):
        ends = []

        def timed_first(k):
            first(k)
            ends.append(time.perf_counter())
        begin = time.perf_counter()
        run_phases(timed_first, second, parts)
        end = time.perf_counter()
        last = max(ends, default=end)
        timers.seconds["shards"] += last - begin
        timers.seconds["update"] += end - last
    return timed


def whole_steps(be, cfg, data, steps, count):
    """(ms per step, {phase: ms per step}) of `steps` steps as a fit runs them at `count` threads."""
    from fastvae import step, threads
    state, ws, order = _model(be, cfg, data, cfg.batch_size)
    stepper = step.Stepper(be, cfg, state, ws, data)
    timers = Timers()
    libs = threads.Libraries(be.workers)
    real_run, real_adam, real_update = step.run_parts, be.adam_update, be.weight_update
    try:
        libs.set(count)
        step.run_parts, be.adam_update = timers.wrap("shards", real_run), timers.wrap("update", real_adam)
        if real_update is not None:
            be.weight_update = timers.wrap("update", real_update)
        if be.workers is not None:
            be.workers.run_phases = _timed_phases(be.workers.run_phases, timers)
        for k in range(3):                                   # warm: caches, the workers' threads
            stepper(order[k * cfg.batch_size:(k + 1) * cfg.batch_size])
        timers.seconds.clear()
        begin = time.perf_counter()
        for k in range(steps):
            start = (k * cfg.batch_size) % (len(order) - cfg.batch_size)
            stepper(order[start:start + cfg.batch_size])
        total = time.perf_counter() - begin
    finally:
        step.run_parts, be.adam_update, be.weight_update = real_run, real_adam, real_update
        if be.workers is not None:
            vars(be.workers).pop("run_phases", None)
        libs.close()
    phases = {k: 1e3 * v / steps for k, v in timers.seconds.items()}
    if "shards" not in phases:                               # one thread: no split, the shard phase is the rest
        phases["shards"] = 1e3 * total / steps - phases["update"]
    return 1e3 * total / steps, phases


def one_shard(be, cfg, data, steps, rows):
    """{part: ms per step} of one shard of `rows` rows on one thread, products and passes apart (FUSED off)."""
    from threadpoolctl import threadpool_limits

    from fastvae import step
    from fastvae.backends import cpu
    from fastvae.rng import STREAM_TRAIN
    state, ws, order = _model(be, cfg, data, rows)
    timers = Timers()
    kernels = ("gather_batch", "dense_forward", "heads_forward", "output_forward", "dense_backward", "heads_backward")
    real = {k: getattr(be, k) for k in kernels}
    real_matmul, real_sparse, fused = cpu.np.matmul, cpu._sparse_product, cpu.FUSED
    current = [None]

    def product(a, b, out=None):
        begin = time.perf_counter()
        real_matmul(a, b, out=out)
        timers.seconds[f"products ({current[0]})"] += time.perf_counter() - begin

    def sparse_product(out, inp, w):            # the first layer's forward on MNIST's mostly-zero pixels
        begin = time.perf_counter()
        real_sparse(out, inp, w)
        timers.seconds[f"products ({current[0]})"] += time.perf_counter() - begin

    def kernel(name):
        def call(*args):
            current[0] = name
            begin = time.perf_counter()
            real[name](*args)
            timers.seconds[f"kernel {name}"] += time.perf_counter() - begin
        return call

    class NumpyWithTimedMatmul:
        def __getattr__(self, name):
            return product if name == "matmul" else getattr(np, name)

    try:
        cpu.FUSED = False
        with threadpool_limits(1, user_api="blas"):
            def shard_step(k):
                idx = order[(k * rows) % (len(order) - rows):][:rows]
                a = ws.rows(rows)
                be.gather_batch(a.x, data, idx)
                step.forward(be, cfg, state.weights, a, ws.loss, state.counters, STREAM_TRAIN)
                # as the step runs a shard: without the weight gradients where weight_update forms them after
                step.backward(be, cfg, state.weights, None if be.weight_update else state.gradients, a,
                              state.counters, STREAM_TRAIN)
            for k in range(3):
                shard_step(k)
            for k in kernels:
                setattr(be, k, kernel(k))
            cpu.np, cpu._sparse_product = NumpyWithTimedMatmul(), sparse_product
            begin = time.perf_counter()
            for k in range(steps):
                shard_step(k)
            total = time.perf_counter() - begin
    finally:
        cpu.np, cpu._sparse_product, cpu.FUSED = np, real_sparse, fused
        for k, fn in real.items():
            setattr(be, k, fn)
    ms = {k: 1e3 * v / steps for k, v in timers.seconds.items()}
    parts = {}
    for name in kernels:
        inside = ms.get(f"products ({name})", 0.0)
        if inside:
            parts[f"products of {name}"] = inside
        parts[f"pass of {name}" if inside else name] = ms.get(f"kernel {name}", 0.0) - inside
    parts["Python between the kernels"] = 1e3 * total / steps - sum(ms[f"kernel {k}"] for k in kernels)
    return parts


def products_alone(cfg, rounds=50):
    """ms of the step's 17 products, each alone at the full batch in OpenBLAS's default threads (the floor the
    issue measures against): the sum of each product's median."""
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from test_products import PRODUCTS, operands
    g = np.random.default_rng(0)
    total = 0.0
    for _, a_shape, b_shape, ta, tb in PRODUCTS:
        a, b, out = operands(g, a_shape, b_shape, ta, tb)
        times = []
        for _ in range(rounds):
            begin = time.perf_counter()
            np.matmul(a, b, out=out)
            times.append(time.perf_counter() - begin)
        total += statistics.median(times)
    return 1e3 * total


def measure(steps=400, rounds=3, backend="cpu"):
    from fastvae import threads
    from fastvae.backends import get_backend
    from fastvae.config import Config
    from fastvae.data import load_mnist
    from fastvae.step import MIN_SHARD_ROWS, row_shards
    be, cfg = get_backend(backend), Config()
    data = load_mnist().train_x
    count = threads.detect().threads
    shard_rows = row_shards(cfg.batch_size, max(1, min(count, cfg.batch_size // MIN_SHARD_ROWS)))[0][1]
    runs = collections.defaultdict(list)
    for _ in range(rounds):
        total, phases = whole_steps(be, cfg, data, steps, count)
        runs["step"].append(total)
        for k, v in phases.items():
            runs[f"phase {k}"].append(v)
        if backend == "cpu":                # (its products are timed through np.matmul: the cpu backend's alone)
            for k, v in one_shard(be, cfg, data, steps, shard_rows).items():
                runs[f"shard {k}"].append(v)
        runs["products alone (17, full batch, OpenBLAS's threads)"].append(products_alone(cfg))
    return {"backend": backend, "threads": count, "shard_rows": shard_rows, "steps": steps, "rounds": rounds,
            "ms": {k: statistics.median(v) for k, v in runs.items()}}


def table(result):
    ms = result["ms"]
    lines = [f"| part (ms per step, median of {result['rounds']} rounds of {result['steps']} steps) | ms |",
             "| --- | ---: |"]
    lines += [f"| {k} | {v:.3f} |" for k, v in ms.items()]
    shard = sum(v for k, v in ms.items() if k.startswith("shard "))
    if shard:
        lines.append(f"| one shard's parts together ({result['shard_rows']} rows, one thread) | {shard:.3f} |")
        lines.append(f"| running {result['threads']} shards at once costs (phase shards - one shard) | "
                     f"{ms['phase shards'] - shard:.3f} |")
    floor = ms["products alone (17, full batch, OpenBLAS's threads)"]
    lines.append(f"| step ÷ products alone | {ms['step'] / floor:.2f} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--backend", default="cpu", choices=("cpu", "cpu-bf16"))
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.rounds < 1:
        parser.error("--steps and --rounds must be positive")
    result = measure(args.steps, args.rounds, args.backend)
    print(table(result))
    if args.json:
        from fastvae import jsonfile
        jsonfile.write(args.json, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
