"""Inference on the workers (fastvae.inference): evaluate, encode and decode share their chunks between the cpu
backend's threads, OpenBLAS at one thread per call, and give the bits one thread gives at every count."""
import threading
import time

import numpy as np
import pytest
from threadpoolctl import threadpool_info

import backends
from fastvae import VAE, inference, step
from fastvae.constants import CHUNK_ROWS_ON_WORKERS, COUNTERS, EVAL_ROWS
from fastvae.data import load_mnist
from fastvae.threads import detect


@pytest.fixture(scope="module")
def mnist():
    return load_mnist()


def _blas_count():
    return [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"][0]


def _all_of(model, x, z):
    """Everything inference returns for images x and codings z, as arrays."""
    loss = model.evaluate(x)
    return [np.array([loss["reconstruction"], loss["kl"], loss["total"]]), *model.encode(x), model.decode_logits(z),
            model.decode_logits(z, rows=2048)]


@pytest.mark.parametrize("name", ["cpu", "cpu-bf16"])
@pytest.mark.parametrize("n", [1, 7, 257, 1000])
def test_every_count_and_a_busy_pool_give_the_bits_of_one_thread(name, n, mnist, rand):
    """The seed's layers (OpenBLAS blocks reductions over 784 and 500 differently at 1 and 2 threads: at its own
    count evaluate's last bits followed the machine's CPUs); a pool busy with another job runs every chunk on the
    caller's thread. The losses are those of the chunks added one after another by one thread."""
    be = backends.load(name)
    if detect(None).threads < 2:
        pytest.skip("one CPU: every count runs as one thread")
    model = VAE(backend=name, seed=int(rand.integers(2**31)))
    x = mnist.test_x[rand.permutation(len(mnist.test_x))[:n]]
    z = rand.standard_normal((n, 20)).astype(np.float32)
    got = {}
    for threads in (1, 2, None):
        model.threads = threads
        got[threads] = _all_of(model, x, z)
    model.threads = None
    with be.workers._busy:                  # (what another model's job on the pool holds)
        got["busy"] = _all_of(model, x, z)
    for key in (2, None, "busy"):
        for want, have in zip(got[1], got[key]):
            np.testing.assert_array_equal(have, want, err_msg=f"threads={key}")
    # one thread, one workspace, the loss added chunk after chunk in place: the specification of the bits
    ws = step.Workspace(be, model.config, EVAL_ROWS)
    loss, counters = np.zeros(2), np.zeros(COUNTERS, dtype=np.int64)
    before = _blas_count()
    from threadpoolctl import threadpool_limits
    with threadpool_limits(1, user_api="blas"):
        for j, lo in enumerate(range(0, n, EVAL_ROWS)):
            idx = np.arange(lo, min(lo + EVAL_ROWS, n))
            step.evaluate_chunk(be, model.config, model.state.weights, ws.rows(len(idx)), x, idx, model.config.seed,
                                j, loss, counters)
    assert _blas_count() == before
    np.testing.assert_array_equal(got[1][0][:2], loss / n)


@pytest.mark.parametrize("name", ["cpu", "cpu-bf16"])
def test_the_chunks_are_shared_between_the_threads_with_openblas_at_one(name, mnist, monkeypatch):
    """Each kernel-calling chunk is seen from the thread that runs it: at 2 threads (auto on a 2-CPU machine too) the
    chunks go to two threads, at threads=1 to one; OpenBLAS runs at one thread inside every chunk, at every count,
    and its count is back after the call. A decode of 2048 rows goes in chunks of at most CHUNK_ROWS_ON_WORKERS."""
    backends.load(name)
    if detect(None).threads < 2:
        pytest.skip("one CPU here: every count runs as one thread")
    seen = []

    def spy(real):
        def run(be, cfg, *args):
            seen.append((real.__name__, threading.get_ident(), len(args[1].x), _blas_count()))
            time.sleep(0.002)           # (the GIL free a moment: the other thread takes its chunks however busy)
            return real(be, cfg, *args)
        return run
    for real in (step.evaluate_chunk, step.encode, step.decode):
        monkeypatch.setattr(step, real.__name__, spy(real))
    before = _blas_count()
    model = VAE(backend=name, hidden=(64, 32), latent=5, batch_size=100)
    x = mnist.test_x[:1000]
    for threads, want in ((2, 2), (None, detect(None).threads), (1, 1)):
        model.threads = threads
        seen.clear()
        model.evaluate(x), model.encode(x), model.decode_logits(np.zeros((2048, 5), np.float32), rows=2048)
        for kernel, chunks, rows in (("evaluate_chunk", 7, EVAL_ROWS), ("encode", 10, 100),
                                     ("decode", 2048 // CHUNK_ROWS_ON_WORKERS, CHUNK_ROWS_ON_WORKERS)):
            mine = [s for s in seen if s[0] == kernel]
            assert len(mine) == chunks and max(s[2] for s in mine) == rows, (threads, kernel, mine)
            assert len({s[1] for s in mine}) == min(want, 2), (threads, kernel, mine)
        assert {s[3] for s in seen} == {1}, seen
        assert _blas_count() == before


def test_the_chunks_losses_are_added_in_their_order_whichever_ends_first(mnist, monkeypatch):
    """Chunks made to end out of order (every even chunk waits first): the loss is still the chunks' added in their
    order by one thread, bit for bit (chunks adding into one total as they end gave other bits, 6 calls in 30 on
    10,000 images: a review's mutation, which the equal-bits test above let through)."""
    backends.load("cpu")
    if detect(None).threads < 2:
        pytest.skip("one CPU: the chunks run one after another")
    model = VAE(backend="cpu", seed=4, threads=2)
    x = mnist.test_x[:3000]
    want = model.evaluate(x)                    # (equal to one thread's in-order sum: the test above)
    real = step.evaluate_chunk

    def late(be, cfg, weights, a, data, idx, seed, j, loss, counters):
        if j % 2 == 0:
            time.sleep(0.003)
        return real(be, cfg, weights, a, data, idx, seed, j, loss, counters)
    monkeypatch.setattr(step, "evaluate_chunk", late)
    for _ in range(3):
        assert model.evaluate(x) == want


def test_a_real_ctrl_c_stops_a_call_at_once_and_leaves_the_model_as_it_was(mnist, monkeypatch):
    """SIGINT during a long evaluate on two threads: KeyboardInterrupt in the caller, the other thread takes no
    further chunk (the call does not run on to its end), OpenBLAS's count is back, and the next call gives the same
    bits."""
    from signals import sigint_after
    be = backends.load("cpu")
    model = VAE(backend="cpu", seed=2, threads=2)
    x = mnist.test_x[:300]
    want = model.evaluate(x)
    before, chunks = _blas_count(), []
    real = step.evaluate_chunk

    def counted(*args):
        chunks.append(args[7])
        time.sleep(0.01)                        # 200 chunks: 1 s at least on two threads, were they all run
        return real(*args)
    big = np.tile(x, (100, 1))
    monkeypatch.setattr(step, "evaluate_chunk", counted)
    with pytest.raises(KeyboardInterrupt), sigint_after(0.3):
        model.evaluate(big)
    monkeypatch.setattr(step, "evaluate_chunk", real)
    assert len(chunks) < len(big) // EVAL_ROWS, len(chunks)
    assert _blas_count() == before and not be.workers._busy.locked()
    assert model.evaluate(x) == want


def test_an_error_in_one_chunk_stops_every_thread_taking_chunks():
    """After a chunk raises (Ctrl-C lands in part 0, the caller's) no part takes another chunk: the error comes back
    at once instead of after the whole call; the pool serves the next call."""
    be = backends.load("cpu")
    for error, raised_by in ((ValueError, 1), (KeyboardInterrupt, 0), (ValueError, 0)):
        done = []

        def fn(k, j, error=error, raised_by=raised_by):
            time.sleep(0.001)
            if k == raised_by and j >= 4:
                raise error(f"chunk {j}")
            done.append(j)
        with pytest.raises(error, match="^chunk "):
            inference.run(be, 2, 400, fn)
        assert len(done) < 40, (error, raised_by, len(done))
    done = []
    inference.run(be, 2, 50, lambda k, j: done.append(j))
    assert sorted(done) == list(range(50))


def test_the_reference_backend_keeps_its_chunks_and_the_models_count(monkeypatch):
    """No workers there: one chunk after another, as large as asked, OpenBLAS at a fixed `threads`."""
    be = backends.load("cpu")
    from fastvae.backends import get_backend
    ref = get_backend("reference")
    assert (inference.chunk_rows(ref, 2048), inference.chunk_rows(be, 2048)) == (2048, CHUNK_ROWS_ON_WORKERS)
    assert (inference.parts(ref, 2, 10), inference.parts(be, 1, 10), inference.parts(be, 5, 1)) == (1, 1, 1)
    model = VAE(backend="reference", hidden=(8,), latent=2, threads=2)
    seen = []
    real = step.decode

    def spy(be, cfg, weights, a):
        seen.append((len(a.z), _blas_count()))
        return real(be, cfg, weights, a)
    monkeypatch.setattr(step, "decode", spy)
    count = min(2, _blas_count())               # (OpenBLAS's own count: at most its threads)
    model.decode_logits(np.zeros((700, 2)), rows=600)
    assert seen == [(600, count), (100, count)]
