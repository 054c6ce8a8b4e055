"""Inference on the host backends (evaluate, encode, decode): a call's rows in chunks, each chunk taken by whichever
of the backend's workers is free next, its kernels on that one thread with OpenBLAS at one thread per call.

Why: outside a fit, inference ran one chunk after another with the products at OpenBLAS's own thread count and the
passes between them on one core, and OpenBLAS's threads spin while they wait: where another process took a core,
`evaluate` of 10,000 images took 2.04 s at threads "auto" against 0.61 s at threads=1 (EPYC, a CI run beside it,
2026-12-07). fastvae's workers wait without spinning, and a worker whose core is taken only takes fewer chunks.

The numbers do not depend on the thread count: a chunk is computed the same way (its rows, one thread, OpenBLAS at
one thread) whichever worker takes it, and evaluate's losses are kept per chunk and summed in the chunks' order, as
one thread adds them. So threads=1, 2 or "auto", a pool busy with another model's fit, and a fit's validation pass
all give the same bits (OpenBLAS at 2 threads reduces its products differently: fastvae.threads).
"""
from __future__ import annotations

import threading
from collections.abc import Callable

from .constants import CHUNK_ROWS_ON_WORKERS
from .sigint import KeptHandlerErrors
from .threads import detect, held_for_inference


def chunk_rows(be, rows: int) -> int:
    """The rows of a chunk asked to hold `rows`: at most CHUNK_ROWS_ON_WORKERS on a backend with workers (a decode
    of 2048 rows in one chunk ran on one thread), else `rows` (a GPU takes a large chunk in one launch)."""
    return min(rows, CHUNK_ROWS_ON_WORKERS) if be.workers is not None else rows


def parts(be, threads, chunks: int) -> int:
    """How many workers take the `chunks` chunks of a call on backend `be` for a model's `threads` (None: "auto"):
    fastvae.threads.detect's count (the CPUs this process may use, or the count fixed by `threads` or the
    environment, at most the CPUs; not the pacer's adapted one), at most one per chunk; 1 without workers."""
    if be.workers is None or chunks <= 1:
        return 1
    return max(1, min(detect(threads).threads, chunks))


def threads_held(be, threads) -> held_for_inference:
    """OpenBLAS at one thread per call while the block runs on a backend with workers (at the model's fixed
    `threads` without them), the previous count back after it (fastvae.threads.held_for_inference)."""
    return held_for_inference(1 if be.workers is not None else threads)


def run(be, parts: int, chunks: int, fn: Callable[[int, int], None]) -> None:
    """fn(part, j) for every chunk j in 0..chunks - 1, on `parts` threads (part 0 on the caller's, the others on
    be.workers), each taking the next chunk not yet taken once it is free. After an exception in one part (Ctrl-C
    lands in part 0) the others take no further chunk; it is raised once every part has stopped (fastvae.workers).
    A signal handler's exception that Python dropped meanwhile (run inside a garbage collector's weakref callback:
    fastvae.sigint.KeptHandlerErrors) is raised after the caller's next chunk, as a fit's is between its chunks: an
    evaluation's timeout was lost so, and the call ran to its end. Not for one chunk: the scan of the handlers costs
    a few microseconds, a tenth of a one-image call, and one chunk has no boundary to stop at."""
    if chunks <= 1:
        for j in range(chunks):
            fn(0, j)
        return
    lock = threading.Lock()
    state = {"next": 0, "stop": False}
    kept = KeptHandlerErrors()
    try:
        kept.__enter__()                # (inside the try: a handler's exception as it ends leaves no hook behind)

        def part(k):
            try:
                while True:
                    with lock:
                        j = state["next"]
                        if state["stop"] or j >= chunks:
                            return
                        state["next"] = j + 1
                    fn(k, j)
                    if k == 0:              # (the caller's thread: where Python runs handlers)
                        kept.raise_kept()
            except BaseException:
                state["stop"] = True
                raise
        if parts <= 1:
            part(0)
        else:
            be.workers.run(part, parts)
        kept.raise_kept()
    finally:
        kept.__exit__()
