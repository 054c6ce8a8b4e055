"""How many threads the training step runs on: fastvae's workers (the passes, and the products with OpenBLAS held at
one thread each), or OpenBLAS's own count without them.

OpenBLAS's threads and the workers' barriers spin while they wait for each other, so a thread that is descheduled
(another process took its core, or a CPU quota ran out) stalls every product of every step: on the project's 2-core
Xeon one busy process made an epoch 3.4x slower with 2 threads and not slower at all with 1. So the count is decided
for the whole step, from what the process may really use:

- detect(): the CPU affinity mask and the cgroup CPU quota (v2 cpu.max, v1 cpu.cfs_quota_us / cpu.cfs_period_us,
  of the process's own cgroup and its ancestors), whichever allows fewer, unless the user fixed a count:
  VAE(threads=N) or --threads N first, then OMP_NUM_THREADS / OPENBLAS_NUM_THREADS / NUMBA_NUM_THREADS (the
  smallest of those set). A fixed count is never adapted.
- Pacer: while training, watches windows of steps (median step time, the CPU time the process got, the idle time of
  its CPUs). When the step time jumps, the process gets less CPU than its threads ask for, or its CPUs have idle time
  it leaves unused, it times the model's own matrix products on scratch buffers at each candidate count (the training
  state is not touched) and switches only when another count is clearly faster.

The numbers: OpenBLAS (0.3.31) blocks a product's reduction differently in its single- and multi-threaded drivers,
so at the model's shapes (reductions over 784 and 500 > its block of 448) a product at 1 thread and at 2 differ in
the last bits (measured: 4e-5 on values ~30). A run is bit-identical to another only while both used the same
count at every step; every change is recorded (Pacer.record: metrics.json). Fix the count for bit-exact reruns.
"""
from __future__ import annotations

import math
import os
import statistics
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from .sigint import held_interrupts


ENV_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS")

# Adaptation. A window is at least WINDOW_STEPS steps and WINDOW_SECONDS seconds: /proc/stat counts idle time in
# 10 ms ticks, so a shorter window cannot tell half a free core from none.
WARMUP_STEPS = 3            # a fit's first steps (Numba loading its kernels, cold caches) are not measured
WINDOW_STEPS = 16
WINDOW_SECONDS = 0.25
MIN_WINDOW_STEPS, MAX_WINDOW_SECONDS = 8, 1.0     # slow steps: a window of 8 steps once it has lasted 1 s
JUMP = 1.3                  # a window's median step this much slower (or faster) than the count's reference
LOW_SHARE = 0.8             # the process got less than this share of the CPU time its threads ask for
FREE_CORE = 0.5             # idle time of the allowed CPUs, in cores, that a larger count could use
GAIN = 0.9                  # switch only to a count whose probe takes at most this fraction of the current's
PROBE_REPEATS = 3           # per count, alternated, summed: a descheduled thread costs a timeslice, not a median
RETRY_WINDOWS = 1           # windows a persistent sign waits before probing; doubled after a probe that kept the count
RETRY_MAX_WINDOWS = 64      # that wait grows to at most this (a probe costs about one step of each count)


# ---------------------------------------------------------------- detection

@dataclass(frozen=True)
class Plan:
    """The count to start with, whether it may be adapted, and why (shown in metrics.json)."""
    threads: int
    adaptive: bool
    reason: str


def check(threads):
    """`threads` as given to VAE or the CLI: None or "auto" (detect and adapt) or a positive whole number (fixed),
    taken as fastvae.config.integer takes every whole-number setting (NumPy integers and 2.0 too; "2", 1.5, True are
    refused). Returns None or a plain int; raises UserError (one line) for anything else."""
    if threads is None or (isinstance(threads, str) and threads == "auto"):
        return None
    from .config import integer
    return integer(threads, "threads", what="a positive integer or 'auto'")


def explicit_from_env(environ=None):
    """(count, variable) from the smallest of OMP_NUM_THREADS, OPENBLAS_NUM_THREADS, NUMBA_NUM_THREADS that holds a
    positive integer (OMP's "4,2" form counts its first level), or None when none is set."""
    environ = os.environ if environ is None else environ
    found = []
    for name in ENV_VARIABLES:
        value = environ.get(name, "").split(",")[0].strip()
        if value.isdigit() and int(value) > 0:
            found.append((int(value), name))
    return min(found) if found else None


def affinity_count():
    """CPUs in this process's affinity mask (os.cpu_count() where the OS has no such mask)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def cgroup_quota(root="/"):
    """(cores, where) of the tightest CPU quota on this process's cgroup or its ancestors, cgroup v2 (cpu.max)
    or v1 (cpu.cfs_quota_us / cpu.cfs_period_us), or None without one. `root` stands for "/" (tests point it at a
    folder holding proc/self/cgroup, proc/self/mountinfo and sys/fs/cgroup/...)."""
    root = Path(root)
    try:
        lines = (root / "proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    mounts = _cgroup_mounts(root)
    best = None
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hid, controllers, path = parts
        if hid == "0" and controllers == "":
            version, candidates = 2, [m for m in mounts if m[0] == "cgroup2"]
        elif "cpu" in controllers.split(","):
            version, candidates = 1, [m for m in mounts if m[0] == "cgroup" and "cpu" in m[3]]
        else:
            continue
        for _, mount_root, mount_point, _ in candidates:
            for folder in _ancestors(root, mount_root, mount_point, path):
                quota = _read_quota(folder, version)
                if quota is not None and (best is None or quota < best[0]):
                    best = (quota, str(Path("/") / folder.relative_to(root)))
    return best


def _cgroup_mounts(root):
    """[(fstype, root within the hierarchy, mount point under `root`, v1 controllers)] from mountinfo, or the
    usual places when it cannot be read."""
    found = []
    try:
        for line in (root / "proc/self/mountinfo").read_text().splitlines():
            left, _, right = line.partition(" - ")
            fields, tail = left.split(), right.split()
            if len(fields) < 5 or len(tail) < 3 or tail[0] not in ("cgroup", "cgroup2"):
                continue
            point = root / fields[4].lstrip("/")
            found.append((tail[0], fields[3], point, set(tail[2].split(","))))
    except OSError:
        base = root / "sys/fs/cgroup"
        found = [("cgroup2", "/", base, set()), ("cgroup2", "/", base / "unified", set())]
        found += [("cgroup", "/", base / name, {"cpu"}) for name in ("cpu", "cpu,cpuacct", "cpuacct,cpu")]
    return found


def _ancestors(root, mount_root, mount_point, path):
    """The folders of cgroup `path` and of its ancestors inside one mount. A path outside the mount's root (a
    container that sees its own cgroup mounted at the top) maps to the mount point itself."""
    mount_root = "/" + mount_root.strip("/")
    path = "/" + path.strip("/")
    if mount_root != "/" and not (path == mount_root or path.startswith(mount_root + "/")):
        return [mount_point]
    rel = path[len(mount_root):].strip("/") if mount_root != "/" else path.strip("/")
    parts = rel.split("/") if rel else []
    return [mount_point.joinpath(*parts[:k]) for k in range(len(parts), -1, -1)]


def _read_quota(folder, version):
    try:
        if version == 2:
            quota, *period = (folder / "cpu.max").read_text().split()
            if quota == "max":
                return None
            return int(quota) / int(period[0] if period else 100000)
        quota = int((folder / "cpu.cfs_quota_us").read_text())
        period = int((folder / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError, IndexError, ZeroDivisionError):
        return None
    return quota / period if quota > 0 and period > 0 else None


QUOTA_SECONDS = 1.0         # how long a read of this process's cgroup quota serves detect() (_recent_quota)
_quota_read: tuple[float, tuple[float, str] | None] | None = None


def _recent_quota(root):
    """cgroup_quota(root), read again at most once every QUOTA_SECONDS for the real root ("/"; a test's folder every
    time): its file reads took 150 us on the EPYC, in every inference call of several chunks (an encode of 300 images
    took ~2 ms in all); a container's quota rarely changes, and a change is seen within the second."""
    global _quota_read
    if str(root) != "/":
        return cgroup_quota(root)
    now, read = time.monotonic(), _quota_read
    if read is not None and now - read[0] < QUOTA_SECONDS:
        return read[1]
    quota = cgroup_quota(root)
    _quota_read = (now, quota)          # (one tuple: a thread reading it meanwhile sees the old pair or the new)
    return quota


def detect(threads=None, environ=None, root="/", affinity=None):
    """The Plan for a fit: `threads` (VAE's option: fixed when an integer) wins, then the environment variables,
    each at most the CPUs in the affinity mask; else min(affinity, floor(quota)), at least 1, adapted while
    training."""
    cpus = affinity_count() if affinity is None else int(affinity)
    fixed = check(threads)
    env = explicit_from_env(environ) if fixed is None else None
    if fixed is not None or env is not None:
        asked, reason = (fixed, f"threads={fixed} asked for") if fixed is not None else (env[0], f"{env[1]}={env[0]}")
        # more threads than CPUs would only take turns on them (the step's shards never exceed the CPUs: Stepper.parts):
        # the count recorded and shown is the one that runs (threads=64 on 2 CPUs was shown as 64 threads)
        if asked > cpus:
            return Plan(cpus, False, f"{reason}, {cpus} run: the CPU{'s' * (cpus != 1)} in the affinity mask")
        return Plan(asked, False, reason)
    reason = f"{cpus} CPU{'s' if cpus != 1 else ''} in the affinity mask"
    count = cpus
    quota = _recent_quota(root)
    if quota is not None:
        cores, where = quota
        reason += f", cgroup quota of {cores:g} CPU{'s' if cores != 1 else ''} ({where})"
        count = min(count, max(1, math.floor(cores + 1e-9)))
    return Plan(max(1, count), True, reason)


# ---------------------------------------------------------------- setting the libraries' counts

class Libraries:
    """Sets the step's thread count and puts the previous counts back on close().

    With `workers` (the backend's fastvae.workers.Workers: its step runs row shards on its own threads) the count is
    the workers' and OpenBLAS runs one thread per call, so the two pools never spin against each other; without
    them it is OpenBLAS's count (threadpoolctl, every BLAS NumPy loaded). Numba's own thread count is left alone:
    no fastvae kernel is parallel=True (its threads are the workers'), and reading or setting the count starts
    Numba's threading layer (an OpenMP pool of idle threads, libgomp loaded, in every fitting process)."""

    def __init__(self, workers=None):
        from threadpoolctl import ThreadpoolController
        self._holding = False                    # counted in _HELD (set() until release())
        self._blas = ThreadpoolController().select(user_api="blas")
        self.workers = workers
        self._workers_before = None     # the workers' count on this thread before set() (it is per thread)
        self.count = None

    def set(self, n):
        # (a program's handler raising in there, a timeout's, left the counts held for good: the process's BLAS at
        # one thread, a storm's catch)
        with held_interrupts(), _HELD.lock:
            if not self._holding:
                self._holding = True
                _HELD.take(self._blas.lib_controllers)
                if self.workers is not None:
                    self._workers_before = self.workers.count
            for lib in self._blas.lib_controllers:
                _HELD.set(lib, 1 if self.workers is not None else n)
            if self.workers is not None:
                self.workers.count = n
            self.count = n

    def blas_counts(self):
        return [lib["num_threads"] for lib in self._blas.info()]

    def keep(self):
        """(before each of the fit's calls) The counts as set(), where another library changed them (_Held.keep)."""
        if self._holding:
            _HELD.keep()

    def release(self):
        """OpenBLAS's count and the workers' as before the first set() (as outside a fit) until the next set()."""
        with held_interrupts(), _HELD.lock:
            if self._holding:
                self._holding = False
                _HELD.give_back()
                # (only where this one held them: a second call, training.run_epochs' retry, must not set the shared
                # pool's count under a fit that began meanwhile)
                if self.workers is not None:
                    self.workers.count = self._workers_before
            self.count = None

    close = release                              # (nothing else to put back: Numba's count is never changed)


class _Held:
    """The Libraries holding the BLAS counts now (fits at once, in several Python threads), and the counts from
    before the first of them: put back when the last releases (the first fit to end put them back under the others,
    whose products then ran at OpenBLAS's full count under their workers)."""

    def __init__(self):
        # reentrant: a signal handler of the program's own that calls a model (its encode holds the counts for
        # inference) ran inside a fit's set() or release() on the same thread and waited for itself (a review's catch)
        self.lock = threading.RLock()
        self.holders = 0
        self.original = []          # [(library, its count before the first holder, or as another library set it)]
        self.ours = {}              # the library's file: the count a holder set last (every holder's controllers
                                    # are its own objects, the library one)

    def take(self, libs):
        """One more holder (under self.lock); the first notes the counts before any holder changed them."""
        if self.holders == 0:
            self.original = [(lib, lib.get_num_threads()) for lib in libs]
        self.holders += 1

    def set(self, lib, count):
        """A holder's count for `lib` (under self.lock)."""
        _set_blas(lib, count)
        if count is not None:
            self.ours[lib.filepath] = count

    def keep(self):
        """Where another library raised a count above the holders' while a fit held them, it is taken for that
        library putting back its count (threadpoolctl's threadpool_limits ending, in another thread, a block that
        began before the fit, as scikit-learn's calls do): that count is the one to put back at the end, and the
        holders' is set again now. It was left under the running fit (OpenBLAS's full count under fastvae's workers:
        8-20x slower), and the count from before the fit, the other's limit, overwrote it at the end: the process's
        BLAS at one thread for good (an embedder's trial). A count lowered below the holders' is a limit another
        library put in force, which it puts back itself: left alone (adopting it left the limit for good after its
        block ended inside the fit: a review's catch). With workers the holders' count is 1, so limits (1) are no
        change and every change is a raise."""
        with self.lock:
            for i, (lib, _) in enumerate(self.original):
                want, now = self.ours.get(lib.filepath), lib.get_num_threads()
                if want is not None and now is not None and now > want:
                    self.original[i] = (lib, now)
                    _set_blas(lib, want)

    def give_back(self):
        """One holder fewer (under self.lock); the last puts the counts back (not the first to end), each where it
        is still a holder's (one that another library set since is left as it set it)."""
        self.holders -= 1
        if self.holders == 0:
            for lib, count in self.original:
                if lib.get_num_threads() == self.ours.get(lib.filepath):
                    _set_blas(lib, count)
            self.ours.clear()


_HELD = _Held()


def _after_fork_in_child():
    """A child forked while another thread's fit held the counts: that fit is not in the child, so its hold is
    dropped and the counts from before it put back (the child's evaluations and fits took the counts for held, and
    a fork inside keep() left its lock taken for good: a review's catch)."""
    _HELD.lock = threading.RLock()
    if _HELD.holders:
        _HELD.holders = 0
        for lib, count in _HELD.original:
            try:
                _set_blas(lib, count)
            except Exception:  # noqa: BLE001  (the child goes on at the count it has)
                pass
        _HELD.ours.clear()


if hasattr(os, "register_at_fork"):         # (every POSIX Python; Windows has no fork)
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _set_blas(lib, count):
    """A BLAS library's thread count (a threadpoolctl controller's) set to `count` from this thread. threadpoolctl
    lets one Python thread at a time control a pthreads OpenBLAS (the first that set it, while it lives) and ignores
    the others' calls without a word, so a fit in a second thread, after one in the main thread, ran its products at
    OpenBLAS's 2 threads under fastvae's 2 workers: 8-20x slower (a fresh user's trial, 2026-12-06). A fit needs the
    count whichever thread it runs in, and restores it after, so it sets it through the library itself (threadpoolctl's
    own setter where it has one, else its public one)."""
    if count is None:
        return
    setter = getattr(lib, "_real_set_num_threads", None) or lib.set_num_threads
    setter(count)


_BLAS: list = []                  # the BLAS libraries' controllers, found once (threadpoolctl's scan: 0.3 ms a call)


def _blas_libraries():
    if not _BLAS:
        from threadpoolctl import ThreadpoolController
        _BLAS.append(ThreadpoolController().select(user_api="blas").lib_controllers)
    return _BLAS[0]


class held_for_inference:
    """OpenBLAS at `count` threads while the block runs (a model's evaluate, encode, decode: 1 on the cpu backends,
    whose workers take the chunks, fastvae.inference; the model's fixed `threads` on the reference backend), the
    previous count back after it; None, or a fit holding the counts already (at one thread under its workers), leaves
    them as they are. Why: outside a fit OpenBLAS ran at its own count whatever the model's threads said, and its
    threads spin against each other where another process takes a core (a fresh user's trial: evaluate 3.8 s against
    0.13 s with threads=1; measured here, EPYC, with a test run beside it: 3000 images in 0.36-0.88 s at 2 threads,
    0.17-0.19 s at 1).

    A class, not a generator: a generator's context left suspended by an exception just after its take (a signal
    handler's, a timeout's) gave the counts back only when the garbage collector found it (a storm's catch: the BLAS
    counts held after a timeout, the process's products at one thread)."""

    __slots__ = ("count", "took")

    def __init__(self, count):
        self.count, self.took = count, False

    def __enter__(self):
        if self.count is None:
            return self
        try:
            with held_interrupts(), _HELD.lock:
                self.took = _HELD.holders == 0
                if self.took:
                    _HELD.take(_blas_libraries())
                    for lib, _ in _HELD.original:
                        _HELD.set(lib, self.count)
        except BaseException:
            # (a handler's exception as the hold ended: no __exit__ follows an __enter__ that raised)
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc):
        if self.took:
            with held_interrupts(), _HELD.lock:
                if self.took:
                    self.took = False
                    _HELD.give_back()
        return False

    def __del__(self):
        # where handlers' exceptions came as __exit__ began, twice (Python runs handlers as a function starts: the
        # with statement's exit, then the caller's retry, VAE._in_chunks): given back as the object goes
        if getattr(self, "took", False):
            self.__exit__()


# ---------------------------------------------------------------- adapting while training

def candidates(most):
    """The counts worth trying: most, most // 2, most // 4, ..., 1."""
    out, n = [], most
    while n >= 1:
        out.append(n)
        n //= 2
    return out if out[-1] == 1 else out + [1]


class Probe:
    """Times the model's forward products (batch x fan_in @ fan_in x fan_out per layer) on scratch buffers at a
    given count, as the step runs them (row shards on the workers when the libraries have them): the step's BLAS
    work without touching the training state."""

    def __init__(self, shapes, batch, dtype, seed=0):
        import numpy as np
        g = np.random.default_rng(seed)
        self.batch = batch
        self.calls = [(g.standard_normal((batch, a)).astype(dtype), g.standard_normal((a, b)).astype(dtype),
                       np.empty((batch, b), dtype)) for a, b in shapes]

    def _products(self, libs, n):
        import numpy as np
        from .step import MIN_SHARD_ROWS, row_shards
        parts = 1 if libs.workers is None else max(1, min(n, self.batch // MIN_SHARD_ROWS))
        bounds = row_shards(self.batch, parts)

        def shard(s):
            lo, hi = bounds[s]
            for x, w, out in self.calls:
                np.matmul(x[lo:hi], w, out=out[lo:hi])
        if libs.workers is None:
            shard(0)
        else:
            libs.workers.run(shard, parts)

    def __call__(self, libs, counts, current):
        """{count: seconds for PROBE_REPEATS passes}, counts alternated; leaves `current` set."""
        took = {n: 0.0 for n in counts}
        for _ in range(PROBE_REPEATS):
            for n in counts:
                libs.set(n)
                begin = time.perf_counter()
                self._products(libs, n)
                took[n] += time.perf_counter() - begin
        libs.set(current)
        return took


def idle_cpu_seconds(cpus, stat="/proc/stat"):
    """Idle + iowait seconds so far of the CPUs numbered in `cpus`, from /proc/stat; None where unreadable."""
    try:
        ticks = os.sysconf("SC_CLK_TCK")
        total = 0
        with open(stat) as f:
            for line in f:
                if line.startswith("cpu") and line[3:4].isdigit():
                    name, *fields = line.split()
                    if int(name[3:]) in cpus:
                        total += int(fields[3]) + int(fields[4])
        return total / ticks
    except (OSError, ValueError, IndexError):
        return None


class Pacer:
    """The thread count of one fit: applied on enter, restored on exit, adapted between steps when the plan allows.

    wrap(stepper) returns the stepper timed (its `threads` attribute is the count now); record() gives the epoch's
    entry for metrics.json: {"count": now, "changes": [{"step", "threads", "reason", ...}]} since the last call."""

    def __init__(self, plan, shapes=(), batch=1, dtype="float32", steps=lambda: 0, start=None, on_close=None,
                 clock=time.perf_counter, cpu_clock=time.process_time, idle=None, libraries=None, probe=None):
        """`start`: the count to begin with when the plan is adaptive (the previous fit's last one), else the plan's;
        `on_close(count)` hears the count in use at the end. The rest is for tests: the clocks, idle() (idle CPU
        seconds so far), libraries() (a Libraries) and probe(libs, counts, current) -> {count: seconds}."""
        self.plan = plan
        self.counts = candidates(plan.threads) if plan.adaptive else [plan.threads]
        self.count = start if plan.adaptive and start in self.counts else plan.threads
        self._started_from = None if self.count == plan.threads else self.count
        self._on_close = on_close
        self._make_libraries = libraries or Libraries
        self._shapes, self._batch, self._dtype = shapes, batch, dtype
        self._clock, self._cpu_clock, self._steps = clock, cpu_clock, steps
        if idle is None:
            try:
                cpus = os.sched_getaffinity(0)
            except (AttributeError, OSError):
                cpus = set(range(os.cpu_count() or 1))
            idle = lambda: idle_cpu_seconds(cpus)            # noqa: E731
        self._idle = idle
        self._libs = None
        self._probe = probe
        self._changes = []
        self._times = []
        self._reference = None
        self._window_start = None
        self._seen = 0
        self._quiet_windows = 0
        self._retry = RETRY_WINDOWS
        self.probes = 0

    # context: the counts are the plan's during the fit, the previous ones after it
    def __enter__(self):
        try:
            self._libs = self._make_libraries()
            self._libs.set(self.count)
            how = " (fixed)" if not self.plan.adaptive else (
                f"; kept {self.count} from the previous fit" if self._started_from else "")
            self._note(self.count, f"start: {self.plan.reason}{how}")
        except BaseException:
            # (a with statement calls no __exit__ for an __enter__ that raised: a signal handler's exception here
            # left the counts held)
            if self._libs is not None:
                self._libs.close()
            raise
        return self

    def __exit__(self, *exc):
        """The counts as before the fit; again (idempotent) where a second signal handler's exception cut the with
        statement's own call short (training.run_epochs calls it once more)."""
        try:
            if self._libs is not None:
                self._libs.close()
        finally:
            on_close, self._on_close = self._on_close, None
            if on_close is not None:
                on_close(self.count)
        return False

    def wrap(self, stepper):
        pacer = self

        class Timed:
            @property
            def threads(self):
                return pacer.count

            def __getattr__(self, name):
                return getattr(stepper, name)

            def __call__(self, *args, **kw):
                return self._timed(stepper, args, kw)

            def many(self, *args):
                return self._timed(stepper.many, args, {})

            @staticmethod
            def _timed(fn, args, kw):
                """fn (one step, or step.Stepper.many's steps: its answer, the count) at the adapted thread count,
                each step's time (the call's, shared equally) given to the pacer."""
                if pacer._libs.count != pacer.count:      # after record(): back to the adapted count
                    pacer._libs.set(pacer.count)
                pacer._libs.keep()      # (another library's change; 1.3 us a call with two BLAS loaded, EPYC)
                captures = getattr(stepper, "captures", 0)
                begin = pacer._clock()
                result = fn(*args, **kw)
                if getattr(stepper, "captures", 0) == captures:
                    steps = result if fn is not stepper else 1
                    pacer.after_step((pacer._clock() - begin) / steps, steps)
                else:                   # it compiled its replays (step.Stepper): seconds of one thread, not a step
                    pacer.restart_window()
                return result
        return Timed()

    def record(self):
        """The epoch's entry; until the next step the libraries run at the counts they had before the fit, so that
        the validation between epochs gives the numbers evaluate() gives outside fit, whatever the steps adapted
        to."""
        changes, self._changes = self._changes, []
        if self._libs is not None:
            self._libs.release()
        return {"count": self.count, "changes": changes}

    def pause(self):
        """Between two steps, for other work on the fit's thread (calls it serves for other threads: fastvae.turns):
        the libraries at their counts from before the fit until the next step (as record() leaves them), and the
        window started again after it (its wall time and CPU share would count the other work)."""
        if self._libs is not None:
            self._libs.release()
        self.restart_window()

    def _note(self, n, reason, **extra):
        self._changes.append({"step": self._steps(), "threads": n, "reason": reason, **extra})

    # the adaptation
    def after_step(self, seconds, steps=1):
        """`steps` steps (a chunk of them: step.Stepper.many) took `seconds` each; a window ends after a step or
        chunk, never inside a chunk (its thread count is the chunk's)."""
        if len(self.counts) < 2:
            return
        if self._seen < WARMUP_STEPS:
            self._seen += steps
            if self._seen >= WARMUP_STEPS:
                self._start_window()
            return
        self._seen += steps
        self._times.extend([seconds] * steps)
        now = self._clock()
        wall = now - self._window_start[0]
        if (len(self._times) < WINDOW_STEPS or wall < WINDOW_SECONDS) and \
                (len(self._times) < MIN_WINDOW_STEPS or wall < MAX_WINDOW_SECONDS):
            return
        cpu = self._cpu_clock() - self._window_start[1]
        idle_before, idle_now = self._window_start[2], self._idle()
        free = None if idle_before is None or idle_now is None else (idle_now - idle_before) / wall
        self._window(statistics.median(self._times), cpu / (wall * self.count), free)
        self._start_window()

    def restart_window(self):
        """Forget the current window's steps (one of them did other work: its time and CPU share would mislead)."""
        if self._window_start is not None:
            self._start_window()

    def _start_window(self):
        self._times = []
        self._window_start = (self._clock(), self._cpu_clock(), self._idle())

    def _window(self, median, share, free):
        """One window's figures: its median step, the share of CPU time the threads got, the free cores. A jump of
        the step time probes at once; a persistent sign (low share, idle CPUs) waits `_retry` windows, a wait
        that doubles after each probe that changed nothing."""
        self._quiet_windows += 1
        if self._reference is None:
            self._reference = median
        elif median > JUMP * self._reference or median * JUMP < self._reference:
            return self._try_others(f"step time went from {1e3 * self._reference:.2f} to {1e3 * median:.2f} ms")
        why = None
        if self.count > 1 and share < LOW_SHARE:
            why = f"the threads got {share:.0%} of their CPU time"
        elif self.count < self.counts[0] and free is not None and free >= FREE_CORE:
            why = f"{free:.1f} CPUs idle"
        elif self.count < self.counts[0] and free is None:
            why = "periodic check"
        if why is not None and self._quiet_windows >= self._retry:
            self._try_others(why)

    def _try_others(self, why):
        if self._probe is None:
            self._probe = Probe(self._shapes, self._batch, self._dtype)
        self.probes += 1
        took = self._probe(self._libs, self.counts, self.count)
        best = min(took, key=took.get)
        self._quiet_windows = 0
        self._reference = None                       # the next window measures the count chosen now
        if best != self.count and took[best] <= GAIN * took[self.count]:
            self.count = best
            self._libs.set(best)
            self._retry = RETRY_WINDOWS
            self._note(best, why, probe_ms={str(n): round(1e3 * t, 2) for n, t in took.items()})
        else:
            self._retry = min(2 * self._retry, RETRY_MAX_WINDOWS)


def pacer_for(model, ws, threads=None):
    """The Pacer of one fit of `model` in workspace `ws`, or None for a device backend (its host threads only
    launch kernels)."""
    import numpy as np
    from .params import layer_shapes
    be = model.backend
    if be.xp is not np:
        return None
    shapes = [(a, b) for _, a, b in layer_shapes(model.config)]

    plan = detect(threads)

    def keep(count):
        # only a count the pacer chose carries into the next fit: one the user fixed (threads=1, then 'auto') is
        # not a measurement of this machine, and 'auto' started from it (a fresh user's trial)
        model._threads_last = count if plan.adaptive else None

    return Pacer(plan, shapes, ws.batch, be.dtype, steps=lambda: model.steps,
                 start=getattr(model, "_threads_last", None), on_close=keep,
                 libraries=lambda: Libraries(be.workers))
