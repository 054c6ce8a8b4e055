"""The kernels that join one thread's training steps when a chunk of steps runs as one GIL-free call per thread.

fastvae.step_chunks records, on each of the workers' threads, what that thread does in one step: step_begin (its row
shard's batch indices, counters and loss accumulator), its shard's kernels, its share of the update
(cpu_update.weight_items_step), then step_finish; the recording is replayed round after round
(capture.Replay.steps). What changes from step to step is read at the thread's own cursor (cursor[0]: the step's
number in the chunk, advanced by the thread's last kernel): the indices, the update's claim counter and lr_t, and the
step's barrier (a row of `barriers`, fastvae.barrier).

Part 0 ends each step once every part has departed from its barrier: the step counter advanced (the update's finish()),
the other shards' losses added to the batch's in shard order (the bits of fastvae.step.train_step), the loss checked
(not finite: stop[0] set, so every thread ends the chunk after this step, the one where a per-step trainer stops), the
layer marks cleared; then it releases the step (barrier.release), which the other parts wait for before their next.
"""
import numpy as np
from numba import njit

from ..atomics import claim, load_acquire
from ..barrier import ABORTED, SLEPT, SPINS, release, wait_back
from ..constants import COUNTER_ROW, COUNTER_STEP


@njit(cache=True, nogil=True)
def step_begin(cursor, orders, batch, lo, hi, idx, step_counters, counters, loss, zero_loss):
    """Step cursor[0] of the chunk, row shard lo..hi: idx[lo:hi] = its rows of the step's batch (orders holds the
    chunk's batches one after another, `batch` indices each); `counters`, the shard's own, = the step's
    (step_counters) with its first row; its loss accumulator zeroed where `zero_loss` (shards 1, 2, ...: shard 0
    adds to the batch's own, as fastvae.step.train_step's does)."""
    base = cursor[0] * batch
    for i in range(lo, hi):
        idx[i] = orders[base + i]
    counters[:] = step_counters
    counters[COUNTER_ROW] = lo
    if zero_loss:
        loss[:] = 0.0


@njit(cache=True, nogil=True)
def step_finish(cursor, barriers, leader, counters, totals, shard_losses, ready, stop):
    """After the thread's update has departed from step cursor[0]'s barrier: part 0 (`leader`) ends the step (see
    the module's docstring; `totals`: a 1-tuple, the batch's loss accumulator) and releases the next; the others
    wait for that release (where the step was aborted, the chunk stops after it: `stop`, which the abort sets too).
    One kernel for both, so that every thread's recording is the same code and one generated module serves all."""
    j = cursor[0]
    wait = barriers[j]
    if not leader:
        if not wait_back(wait):
            claim(stop[0:1])
        cursor[0] = j + 1
        return
    loss = totals[0]
    if load_acquire(wait, ABORTED) == 0:
        counters[COUNTER_STEP] += 1
        for shard_loss in shard_losses:
            for i in range(loss.size):
                loss[i] += shard_loss[i]
        finite = True
        for i in range(loss.size):
            finite = finite and np.isfinite(loss[i])
        if not finite:
            claim(stop[0:1])
        ready[:] = 0
        if load_acquire(wait, SLEPT):       # a waiter spun in vain (a partner descheduled): no more spinning
            for k in range(j + 1, barriers.shape[0]):
                barriers[k, SPINS] = 0
    cursor[0] = j + 1
    release(wait)
