"""The captured cpu step (fastvae.backends.capture, step.ShardReplays): a row shard's kernels recorded once and
replayed as one Numba call give the same bits as the step run from Python, on both cpu backends, at every shard
count, through a busy pool; what cannot be replayed is refused, and the generated code is cached where it says."""
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from numba import njit

from fastvae import numba_cache, step, threads
from fastvae.backends import capture, cpu, get_backend
from fastvae.backends.cpu_bf16 import unavailable_reason as bf16_unavailable
from fastvae.config import Config
from fastvae.params import Layout, he_init

BF16 = pytest.param("cpu-bf16", marks=pytest.mark.skipif(bf16_unavailable() is not None,
                                                         reason=f"cpu-bf16: {bf16_unavailable()}"))


@pytest.fixture
def replays_dir(tmp_path, monkeypatch):
    """A fresh replay cache for the test (Numba's cache of the generated modules goes there too)."""
    monkeypatch.setenv("FASTVAE_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "replays"


def _steps(name, cfg, batches, data, counts, record, busy=False):
    """(params, m, v, loss, counters, stepper) after the batches, each run by a Stepper at the thread count of
    `counts` (one per batch), with the recorded shards' replays (`record`) or without; `busy`: another job holds
    the pool, so run_phases runs every part on the caller, one after another."""
    be = get_backend(name)
    layout = Layout(cfg)
    st, ws = step.State(be, layout, he_init(layout, seed=1), seed=3), step.Workspace(be, cfg, cfg.batch_size)
    libs = threads.Libraries(be.workers)
    held = False
    try:
        stepper = step.Stepper(be, cfg, st, ws, data, record=record)
        if busy:
            held = be.workers._busy.acquire(blocking=False)
            assert held
        for idx, count in zip(batches, counts):
            libs.set(count)
            stepper(idx)
    finally:
        if held:
            be.workers._busy.release()
        libs.close()
    return st.params.copy(), st.m.copy(), st.v.copy(), ws.loss.copy(), st.counters.copy(), stepper


def _batches(n, batch, steps, seed=0):
    """`steps` batches of shuffled rows of n, the last one short (run uncaptured)."""
    order = np.random.default_rng(seed).permutation(n)
    return [order[k * batch:(k + 1) * batch] for k in range(steps - 1)] + [order[:batch // 2 + 1]]


def _data(n, width=784, seed=0):
    x = np.random.default_rng(seed).integers(0, 256, (n, width)).astype(np.uint8)
    x[x < 180] = 0                                   # mostly zeros, as MNIST: the sparse first product runs too
    return x


def _assert_same(a, b):
    for got, want, what in zip(a[:5], b[:5], ("params", "m", "v", "loss", "counters")):
        assert np.array_equal(got, want), f"{what} differ: max |diff| {np.max(np.abs(got - want))}"


@pytest.mark.parametrize("name", ["cpu", BF16])
@pytest.mark.parametrize("variant", [{}, {"encoder": "sigma", "reconstruction": "mse"}, {"activation": "tanh"},
                                     {"input_width": 101, "image_shape": None, "hidden": (37,)}])
def test_replayed_shards_give_the_bits_of_the_step_run_from_python(name, variant, replays_dir):
    cfg = Config(**{"hidden": (70, 33), "latent": 5, "batch_size": 70, **variant})
    data = _data(300, cfg.input_width)
    batches = _batches(len(data), cfg.batch_size, 5)
    counts = [2] * len(batches)
    want = _steps(name, cfg, batches, data, counts, record=False)
    got = _steps(name, cfg, batches, data, counts, record=True)
    _assert_same(got, want)
    stepper = got[5]
    assert stepper.captures == 1 and stepper.shards[2].replays is not None
    # every kernel a shard calls is in its replay: the gather, a forward, a backward and the mark of the backward's
    # end (layer_done) per layer (19 per shard with two hidden layers); the heads' backward is one kernel on cpu, two
    # on cpu-bf16 (its gradient, then the tiles)
    per_shard = 1 + 3 * (2 * len(cfg.hidden) + 2) + (name == "cpu-bf16")
    assert stepper.kernels_per_step == 2 * per_shard
    assert want[5].captures == 0 and want[5].kernels_per_step is None


@pytest.mark.parametrize("name", ["cpu", BF16])
def test_each_shard_count_is_recorded_once_and_a_busy_pool_replays_on_the_caller(name, replays_dir):
    cfg = Config(hidden=(70, 33), latent=5, batch_size=70)
    data = _data(500, cfg.input_width)
    batches = _batches(len(data), cfg.batch_size, 8)
    counts = [2, 2, 1, 1, 2, 1, 2, 2]               # as the pacer switches (fastvae.threads)
    want = _steps(name, cfg, batches, data, counts, record=False)
    got = _steps(name, cfg, batches, data, counts, record=True)
    _assert_same(got, want)
    assert got[5].captures == 2 and sorted(got[5].shards) == [1, 2]
    busy = _steps(name, cfg, batches, data, [2] * len(batches), record=True, busy=True)
    _assert_same(busy, _steps(name, cfg, batches, data, [2] * len(batches), record=False))
    assert busy[5].captures == 1


def test_a_wrapper_that_is_not_one_kernel_is_never_replayed(monkeypatch, replays_dir):
    """With FUSED off the cpu backend calls np.matmul between its kernels: the shards are refused, not captured,
    and the steps are the uncaptured ones."""
    monkeypatch.setattr(cpu, "FUSED", False)
    cfg = Config(hidden=(70, 33), latent=5, batch_size=70)
    data = _data(300)
    batches = _batches(len(data), cfg.batch_size, 4)
    got = _steps("cpu", cfg, batches, data, [2] * 4, record=True)
    _assert_same(got, _steps("cpu", cfg, batches, data, [2] * 4, record=False))
    assert got[5].captures == 0 and "np.matmul" in got[5].shards[2].refused
    assert not replays_dir.exists() or not list(replays_dir.glob("replay_*.py"))


def test_a_fit_replays_its_shards(replays_dir):
    from fastvae import VAE
    seen, single = [], []
    real, real_call = step.Stepper.many, step.Stepper.__call__

    def spy(self, order, first, count):
        done = real(self, order, first, count)
        seen.append((self.captures, self.kernels_per_step, done))
        return done
    step.Stepper.many = spy
    step.Stepper.__call__ = lambda self, idx: (single.append(len(idx)), real_call(self, idx))
    try:
        model = VAE(hidden=(64, 32), latent=4, batch_size=64, threads=2, seed=1).fit(_data(640), epochs=2)
    finally:
        step.Stepper.many, step.Stepper.__call__ = real, real_call
    # each thread's step (step_chunks): its shard's 19 kernels (see the test above), step_begin, its update, the
    # step's end; the first chunk ran a step plainly and recorded the next, then the rest of each epoch's 10 batches
    # ran as one chunk
    assert seen[0] == (1, 2 * 22, 2) and seen[1:] == [(1, 2 * 22, 8), (1, 2 * 22, 10)] and not single
    # the first epoch says what compiling the replays took (inside its seconds); the second compiled nothing
    first, second = model.history
    assert 0 < first["replay_compile_seconds"] < first["seconds"] and "replay_compile_seconds" not in second
    # every part's step is the same calls on other arrays: one generated module serves both, compiled once
    assert len(list(replays_dir.glob("replay_*.py"))) == 1


SECOND_FIT = """
import sys
from fastvae import VAE
from fastvae.backends import capture
from fastvae.data import load_mnist
sources, real = [], capture.Replay.__init__

def spy(self, calls):
    real(self, calls)
    sources.append(capture._source(calls)[0])
capture.Replay.__init__ = spy
x = load_mnist().train_x[:640]
for images in (int(sys.argv[3]), 640, 640):
    VAE(seed=1, backend=sys.argv[1], threads=int(sys.argv[2]), hidden=(64,), latent=4, batch_size=64).fit(x[:images],
                                                                                                        epochs=1)
    print(len(sources), len(set(sources)))
"""


@pytest.mark.parametrize("name", ["cpu", pytest.param("cpu-bf16", marks=pytest.mark.skipif(
    bf16_unavailable() is not None, reason=f"cpu-bf16: {bf16_unavailable()}"))])
@pytest.mark.parametrize("count", [1, 2])
@pytest.mark.parametrize("first", [640, 64])
def test_a_second_fit_in_a_process_records_the_first_fits_replay(name, count, first):
    """cpu-bf16's scratch buffers (amx.scratch, per thread) grew inside the first fit's recorded step, so the first
    replay's arguments aliased otherwise than every later one's: each process's second fit generated a module of its
    own (3.5 s of compiling on a cold cache, at 2 threads; 2.1 s at 1). A recording now follows a step run plainly:
    every fit records the same source. In a fresh process (fresh threads, so fresh scratch buffers). A first fit of
    one batch (a benchmark's warm-up) recorded its only step, the buffers growing in it, and the next fit compiled a
    second replay (3.1 s of its first epoch on the Xeon): a lone step records nothing now."""
    done = subprocess.run([sys.executable, "-c", SECOND_FIT, name, str(count), str(first)], capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    recorded = [[int(n) for n in line.split()] for line in done.stdout.split("\n")[:3]]
    # (replays made so far, one per thread of a recording; distinct sources among them) after each fit: every fit
    # of more than one batch records (a new model), all the same source
    assert (recorded[0][0] >= 1 if first == 640 else recorded[0] == [0, 0]), done.stdout
    assert recorded[2][0] > recorded[1][0] > recorded[0][0] and recorded[1][1] == recorded[2][1] == 1, done.stdout


# ---------------------------------------------------------------- the recording and the generated module

def test_a_replay_reads_arrays_when_it_runs_and_passes_one_object_once(replays_dir):
    data = np.arange(40, dtype=np.uint8).reshape(8, 5)
    x, idx = np.zeros((3, 5), np.float32), np.array([7, 0, 3])
    rec = capture.record(lambda: (cpu.gather_batch(x, data, idx), cpu.gather_batch(x, data, idx)))
    assert rec.refused is None and [k for k, _ in rec.calls] == [cpu._gather_u8] * 2
    scaled = lambda rows: (data[rows] / 255.0).astype(np.float32)         # noqa: E731  (as the kernel)
    np.testing.assert_array_equal(x, scaled(idx))
    replay = rec.compile()
    source = replay.path.read_text()
    assert "def replay(rounds, stop, v0, v1, v2):" in source and source.count("k0(v0, v1, v2)") == 2
    assert f"fastvae sources {capture.sources_hash()}" in source
    idx[...] = [1, 2, 5]                            # the batch's indices change in place: the replay reads them
    replay()
    np.testing.assert_array_equal(x, scaled([1, 2, 5]))
    assert replay.kernels == 2


def test_replay_steps_runs_the_calls_that_many_rounds_until_stop_is_set(replays_dir):
    ready, stop = np.zeros(3, np.int64), np.zeros(1, np.int64)
    rec = capture.record(lambda: (cpu.layer_done(ready, 2), cpu.layer_done(ready, 0)))
    assert ready.tolist() == [1, 0, 1]
    replay = rec.compile()
    replay.steps(5, stop)
    assert ready.tolist() == [6, 0, 6]
    replay()                                        # one round
    assert ready.tolist() == [7, 0, 7]
    stop[0] = 1
    replay.steps(5, stop)
    assert ready.tolist() == [7, 0, 7]


def test_a_replay_gets_its_own_copy_of_a_threads_private_scratch(replays_dir):
    """A thread's scratch buffer (capture.private) baked into a replay would be shared with whatever its owner runs
    next, on whichever thread the replay runs: each replay gets a copy (same shape, dtype, alignment, values)."""
    data = np.arange(40, dtype=np.uint8).reshape(8, 5)
    scratch, shared = np.zeros((3, 5), np.float32), np.zeros((3, 5), np.float32)
    capture.private(scratch)
    idx = np.array([7, 0, 3])
    replays = [capture.record(lambda: (cpu.gather_batch(scratch, data, idx), cpu.gather_batch(shared, data, idx)))
               .compile() for _ in range(2)]
    own = [r._args[0] for r in replays]
    assert all(a is not scratch and a.shape == scratch.shape and a.dtype == scratch.dtype and a.ctypes.data % 64 == 0
               for a in own) and own[0] is not own[1]
    assert all(r._args[3] is shared for r in replays)             # other arrays are the recorded ones
    scratch[...] = -1
    replays[0]()                                                  # writes its own copy, not the thread's buffer
    np.testing.assert_array_equal(own[0], shared)
    assert np.all(scratch == -1) and np.all(own[1] == shared)


@pytest.mark.parametrize("name", [BF16])
def test_captured_shards_hold_no_threads_scratch(name, replays_dir):
    """The bf16 tiles pack their operands into per-thread buffers: each shard's replay has copies of its own, so two
    replays recorded on one thread (two fits sharing the pool) never write the same buffer at once."""
    cfg = Config(hidden=(64,), latent=4, batch_size=64)
    data = _data(256)
    stepper = _steps(name, cfg, _batches(256, 64, 3), data, [2, 2, 2], record=True)[-1]
    args = [a for r in stepper.shards[2].replays for a in r._args if isinstance(a, np.ndarray)]
    shared = [a for a in args if (ref := capture._private.get(id(a))) is not None and ref() is a]
    assert len(stepper.shards[2].replays) == 2 and not shared


def test_calls_outside_a_recording_and_on_other_threads_are_not_kept(replays_dir):
    import threading
    data = np.arange(10, dtype=np.uint8).reshape(2, 5)
    x = np.zeros((1, 5), np.float32)
    cpu.gather_batch(x, data, np.array([1]))        # no recording: nothing kept anywhere
    other = threading.Thread(target=lambda: cpu.gather_batch(x, data, np.array([0])))
    rec = capture.record(lambda: (other.start(), other.join(), cpu.gather_batch(x, data, np.array([1]))))
    assert len(rec.calls) == 1 and capture._recording == 0


def test_a_recording_inside_a_recording_is_refused(replays_dir):
    data = np.arange(10, dtype=np.uint8).reshape(2, 5)
    x = np.zeros((1, 5), np.float32)
    inner = []
    outer = capture.record(lambda: inner.append(capture.record(lambda: cpu.gather_batch(x, data, np.array([1])))))
    assert outer.refused and inner[0].refused and outer.compile() is None


def test_a_kernel_that_cannot_be_imported_by_name_is_an_error_not_a_wrong_replay(replays_dir):
    a = np.zeros(1)
    kernel = njit(lambda a: None)                   # not a module-level name
    rec = capture.record(lambda: capture.call(kernel, a))
    with pytest.raises(ValueError, match="not a module-level Numba function"):
        rec.compile()


def test_the_generated_module_is_named_after_fastvaes_sources(replays_dir, monkeypatch):
    """A change to any fastvae source makes another module (and so another Numba cache entry): a replay compiled
    against older kernels is never loaded."""
    data = np.arange(10, dtype=np.uint8).reshape(2, 5)
    x = np.zeros((1, 5), np.float32)
    rec = capture.record(lambda: cpu.gather_batch(x, data, np.array([1])))
    first = rec.compile().path
    assert rec.compile().path == first
    monkeypatch.setattr(capture, "_SOURCES_HASH", ["0123456789abcdef"])
    assert rec.compile().path != first and first.exists()


def test_an_unwritable_cache_falls_back_to_the_users_private_folder(tmp_path, monkeypatch):
    """The same folder every time (a temporary folder per process compiled every replay again in every run and
    left 0.7 MB behind each time: a fresh user's trial); None where there is no private folder either."""
    from fastvae import numba_cache
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("FASTVAE_CACHE_DIR", str(blocker / "cache"))
    monkeypatch.setattr(numba_cache, "_temporary_folders", lambda: [str(tmp_path)])
    numba_cache.private_folder.cache_clear()
    try:
        folder = capture.cache_dir()
        numba_cache.private_folder.cache_clear()
        assert folder == tmp_path / f"fastvae-{os.getuid()}" / "replays" == capture.cache_dir() and folder.is_dir()
        monkeypatch.setattr(numba_cache, "_temporary_folders", lambda: [str(blocker)])
        numba_cache.private_folder.cache_clear()
        assert capture.cache_dir() is None
    finally:
        numba_cache.private_folder.cache_clear()


def _fresh_replays(folder):
    """`folder`, for FASTVAE_CACHE_DIR: its replays/ made anew, its numba/ this process's own kernel cache (a link,
    used as resolved), so a subprocess compiles no kernel again (each such test compiled them all: 47 s of the
    suite)."""
    folder.mkdir(parents=True, exist_ok=True)
    kernels = numba_cache.own_folder("numba")
    if kernels is not None:
        (folder / "numba").symlink_to(kernels)
    return folder


def test_a_new_process_loads_the_compiled_replay_from_numbas_cache(tmp_path):
    """The generated module's machine code is cached next to it: a second process compiles nothing."""
    code = textwrap.dedent("""
        import numpy as np
        from fastvae.backends import capture, cpu
        data = np.arange(10, dtype=np.uint8).reshape(2, 5)
        x = np.zeros((1, 5), np.float32)
        replay = capture.record(lambda: cpu.gather_batch(x, data, np.array([1]))).compile()
        print(sum(replay._fn.stats.cache_hits.values()), sum(replay._fn.stats.cache_misses.values()))
    """)
    env = {**os.environ, "FASTVAE_CACHE_DIR": str(_fresh_replays(tmp_path))}
    runs = [subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
            for _ in range(2)]
    assert all(r.returncode == 0 for r in runs), runs[0].stderr + runs[1].stderr
    assert [r.stdout.split() for r in runs] == [["0", "1"], ["1", "0"]]
    assert list((tmp_path / "replays" / "__pycache__").glob("replay_*.nbi"))


def test_fastvae_capture_0_turns_the_replays_off(tmp_path):
    """FASTVAE_CAPTURE=0 in a process's environment: its fits call every kernel from Python (nothing recorded, no
    module generated)."""
    code = textwrap.dedent("""
        import numpy as np
        from fastvae import VAE, step
        seen = []
        real = step.Stepper.many
        def spy(self, *args):
            done = real(self, *args)
            seen.append(self.captures)
            return done
        step.Stepper.many = spy
        x = (np.random.default_rng(0).random((256, 784)) * 255).astype(np.uint8)
        VAE(hidden=(64,), latent=4, batch_size=64, threads=2).fit(x, epochs=1)
        print(step.RECORD_SHARDS, max(seen))
    """)
    for value, want in (("0", "False 0"), ("1", "True 1")):
        env = {**os.environ, "FASTVAE_CAPTURE": value, "FASTVAE_CACHE_DIR": str(_fresh_replays(tmp_path / value))}
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == want.split()
        assert (tmp_path / value / "replays").exists() == (value == "1")


# ---------------------------------------------------------------- a damaged, full or unwritable cache

def _gather_recording():
    data = np.arange(10, dtype=np.uint8).reshape(2, 5)
    x = np.zeros((1, 5), np.float32)
    rec = capture.record(lambda: cpu.gather_batch(x, data, np.array([1])))
    return rec, x, data


@pytest.mark.parametrize("damage", ["empty", "truncated", "random"])
def test_a_damaged_numba_cache_of_a_replay_is_rebuilt(replays_dir, damage, rand):
    # (the random bytes are drawn here, not in the parameters: every collection, pytest-xdist's workers included,
    # must see the same test ids)
    damage = {"empty": b"", "truncated": b"\x80\x04trunc", "random": rand.bytes(64)}[damage]
    rec, x, data = _gather_recording()
    path = rec.compile().path
    cached = list((path.parent / "__pycache__").glob(f"{path.stem}.*"))
    assert cached
    for f in cached:
        f.write_bytes(damage)
    replay = rec.compile()                          # (this process already has the module: as a new one would,
    assert replay.path == path                      # it reads the damaged files when it loads it afresh)
    capture._load(path, fresh=True)
    replay = rec.compile()
    x[...] = 0
    replay()
    np.testing.assert_array_equal(x, (data[[1]] / 255.0).astype(np.float32))
    assert replay.path == path and all(f.read_bytes() != damage for f in path.parent.glob("__pycache__/*"))


def test_replays_unused_for_a_month_are_removed_with_their_numba_cache(replays_dir):
    """Each edit or upgrade of fastvae names new replays; the old ones were never removed (380 MB in a contributor's
    cache: a fresh user's trial). Writing or reusing a replay removes, once per process, those not written or reused
    for capture.KEEP_DAYS days, and a reused one is touched (so one in use is never old)."""
    rec, x, data = _gather_recording()
    path = rec.compile().path                      # the folder exists now; this process has pruned it (nothing old)
    day = 86400
    old, recent = replays_dir / "replay_0123456789abcdef01234567.py", replays_dir / "replay_fedcba9876543210fedcba98.py"
    old_cache = replays_dir / "__pycache__" / f"{old.stem}.replay-3.py311.nbi"
    for f, age in ((old, capture.KEEP_DAYS + 1), (old_cache, capture.KEEP_DAYS + 1), (recent, capture.KEEP_DAYS - 1),
                   (path, 5)):
        if not f.exists():
            f.write_text("# a replay\n")
        os.utime(f, (time.time() - age * day,) * 2)
    capture._pruned.discard(replays_dir)           # (as a new process would)
    again, _, _ = _gather_recording()
    assert again.compile().path == path
    assert not old.exists() and not old_cache.exists() and recent.exists()
    assert time.time() - path.stat().st_mtime < day, "the reused replay is touched"
    assert list((replays_dir / "__pycache__").glob(f"{path.stem}.*")), "its own Numba cache is kept"


@pytest.mark.parametrize("damage", ["binary", "folder"])
def test_a_replay_file_that_cannot_be_read_is_replaced_or_compiled_in_memory(replays_dir, damage):
    rec, x, data = _gather_recording()
    path = rec.compile().path
    for f in (path.parent / "__pycache__").glob(f"{path.stem}.*"):
        f.unlink()
    path.unlink()
    if damage == "binary":
        path.write_bytes(os.urandom(64) + b"\xd2\xff")
    else:
        path.mkdir()
    replay = rec.compile()
    x[...] = 0
    replay()
    np.testing.assert_array_equal(x, (data[[1]] / 255.0).astype(np.float32))
    assert (replay.path == path) == (damage == "binary")     # a folder in the way: compiled in memory
    assert not list(path.parent.glob("*.tmp"))


def test_no_room_to_write_the_module_compiles_it_in_memory(replays_dir, monkeypatch):
    def full(source):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(capture, "_write", full)
    rec, x, data = _gather_recording()
    replay = rec.compile()
    replay()
    assert replay.path is None and replay.kernels == 1


def test_replays_that_do_not_compile_leave_the_steps_uncaptured_with_one_warning(replays_dir, monkeypatch):
    def broken(calls, first=None):
        raise RuntimeError("no compiler today")
    monkeypatch.setattr(capture.Recording, "compile", lambda self: broken(self.calls))
    cfg = Config(hidden=(70, 33), latent=5, batch_size=70)
    data = _data(300)
    batches = _batches(len(data), cfg.batch_size, 4)
    with pytest.warns(RuntimeWarning, match="without their captured replays.*no compiler today") as caught:
        got = _steps("cpu", cfg, batches, data, [2] * 4, record=True)
    assert len(caught) == 1
    _assert_same(got, _steps("cpu", cfg, batches, data, [2] * 4, record=False))
    assert got[5].captures == 0 and "no compiler today" in got[5].shards[2].refused


def test_the_generated_module_is_readable_by_others_and_a_tilde_is_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("FASTVAE_CACHE_DIR", "~/fvc")
    rec, _, _ = _gather_recording()
    path = rec.compile().path
    assert path.parent == tmp_path / "fvc" / "replays" and (path.stat().st_mode & 0o777) == 0o644
