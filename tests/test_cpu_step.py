"""A whole training step on the cpu backend against the float64 reference, whole and split between threads."""

import os
import signal
import threading
import time

import numpy as np
import pytest

import kernel_cases as kc
from signals import sigint_after
from fastvae import step
from fastvae.backends import cpu, cpu_update, get_backend
from fastvae.backends.cpu_bf16 import unavailable_reason as bf16_unavailable
from fastvae.params import Layout, he_init
from fastvae.config import Config
from fastvae.constants import HIDDEN_ACTIVATIONS


@pytest.mark.parametrize("hidden,latent,rows", [((13, 9), 3, 7), ((31,), 2, 1), ((500, 500), 20, 150),
                                                 ((37, 11, 5), 4, 257)])
def test_training_steps_match_the_reference(rand, hidden, latent, rows):
    kc.check_train_steps(get_backend("cpu"), Config(hidden=hidden, latent=latent, batch_size=rows), rand, rows)


@pytest.mark.parametrize("encoder,reconstruction", [("sigma", "xent"), ("gamma", "mse"), ("sigma", "mse")])
def test_training_steps_of_the_seed_variants_match_the_reference(rand, encoder, reconstruction):
    cfg = Config(hidden=(37, 11), latent=4, batch_size=7, encoder=encoder, reconstruction=reconstruction)
    kc.check_train_steps(get_backend("cpu"), cfg, rand, 7)


@pytest.mark.parametrize("activation", [a for a in HIDDEN_ACTIVATIONS if a != "elu"])
def test_training_steps_with_other_activations_match_the_reference(rand, activation):
    cfg = Config(hidden=(37, 11), latent=4, batch_size=7, activation=activation)
    kc.check_train_steps(get_backend("cpu"), cfg, rand, 7)


@pytest.mark.parametrize("width,image_shape", [(64, (8, 8)), (1, None), (3072, None)])
def test_training_steps_at_other_data_widths_match_the_reference(rand, width, image_shape):
    cfg = Config(hidden=(37, 11), latent=4, batch_size=7, input_width=width, image_shape=image_shape)
    kc.check_train_steps(get_backend("cpu"), cfg, rand, 7)


@pytest.fixture
def workers():
    """The cpu backend's workers, their count restored afterwards."""
    before = cpu.workers.count
    yield cpu.workers
    cpu.workers.count = before


@pytest.mark.parametrize("size", [2 * cpu_update.MIN_PART + 37, 1316824])
def test_adam_split_between_two_workers_gives_one_workers_bits(rand, workers, size):
    """adam_update cuts the buffer between the workers (at multiples of 16 elements): each element's arithmetic is its
    own, so two parts give one part's bits, and the reference's values (the kernel tests run it on one worker: parts
    that overlapped or left a gap passed them, a mutant no test caught)."""
    results, seed = [], int(rand.integers(1 << 30))
    for count in (1, 2):
        workers.count = count
        results.append(kc.check_adam(get_backend("cpu"), np.random.default_rng(seed), size, 7, shards=2))
    assert cpu_update.parts_for(workers, size) == 2
    for one, two in zip(*results):
        assert np.array_equal(one, two)


@pytest.mark.parametrize("hidden,latent,rows,parts", [((13, 9), 3, 7, 2), ((31,), 2, 1, 2), ((500, 500), 20, 150, 2),
                                                       ((37, 11, 5), 5, 257, 3), ((13, 9), 3, 7, 7)])
def test_training_steps_split_between_threads_match_the_reference(rand, workers, hidden, latent, rows, parts):
    """Row shards on the backend's threads (an odd latent size, so a shard's noise starts inside a Philox block)."""
    workers.count = parts
    kc.check_train_steps(get_backend("cpu"), Config(hidden=hidden, latent=latent, batch_size=rows), rand, rows,
                         parts=parts)


@pytest.mark.parametrize("encoder,reconstruction", [("sigma", "xent"), ("gamma", "mse")])
def test_split_training_steps_of_the_seed_variants_match_the_reference(rand, workers, encoder, reconstruction):
    workers.count = 2
    cfg = Config(hidden=(37, 11), latent=5, batch_size=9, encoder=encoder, reconstruction=reconstruction)
    kc.check_train_steps(get_backend("cpu"), cfg, rand, 9, parts=2)


def _steps(cfg, rows, parts, seed, n_steps=3, backend="cpu"):
    be = get_backend(backend)
    layout = Layout(cfg)
    st, ws = step.State(be, layout, he_init(layout, seed=seed), seed=seed), step.Workspace(be, cfg, rows)
    data = np.random.default_rng(seed).integers(0, 256, (rows * n_steps, cfg.input_width)).astype(np.uint8)
    for k in range(n_steps):
        step.train_step(be, cfg, st, ws, data, np.arange(k * rows, (k + 1) * rows), parts)
    return st.params.copy(), st.m.copy(), st.v.copy(), ws.loss.copy()


def test_threads_do_not_change_the_numbers_of_a_split(rand, workers):
    """The same split gives the same bits whether its shards run on two threads or one after another on one (and
    Adam's buffer split between the threads or not)."""
    cfg = Config(hidden=(37, 11), latent=5, batch_size=40)
    seed = int(rand.integers(1 << 30))
    workers.count = 2
    threaded = _steps(cfg, 40, 2, seed)
    workers.count = 1
    serial = _steps(cfg, 40, 2, seed)
    for a, b in zip(threaded, serial):
        assert np.array_equal(a, b)


def test_the_barrier_kind_does_not_change_the_numbers_of_a_split(rand, workers, monkeypatch):
    """Shards and update in one job with the barrier in the update's kernel, or (where that is unavailable) in
    Python: the same bits."""
    from fastvae import barrier
    cfg = Config(hidden=(37, 11), latent=5, batch_size=40)
    seed = int(rand.integers(1 << 30))
    workers.count = 2
    in_kernel = _steps(cfg, 40, 2, seed)
    monkeypatch.setattr(barrier, "AVAILABLE", False)
    in_python = _steps(cfg, 40, 2, seed)
    for a, b in zip(in_kernel, in_python):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("name", ["cpu", "cpu-bf16"])
def test_updating_each_layer_once_every_shard_is_done_with_it_gives_the_same_numbers(rand, workers, monkeypatch,
                                                                                    name):
    """The update's parts wait per layer for every row shard's mark (layer_done) instead of for every shard: the same
    bits as waiting at the barrier, also when the pool thread's shard is held back before each layer's backward (the
    caller's part then updates the last layers while that shard still works on the first ones: were a layer updated
    before every shard's dz of it were formed, the numbers would differ). The waits spin without end here: one that
    sleeps wakes only when every shard is done, as at the barrier."""
    import threading
    import time

    from fastvae import barrier

    if name == "cpu-bf16":
        from fastvae.backends import amx
        if amx.engine_unavailable_reason() is not None:
            pytest.skip(f"cpu-bf16: {amx.engine_unavailable_reason()}")
    be = get_backend(name)
    cfg = Config(hidden=(37, 11), latent=5, batch_size=40)
    seed = int(rand.integers(1 << 30))
    workers.count = 2
    per_layer = _steps(cfg, 40, 2, seed, backend=name)
    real = be.dense_backward

    def late(*args):
        if threading.current_thread() is not threading.main_thread():
            time.sleep(0.02)
        real(*args)
    monkeypatch.setattr(be, "dense_backward", late)
    monkeypatch.setattr(barrier, "spins", lambda: 1 << 40)
    workers._quiet_jobs = 0                                     # (not a quiet period, whose waits sleep at once)
    held_back = _steps(cfg, 40, 2, seed, backend=name)
    monkeypatch.setattr(be, "dense_backward", real)
    monkeypatch.setattr(be, "layer_done", None)
    at_the_barrier = _steps(cfg, 40, 2, seed, backend=name)
    for a, b, c in zip(per_layer, held_back, at_the_barrier):
        assert np.array_equal(a, c) and np.array_equal(b, c)


def test_an_error_in_a_shard_reaches_the_caller(workers):
    workers.count = 2
    seen = []

    def part(k):
        seen.append(k)
        if k == 1:
            raise ValueError("shard 1 failed")
    with pytest.raises(ValueError, match="shard 1 failed"):
        workers.run(part, 2)
    assert sorted(seen) == [0, 1]
    workers.run(seen.append, 2)         # the pool still works afterwards
    assert sorted(seen) == [0, 0, 1, 1]


def test_row_shards_cover_the_rows_once():
    for n in (1, 2, 3, 7, 16, 17, 150, 151, 257):
        for parts in (1, 2, 3, 8):
            bounds = step.row_shards(n, parts)
            assert bounds[0][0] == 0 and bounds[-1][1] == n and len(bounds) == min(n, parts)
            assert all(hi == lo2 for (_, hi), (lo2, _) in zip(bounds, bounds[1:]))
            sizes = [hi - lo for lo, hi in bounds]
            assert min(sizes) >= 1 and sizes == sorted(sizes, reverse=True)
            if n >= 2 * len(sizes):         # even shards (one takes an odd row), within one pair of rows
                assert sum(size % 2 for size in sizes) == n % 2
                assert max(sizes) - min(sizes) <= 2
            else:
                assert max(sizes) - min(sizes) <= 1
    assert step.row_shards(150, 2) == [(0, 76), (76, 150)]
    assert step.row_shards(151, 2) == [(0, 76), (76, 151)]
    assert step.row_shards(17, 2) == [(0, 9), (9, 17)]
    assert step.row_shards(150, 4) == [(0, 38), (38, 76), (76, 114), (114, 150)]


@pytest.mark.parametrize("rows,parts", [(7, 1), (150, 2)])
def test_steps_through_numpys_matmul_match_the_reference(rand, workers, monkeypatch, rows, parts):
    """The path for a NumPy whose BLAS cannot be called from the kernels (cpu_blas.AVAILABLE False): np.matmul
    and the same passes, whole and split."""
    monkeypatch.setattr(cpu, "FUSED", False)
    workers.count = parts
    kc.check_train_steps(get_backend("cpu"), Config(hidden=(37, 11), latent=5, batch_size=rows), rand, rows,
                         parts=parts)


def test_the_wheels_openblas_is_called_from_the_kernels():
    """NumPy's PyPI wheels (what CI installs) carry OpenBLAS as libscipy_openblas64_: its sgemm must be found, so that
    the fused path is the one every other kernel and step test runs."""
    from threadpoolctl import threadpool_info

    from fastvae.backends import cpu_blas
    paths = [lib["filepath"] for lib in threadpool_info() if lib["user_api"] == "blas" and "numpy" in lib["filepath"]]
    if not any("libscipy_openblas64_" in p for p in paths):
        pytest.skip(f"NumPy's BLAS here is not the wheels' OpenBLAS ({paths}): the np.matmul path runs")
    if os.environ.get(cpu_blas.ENV):
        pytest.skip(f"{cpu_blas.ENV} chooses the kernels' sgemm here ({cpu_blas.SOURCE})")
    assert cpu_blas.AVAILABLE and cpu.FUSED and cpu_blas.KIND == "ilp64"
    assert cpu_blas.SOURCE.startswith("scipy_cblas_sgemm64_ in ") and "libscipy_openblas64_" in cpu_blas.SOURCE


@pytest.mark.parametrize("rows", [1, 7, 150, 257])
@pytest.mark.parametrize("fused", [True, False])
def test_a_mostly_zero_input_either_path(rand, monkeypatch, rows, fused):
    """MNIST-like inputs (81 % zeros) through the sparse product, from the fused kernel and from Python."""
    monkeypatch.setattr(cpu, "FUSED", fused)
    kc.check_dense(get_backend("cpu"), rand, rows, 784, 500, "elu", zeros=0.81)


def test_a_busy_pool_runs_the_parts_on_the_caller(workers):
    """A part that calls run() again (as a second model training in another thread would find the pool busy): the
    inner job runs its parts one after another on its own thread, and every part of both jobs runs once."""
    import threading
    workers.count = 2
    seen = []

    def inner(k):
        seen.append(("inner", k, threading.get_ident()))

    def outer(k):
        seen.append(("outer", k))
        if k == 0:
            workers.run(inner, 2)
    workers.run(outer, 2)
    assert sorted(s[:2] for s in seen) == [("inner", 0), ("inner", 1), ("outer", 0), ("outer", 1)]
    assert len({s[2] for s in seen if s[0] == "inner"}) == 1


def test_two_models_training_at_once_in_two_threads(workers):
    """Two fits in two Python threads share the backend's workers and the process's BLAS counts: each ends bit for bit
    where it ends alone, as each keeps its own count of row shards and the counts are put back by the last fit to
    end (threads._HELD). (Until 2026-12-07 this test allowed float32 rounding, from a time when the first fit to
    end put the counts back under the other.)"""
    for alone, together in zip(*kc.fits_alone_and_at_once("cpu", threads=2, epochs=1)):
        assert np.array_equal(together, alone)


@pytest.mark.parametrize("backend", ["cpu", pytest.param("cpu-bf16", marks=pytest.mark.skipif(
    bf16_unavailable() is not None, reason=f"cpu-bf16: {bf16_unavailable()}"))])
def test_two_models_at_once_run_each_at_its_own_thread_count(monkeypatch, workers, backend):
    """The count of row shards is the fit's own: a threads=1 fit kept fitting while a threads=2 fit ran whole beside
    it. The count was one per process, set by each fit and put back by each as it ended, so each model ran steps at
    the other's count (a concurrency audit: 16-62 of 120 steps of a threads=1 fit at two shards, a train loss's last
    bits changed) and the count was left at 2 after both. Per thread now, a job's pool threads taking their job's."""
    from fastvae import VAE
    real, seen = step.Stepper.parts, {1: [], 2: []}

    def parts(self, n):                 # (observed, not changed: the real count of shards is returned and used)
        got = real(self, n)
        seen[self.cfg.seed].append(got)
        return got
    monkeypatch.setattr(step.Stepper, "parts", parts)
    x = (np.random.default_rng(0).random((640, 784)) * 255).astype(np.uint8)
    kw = dict(hidden=(64,), latent=4, batch_size=64, backend=backend)
    before, other_done, errors = workers.count, threading.Event(), []

    def keep_fitting():                 # fits until the other fit has ended, then once more
        try:
            model = VAE(**kw, seed=1, threads=1)
            while not other_done.is_set():
                model.fit(x, epochs=1)
            model.fit(x, epochs=1)
        except BaseException as e:      # noqa: BLE001  (raised in the test's thread below)
            errors.append(e)

    def other():
        try:
            while not seen[1]:          # the first fit's steps have begun
                time.sleep(0.001)
            VAE(**kw, seed=2, threads=2).fit(x, epochs=3)
        except BaseException as e:      # noqa: BLE001
            errors.append(e)
        finally:
            other_done.set()
    threads = [threading.Thread(target=keep_fitting), threading.Thread(target=other)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    assert set(seen[1]) == {1} and set(seen[2]) == {2}, {k: sorted(set(v)) for k, v in seen.items()}
    assert workers.count == before      # this thread's count, as before the fits


def _fit_params(seed, out=None):
    """The parameters of a small MNIST-shaped fit on two threads (put on the queue `out` where given)."""
    from fastvae import VAE
    x = (np.random.default_rng(0).random((256, 784)) * 255).astype(np.uint8)
    model = VAE(hidden=(64,), latent=4, batch_size=64, backend="cpu", threads=2, seed=seed)
    params = model.fit(x, epochs=2).state.params
    if out is not None:
        out.put(params.copy())
    return params.copy()


def test_a_fit_in_a_forked_child_after_one_in_its_parent_starts_its_own_threads():
    """fork() keeps only the thread that called it: a child that fitted on two threads after its parent had (a
    multiprocessing Pool's worker, fork being Linux's default start method) handed its shards to the parent's pool
    threads, gone in the child, and waited forever (a fresh user's trial). Now the child starts its own and gets the
    parent's bits."""
    import multiprocessing
    import queue
    alone = _fit_params(3)                                          # the parent's pool threads are started here
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    child = ctx.Process(target=_fit_params, args=(3, out))
    child.start()
    try:
        got = out.get(timeout=60)
    except queue.Empty:
        got = None
    finally:
        child.join(timeout=10)
        if child.is_alive():
            child.kill()
            child.join()
    assert got is not None, "the fit in the forked child did not finish in 60 s (waiting for threads it has not)"
    assert child.exitcode == 0
    np.testing.assert_array_equal(got, alone)


def test_an_interrupted_run_still_waits_for_its_parts(workers):
    """Ctrl-C (KeyboardInterrupt) while the caller waits: raised once every started part has finished, so the
    next run() waits for its own parts, not for a permit the interrupted one left behind."""
    import time
    workers.count = 2
    done = []

    def slow(k):
        if k == 1:
            time.sleep(0.3)
            done.append(1)

    with sigint_after(0.1):
        with pytest.raises(KeyboardInterrupt):
            workers.run(slow, 2)
        assert done == [1]
    order = []
    workers.run(lambda k: (time.sleep(0.05 * k), order.append(k)), 2)
    assert sorted(order) == [0, 1]


@pytest.mark.parametrize("count", [0, 1, 2, 7, 38])
def test_claiming_from_both_ends_hands_out_every_item_once(rand, count):
    """cpu_update.next_item in any interleaving of threads taking from the front and from the back: each item is
    claimed exactly once, then every thread is told none is left."""
    from fastvae.backends.cpu_update import next_item

    for _ in range(5):
        counter = np.zeros(3, np.int64)
        got, sides = [], rand.integers(0, 2, 3 * count + 6).astype(bool)
        for from_back in sides:
            item = next_item(counter, count, bool(from_back))
            if item == count:
                continue
            got.append(item)
        assert sorted(got) == list(range(count))
        assert next_item(counter, count, False) == count and next_item(counter, count, True) == count


@pytest.mark.parametrize("size", [1, 7, 1023, 1024, 1025, 3 * 1024 + 17])
def test_adam_with_prefetches_is_adam(rand, size):
    """cpu_update.adam_prefetched (PREFETCH_BLOCK elements at a time, the next block's parameters prefetched for
    writing) updates every element once, exactly as adam_block does in one call: the same bits after three steps."""
    from fastvae.backends.cpu_update import PREFETCH_BLOCK, adam_block, adam_prefetched

    assert PREFETCH_BLOCK % 16 == 0                         # whole cache lines per block
    # inputs whose every update is far above its last bit, so that "every element was updated" can only fail by a
    # skipped element: g of one sign per element, |g| >= 0.5, m starting at 0.05 of that sign, v in [1e-4, 1e-3]
    # (with g, m and v drawn freely, a parameter's or v's step fell below half its last bit in 9 % of runs)
    sign = np.where(rand.random(size) < 0.5, -1.0, 1.0).astype(np.float32)
    p, m = rand.standard_normal(size).astype(np.float32), (0.05 * sign).astype(np.float32)
    v = rand.uniform(1e-4, 1e-3, size).astype(np.float32)
    ours, theirs = [a.copy() for a in (p, m, v)], [a.copy() for a in (p, m, v)]
    for _ in range(3):
        g = (sign * (0.5 + np.abs(rand.standard_normal(size)))).astype(np.float32)
        adam_prefetched(*ours[:1], g, *ours[1:], 1e-3, 0.9, 0.999, 1e-8)
        adam_block(*theirs[:1], g, *theirs[1:], 1e-3, 0.9, 0.999, 1e-8)
    for a, b, before in zip(ours, theirs, (p, m, v)):
        assert np.array_equal(a, b)
        assert not np.any(a == before)                      # every element was updated


def _second(record):
    """A second phase as run_phases wants it: waits at the barrier (in a Numba kernel, as the update's does), then
    records its part, unless the job was aborted."""
    from fastvae import barrier

    def second(k, shared):
        if shared is None or barrier.arrive_and_wait(shared):
            record(k)
    return second


@pytest.fixture(params=["numba barrier", "python barrier"])
def phases_barrier(request, monkeypatch):
    """run_phases with the barrier inside the second phase's kernel, and with the Python one used where that is
    unavailable (not x86-64 Linux)."""
    from fastvae import barrier
    if request.param == "python barrier":
        monkeypatch.setattr(barrier, "AVAILABLE", False)
    return request.param


def test_two_phases_in_one_job_keep_their_order_and_threads(workers, phases_barrier):
    """Workers.run_phases: every first() returns before any second() passes the barrier; each part's second runs on
    its first's thread; on a busy pool (another job running) the same order, on the calling thread."""
    import threading
    import time
    workers.count = 3
    for busy in (False, True):
        events, threads_of = [], {}
        lock = threading.Lock()

        def first(k):
            time.sleep(0.01 * k)
            with lock:
                events.append(("first", k))
                threads_of[k] = threading.get_ident()

        def record(k):
            with lock:
                events.append(("second", k))
                assert threads_of[k] == threading.get_ident()
        if busy:
            workers.run(lambda k: workers.run_phases(first, _second(record), 3) if k == 0 else None, 2)
        else:
            workers.run_phases(first, _second(record), 3)
        assert sorted(events[:3]) == [("first", k) for k in range(3)]
        assert sorted(events[3:]) == [("second", k) for k in range(3)]


def test_an_error_in_a_first_phase_stops_every_second_phase(workers, phases_barrier):
    """A first() that raises: its error reaches the caller once every part has finished, and no second() gets past
    the barrier (the others' waits end at once); the pool then runs the next job."""
    import time
    workers.count = 2
    ran = []

    def first(k):
        if k == 1:
            time.sleep(0.05)
            raise ValueError("shard 1 failed")

    with pytest.raises(ValueError, match="shard 1 failed"):
        workers.run_phases(first, _second(ran.append), 2)
    assert ran == []
    workers.run_phases(lambda k: None, _second(ran.append), 2)
    assert sorted(ran) == [0, 1]


def test_an_interrupt_while_waiting_for_the_other_phase(workers, phases_barrier):
    """Ctrl-C (KeyboardInterrupt) in the caller while the other part's first phase runs: raised once that part has
    finished, no second phase gets past the barrier, and the pool runs the next job."""
    import time
    workers.count = 2
    done, ran = [], []

    def first(k):
        if k == 1:
            time.sleep(0.3)
            done.append(1)
        else:
            time.sleep(0.2)             # the interrupt comes while the caller runs Python

    with sigint_after(0.1):
        with pytest.raises(KeyboardInterrupt):
            workers.run_phases(first, _second(ran.append), 2)
        assert done == [1] and ran == []
    workers.run_phases(lambda k: None, _second(ran.append), 2)
    assert sorted(ran) == [0, 1]


def test_the_barrier_waits_for_every_part_and_ends_on_abort():
    """fastvae.barrier: a wait returns True only after every part arrived (the last arrival's store is seen: the
    load is not hoisted), past its spin into the sleeping wait; and False once the job is aborted."""
    import threading
    import time

    from fastvae import barrier

    shared = barrier.new(3)
    later = [threading.Timer(delay, barrier.arrive_and_wait, (shared,)) for delay in (0.01, 0.03)]
    for t in later:
        t.start()
    begin = time.perf_counter()
    assert barrier.arrive_and_wait(shared)
    assert time.perf_counter() - begin > 0.025
    for t in later:
        t.join()
    shared = barrier.new(2)
    threading.Timer(0.02, barrier.abort, (shared,)).start()
    assert not barrier.arrive_and_wait(shared)


def test_a_layer_wait_returns_once_every_part_marked_it_or_arrived_and_ends_on_abort():
    """fastvae.barrier.wait_for_layer: True only after every part marked the layer (seen while it spins: a mark wakes
    no sleeper), or after every part arrived (also from the sleeping wait, which an arrival wakes; the marks of a
    busy pool's one-after-another run are then not needed); False once the job is aborted, also from the sleeping
    wait. arrive() tells the order of arrival."""
    import threading
    import time

    from fastvae import barrier

    shared, ready = barrier.new(2), np.zeros(3, np.int64)
    shared[barrier.SPINS] = 1 << 40                             # spins until the mark (1e10 s)
    assert barrier.arrive(shared) == 0
    barrier.mark(ready, 1)
    threading.Timer(0.03, barrier.mark, (ready, 1)).start()
    begin = time.perf_counter()
    assert barrier.wait_for_layer(shared, ready, 1)
    assert time.perf_counter() - begin > 0.025 and list(ready) == [0, 2, 0]
    shared[barrier.SPINS] = 0                                   # sleeps at once
    threading.Timer(0.03, barrier.arrive, (shared,)).start()
    begin = time.perf_counter()
    assert barrier.wait_for_layer(shared, ready, 0)             # no mark of layer 0: the arrival ends the wait
    assert time.perf_counter() - begin > 0.025
    assert shared[barrier.ARRIVED] == 2
    shared = barrier.new(2, spin=False)
    barrier.arrive(shared)
    threading.Timer(0.03, barrier.abort, (shared,)).start()
    assert not barrier.wait_for_layer(shared, ready, 2)


def test_after_a_wait_that_spun_in_vain_the_next_jobs_do_not_spin(monkeypatch):
    """A barrier waiter that spun its whole budget (its partner was late: on a busy machine, descheduled) makes the
    pool's next QUIET_JOBS jobs wait without spinning, then spin again: a thread does not burn a core another
    process needs, step after step."""
    import time

    from fastvae import barrier, workers as pool_module

    made = []
    real_new = barrier.new
    monkeypatch.setattr(barrier, "new", lambda parts, spin=True: made.append(real_new(parts, spin)) or made[-1])
    workers = pool_module.Workers(2)
    workers.run_phases(lambda k: time.sleep(0.02 * k), lambda k, b: barrier.arrive_and_wait(b), 2)
    assert made[-1][barrier.SPINS] > 0 and made[-1][barrier.SLEPT] == 1
    for _ in range(pool_module.QUIET_JOBS):
        workers.run_phases(lambda k: None, lambda k, b: barrier.arrive_and_wait(b), 2)
        assert made[-1][barrier.SPINS] == 0
    workers.run_phases(lambda k: None, lambda k, b: barrier.arrive_and_wait(b), 2)
    assert made[-1][barrier.SPINS] > 0
    workers.close()


def _departing_second(out, pauses=None):
    """A second phase as the update's kernels end: past the barrier it works (pauses[k] pause instructions, when
    given), marks its part done in `out`, in the kernel, then departs (barrier.depart: part 0 waits there for the
    others)."""
    from numba import njit

    from fastvae import barrier

    @njit(nogil=True)
    def kernel(shared, leader, out, k, pauses):
        if barrier.arrive_and_wait(shared):
            barrier._pauses(pauses[k])
            out[k] += 1
            barrier.depart(shared, leader)

    pauses = np.zeros(len(out), np.int64) if pauses is None else pauses

    def second(k, shared):
        if shared is None:
            out[k] += 1
        else:
            kernel(shared, k == 0, out, k, pauses)
    return second


def test_departed_parts_are_not_waited_for_yet_done_when_the_job_returns():
    """run_phases with parts whose last kernel departs (as the update's do): when the job returns every part's kernel
    has finished, though the threads' return through Python is not waited for (their `done` is owed, taken by the
    next wait); job after job, through plain run() jobs between them, every part runs once per job; a slow part is
    waited for inside part 0's kernel; a busy pool runs them one after another."""
    import time

    from fastvae import workers as pool_module

    from fastvae import barrier

    pool = pool_module.Workers(3)
    out, pauses = np.zeros(3, np.int64), np.zeros(3, np.int64)
    second = _departing_second(out, pauses)
    pool.run_phases(lambda k: None, second, 3)     # (compiled first)
    slow_pauses = 20 * barrier.spins()             # about 10 ms: past part 0's spin, into its futex wait
    try:
        for job in range(2, 42):
            pauses[2] = slow_pauses if job % 4 == 0 else 0       # part 2 ends late: part 0 waits for it
            pool.run_phases(lambda k: time.sleep(0.005) if job % 3 == 0 and k == 1 else None, second, 3)
            assert list(out) == [job] * 3, (job, out)
            # each worker owes this job's `done` (the job did not wait for it); the previous job's has come and was
            # taken, so a fit, which waits for no part, does not pile them up
            assert [w._owed for w in pool._threads] == [1, 1]
            if job % 10 == 0:
                threads_used = set()
                pool.run(lambda k: threads_used.add(threading.get_ident()), 3)
                assert len(threads_used) == 3
                assert all(w._owed == 0 for w in pool._threads)    # a plain job's waits took what was owed
        pool.run(lambda k: pool.run_phases(lambda j: None, second, 3) if k == 0 else None, 2)   # busy: one thread
        assert list(out) == [42] * 3
    finally:
        pool.close()


def test_departed_parts_wait_in_their_kernel_for_the_next_job(monkeypatch):
    """After a run_phases job whose parts depart, the pool threads stay in their kernel (spinning, outside the GIL)
    until the pool hands out its next job, a plain run() or another run_phases, or is closed: then they go on to it.
    (Spins without end here; in a fit they spin at most SPIN_SECONDS.)"""
    import time

    from fastvae import barrier, workers as pool_module

    monkeypatch.setattr(barrier, "spins", lambda: 1 << 40)
    pool = pool_module.Workers(3)
    out = np.zeros(3, np.int64)
    second = _departing_second(out)
    try:
        for job in range(1, 4):
            pool.run_phases(lambda k: None, second, 3)
            assert list(out) == [job] * 3
            time.sleep(0.02)
            assert not any(w._done.acquire(blocking=False) for w in pool._threads)     # still in their kernel
        seen = []
        pool.run(lambda k: seen.append(k), 3)                   # handed out: they come back and run it
        assert sorted(seen) == [0, 1, 2] and all(w._owed == 0 for w in pool._threads)
        pool.run_phases(lambda k: None, second, 3)
    finally:
        closing = threading.Thread(target=pool.close)
        closing.start()
        closing.join(5)
    assert not closing.is_alive(), "close() waits for the held threads"
    assert list(out) == [4, 4, 4]


def test_a_departure_wait_that_spun_in_vain_quiets_the_next_jobs():
    """Part 0 waiting at barrier.depart for a part that ends long after it, past its spin budget, counts itself in
    SLEPT as a barrier waiter does: the pool's next jobs wait without spinning."""
    from fastvae import barrier, workers as pool_module

    pool = pool_module.Workers(2)
    out, pauses = np.zeros(2, np.int64), np.zeros(2, np.int64)
    second = _departing_second(out, pauses)
    made = []
    real_new = barrier.new
    try:
        pool.run_phases(lambda k: None, second, 2)              # (compiled first)
        barrier.new = lambda parts, spin=True: made.append(real_new(parts, spin)) or made[-1]
        # the compiling job itself may have spun in vain (a loaded machine: its part 1 compiled, or was descheduled,
        # long after part 0) and quieted the pool: the job below starts from a pool that spins (CI, 2026-12-06)
        pool._quiet_jobs = 0
        pauses[1] = 4 * barrier.spins()                         # part 1 ends about 2 ms after part 0
        pool.run_phases(lambda k: None, second, 2)
        assert made[-1][barrier.SPINS] > 0 and made[-1][barrier.SLEPT] >= 1
        pauses[1] = 0
        pool.run_phases(lambda k: None, second, 2)
        assert made[-1][barrier.SPINS] == 0 and list(out) == [3, 3]
    finally:
        barrier.new = real_new
        pool.close()


@pytest.mark.parametrize("phases", [False, "barrier", "depart"])
def test_ctrl_c_at_any_moment_leaves_the_pool_working(phases):
    """A Ctrl-C (a real SIGINT) at a random moment of a stream of short jobs of run() or run_phases(), 150 times: each
    lands as one KeyboardInterrupt in the caller, and afterwards the pool still runs every part of a job on its
    threads (none left waiting at a barrier, the pool not left taken). A hang fails the test through faulthandler's
    timeout. (One Ctrl-C at a time, as a person presses it; a second one while the first unwinds is not covered.)"""
    import faulthandler
    import time

    from fastvae import barrier, workers as pool_module

    pool = pool_module.Workers(3)
    rand = np.random.default_rng(7)

    def first(k):
        time.sleep(1e-4 * k)

    def second(k, shared):
        if shared is not None:
            barrier.arrive_and_wait(shared)
    if phases == "depart":                        # the update's kind: its last kernel departs
        second = _departing_second(np.zeros(3, np.int64))
    pool.run_phases(first, second, 3)             # compiled before any interrupt: not a test of Numba's compiler
    pool.run(first, 3)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    faulthandler.dump_traceback_later(120, exit=True)
    try:
        for delay in rand.uniform(0, 3e-3, 150):
            timer = threading.Timer(delay, os.kill, (os.getpid(), signal.SIGINT))
            try:
                timer.start()                       # (inside: the interrupt may come before the first job)
                for _ in range(100):
                    if phases:
                        pool.run_phases(first, second, 3)
                    else:
                        pool.run(first, 3)
                time.sleep(1)                       # (the interrupt always comes: this is not reached)
            except KeyboardInterrupt:
                pass
            timer.join()
            threads_used = set()
            pool.run(lambda k: threads_used.add(threading.get_ident()), 3)
            assert len(threads_used) == 3 and not pool._busy.locked()
    finally:
        faulthandler.cancel_dump_traceback_later()
        signal.signal(signal.SIGINT, previous)
        pool.close()


def test_close_from_another_thread_waits_for_the_running_job():
    """Workers.close() while another Python thread's job runs on the pool: it waits for the job, which ends as it
    would have (before, close() emptied the pool's thread list under the job, whose collection then looped forever),
    and the pool works again afterwards (new threads)."""
    import time
    from fastvae import workers as pool_module
    pool = pool_module.Workers(2)
    started, release, done, errors = threading.Event(), threading.Event(), [], []

    def part(k):
        if k == 1:
            started.set()
        release.wait(10)
        if k == 0:
            time.sleep(0.2)             # the pool thread's part ends first: the job then collects it
        done.append(k)

    def job():
        try:
            pool.run(part, 2)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)
    runner = threading.Thread(target=job, daemon=True)
    runner.start()
    assert started.wait(10)
    closer = threading.Thread(target=pool.close, daemon=True)
    closer.start()
    time.sleep(0.05)
    assert closer.is_alive(), "close() did not wait for the running job"
    release.set()
    runner.join(10)
    closer.join(10)
    assert not runner.is_alive() and not closer.is_alive(), "the job or close() never ended"
    assert not errors and sorted(done) == [0, 1] and pool._threads == []
    seen = []
    pool.run(lambda k: seen.append(k), 2)
    assert sorted(seen) == [0, 1]
    pool.close()


def test_close_from_inside_a_job_is_refused():
    """From a part (the caller's or a pool thread's) close() would wait for the job it is in: a RuntimeError, and
    the pool goes on working."""
    from fastvae import workers as pool_module
    pool = pool_module.Workers(2)
    refused = []

    def part(k):
        with pytest.raises(RuntimeError, match="inside one of the pool's jobs"):
            pool.close()
        refused.append(k)
    pool.run(part, 2)
    assert sorted(refused) == [0, 1]
    seen = []
    pool.run(lambda k: seen.append(k), 2)
    assert sorted(seen) == [0, 1]
    pool.close()


def test_every_ctrl_c_held_during_a_job_reaches_the_handler_in_place():
    """Two Ctrl-Cs held back during one job were handed to the handler once: fit's first-Ctrl-C handler heard one
    and stopped cleanly, where the second should have stopped at once (a fresh user's trial). Each now goes to the
    handler in place as it comes (here the first handler swaps in a second, as fit's does)."""
    import time
    from fastvae.sigint import held_interrupts
    heard = []

    def second(signum, frame):
        heard.append("second")

    def first(signum, frame):
        heard.append("first")
        signal.signal(signal.SIGINT, second)
    before = signal.signal(signal.SIGINT, first)
    try:
        with held_interrupts():
            for _ in range(2):
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.05)                    # (Python runs the holding handler between the two)
            assert heard == []
        assert heard == ["first", "second"]
    finally:
        signal.signal(signal.SIGINT, before)
