"""A barrier that Numba kernels wait at outside the GIL: the step's row shards, then the weight update, in one job.

A barrier is an int64 array [arrived, parts, aborted, spins, slept, departed, back]
(depart(): the end of a job; back: the pool has handed out its next job). arrive_and_wait() (Numba, called inside a
nogil
kernel) adds this thread to `arrived` and returns True once all `parts` have; False as soon as the job is aborted (a
part raised: abort()). Why inside the kernel: the update's first kernel waits there, so the thread that finishes its
shard first goes on the moment the last one arrives, without coming back to Python for the GIL: a thread that sleeps
on a lock (or on the GIL) is woken by the OS, and on the project's 2-vCPU KVM machines that wake took 40-70 us. A
waiter spins (pause) at most `spins` times (about SPIN_SECONDS), then sleeps on a futex until the last arrival (or an
abort) wakes it, and, if it had spun, counts itself in `slept`: fastvae.workers spins no more for a while after a job
where that happened, so a thread whose partner was descheduled (another process took its core) does not burn its
own core.

Per layer instead (arrive(), mark(), wait_for_layer()): the first phase marks each layer in a separate int64 array
(`ready`, one count per layer) as it finishes it, the second only arrives and then waits, before each piece of work,
for every part's mark of that piece's layer (or every part's arrival), so the update starts on the layers the shards
finished first while a slower shard works on.
"""
import functools
import time

from . import numba_cache

numba_cache.setup()         # before this module's Numba functions are defined (a cache place; the package's keys)

import numpy as np  # noqa: E402
from numba import njit  # noqa: E402

from .atomics import FUTEX, claim, futex_wait, futex_wake, load_acquire, pause  # noqa: E402

AVAILABLE = FUTEX   # x86-64 Linux; elsewhere fastvae.workers puts a Python barrier between the phases instead
ARRIVED, PARTS, ABORTED, SPINS, SLEPT, DEPARTED, BACK = range(7)
SPIN_SECONDS = 5e-4


def new(parts, spin=True):
    """A barrier for `parts` threads, whose waiters spin first (for about SPIN_SECONDS) when `spin`."""
    return np.array([0, parts, 0, spins() if spin else 0, 0, 0, 0], np.int64)


@njit(cache=True, nogil=True)
def abort(barrier):
    """Every wait at `barrier`, now and later, returns False (depart()'s and wait_back()'s too)."""
    claim(barrier[ABORTED:ABORTED + 1])          # an atomic store of a nonzero value
    claim(barrier[ARRIVED:ARRIVED + 1])          # a change of the words the sleepers wait on, then wake them
    futex_wake(barrier, ARRIVED)
    claim(barrier[DEPARTED:DEPARTED + 1])
    futex_wake(barrier, DEPARTED)
    claim(barrier[BACK:BACK + 1])
    futex_wake(barrier, BACK)


@njit(cache=True, nogil=True)
def release(barrier):
    """Inside a kernel, what fastvae.workers does between jobs: BACK set (atomically, after every store before it),
    so the departed parts go on, and whoever sleeps in wait_back() woken."""
    claim(barrier[BACK:BACK + 1])
    futex_wake(barrier, BACK)


@njit(cache=True, nogil=True)
def wait_back(barrier):
    """After depart() (not the leader): until release() (True) or an abort (False), spinning first as the other
    waits do, then sleeping. depart() alone spins a while and returns; this is for a part whose next work must not
    start before the leader's (fastvae.step_chunks: the next step, after part 0 has ended this one)."""
    return _wait_for_all(barrier, BACK, barrier, BACK, 1, False)


@njit(cache=True, nogil=True)
def depart(barrier, leader):
    """The last act of a part's last kernel: this thread is done. The leader (part 0, the thread that called
    Workers.run_phases) then waits, spinning first as arrive_and_wait does, until every part has departed or the job
    was aborted; the others spin (at most the barrier's spin budget, never sleeping) until the pool hands out its
    next job (`BACK`, set by Workers then), so that the leader returns from the job without waiting for their Python
    and they do not wait for the GIL while the leader's Python runs between jobs: a thread that sleeps on the GIL is
    woken by the OS, 40-70 us on the project's KVM machines, and the pool thread's shard started 0.1 ms after the
    caller's when it did. A spin that runs out (no job came) is not counted in SLEPT: it waited for no part."""
    if claim(barrier[DEPARTED:DEPARTED + 1]) + 1 >= barrier[PARTS]:
        futex_wake(barrier, DEPARTED)
    if not leader:
        if barrier[PARTS] == 1:
            return
        budget = barrier[SPINS]
        n = 0
        while load_acquire(barrier, BACK) == 0 and load_acquire(barrier, ABORTED) == 0:
            if n == budget:
                return
            pause()
            n += 1
        return
    _wait_for_all(barrier, DEPARTED, barrier, DEPARTED, barrier[PARTS], True)


@njit(cache=True, nogil=True)
def arrive_and_wait(barrier):
    """This thread has arrived; True once every part has, False if the job was aborted."""
    if claim(barrier[ARRIVED:ARRIVED + 1]) + 1 >= barrier[PARTS]:
        futex_wake(barrier, ARRIVED)
        return load_acquire(barrier, ABORTED) == 0
    return _wait_for_all(barrier, ARRIVED, barrier, ARRIVED, barrier[PARTS], True)


@njit(cache=True, nogil=True)
def arrive(barrier):
    """This thread has arrived, without waiting for the others (wait_for_layer waits instead): the order of its
    arrival, 0 for the first."""
    order = claim(barrier[ARRIVED:ARRIVED + 1])
    if order + 1 >= barrier[PARTS]:
        futex_wake(barrier, ARRIVED)
    return order


@njit(cache=True, nogil=True)
def mark(ready, index):
    """ready[index] += 1 as one atomic add: this part's first phase is done with layer `index` (wait_for_layer)."""
    claim(ready[index:index + 1])


@njit(cache=True, nogil=True)
def wait_for_layer(barrier, ready, index):
    """After arrive(): True once every part has marked layer `index` in `ready` (an int64 array, zeroed before the
    job) or has arrived, False once the job is aborted. Why: the update of a layer's weights needs every row shard's
    dz of that layer and nothing more; the shards' backward passes finish the last layers first, so a thread done
    with its shard updates those while the other shard works on (measured on the Xeon, 2026-12-06: the thread that
    finished first had waited 0.13-0.19 ms per step at arrive_and_wait). Spins, then sleeps, as arrive_and_wait."""
    return _wait_for_all(barrier, ARRIVED, ready, index, barrier[PARTS], True)


@njit(inline="always", cache=True, nogil=True)
def _wait_for_all(barrier, word, ready, index, need, count_slept):
    """True once barrier[word] (ARRIVED or DEPARTED) counts `need` (every part), or ready[index] does (wait_for_layer;
    the others pass barrier and word again; wait_back: BACK, need 1, and a spin in vain not counted: like depart's,
    it waits for no part's work), False once the job is aborted: spinning at most the barrier's budget, then
    sleeping on a futex on that word (a change of ready[index] does not wake it: the arrivals that follow do); a
    wait that spun in vain counts itself in `slept` (the pool then spins no more for a while: QUIET_JOBS)."""
    budget = barrier[SPINS]
    n = 0
    while True:
        counted = load_acquire(barrier, word)
        if load_acquire(barrier, ABORTED):
            return False
        if counted >= need or load_acquire(ready, index) >= need:
            return True
        if n < budget:
            pause()
            n += 1
        else:
            if n == budget:
                if budget > 0 and count_slept:  # spun in vain
                    claim(barrier[SLEPT:SLEPT + 1])
                n += 1
            futex_wait(barrier, word, counted)


@njit(cache=True, nogil=True)
def _pauses(count):
    for _ in range(count):
        pause()


@functools.cache
def spins():
    """Pause instructions in SPIN_SECONDS on this CPU (10-40 ns each, by model): timed once per process."""
    _pauses(10)
    begin = time.perf_counter()
    _pauses(20000)
    return max(100, int(SPIN_SECONDS / max(time.perf_counter() - begin, 1e-9) * 20000))
