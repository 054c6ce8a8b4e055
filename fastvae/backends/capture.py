"""A captured CPU step: a row shard's kernel calls recorded once, then replayed as one GIL-free Numba call.

The cpu backends' wrappers call their Numba kernels through call(). While a thread records (record(body)), every
call it makes is kept as well as run: (kernel, arguments). Recording.compile() then writes a small Python module
that calls those kernels in the same order with the same arguments (each kernel named as a global, imported from
its own module: a first version passing the dispatchers as first-class values ran 4x slower) and compiles it with
Numba (in a loop of `rounds`, one unless Replay.steps asks for more: fastvae.step_chunks). A replay runs a shard's
13-14 kernels without coming back to Python in between, so the Python between them,
and two shards on two threads meeting at the GIL there, are gone: measured on the project's Xeon in whole steps
(bench/step_breakdown, "step" against "step from Python"), fp32 6.16 -> 6.04 ms, bf16 2.57 -> 2.34.

A replay bakes in the arrays it was recorded with (it keeps them alive), but for a thread's scratch buffers
(private()): those are replaced by copies of its own, since a replay may run on another thread than the one it was
recorded on (two fits at once share the workers; a busy pool runs every shard on the calling thread) while the
owner runs another replay with them. The caller replays it only while those are the arrays the step would use
(fastvae.step.Stepper: the same state, workspace, data set and index buffer, and the same row shards). Values a kernel
reads from an array (the counters, the batch's indices) are read when it runs; scalars are fixed. A wrapper whose work
depends on more than its kernel (a NumPy call, a branch on data) calls refuse(), and the shard is then never captured.

The generated module is written under cache_dir(), named after a hash of its source and of fastvae's own sources,
so Numba caches its machine code there (compiling took 0.8 s for an fp32 shard and 1.4 s for a bf16 one on the
Xeon, loading it from the cache 0.02-0.04 s) and an edited or upgraded fastvae never runs a replay built from older
kernels. Numba's cache index also records the CPU it compiled for, so a cache copied to another CPU is recompiled
there, not run.
"""
import hashlib
import importlib.util
import os
import sys
import tempfile
import threading
import time
import weakref
from pathlib import Path

import numpy as np

from .. import numba_cache

_local = threading.local()
_lock = threading.Lock()
_recording = 0          # threads recording now: call() looks no further while it is 0


def call(kernel, *args):
    """kernel(*args), kept in this thread's recording if there is one."""
    if _recording:
        calls = getattr(_local, "calls", None)
        if calls is not None:
            calls.append((kernel, args))
    kernel(*args)


def refuse(reason):
    """What this thread is recording cannot be replayed (`reason`: why, for tests and notes)."""
    if _recording and getattr(_local, "calls", None) is not None:
        _local.refused = reason


_private: dict = {}         # id(array) -> weak reference: per-thread scratch that each replay gets a copy of


def private(*arrays):
    """Mark per-thread scratch arrays (a kernel's packing buffers: whatever it writes before it reads): a replay
    recorded with one of them gets its own copy (same shape, dtype and 64-byte alignment) instead."""
    for a in arrays:
        _private[id(a)] = weakref.ref(a, lambda _, key=id(a): _private.pop(key, None))


def _own_copy(value):
    """value, or a copy of its own where it is private() scratch."""
    ref = _private.get(id(value))
    if ref is None or ref() is not value:
        return value
    from .cpu_update import aligned_empty
    copy = aligned_empty(value.size, value.dtype).reshape(value.shape)
    copy[...] = value
    return copy


class Recording:
    """The kernel calls one record() saw, in order (`calls`: (kernel, args)), or why they cannot be replayed
    (`refused`: a reason, else None)."""

    def __init__(self, calls, refused):
        self.calls = calls
        self.refused = refused

    def compile(self):
        """A Replay of the calls (None when refused). Raises ValueError for a kernel that cannot be imported by
        name (_qualified), and what Numba raises if they do not compile."""
        return None if self.refused is not None else Replay(self.calls)


def record(body):
    """body() run, recording the kernel calls this thread makes through call(): a Recording. Nested recordings
    are refused (the inner one's calls would be kept twice)."""
    global _recording
    if getattr(_local, "calls", None) is not None:
        refuse("a recording inside a recording")
        body()
        return Recording([], "a recording inside a recording")
    with _lock:
        _recording += 1
    _local.calls, _local.refused = [], None
    try:
        body()
        return Recording(_local.calls, _local.refused)
    finally:
        _local.calls = _local.refused = None
        with _lock:
            _recording -= 1


class Replay:
    """The recorded calls as one Numba function: replay() runs them all, outside the GIL. `kernels`: how many;
    `seconds`: what compiling it (or loading it from Numba's cache) took; `path`: the generated module (None when
    it could not be written and was compiled in memory: _compiled)."""

    def __init__(self, calls):
        from numba import typeof
        begin = time.perf_counter()
        source, values = _source(calls)
        self._args = tuple(_own_copy(v) for v in values)
        # compiled now (not in the next step), without running it
        self._fn, self.path = _compiled(source, (typeof(1), typeof(_GO), *(typeof(v) for v in values)))
        self.kernels = len(calls)
        self.seconds = time.perf_counter() - begin

    def __call__(self):
        self._fn(1, _GO, *self._args)

    def steps(self, n, stop):
        """The calls run `n` times over, as long as stop[0] (an int64 array that another thread may set) is 0 when
        each round starts (fastvae.step_chunks: many training steps in one call, its kernels reading what varies from
        step to step from arrays)."""
        self._fn(n, stop, *self._args)


_GO = np.zeros(1, np.int64)     # never set: a single round


def _source(calls):
    """(source, values): the module calling `calls` in order as replay(v0, v1, ...), and the values to pass. An
    object passed to several calls is one argument (fewer to unbox per replay); None is written as None."""
    imports, names, values, slots, lines = {}, {}, [], {}, []
    for kernel, args in calls:
        key = _qualified(kernel)
        if key not in names:
            names[key] = f"k{len(names)}"
            imports.setdefault(key[0], []).append(f"{key[1]} as {names[key]}")
        parts = []
        for a in args:
            if a is None:
                parts.append("None")
                continue
            slot = slots.get(id(a)) if not _is_scalar(a) else None
            if slot is None:
                slot = f"v{len(values)}"
                values.append(a)
                if not _is_scalar(a):
                    slots[id(a)] = slot
            parts.append(slot)
        lines.append(f"        {names[key]}({', '.join(parts)})\n")
    head = (f"# Generated by fastvae.backends.capture (fastvae sources {sources_hash()}): a captured row shard's "
            "kernels. Do not edit.\n"
            "from numba import njit\n\n"
            "from fastvae.atomics import load_acquire\n"
            + "".join(f"from {module} import {', '.join(items)}\n" for module, items in imports.items())
            + f"\n\n{_CACHED}\n"
            f"def replay(rounds, stop, {', '.join(f'v{i}' for i in range(len(values)))}):\n"
            "    for _ in range(rounds):\n"
            "        if load_acquire(stop, 0) != 0:\n"
            "            return\n")
    return head + "".join(lines) + "\n", values


_CACHED, _IN_MEMORY = "@njit(cache=True, nogil=True)", "@njit(nogil=True)"      # the replay's decorator


def _is_scalar(a):
    """Immutable values (passed by value: one argument per use); arrays, 0-d ones too, are passed by reference."""
    return isinstance(a, (bool, int, float, complex, np.generic))


def _qualified(kernel):
    """(module, name) that imports `kernel` (a module-level Numba dispatcher); ValueError for anything else."""
    py_func = getattr(kernel, "py_func", None)
    module, name = getattr(py_func, "__module__", None), getattr(py_func, "__qualname__", "")
    if module is None or "." in name or getattr(sys.modules.get(module), name, None) is not kernel:
        raise ValueError(f"capture: {kernel!r} is not a module-level Numba function, so it cannot be replayed")
    return module, name


_SOURCES_HASH: list[str] = []


def sources_hash():
    """A hash of every .py file of the fastvae package (read once per process): part of a replay's name, so that a
    replay cached by another version of fastvae's kernels is never loaded."""
    if not _SOURCES_HASH:
        root = Path(__file__).resolve().parents[1]
        digest = hashlib.sha256()
        for path in sorted(root.rglob("*.py")):
            digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
        _SOURCES_HASH.append(digest.hexdigest()[:16])
    return _SOURCES_HASH[0]


def cache_dir() -> Path | None:
    """Where generated replays (and Numba's cache of them) are written: $FASTVAE_CACHE_DIR, else
    $XDG_CACHE_HOME/fastvae, else ~/.cache/fastvae (a leading ~ expanded), its replays/ folder (numba_cache.own_folder:
    made with mode 0700, and used only where no one else could write into it); where it cannot be, the
    user's private folder of numba_cache (the same one in every process, so a replay is compiled once, not in every
    run: a temporary folder per process recompiled them each time and left 0.7 MB behind); None where there is none
    either (replays are then compiled in memory)."""
    own = numba_cache.own_folder("replays")      # (only where no one else could plant a module in it)
    if own is not None:
        return own
    private = numba_cache.private_folder()
    return None if private is None else numba_cache.checked_folder(str(private / "replays"))


def _compiled(source, signature):
    """(replay dispatcher compiled for `signature`, its module's path or None). Written to the cache folder and
    compiled there with Numba's cache; where that fails, its cache files are removed and it is compiled again (a
    damaged index or data file: Numba raises on reading it, every run); where that fails too, or the module cannot be
    written (a full disk, a file in the way), compiled in memory only: the same code, not kept for the next run."""
    try:
        path = _write(source)
    except OSError:
        path = None
    if path is not None:
        for attempt in range(2):
            try:
                fn = _load(path, fresh=attempt > 0)
                fn.compile(signature)
                return fn, path
            except Exception:  # noqa: BLE001  (whatever a damaged or unwritable cache raises: then without it)
                for stale in (path.parent / "__pycache__").glob(f"{path.stem}.*"):
                    stale.unlink(missing_ok=True)
    namespace = {}
    in_memory = source.replace(_CACHED, _IN_MEMORY)
    exec(compile(in_memory, "<fastvae replay>", "exec"), namespace)    # noqa: S102  (our own generated source)
    fn = namespace["replay"]
    fn.compile(signature)
    return fn, None


def _write(source):
    """The file holding `source`, named after its hash: written once (atomically: another process may be writing
    the same one; readable by all, as the folder may be shared), then reused, which lets Numba's cache of it be
    reused too. A file of that name that holds anything else (damaged, or not text at all) is replaced."""
    folder = cache_dir()
    if folder is None:
        raise OSError("no folder to write the replay in")
    path = folder / f"replay_{hashlib.sha256(source.encode()).hexdigest()[:24]}.py"
    try:
        current = path.read_bytes()
    except FileNotFoundError:
        current = None
    if current != source.encode():
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(source)
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    else:
        _touch(path)
    prune(path.parent)
    return path


# Replays not used for this long are removed (prune): each edit or upgrade of fastvae names new ones, and the old ones
# (0.6 MB each with Numba's cache) were never removed: 380 MB in a contributor's cache after two weeks (a fresh user's
# trial). A replay in use is touched when it is reused (_write), at most once a day.
KEEP_DAYS = 30
_pruned: set[Path] = set()


def _touch(path):
    try:
        if time.time() - path.stat().st_mtime > 86400:
            os.utime(path)
    except OSError:
        pass


def prune(folder, keep_days=KEEP_DAYS):
    """Removes, once per process and folder, the generated replays of `folder` (and Numba's cache files of them) not
    written or reused for `keep_days` days. Files another process removes first, or that cannot be removed, are
    left."""
    if folder in _pruned:
        return
    _pruned.add(folder)
    cutoff = time.time() - keep_days * 86400
    for module in folder.glob("replay_*.py"):
        try:
            if module.stat().st_mtime >= cutoff:
                continue
            for cached in (folder / "__pycache__").glob(f"{module.stem}.*"):
                cached.unlink(missing_ok=True)
            module.unlink(missing_ok=True)
        except OSError:
            pass


def _load(path, fresh=False):
    """The replay function of the generated module at `path` (`fresh`: executed again, a new dispatcher)."""
    folder = hashlib.sha256(str(path.parent).encode()).hexdigest()[:8]      # (another cache folder: its own module)
    name = f"fastvae_replay_{path.stem}_{folder}"
    if fresh or name not in sys.modules:    # (registered: Numba's cached code finds its module by name when loaded)
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[name] = module
    return sys.modules[name].replay
