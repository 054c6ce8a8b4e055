"""A small pool of persistent threads that run one function on several parts of a job at once.

The cpu backend's kernels release the GIL (Numba `nogil=True`, and NumPy's BLAS calls), so Python threads run them
in parallel: the step splits a batch's rows between the threads (fastvae.step.train_step) and Adam its parameters
(fastvae.backends.cpu). One pool decides the threading of the whole step, with OpenBLAS held at one thread: on the
project's 2-core Xeon the 17 products of a step took 4.7 ms as two halves of the batch on two threads of one-thread
BLAS against 4.8 ms in OpenBLAS's own two threads, and the passes and Adam, serial before, now run on both cores.

Waiting threads block (no spinning), so a thread whose core is taken by another process costs its share of the
work, not every product's: fastvae.threads then lowers the count. The calling thread does part 0 itself.
"""
from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable

import numpy as np

from . import barrier
from .sigint import held_interrupts

QUIET_JOBS = 16     # jobs whose barrier waiters do not spin after one where a waiter spun in vain


class Workers:
    """run(fn, parts) calls fn(0), ..., fn(parts - 1) at once: part 0 on the calling thread, the others on the pool's
    threads (started on first use and kept: as many as the largest job's parts - 1), and returns when all have finished.
    An exception in any part is raised in the caller after every part has finished (the first one, by part number).

    `count` is how many threads a job may use (1: everything runs on the caller; fastvae.threads sets it while
    training), per Python thread (see count). One job at a time: a run() that finds the pool busy (another Python
    thread's model training at the same moment, or a part calling run() again) does its parts one after another on
    its own thread instead, with the same results (a split gives the same numbers however its parts are scheduled)."""

    def __init__(self, count: int = 1):
        self._default = count
        self._counts = threading.local()
        self._threads: list[_Worker] = []
        self._busy = threading.Lock()
        self._quiet_jobs = 0            # < 0: run_phases' waiters sleep at once (no spin) until it is 0 again
        self._held = None               # the last run_phases' barrier: its departed parts spin until the next job
        self._owner = None              # the thread whose job holds the pool (close() refuses it)
        _POOLS.add(self)

    @property
    def count(self) -> int:
        """How many threads a job started on this Python thread may use: the count set on this thread (a fit's own,
        fastvae.threads), else the pool's first; a part on the pool's threads sees its job's. One count per process,
        set by each fit and put back by each as it ended, ran a threads=1 model's steps at a threads=2 model's count
        training beside it, and the other way round (a concurrency audit)."""
        return getattr(self._counts, "n", self._default)

    @count.setter
    def count(self, n: int) -> None:
        self._counts.n = n

    def _forget_threads(self) -> None:
        """In a child made by fork(): only the thread that forked lives on, so the pool's threads are gone (a job
        handed to them would be waited for forever: a fit in a multiprocessing Pool's worker after one in its
        parent hung so) and its lock may be held by a job of the parent's. Start afresh; the next job starts new
        threads."""
        self._threads = []
        self._busy = threading.Lock()
        self._held = None
        self._owner = None
        self._quiet_jobs = 0

    def run(self, fn: Callable[[int], None], parts: int) -> None:
        if parts <= 1:
            if parts == 1:
                fn(0)
            return
        def alone():            # (another job holds the pool: every part on this thread)
            for part in range(parts):
                fn(part)
        self._job(fn, parts, alone)

    def run_phases(self, first: Callable[[int], None], second: Callable[[int, np.ndarray], None], parts: int) -> None:
        """first(0), ..., first(parts - 1) at once, then second(k, barrier) on each part's thread: one job of the pool
        instead of two, so its threads are handed work (and the caller woken) once, not twice (measured on the
        project's Xeon: each hand-off 40-70 us, every step). `barrier` (fastvae.barrier) is for second(): it must
        call barrier.arrive_and_wait once, in its first kernel, before it reads what the firsts wrote, and do nothing
        more if that returns False (a part raised: the job is aborted); or barrier.arrive, then barrier.wait_for_layer
        before it reads each layer the firsts mark (barrier.mark), stopping where that returns False. Where
        fastvae.barrier is unavailable (not x86-64 Linux) the pool waits for every first in Python and passes None.
        When every second() ends in barrier.depart (the last act of its last kernel; part 0's waits there for the
        others), the job returns without waiting for the other threads' return through Python (their `done` is taken
        by the next wait): measured on the project's Xeon, the bf16 step 0.07 ms shorter (the caller no longer sleeps
        until a worker's Python is done); and those threads stay in depart, spinning, until the next job is handed
        out (or their spin budget runs out), instead of waiting for the GIL while this thread's Python runs between
        steps: the pool thread's shard then started 84 instead of 114 us after the job's start, the fp32 step 5.06
        -> 4.96 ms, bf16 2.12 -> 2.09 (alternated rounds). Errors are raised as run()'s are. A busy pool, or one
        part, runs all the firsts, then all the seconds, on the calling thread."""
        def one_after_another():
            for part in range(parts):
                first(part)
            for part in range(parts):
                second(part, barrier.new(1) if barrier.AVAILABLE else None)
        if parts <= 1:
            return one_after_another()
        if not barrier.AVAILABLE:
            return self._phases_in_python(first, second, parts, one_after_another)
        shared = barrier.new(parts, spin=self.spinning)

        def both(part):
            try:
                first(part)
                second(part, shared)
            except BaseException:
                barrier.abort(shared)   # the other parts stop waiting at the barrier, or never start waiting
                raise

        def departed():
            # every part's last kernel ended in barrier.depart (and part 0's waited there for the others): they are
            # done but for returning through Python, so they are not waited for now (_Worker.owe); they spin in
            # depart until the next job is handed out (BACK: _job sets it), then return through Python
            done = shared[barrier.DEPARTED] >= parts and not shared[barrier.ABORTED]
            self._held = shared
            return done
        if self._job(both, parts, one_after_another, on_error=lambda: barrier.abort(shared), departed=departed):
            self.spun(shared[barrier.SLEPT:barrier.SLEPT + 1])

    @property
    def spinning(self):
        """Whether the next job's barrier waiters spin before they sleep (barrier.new's `spin`)."""
        return self._quiet_jobs >= 0

    def spun(self, slept, jobs=1):
        """After a job: `slept`, the barriers' SLEPT counts: a waiter that spun in vain (its partner was late:
        descheduled?) sleeps at once for the next QUIET_JOBS jobs (a chunk of steps counts as `jobs`, its steps)."""
        self._quiet_jobs = -QUIET_JOBS if np.any(slept) else self._quiet_jobs + jobs

    def run_together(self, fn: Callable[[int], None], parts: int, on_error: Callable[[], None]) -> bool:
        """fn(0), ..., fn(parts - 1) at once, each on its own thread (part 0 on this one), for parts that wait for
        each other (fastvae.step_chunks); on_error() when part 0 does not return normally (it should make the others
        stop waiting). False, with nothing run, where the pool is busy with another thread's job (the parts cannot
        run one after another: the caller runs its work another way)."""
        if parts <= 1:
            fn(0)
            return True
        return self._job(fn, parts, lambda: None, on_error=on_error)

    def _phases_in_python(self, first, second, parts, one_after_another):
        """run_phases where fastvae.barrier is unavailable (not x86-64 Linux): a threading.Barrier between the
        phases, and second(k, None)."""
        shared = threading.Barrier(parts)

        def both(part):
            try:
                first(part)
                shared.wait()
            except threading.BrokenBarrierError:
                return                  # another part's first raised (or was interrupted): its error is raised
            except BaseException:
                shared.abort()
                raise
            second(part, None)
        self._job(both, parts, one_after_another, on_error=shared.abort)

    def _job(self, fn, parts, busy, on_error=None, departed=None):
        """fn(0..parts-1) on the pool, part 0 on this thread; or busy() when another job holds the pool (then False).
        on_error() is called when part 0 does not return normally (run_phases: the barrier is aborted). Ctrl-C
        (SIGINT) is held back while the pool is taken and the parts handed out, and while they are waited for
        (sigint.held_interrupts), so that it lands in part 0 or after the job, never between a hand-off and its
        bookkeeping (a part left running or waiting at a barrier would hang the next job; a permit left behind
        would end the next job's wait early)."""
        taken, started, waited, finished, all_departed, errors = False, 0, 0, False, False, {}
        count, counts = self.count, self._counts

        def part(k):                # on a pool thread: the job's count (a kernel's own split reads it)
            counts.n = count
            fn(k)
        try:
            with held_interrupts():
                taken = self._busy.acquire(blocking=False)
                if taken:
                    self._owner = threading.get_ident()
                    self._release_held()            # the last job's parts, spinning in depart: to this one
                    while len(self._threads) < parts - 1:
                        self._threads.append(_Worker())
                    for k, worker in enumerate(self._threads[:parts - 1], start=1):
                        worker.start(part, k)
                        started = k
            if not taken:
                busy()
                return False
            fn(0)
            finished = True
            all_departed = departed is not None and departed()      # (one store: the waits below read it)
        except BaseException as e:  # noqa: BLE001  (re-raised below, after the other parts finished)
            if not taken:
                raise
            errors[0] = e
        finally:
            try:
                while taken and waited < started:   # every started part is waited for, even through Ctrl-C; a
                    try:                            # Ctrl-C that lands outside the held regions is kept, raised after
                        with held_interrupts():
                            if not finished and on_error is not None:
                                on_error()
                                on_error = None
                            while waited < started:
                                worker = self._threads[waited]
                                if all_departed:    # done but for its Python: its `done` is taken next time
                                    worker.owe()
                                    error = None
                                else:
                                    error = worker.wait()
                                waited += 1
                                if error is not None:
                                    errors[waited] = error
                    except BaseException as e:  # noqa: BLE001
                        errors.setdefault(0, e)
            finally:
                # (in a finally of its own: a second signal handler's exception at the loop's end, a repeated
                # timer's, left the pool taken for good, every later job on one thread: a review's storm)
                if taken:
                    self._owner = None
                    self._busy.release()
        if errors:
            raise errors[min(errors)]
        return True

    def _release_held(self) -> None:
        """The last run_phases' departed parts, spinning in barrier.depart, go on (back to Python)."""
        if self._held is not None:
            self._held[barrier.BACK] = 1
            self._held = None

    def close(self) -> None:
        """Stops the pool's threads (a later run() starts new ones). A job running on the pool (another Python
        thread's) is waited for first: its parts run on those threads and it collects them. Raises RuntimeError
        when called from inside a job (a part, or the thread whose job holds the pool), which would wait for
        itself."""
        me = threading.get_ident()
        if self._owner == me or any(w.ident == me for w in self._threads):
            raise RuntimeError("Workers.close() was called from inside one of the pool's jobs; call it after run()")
        with self._busy:
            self._release_held()
            for worker in self._threads:
                worker.stop()
            self._threads = []


_POOLS: weakref.WeakSet[Workers] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for pool in list(_POOLS):
        pool._forget_threads()


if hasattr(os, "register_at_fork"):         # (every POSIX Python; Windows has no fork)
    os.register_at_fork(after_in_child=_after_fork_in_child)


class _Worker:
    """One daemon thread that runs fn(part) when started, and reports its exception (or None) to wait()."""

    def __init__(self):
        self._go = threading.Semaphore(0)
        self._done = threading.Semaphore(0)
        self._job = None
        self._error = None
        self._owed = 0
        self._thread = threading.Thread(target=self._loop, name="fastvae-worker", daemon=True)
        self._thread.start()

    def start(self, fn, part):
        self._job = (fn, part)
        self._go.release()

    def owe(self):
        """The part just run is known to be done (fastvae.barrier.depart) but for its return through Python: its
        `done` is taken by the next wait(), or here by a later owe() once it has come (so that a fit, whose steps
        wait for no part, does not pile them up); an error of it, which the barrier's use rules out, is reported by
        the next wait()."""
        while self._owed and self._done.acquire(blocking=False):
            self._owed -= 1
        self._owed += 1

    def wait(self):
        while self._owed:
            self._done.acquire()
            self._owed -= 1
        self._done.acquire()
        error, self._error = self._error, None
        return error

    @property
    def ident(self):
        return self._thread.ident

    def stop(self):
        self._job = None
        self._go.release()
        self._thread.join()

    def _loop(self):
        while True:
            self._go.acquire()
            job = self._job
            if job is None:
                return
            fn, part = job
            try:
                fn(part)
            except BaseException as e:  # noqa: BLE001  (handed to the caller)
                self._error = e
            self._done.release()


