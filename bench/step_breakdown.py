"""Where one cpu training step goes, measured inside real steps (issues 13 and 14), at the seed's settings on MNIST.

    python -m bench.step_breakdown [--steps 400] [--rounds 3] [--backend cpu|cpu-bf16] [--json FILE]

Four measurements of the same model in one process, alternated in rounds (the machine drifts):
1. the step at the detected thread count (fastvae.threads), row shards on the backend's workers, one product + pass
   per layer in one Numba call, each shard's calls replayed as one (fastvae.backends.capture; beside it the same step
   with every kernel called from Python, "step from Python", and, on the cpu backend, the steps as a fit runs them:
   chunks of 25 steps, one GIL-free call per thread, fastvae.step_chunks, "step in chunks"); the shards' phase (forward
   and the backward of dz and dinp of every shard at once) and the update's (weight_update: the weight gradients over
   the whole batch fused with Adam, its chunks claimed by the threads) timed apart (both run in one job of the workers:
   the shards' phase ends when the last shard returns, the update's is the rest of the job);
2. one shard (the batch's first rows, as many as a shard has) alone on one thread, on the cpu backend with the
   products called from Python (`cpu.FUSED = False`), every product and every fused pass timed: what a shard's work
   is made of (for cpu-bf16 only its passes, gather and Python, which are the same Numba code there);
3. the step's 17 products alone at the full batch in OpenBLAS's own threads (bench/test_products.py's yardstick);
4. floors: each part of the step alone at the rate this machine gives it. The 17 products each alone on one core as
   the backend computes them (one-thread sgemm, the input gradients in dinp.product; amx.product with the weights
   packed beforehand), halved for two cores that lose nothing to each other; Adam over the whole buffer alone on the
   threads, beside one array of the same bytes read and written with no arithmetic (the memory's rate; when the two
   match, Adam is memory-bound); for cpu-bf16 the bf16 packs the update writes, priced at that rate (written and
   first read for ownership). Their sum with one shard's passes is the step's floor with these kernels on this
   machine (`floor`).
The difference between the shards' phase and one shard's parts is what running the shards at once costs (the GIL
between calls, caches and memory shared by the threads, the wait for the slower shard); the step over its floor is
what the threads lose to each other and to cold caches in all.
"""
from __future__ import annotations

import argparse
import collections
import statistics
import sys
import time

import numpy as np
from numba import njit

from fastvae.backends import amx
from fastvae.backends.cpu_update import adam_block

GROUP = "cpu step breakdown (seed settings, batch 150)"      # its pytest-benchmark group (test_step_breakdown.py)


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


def whole_steps(be, cfg, data, steps, count, record=True):
    """(ms per step, {phase: ms per step}) of `steps` steps as a fit runs them at `count` threads (`record`: each
    shard's kernels replayed as one call, as a fit does; False: called from Python one by one)."""
    from fastvae import step, threads
    state, ws, order = _model(be, cfg, data, cfg.batch_size)
    stepper = step.Stepper(be, cfg, state, ws, data, record=record)
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


def chunked_steps(be, cfg, data, steps, count):
    """ms per step of `steps` full-batch steps at `count` threads as a fit runs them on a backend with
    weight_update_steps (cpu): chunks of up to step_chunks.CHUNK_STEPS steps, one GIL-free call per thread
    (Stepper.many)."""
    from fastvae import step, threads
    from fastvae.step_chunks import CHUNK_STEPS
    state, ws, order = _model(be, cfg, data, cfg.batch_size)
    order = np.asarray(order, np.int64)
    room = len(order) // cfg.batch_size - 3 - CHUNK_STEPS
    stepper = step.Stepper(be, cfg, state, ws, data)
    libs = threads.Libraries(be.workers)
    try:
        libs.set(count)
        k = 0
        while k < 3:                                         # warm: the recorded step, caches, the threads
            k += stepper.many(order, k, 3 - k)
        begin = time.perf_counter()
        done = 0
        while done < steps:
            done += stepper.many(order, 3 + done % room, min(CHUNK_STEPS, steps - done))
        total = time.perf_counter() - begin
    finally:
        libs.close()
    return 1e3 * total / done


def one_shard(be, cfg, data, steps, rows):
    """{part: ms per step} of one shard of `rows` rows on one thread, products and passes apart (FUSED off: the
    products from Python, np.matmul and the input gradients of fastvae.backends.dinp, each timed)."""
    from threadpoolctl import threadpool_limits

    from fastvae import step
    from fastvae.backends import cpu
    from fastvae.rng import STREAM_TRAIN
    state, ws, order = _model(be, cfg, data, rows)
    timers = Timers()
    kernels = ("gather_batch", "dense_forward", "heads_forward", "output_forward", "dense_backward", "heads_backward")
    real = {k: getattr(be, k) for k in kernels}
    from fastvae.backends import dinp
    real_matmul, real_sparse, real_dinp, fused = cpu.np.matmul, cpu._sparse_product, dinp.product, cpu.FUSED
    current = [None]

    def product(a, b, out=None):
        begin = time.perf_counter()
        real_matmul(a, b, out=out)
        timers.seconds[f"products ({current[0]})"] += time.perf_counter() - begin

    def sparse_product(out, inp, w):            # the first layer's forward on MNIST's mostly-zero pixels
        begin = time.perf_counter()
        real_sparse(out, inp, w)
        timers.seconds[f"products ({current[0]})"] += time.perf_counter() - begin

    def input_gradient(*args):                  # dout @ w.T on FMA vectors (fastvae.backends.dinp), where it runs
        begin = time.perf_counter()
        real_dinp(*args)
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
            cpu.np, cpu._sparse_product, dinp.product = NumpyWithTimedMatmul(), sparse_product, input_gradient
            begin = time.perf_counter()
            for k in range(steps):
                shard_step(k)
            total = time.perf_counter() - begin
    finally:
        cpu.np, cpu._sparse_product, dinp.product, cpu.FUSED = np, real_sparse, real_dinp, fused
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


def median_ms(fn, rounds):
    """The median of `rounds` timed calls of fn(), in ms."""
    times = []
    for _ in range(rounds):
        begin = time.perf_counter()
        fn()
        times.append(time.perf_counter() - begin)
    return 1e3 * statistics.median(times)


def _step_products():
    """[(transpose a, transpose b, a_op, b_op, out)] of the step's 17 products (bench/test_products.py's PRODUCTS),
    fresh float32 operands from seed 0."""
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from benchlib import PRODUCTS, operands
    g = np.random.default_rng(0)
    return [(ta, tb, *operands(g, a_shape, b_shape, ta, tb)) for _, a_shape, b_shape, ta, tb in PRODUCTS]


def products_alone(cfg, rounds=50):
    """ms of the step's 17 products, each alone at the full batch in OpenBLAS's default threads (the floor the
    issue measures against): the sum of each product's median."""
    return sum(median_ms(lambda: np.matmul(a, b, out=out), rounds) for _, _, a, b, out in _step_products())


def products_one_core(backend, rounds=30):
    """ms of the step's 17 products at the full batch, each alone on one core, as the backend's step calls them:
    one-thread BLAS sgemm, or for the input gradients dz @ w.T where it takes them dinp.product (cpu), or amx.product
    (cpu-bf16: the tiles, with the weights packed beforehand as the update leaves them, the activations and dz packed
    in the call): the sum of each product's median."""
    from threadpoolctl import threadpool_limits
    from fastvae.backends import dinp
    total = 0.0
    with threadpool_limits(1, user_api="blas"):
        for ta, tb, a_op, b_op, out in _step_products():
            scratch = dinp.scratch(out, a_op, b_op.T) if backend == "cpu" and tb and not ta else None
            if scratch is not None and scratch[0].size and dinp.usable(out, a_op, b_op.T, *scratch):
                args, product = (out, a_op, b_op.T, *scratch), dinp.product
            elif backend == "cpu":
                args, product = (a_op, b_op, out), lambda x, y, o: np.matmul(x, y, out=o)     # noqa: E731
            else:
                a, b = (a_op.T if ta else a_op), (b_op.T if tb else b_op)               # the C-ordered arrays
                packed = amx.NO_PACK if ta else amx.pack_b(b_op)
                sizes = amx.scratch_sizes(out.shape[0], out.shape[1], a_op.shape[1])
                args, product = (out, a, ta, b, tb, packed, *amx.scratch(*sizes)), amx.product
            product(*args)
            total += median_ms(lambda: product(*args), rounds)
    return total


@njit(cache=True, nogil=True)
def _adam_alone(p, g, m, v, lo, hi):
    """Adam over p, m, v[lo:hi] with a gradient chunk that stays in cache (as in the fused update)."""
    for start in range(lo, hi, g.size):
        stop = min(hi, start + g.size)
        adam_block(p[start:stop], g[:stop - start], m[start:stop], v[start:stop], 1e-6, 0.9, 0.999, 1e-8)


@njit(cache=True, nogil=True, fastmath=True)
def _read_write(a, lo, hi):
    """a[lo:hi] read and written once, almost no arithmetic: the memory's rate for a stream like Adam's."""
    b = a[lo:hi]
    for i in range(b.size):             # (from 0: no negative-index check, so LLVM vectorises the loop)
        b[i] = b[i] * np.float32(0.5) + np.float32(1.0)


def memory_floors(be, cfg, count, rounds=20):
    """({label: ms}, MB moved): Adam over the whole flat buffer alone (its parameters and both moments read and
    written, the gradient from cache as in the fused update), and one array of the same size read and written with
    almost no arithmetic, each on `count` threads. When the two match, Adam is bound by memory and its time is the
    update's floor for that traffic; the second gives the rate (MB moved / ms) at which other traffic is priced."""
    from fastvae.params import Layout
    size = Layout(cfg).size
    rand = np.random.default_rng(0)
    p, m = rand.random(size, np.float32), rand.random(size, np.float32) * 1e-3
    v, g = rand.random(size, np.float32) * 1e-6, rand.random(1 << 14, np.float32)
    flat = rand.random(3 * size, np.float32)
    grads = [g.copy() for _ in range(count)]
    bounds = [size * k // count for k in range(count + 1)]
    out = {}
    for label, fn in (("Adam alone", lambda k: _adam_alone(p, grads[k], m, v, bounds[k], bounds[k + 1])),
                      ("the same bytes read and written", lambda k: _read_write(flat, 3 * bounds[k],
                                                                                  3 * bounds[k + 1]))):
        fn(0)
        out[label] = median_ms(lambda: be.workers.run(fn, count), rounds)
    return out, size * 4 * 6 / 1e6


def pack_megabytes(cfg):
    """MB the bf16 update writes into the weights' packs per step: every weight in two bf16 layouts."""
    from fastvae.params import layer_shapes
    return sum(2 * 2 * a * b for _, a, b in layer_shapes(cfg)) / 1e6


def measure(steps=400, rounds=3, backend="cpu"):
    from fastvae import threads
    from fastvae.backends import get_backend
    from fastvae.config import Config
    from fastvae.data import load_mnist
    from fastvae.step import MIN_SHARD_ROWS, row_shards
    be, cpu, cfg = get_backend(backend), get_backend("cpu"), Config()
    data = load_mnist().train_x
    count = threads.detect().threads
    shard_rows = row_shards(cfg.batch_size, max(1, min(count, cfg.batch_size // MIN_SHARD_ROWS)))[0][1]
    runs = collections.defaultdict(list)
    for _ in range(rounds):
        total, phases = whole_steps(be, cfg, data, steps, count)
        runs["step"].append(total)
        for k, v in phases.items():
            runs[f"phase {k}"].append(v)
        runs["step from Python"].append(whole_steps(be, cfg, data, steps, count, record=False)[0])
        if be.weight_update_steps is not None and count > 1:
            runs["step in chunks"].append(chunked_steps(be, cfg, data, steps, count))
        # one shard alone, part by part, on the cpu backend (its products timed through np.matmul); its passes are
        # cpu-bf16's too (that backend calls the same Numba passes after its tiles)
        for k, v in one_shard(cpu, cfg, data, steps, shard_rows).items():
            if backend == "cpu" or not k.startswith("products"):
                runs[f"shard {k}"].append(v)
        runs["products alone (17, full batch, OpenBLAS's threads)"].append(products_alone(cfg))
        runs[f"floor: products each alone on one core ({ENGINE[backend]}), halved"].append(
            products_one_core(backend) / count)
        libs = threads.Libraries(be.workers)
        try:
            libs.set(count)
            memory, megabytes = memory_floors(be, cfg, count)
        finally:
            libs.close()
        adam, stream = memory["Adam alone"], memory["the same bytes read and written"]
        runs[f"floor: Adam alone ({megabytes:.0f} MB moved, {count} threads)"].append(adam)
        runs[f"(the same bytes read and written: {megabytes:.0f} MB moved)"].append(stream)
        if backend == "cpu-bf16":   # written, and first read for ownership: twice the bytes, at the stream's rate
            packs = pack_megabytes(cfg)
            runs[f"floor: the packs' writes ({packs:.1f} MB, twice at the stream's rate)"].append(
                2 * packs / megabytes * stream)
    result = {"backend": backend, "threads": count, "shard_rows": shard_rows, "steps": steps, "rounds": rounds,
              "ms": {k: statistics.median(v) for k, v in runs.items()}}
    result["floor"] = floor_sum(result)
    return result


ENGINE = {"cpu": "one-thread sgemm, dinp.product for dz @ w.T",
          "cpu-bf16": "amx.product" + ("" if amx.USE_AMX else " on AVX512-BF16, no AMX here") + ", weights packed"}


def floor_sum(result):
    """ms: what one step would take if each part ran at its floor and the two threads lost nothing to each other:
    the products on both cores (halved), Adam's traffic, the bf16 packs' writes, one shard's passes and gather
    (the two shards' passes run at once) and Python between its kernels."""
    ms = result["ms"]
    passes = sum(v for k, v in ms.items() if k.startswith("shard ") and not k.startswith("shard products"))
    return sum(v for k, v in ms.items() if k.startswith("floor: ")) + passes


# rows whose key (kept in the saved JSON) says less than a reader needs
SHOWN_AS = {
    "step": "one step per call (each shard's kernels replayed as one call: fastvae.backends.capture)",
    "step from Python": "the same step with each kernel called from Python (no replay)",
    "step in chunks": "the step as a fit runs it: chunks of 25 steps, one GIL-free call per thread "
                      "(fastvae.step_chunks)",
    "phase shards": "the shards' phase: forward and the backward's dz and input gradients of every shard at once",
    "phase update": "the update's phase: the weight gradients over the whole batch fused with Adam",
    "products alone (17, full batch, OpenBLAS's threads)":
        "the 17 products in fp32, each alone at the full batch in OpenBLAS's own threads (the yardstick)",
}


def table(result):
    ms = result["ms"]
    lines = [f"| part of a {result.get('backend', 'cpu')} step on {result['threads']} threads (ms per step, median of "
             f"{result['rounds']} round{'s' * (result['rounds'] != 1)} of {result['steps']} steps) | ms |", "| --- | ---: |"]
    lines += [f"| {SHOWN_AS.get(k, k)} | {v:.3f} |" for k, v in ms.items()]
    shard = sum(v for k, v in ms.items() if k.startswith("shard "))
    if any(k.startswith("shard products") for k in ms):
        lines.append(f"| one shard's parts together ({result['shard_rows']} rows, one thread) | {shard:.3f} |")
        lines.append(f"| running {result['threads']} shards at once costs (phase shards - one shard) | "
                     f"{ms['phase shards'] - shard:.3f} |")
    floor = ms["products alone (17, full batch, OpenBLAS's threads)"]
    fit = ms.get("step in chunks", ms["step"])              # the step as a fit runs it
    lines.append(f"| step ÷ products alone | {fit / floor:.2f} |")
    if "floor" in result:
        lines.append(f"| floor of the step: products (halved) + Adam alone + packs + one shard's passes and Python | "
                     f"{result['floor']:.3f} |")
        lines.append(f"| step ÷ that floor | {fit / result['floor']:.2f} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400, help="steps per round of whole steps (default 400)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="alternated rounds of every measurement; the table gives their medians (default 3)")
    parser.add_argument("--backend", default="cpu", choices=("cpu", "cpu-bf16"),
                        help="cpu (fp32, the default) or cpu-bf16 (bf16 products: AMX, or AVX512-BF16 without it)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures to FILE as JSON")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.rounds < 1:
        print(f"step_breakdown: error: --steps and --rounds must be positive integers, got {args.steps} and "
              f"{args.rounds}", file=sys.stderr)
        return 2
    result = measure(args.steps, args.rounds, args.backend)
    print(table(result))
    if args.json:                   # with the machine and time, as report.py prints them (it reads this file too)
        import datetime
        from fastvae import jsonfile, machine
        jsonfile.write(args.json, {"machine": machine.describe(), "numpy": np.__version__,
                                   "datetime": datetime.datetime.now(datetime.timezone.utc).isoformat(),
                                   "argv": list(sys.argv[1:] if argv is None else argv), "breakdown": result})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
