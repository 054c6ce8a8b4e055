"""What a captured CPU step would save (issue 14's next lever, measured, not used by the package): each row shard's
kernel calls recorded once from fastvae.step's own order, on the shard's own thread, then replayed in one GIL-free
Numba call per shard (generated source calling the recorded dispatchers with the recorded arguments), beside the step's
shards as they run today (Python between the 13-14 kernels of each shard).

    python -m bench.captured_shard [cpu|cpu-bf16] [--rounds 4] [--steps 300]

Prints, per round, two shards at once on the backend's 2 workers and one shard alone, both ways (median ms). Measured
2026-12-06 on the project's Xeon (two runs of the same code for cpu-bf16, one for cpu): cpu-bf16 two shards 1.44-1.59
-> 1.07-1.23 ms, one alone 1.06-1.12 -> 0.83-0.96; cpu (fp32) two shards 4.09-4.18 -> 3.83-3.92, one alone 3.63-3.70
-> 3.41-3.56; compiling the replays 3-6 s per process (the generated source is not cached). A real capture would also need: the batch's indices in a fixed buffer, the capture
dropped whenever a weight array or a pack is replaced, each shard replayed on the thread whose scratch it recorded, and
the busy pool's path left uncaptured.
"""
from __future__ import annotations

import argparse
import sys
import threading
import time


def _recording(module, name, log):
    fn = getattr(module, name)

    def call(*args):
        log.setdefault(threading.get_ident(), []).append((fn, args))
        return fn(*args)
    return fn, call


def _compiled(calls):
    """One nogil Numba function calling calls' dispatchers in order with their recorded arguments."""
    from numba import njit
    names = {f"f{i}": fn for i, (fn, _) in enumerate(calls)}
    source = "def replay(" + ", ".join(f"a{i}" for i in range(len(calls))) + "):\n" + "".join(
        f"    f{i}(*a{i})\n" for i in range(len(calls)))
    exec(source, names)                                     # noqa: S102  (our own generated source)
    replay = njit(nogil=True)(names["replay"])
    args = tuple(a for _, a in calls)
    return lambda: replay(*args)


def measure(backend="cpu-bf16", rounds=4, steps=300):
    from .step_breakdown import _model, median_ms
    from fastvae import step, threads
    from fastvae.backends import cpu, cpu_bf16, get_backend
    from fastvae.config import Config
    from fastvae.data import load_mnist
    from fastvae.rng import STREAM_TRAIN
    be, cfg = get_backend(backend), Config()
    data = load_mnist().train_x
    state, ws, order = _model(be, cfg, data, cfg.batch_size)
    libs = threads.Libraries(be.workers)
    libs.set(2)
    bounds = step.row_shards(cfg.batch_size, 2)
    idx = order[:cfg.batch_size].copy()

    def shard(s):
        lo, hi = bounds[s]
        a = ws.rows(hi - lo, lo)
        loss, counters = ws.shard(s) if s else (ws.loss, state.counters)
        be.gather_batch(a.x, data, idx[lo:hi])
        step.forward(be, cfg, state.weights, a, loss, counters, STREAM_TRAIN)
        step.backward(be, cfg, state.weights, None, a, counters, STREAM_TRAIN)

    module = cpu if backend == "cpu" else cpu_bf16
    kernels = [(module, n) for n in ("_dense_forward", "_dense_backward", "_heads_forward", "_output_forward")]
    kernels += [(cpu, "_gather_u8")] + ([(cpu, "_heads_backward")] if backend == "cpu" else [(cpu, "_heads_grad")])
    log, owner = {}, {}
    try:
        for _ in range(3):
            be.workers.run(shard, 2)
        real = {}
        for mod, name in kernels:
            real[mod, name], recorder = _recording(mod, name, log)
            setattr(mod, name, recorder)

        def record(s):
            owner[s] = threading.get_ident()
            shard(s)
        be.workers.run(record, 2)
    finally:
        for (mod, name), fn in real.items():
            setattr(mod, name, fn)
    replays = [_compiled(log[owner[s]]) for s in range(2)]
    begin = time.perf_counter()
    for r in replays:
        r()
    print(f"{backend}: {len(log[owner[0]])} kernels per shard; compiling the replays {time.perf_counter() - begin:.1f} s")

    try:
        for _ in range(rounds):
            two_py = median_ms(lambda: be.workers.run(shard, 2), steps)
            two_cap = median_ms(lambda: be.workers.run(lambda s: replays[s](), 2), steps)
            one_py = median_ms(lambda: shard(0), steps)
            one_cap = median_ms(replays[0], steps)
            print(f"two shards at once: Python between kernels {two_py:.3f} ms, captured {two_cap:.3f} | "
                  f"one shard alone: {one_py:.3f}, captured {one_cap:.3f}")
    finally:
        libs.close()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("backend", nargs="?", default="cpu-bf16", choices=("cpu", "cpu-bf16"))
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.steps < 1:
        print("captured_shard: error: --rounds and --steps must be positive integers", file=sys.stderr)
        return 2
    measure(args.backend, args.rounds, args.steps)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
