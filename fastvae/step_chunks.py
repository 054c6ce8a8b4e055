"""Many training steps in one GIL-free call per thread, on a cpu backend with weight_update_steps.

Why: between two steps a fit's Python prepares the next (the update's plan, the job's hand-out to the pool's thread,
which then returns through Python and waits for the GIL): measured on the project's AMD EPYC (2026-12-06, fp32, two
threads), the first row shard started 0.13 ms and the pool thread's 0.18 ms after the step was called, and the step
returned 0.03 ms after its last kernel: 0.16-0.2 ms of a 6.4 ms step in which neither core computed.

How: each thread records, once, what it does in one step (fastvae.backends.cpu_steps: step_begin, its row shard's
kernels as fastvae.step.train_step runs them, its share of the update, step_finish), and a chunk of up to
CHUNK_STEPS steps is one job of the workers in which each thread replays its recording that many times
(capture.Replay.steps). What changes from step to step is set here beforehand, for the whole chunk: the batches'
indices (`orders`), each step's barrier, the update's claim counters and Adam's lr_t (cpu_update.adam_lr, Python's
float64 as every path computes it). The arithmetic is train_step's, kernel for kernel, so the numbers are the same
bits as steps run one by one (tests/test_step_chunks.py).

A chunk ends early only where the loss stopped being finite (part 0's step_finish checks it after every step, as the
trainer does on the host) or a part raised (the others are stopped: abort()). Ctrl-C is seen after the chunk.
"""
import threading
import warnings

import numpy as np

from . import barrier
from .backends.capture import call
from .backends.cpu_update import adam_lr
from .constants import COUNTER_STEP

# Steps per chunk: as many as the progress bar's updates apart (fastvae.training.PROGRESS_EVERY), 0.1-0.2 s, so a
# Ctrl-C still stops within a fraction of a second and the bar moves as often as before.
CHUNK_STEPS = 25


class StepChunks:
    """Chunks of full-batch steps of one fastvae.step.Stepper (its backend, state, workspace, data set and index
    buffer) on `parts` row shards. run() returns the number of steps done, or None where the workers' pool is busy
    (another thread's job: the caller steps one by one). `refused`: why its steps cannot be replayed (then run()
    is not to be called), else None."""

    def __init__(self, stepper, parts):
        from .backends import cpu_steps
        from .step import _update_args, row_shards
        be, ws, state = stepper.be, stepper.ws, stepper.state
        # the stepper's parts, not the stepper, which holds this (no reference cycle keeps a fit's arrays alive)
        self.be, self.cfg, self.state, self.ws, self.data, self.idx = be, stepper.cfg, state, ws, stepper.data, \
            stepper.idx
        self.parts, self._kernels = parts, cpu_steps
        self.bounds = row_shards(ws.batch, parts)
        self.orders = np.zeros(CHUNK_STEPS * ws.batch, np.int64)
        self.cursors = np.zeros((parts, 8), np.int64)        # each thread's own line: its cursor at [k, 0]
        self.barriers = np.zeros((CHUNK_STEPS, 8), np.int64)
        self.counters = np.zeros((CHUNK_STEPS, 3), np.int64)  # the update's claim counters (cpu_update.next_item)
        self.lr_ts = np.zeros(CHUNK_STEPS)
        self.stop = np.zeros(8, np.int64)
        self.counters0 = np.zeros_like(state.counters)          # shard 0's (_step)
        self.ready = ws.ready(len(state.weights))
        cfg = self.cfg
        params, grads, m, v, _, inputs, douts = _update_args(cfg, state, ws.rows(ws.batch))[:7]
        self.update = be.weight_update_steps(params, grads, m, v, inputs, douts, cfg.beta1, cfg.beta2, cfg.adam_eps,
                                             self)
        self.replays = None
        self.owner = None           # the thread that recorded them (part 0's runs there; the others' on the pool's)
        self.compiled_now = False   # the last run() recorded and compiled them
        self.refused = None
        self.seconds = 0.0          # what compiling the replays took

    @property
    def kernels(self):
        """Kernel calls per step in the replays (None before they are compiled)."""
        return None if self.replays is None else sum(r.kernels for r in self.replays)

    def run(self, order, first, count):
        """Up to `count` (>= 1) full batches of the epoch's `order` (an int64 array), from batch number `first`: the
        number of steps done, or None (nothing done) where the pool is busy. The first call of count >= 2 runs one
        step, records a second and compiles the replays (Stepper counts it as a capture); one of count 1 before it
        runs its step plainly."""
        ws = self.ws
        if self.replays is not None and self.owner != threading.get_ident():
            # recorded on another thread, whose scratch buffers (cpu_update.scratch) part 0's replay uses: record
            # again on this one (from Numba's cache: milliseconds)
            self.replays = None
        # a recording call first runs a step plainly: its kernels grow this thread's scratch buffers (amx.scratch) to
        # their size, so the recorded step's arguments, the generated source and Numba's cache entry are those of
        # every later recording (cpu-bf16's second fit in a process compiled a replay of its own, 3.5 s on a cold
        # cache: the buffers had grown inside the first one's recording). A call for one step alone records nothing,
        # so the first recording always follows a plain step (a fit of one batch, as a benchmark's warm-up, recorded
        # with the buffers growing, and the next fit compiled a second replay: 3.1 s of its first epoch, Xeon, bf16).
        self.compiled_now = recording = self.replays is None and count >= 2
        plain = self.replays is None and not recording
        n = 2 if recording else 1 if plain else min(count, CHUNK_STEPS)
        batch = ws.batch
        self.orders[:n * batch] = order[first * batch:(first + n) * batch]
        self.cursors[:, 0] = 0
        self.stop[:] = 0
        workers = self.be.workers
        self.barriers[:n] = barrier.new(self.parts, spin=workers.spinning).tolist() + [0]
        self.counters[:n] = 0
        cfg, t0 = self.cfg, int(self.state.counters[COUNTER_STEP])
        for j in range(n):
            self.lr_ts[j] = adam_lr(t0 + j + 1, cfg.lr, cfg.beta1, cfg.beta2)
        self.ready[:] = 0
        recorded = {}

        def part(k):
            try:
                if recording or plain:
                    self._step(k)
                    if recording:
                        recorded[k] = self.be.record(lambda: self._step(k))
                else:
                    self.replays[k].steps(n, self.stop)
            except BaseException:
                self.abort()
                raise
        if not workers.run_together(part, self.parts, self.abort):
            return None
        workers.spun(self.barriers[:n, barrier.SLEPT], jobs=n)
        if recording:
            self.owner = threading.get_ident()
            self._compile(recorded)
        return int(self.cursors[0, 0])

    def abort(self):
        """Every part stops: after the step in progress (stop), and at once wherever it waits (its barrier)."""
        self.stop[0] = 1
        for row in self.barriers:
            barrier.abort(row)

    def _step(self, k):
        """Thread k's part of step cursor[k] through the backend's kernel calls (recorded: _compile)."""
        from .step import STREAM_TRAIN, backward, forward
        ws, state, be, cs = self.ws, self.state, self.be, self._kernels
        lo, hi = self.bounds[k]
        # Every part's calls are the same code on other arrays, so one generated module serves them all (compiled
        # once: 2.9 s cold on the EPYC, against 7.0 for two): shard 0 too has counters of its own (the step's, copied
        # by step_begin: the same values train_step's shard 0 reads), and step_finish takes the batch's loss in a
        # tuple of its own (passed as a new argument by every part, as it is shard 0's accumulator too).
        loss, counters = (ws.loss, self.counters0) if k == 0 else ws.shard(k)
        call(cs.step_begin, self.cursors[k], self.orders, ws.batch, lo, hi, self.idx, state.counters, counters,
             loss, k > 0)
        a = ws.rows(hi - lo, lo)
        be.gather_batch(a.x, self.data, self.idx[lo:hi])
        forward(be, self.cfg, state.weights, a, loss, counters, STREAM_TRAIN)
        backward(be, self.cfg, state.weights, None, a, counters, STREAM_TRAIN, self.ready)
        self.update(k)
        call(cs.step_finish, self.cursors[k], self.barriers, k == 0, state.counters, (ws.loss,),
             tuple(ws.shard(s)[0] for s in range(1, self.parts)), self.ready, self.stop)

    def _compile(self, recorded):
        refused = [r.refused for r in recorded.values() if r.refused is not None]
        if refused:
            self.refused = refused[0]
            return
        try:
            self.replays = [recorded[k].compile() for k in range(self.parts)]
        except Exception as e:  # noqa: BLE001  (the replays only save time: the steps run one by one without them)
            self.refused = f"the replays did not compile ({type(e).__name__}: {e})"
            warnings.warn(f"fastvae: steps run one by one, without their chunks' replays: {self.refused}; the numbers "
                          "are the same, a little slower", RuntimeWarning, stacklevel=3)
            return
        self.seconds = sum(r.seconds for r in self.replays)
