"""evaluate, encode and decode of MNIST's 10,000 test images at the seed's layers: on fastvae's workers
(fastvae.inference, since 2026-12-07) against the way they ran before (one chunk after another on the calling thread,
the products at OpenBLAS's own thread count, or at one thread: threads=1, the advice for a busy machine then), idle
and with one core kept busy by another process.

    python -m pytest bench/test_inference_speed.py --benchmark-enable -s [--benchmark-json FILE]

Also the IWAE bound's log-likelihoods computed in the decoder's chunks against the float64 NumPy pass they were
(`-k iwae`). In turns: each round times every call each way back to back (the order alternating), so each ratio is taken
between calls seconds apart on a machine whose speed drifts; the table gives the medians over the rounds and the
median of the rounds' ratios. With benchmarks disabled (the test suite) one round of 300 images checks that both ways
give the same numbers to float32's accuracy (their products' last bits differ: OpenBLAS's threads split them).
"""
import statistics
import subprocess
import sys
import time

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from fastvae import VAE, step
from fastvae.constants import COUNTERS, EVAL_ROWS

GROUP = "inference (10000 images, seed's layers)"
CALLS = [("evaluate", "evaluate"), ("encode", "encode"), ("decode", "decode_logits(rows=2048)")]
DECODE_ROWS = 2048              # fastvae.evaluate's IWAE bound decodes this many rows a call


def _as_it_was(model, x, z):
    """The calls as they ran until 2026-12-07: one workspace, one chunk after another, OpenBLAS's own count."""
    be, cfg, weights = model.backend, model.config, model.state.weights
    out = {}
    ws = step.Workspace(be, cfg, EVAL_ROWS)
    loss, counters = np.zeros(2), np.zeros(COUNTERS, dtype=np.int64)
    begin = time.perf_counter()
    for j, lo in enumerate(range(0, len(x), EVAL_ROWS)):
        idx = np.arange(lo, min(lo + EVAL_ROWS, len(x)))
        step.evaluate_chunk(be, cfg, weights, ws.rows(len(idx)), x, idx, cfg.seed, j, loss, counters)
    out["evaluate"] = (time.perf_counter() - begin, loss / len(x))
    ws = step.Workspace(be, cfg, cfg.batch_size)
    mu_logvar = np.empty((len(x), 2 * cfg.latent), np.float32)
    begin = time.perf_counter()
    for lo in range(0, len(x), ws.batch):
        a = ws.rows(min(ws.batch, len(x) - lo))
        be.gather_batch(a.x, x, np.arange(lo, lo + len(a.x)))
        step.encode(be, cfg, weights, a)
        mu_logvar[lo:lo + len(a.x)] = a.mu_logvar
    out["encode"] = (time.perf_counter() - begin, mu_logvar[:, :cfg.latent])
    ws = step.Workspace(be, cfg, DECODE_ROWS)
    logits = np.empty((len(z), cfg.input_width))
    begin = time.perf_counter()
    for lo in range(0, len(z), ws.batch):
        a = ws.rows(min(ws.batch, len(z) - lo))
        a.z[...] = z[lo:lo + len(a.z)]
        step.decode(be, cfg, weights, a)
        logits[lo:lo + len(a.z)] = a.logits
    out["decode"] = (time.perf_counter() - begin, logits)
    return out


def _at_one_thread(model, x, z):
    """The same at threads=1: OpenBLAS at one thread, so its threads neither spin nor help."""
    with threadpool_limits(1, user_api="blas"):
        return _as_it_was(model, x, z)


def _now(model, x, z):
    out = {}
    begin = time.perf_counter()
    loss = model.evaluate(x)
    out["evaluate"] = (time.perf_counter() - begin, np.array([loss["reconstruction"], loss["kl"]]))
    begin = time.perf_counter()
    mu, _ = model.encode(x)
    out["encode"] = (time.perf_counter() - begin, mu)
    begin = time.perf_counter()
    logits = model.decode_logits(z, rows=DECODE_ROWS)
    out["decode"] = (time.perf_counter() - begin, logits)
    return out


@pytest.mark.benchmark(group=GROUP)
@pytest.mark.parametrize("situation", ["idle", "one core busy"])
def test_inference_on_the_workers_against_openblas_threads(benchmark, mnist, situation):
    smoke = benchmark.disabled
    images, rounds = (300, 1) if smoke else (len(mnist.test_x), 7)
    model = VAE(backend="cpu", seed=0)                      # the seed's layers, He-initialised
    x = mnist.test_x[:images]
    z = np.random.default_rng(0).standard_normal((images, model.config.latent)).astype(np.float32)
    _now(model, x[:EVAL_ROWS], z[:EVAL_ROWS])               # kernels loaded, workspaces made, outside the timing
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if situation != "idle" else None
    ways = [("as it was", _as_it_was), ("as it was, threads=1", _at_one_thread), ("workers", _now)]
    times = {way: {call: [] for call, _ in CALLS} for way, _ in ways}
    try:
        def run():
            for r in range(rounds):
                for way, fn in (ways if r % 2 == 0 else ways[::-1]):
                    for call, (seconds, value) in fn(model, x, z).items():
                        times[way][call].append(seconds)
                        results[way, call] = value
        results = {}
        benchmark.pedantic(run, rounds=1, iterations=1)
    finally:
        if busy is not None:
            busy.kill()
            busy.wait()
    for call, _ in CALLS:       # the same numbers: bit for bit at one thread, to float32 products' accuracy at two
        for way in ("as it was", "as it was, threads=1"):
            np.testing.assert_allclose(results[way, call], results["workers", call], rtol=1e-4, atol=1e-4,
                                       err_msg=f"{call}, {way}")
        np.testing.assert_array_equal(results["as it was, threads=1", call], results["workers", call], err_msg=call)
    table = {}
    for call, label in CALLS:
        new = times["workers"][call]
        row = table[label] = {"workers s": statistics.median(new)}
        for way in ("as it was", "as it was, threads=1"):
            old = times[way][call]
            row[f"{way} s"] = statistics.median(old)
            row[f"{way} / workers"] = statistics.median(o / n for o, n in zip(old, new))
    benchmark.extra_info.update(situation=situation, images=images, rounds=rounds, results=table,
                                decode_rows=DECODE_ROWS, threads=model.threads)
    print(f"\n{situation}, {images} images, {rounds} rounds in turns (median s; x: the median of the rounds' ratio to "
          "the workers' time)")
    for label, row in table.items():
        print(f"  {label:26s} as it was {row['as it was s']:.3f} ({row['as it was / workers']:.2f}x)  at threads=1 "
              f"{row['as it was, threads=1 s']:.3f} ({row['as it was, threads=1 / workers']:.2f}x)  workers "
              f"{row['workers s']:.3f}")


@pytest.mark.benchmark(group="IWAE bound (seed's layers)")
def test_iwae_log_likelihoods_in_the_chunks_against_float64_numpy(benchmark, mnist, monkeypatch):
    """iwae_bound of 100 images at k = 100 (10,000 decoded samples), its codings drawn and its log-likelihoods
    computed in the decoder's chunks (now) or as the reference backend does, in NumPy on the calling thread (every
    backend's way before 2026-12-07), in turns; the bounds agree within the float32 row sums' error."""
    from fastvae import evaluate
    smoke = benchmark.disabled
    images, rounds = (10, 1) if smoke else (100, 5)
    model = VAE(backend="cpu", seed=0)
    x = mnist.test_x[:images]
    evaluate.iwae_bound(model, x[:2], k=10)                 # kernels loaded, outside the timing
    # as before 2026-12-07: the noise, float64 logits and targets in NumPy on the calling thread (the decode itself
    # on the workers both ways)
    ways = [("float64 NumPy", evaluate._float64_log_weights), ("in the chunks", evaluate._log_weights)]
    times = {way: [] for way, _ in ways}
    bounds = {}

    def run():
        for r in range(rounds):
            for way, fn in (ways if r % 2 == 0 else ways[::-1]):
                monkeypatch.setattr(evaluate, "_log_weights", fn)
                begin = time.perf_counter()
                bounds[way] = evaluate.iwae_bound(model, x, k=100)["bound"]
                times[way].append(time.perf_counter() - begin)
    benchmark.pedantic(run, rounds=1, iterations=1)
    np.testing.assert_allclose(bounds["in the chunks"], bounds["float64 NumPy"], rtol=1e-6)
    old, new = times["float64 NumPy"], times["in the chunks"]
    ratio = statistics.median(o / n for o, n in zip(old, new))
    benchmark.extra_info.update(images=images, k=100, rounds=rounds, float64_numpy_s=statistics.median(old),
                                in_the_chunks_s=statistics.median(new), ratio=ratio)
    print(f"\nIWAE, {images} images x k = 100, {rounds} rounds in turns: float64 NumPy {statistics.median(old):.3f} s, "
          f"in the chunks {statistics.median(new):.3f} s ({ratio:.2f}x)")
