"""Chunks of steps as one GIL-free call per thread (fastvae.step_chunks, step.Stepper.many): the bits of the same
steps run one by one, a chunk that stops where the loss stopped being finite (the step a per-step trainer names), a
part that raises stops the others instead of leaving them waiting, and a busy pool steps one by one."""
import threading

import numpy as np
import pytest

from fastvae import VAE, TrainingDiverged, step, threads
from fastvae.backends import get_backend
from fastvae.backends.cpu_bf16 import unavailable_reason as bf16_unavailable
from fastvae.config import Config
from fastvae.params import Layout, he_init
from fastvae.step_chunks import CHUNK_STEPS


@pytest.fixture(scope="module", autouse=True)
def replays_dir(tmp_path_factory):
    """One replay cache for the module's tests (not the user's): most share a model's shape, and each compiled the
    same replays again (3-5 s a test)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FASTVAE_CACHE_DIR", str(tmp_path_factory.mktemp("replays")))
        yield


def _data(n, width=784, seed=0):
    x = np.random.default_rng(seed).integers(0, 256, (n, width)).astype(np.uint8)
    x[x < 180] = 0                                   # mostly zeros, as MNIST: the sparse first product runs too
    return x


def _run(cfg, data, order, steps, chunked, keep_gradients=False, busy=False, name="cpu"):
    """(params, m, v, grads or None, loss, counters, stepper, counts) after `steps` full batches of `order` on two
    threads of backend `name`, by Stepper.many (chunked) or one call per step; counts: what each many() call did."""
    be = get_backend(name)
    layout = Layout(cfg)
    st = step.State(be, layout, he_init(layout, seed=1), seed=3, keep_gradients=keep_gradients)
    ws = step.Workspace(be, cfg, cfg.batch_size)
    libs = threads.Libraries(be.workers)
    counts, held = [], False
    try:
        libs.set(2)
        stepper = step.Stepper(be, cfg, st, ws, data)
        if busy:
            held = be.workers._busy.acquire(blocking=False)
            assert held
        k = 0
        while k < steps:
            if chunked:
                done = stepper.many(order, k, steps - k)
                counts.append(done)
                k += done
            else:
                stepper(order[k * cfg.batch_size:(k + 1) * cfg.batch_size])
                k += 1
    finally:
        if held:
            be.workers._busy.release()
        libs.close()
    grads = st.grads[0].copy() if keep_gradients else None
    return st.params.copy(), st.m.copy(), st.v.copy(), grads, ws.loss.copy(), st.counters.copy(), stepper, counts


def _assert_same(a, b):
    for got, want, what in zip(a[:6], b[:6], ("params", "m", "v", "grads", "loss", "counters")):
        if want is None:
            continue
        assert np.array_equal(got, want), f"{what} differ: max |diff| {np.max(np.abs(got - want))}"


BF16 = pytest.param("cpu-bf16", marks=pytest.mark.skipif(bf16_unavailable() is not None,
                                                         reason=f"cpu-bf16: {bf16_unavailable()}"))


@pytest.mark.parametrize("name", ["cpu", BF16])
# the seed's shape, and uneven shards (33 + 32 rows) of an awkward width with the gradients kept (each case compiles
# its replays: 4-12 s)
@pytest.mark.parametrize("batch, width, keep", [(150, 784, False), (65, 257, True)])
def test_chunks_give_the_bits_of_steps_one_by_one(name, batch, width, keep):
    cfg = Config(hidden=(96, 40), latent=6, batch_size=batch, input_width=width, image_shape=None)
    data = _data(40 * batch, width)
    order = np.random.default_rng(2).permutation(len(data)).astype(np.int64)
    # a plain step and the recorded one (the first grows the scratch buffers to their size: StepChunks.run), a whole
    # chunk, and a short one
    steps = CHUNK_STEPS + 7
    one = _run(cfg, data, order, steps, chunked=False, keep_gradients=keep, name=name)
    many = _run(cfg, data, order, steps, chunked=True, keep_gradients=keep, name=name)
    _assert_same(many, one)
    assert many[-1] == [2, CHUNK_STEPS, steps - 2 - CHUNK_STEPS] and many[6].captures == 1


def test_a_busy_pool_steps_one_by_one_with_the_same_bits():
    cfg = Config(hidden=(64, 32), latent=4, batch_size=64)
    data = _data(640)
    order = np.random.default_rng(0).permutation(len(data)).astype(np.int64)
    busy = _run(cfg, data, order, 6, chunked=True, busy=True)
    assert busy[-1] == [1] * 6 and busy[6].chunks[2].replays is None      # (no chunk ran: nothing recorded)
    _assert_same(busy, _run(cfg, data, order, 6, chunked=True))


def test_a_fit_that_diverges_in_a_chunk_names_the_step_a_step_by_step_fit_names(monkeypatch):
    x = _data(3000)
    # (lr 0.1: the loss is NaN at step 4, inside the first chunk; at lr 30 it was at step 2, inside the recording
    # call, and a chunk that ran on past a NaN loss passed this test: a mutant no test caught)
    kw = dict(hidden=(64, 32), latent=4, batch_size=64, threads=2, seed=1, lr=0.1)
    errors, steps = [], []
    for record in (True, False):
        monkeypatch.setattr(step, "RECORD_SHARDS", record)
        model = VAE(**kw)
        with pytest.raises(TrainingDiverged) as e:
            model.fit(x, epochs=3)
        errors.append(str(e.value))
        steps.append((model.steps, model.epoch_step))
    assert errors[0] == errors[1] and steps[0] == steps[1], (errors, steps)
    # inside the first chunk: past the recording call's 2 steps, before the chunk's end
    assert 2 < steps[0][0] < 2 + CHUNK_STEPS, steps


@pytest.mark.parametrize("broken", [0, 1])
def test_a_part_that_raises_stops_the_other_and_the_error_is_raised(broken):
    st, ws, stepper, order, libs = _stepper(640)
    try:
        class Broken:                               # one part raises before its first kernel; the other waits for
            kernels = 0                             # its layer marks

            def steps(self, n, stop):
                raise RuntimeError(f"part {broken} failed")

        def fit():                                  # (on a thread of its own: a hang is seen, not suffered)
            stepper.be.workers.count = 2            # (the count is per thread: _stepper set this one's)
            assert stepper.many(order, 0, 5) == 2   # a plain step, a recorded one, and compiles
            stepper.chunks[2].replays[broken] = Broken()
            return stepper.many(order, 2, 5)
        outcome = []
        worker = threading.Thread(target=lambda: outcome.append(_raises(fit)))
        worker.start()
        worker.join(timeout=60)
        assert not worker.is_alive(), "a part was left waiting for the part that raised"
        assert outcome == [f"RuntimeError: part {broken} failed"]
    finally:
        libs.close()


def test_chunks_recorded_on_one_thread_and_run_from_another_are_recorded_again():
    """Part 0's replay uses the scratch of the thread that recorded it (cpu_update.scratch, not copied): run from
    another thread, the chunk records again there; the bits are those of steps one by one."""
    st, ws, stepper, order, libs = _stepper(1280)
    try:
        counts = [stepper.many(order, 0, 10), stepper.many(order, 2, 5)]
        def elsewhere():
            stepper.be.workers.count = 2            # (the count is per thread: _stepper set this one's)
            counts.append(stepper.many(order, 7, 10))
        other = threading.Thread(target=elsewhere)
        other.start()
        other.join(timeout=120)
        counts.append(stepper.many(order, 9, 10))
    finally:
        libs.close()
    # recorded on main, on the other thread, on main (each recording call: a plain step, then the recorded one)
    assert counts == [2, 5, 2, 2] and stepper.captures == 3
    _assert_same((st.params, st.m, st.v, None, ws.loss, st.counters),
                 _run(stepper.cfg, stepper.data, order, 11, chunked=False))


def _stepper(n):
    """(state, workspace, Stepper, order, libraries at 2 threads: close() them) of a small cpu model on n rows."""
    cfg = Config(hidden=(64, 32), latent=4, batch_size=64)
    be, data = get_backend("cpu"), _data(n)
    layout = Layout(cfg)
    st, ws = step.State(be, layout, he_init(layout, seed=1), seed=3), step.Workspace(be, cfg, cfg.batch_size)
    libs = threads.Libraries(be.workers)
    libs.set(2)
    order = np.random.default_rng(0).permutation(n).astype(np.int64)
    return st, ws, step.Stepper(be, cfg, st, ws, data), order, libs


def _raises(fn):
    try:
        fn()
    except Exception as e:  # noqa: BLE001
        return f"{type(e).__name__}: {e}"
    return "returned"


def test_chunk_replays_that_do_not_compile_step_one_by_one_with_one_warning(monkeypatch):
    from fastvae.backends import capture
    monkeypatch.setattr(capture.Recording, "compile", lambda self: (_ for _ in ()).throw(RuntimeError("no compiler")))
    cfg = Config(hidden=(64, 32), latent=4, batch_size=64)
    data = _data(640)
    order = np.random.default_rng(0).permutation(len(data)).astype(np.int64)
    with pytest.warns(RuntimeWarning, match="no compiler") as caught:
        got = _run(cfg, data, order, 6, chunked=True)
    # one warning for the chunks', one for the shards' replays the steps one by one then tried: once each
    said = [str(w.message) for w in caught]
    assert sorted("chunks' replays" in m for m in said) == [False, True], said
    # (the recording call: a plain step and the recorded one; then one by one)
    assert got[-1] == [2] + [1] * 4 and "no compiler" in got[6].chunks[2].refused
    monkeypatch.undo()
    _assert_same(got, _run(cfg, data, order, 6, chunked=False))
