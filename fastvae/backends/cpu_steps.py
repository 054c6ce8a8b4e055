"""The kernels that join one thread's training steps when a chunk of steps runs as one GIL-free call per thread.

fastvae.step_chunks records, on each of the workers' threads, what that thread does in one step: step_begin (its row
shard's batch indices, counters and loss accumulator), its shard's kernels, its share of the update
(cpu_update.weight_items_step), then step_end (part 0) or step_next (the others); the recording is replayed round
after round (capture.Replay.steps). What changes from step to step is read at the thread's own cursor (cursor[0]:
the step's number in the chunk, advanced by the thread's last kernel): the indices, the update's claim counter and
lr_t, and the step's barrier (a row of `barriers`, fastvae.barrier).

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
def step_begin(cursor, orders, batch, lo, hi, idx, step_counters, counters, loss):
    """Step cursor[0] of the chunk, row shard lo..hi: idx[lo:hi] = its rows of the step's batch (orders holds the
    chunk's batches one after another, `batch` indices each). A shard with counters of its own (not None: shards 1,
    2, ...) gets the step's counters (step_counters) with its first row, and its loss accumulator zeroed."""
    base = cursor[0] * batch
    for i in range(lo, hi):
        idx[i] = orders[base + i]
    if counters is not None:
        counters[:] = step_counters
        counters[COUNTER_ROW] = lo
        loss[:] = 0.0


@njit(cache=True, nogil=True)
def step_end(cursor, barriers, counters, loss, shard_losses, ready, stop):
    """Part 0, after its update's depart (every part has departed): step cursor[0] ends (see the module's docstring),
    then the next is released. Nothing but the release where the step's barrier was aborted (a part raised)."""
    j = cursor[0]
    wait = barriers[j]
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


@njit(cache=True, nogil=True)
def step_next(cursor, barriers, stop):
    """A part other than 0, after its update's depart: waits until part 0 has ended step cursor[0], then goes on to
    the next; where the step was aborted, the chunk stops after it (`stop`, which the abort sets too)."""
    j = cursor[0]
    if not wait_back(barriers[j]):
        claim(stop[0:1])
    cursor[0] = j + 1
