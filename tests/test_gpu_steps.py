"""The gpu backend as a whole: training steps against the reference and the cpu backend, the VAE class on it, load()
and its refusals, and the captured step (stream capture, one replay per step).

Without a GPU it all runs in CI: steps on the emulated backend (gpu.emulated(): the launch code over numpy and the
CUDA C run on the CPU), load() and capture on the stand-in CuPy of tests/stand_in (numpy arrays, the same emulated
kernels, CuPy's stream-capture protocol). On a machine with a GPU the same tests also run on the device (marker
gpu), there also at the seed's sizes. The kernels one by one against the reference are in test_kernels.py; one
epoch of MNIST on a device in test_gpu.py.
"""
import importlib.util
import os
import subprocess
import sys
import threading
import types
from pathlib import Path

import numpy as np
import pytest

import kernel_cases as kc
from tolerances import TOL, assert_close
from fastvae import step
from fastvae.backends import contract
from fastvae.backends import reference as ref
from fastvae.config import Config
from fastvae.constants import COUNTERS, LOSS_CHECK_INTERVAL_DEVICE
from fastvae.backends import gpu
from fastvae.cuda import emu

STAND_IN = Path(__file__).resolve().parent / "stand_in"     # a stand-in cupy package (see its docstring)


def _emulated():
    """The emulated backend; the test skipped where the emulator cannot be built (no C++ compiler). Per test, not
    the whole file: a device without g++ must still run this file's gpu-marked tests (the file skipped itself whole
    there, and bench/device_run.sh would have failed with the captured steps unchecked: a review)."""
    reason = emu.unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    return gpu.emulated()


def _device():
    reason = gpu.unavailable_reason()
    if reason is not None:
        pytest.skip(f"gpu backend unavailable: {reason}")
    return gpu.load()


@pytest.fixture(scope="module", params=["gpu-emulated", pytest.param("gpu", marks=pytest.mark.gpu)])
def be(request):
    """The emulated backend, and the real one where there is a device."""
    return _emulated() if request.param == "gpu-emulated" else _device()


@pytest.fixture
def fake_cupy(monkeypatch):
    """tests/stand_in/cupy as `cupy` (numpy arrays, the emulator's RawModule, a scripted CUDA runtime, stream
    capture), so that load(), unavailable_reason() and capture run here exactly as they will with CuPy."""
    _emulated()                             # (its RawModule is the emulator's)
    spec = importlib.util.spec_from_file_location("cupy", STAND_IN / "cupy" / "__init__.py")
    fake = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fake)
    monkeypatch.setitem(sys.modules, "cupy", fake)
    for attr in ("_cupy", "_cupy_error", "_loaded"):           # restored after the test
        monkeypatch.setattr(gpu, attr, None)
    return fake


@pytest.fixture
def stand_in(fake_cupy):
    """gpu.load() on the stand-in CuPy: the backend a device would give, capture included."""
    return gpu.load()


@pytest.fixture(params=["stand-in", pytest.param("gpu", marks=pytest.mark.gpu)])
def capturing(request):
    """A backend that captures: gpu.load() on the stand-in CuPy, and on a device where there is one."""
    return request.getfixturevalue("stand_in") if request.param == "stand-in" else _device()


def _small_run(b, rand, cfg, rows=7):
    from fastvae.params import Layout, he_init
    layout = Layout(cfg)
    st, ws = step.State(b, layout, he_init(layout, seed=1), seed=3), step.Workspace(b, cfg, rows)
    data = b.asarray(rand.integers(0, 256, (40, 784)), dtype=np.uint8)
    return st, ws, data


# ---------------------------------------------------------------- whole steps

def cases(small, seed_sized=()):
    """pytest params (backend, *case): the small cases on the emulated backend and on a device, the seed-sized ones
    (which the emulator cannot afford) on a device only."""
    params = [pytest.param("gpu-emulated", *c, id="gpu-emulated-" + "-".join(map(str, c))) for c in small]
    params += [pytest.param("gpu", *c, marks=pytest.mark.gpu, id="gpu-" + "-".join(map(str, c)))
               for c in (*small, *seed_sized)]
    return params


def load(name):
    return _emulated() if name == "gpu-emulated" else _device()


@pytest.mark.parametrize("name,hidden,latent,rows,activation", cases(
    [((13, 9), 3, 7, "elu"), ((31,), 2, 1, "elu"), ((13, 9), 3, 7, "relu"), ((13, 9), 3, 7, "tanh")],
    [((500, 500), 20, 150, "elu"), ((37, 11, 5), 4, 257, "elu"), ((500, 500), 20, 150, "relu"),
     ((500, 500), 20, 150, "tanh")]))
def test_training_steps_match_the_reference(rand, name, hidden, latent, rows, activation):
    cfg = Config(hidden=hidden, latent=latent, batch_size=rows, activation=activation)
    kc.check_train_steps(load(name), cfg, rand, rows)


@pytest.mark.parametrize("name,hidden,latent,rows,encoder,reconstruction", cases(
    [((13, 9), 3, 7, "sigma", "xent"), ((13, 9), 3, 7, "gamma", "mse")],
    [((37, 11), 4, 150, "sigma", "xent"), ((37, 11), 4, 150, "gamma", "mse")]))
def test_training_steps_of_the_variants_match_the_reference(rand, name, hidden, latent, rows, encoder, reconstruction):
    cfg = Config(hidden=hidden, latent=latent, batch_size=rows, encoder=encoder, reconstruction=reconstruction)
    kc.check_train_steps(load(name), cfg, rand, rows)


@pytest.mark.parametrize("name,hidden,latent,rows", cases([((21, 17), 5, 33)], [((500, 500), 20, 150)]))
def test_training_steps_match_the_cpu_backend(rand, name, hidden, latent, rows):
    """A few full steps from the same state on the gpu and on the cpu backend: same losses, gradients and counters
    (both float32, with different summation orders)."""
    from fastvae.backends import get_backend
    from fastvae.params import Layout, he_init
    cfg = Config(hidden=hidden, latent=latent, batch_size=rows)
    layout = Layout(cfg)
    params = he_init(layout, seed=int(rand.integers(1 << 30)))
    data = rand.integers(0, 256, (4 * rows, 784)).astype(np.uint8)
    seed = int(rand.integers(1 << 40))
    runs = []
    for b in (get_backend("cpu"), load(name)):
        st, ws = step.State(b, layout, params, seed, keep_gradients=True), step.Workspace(b, cfg, rows)
        d = b.asarray(data, dtype=np.uint8)
        losses, grads, firsts = [], [], []
        for k in range(4):
            idx = b.asarray((np.arange(rows) * 3 + k) % len(data), dtype=np.int64)
            ws.loss[...] = 0
            step.train_step(b, cfg, st, ws, d, idx)
            losses.append(np.array(b.to_host(ws.loss), dtype=np.float64))
            grads.append(np.array(b.to_host(st.grads)[0], dtype=np.float64))     # the step's gradient (S = 1 or more)
            if k == 0:
                firsts.append(np.array(b.to_host(st.params), dtype=np.float64))
        runs.append((losses, grads, firsts[0], [int(c) for c in b.to_host(st.counters)]))
    (l_cpu, g_cpu, p_cpu, c_cpu), (l_gpu, g_gpu, p_gpu, c_gpu) = runs
    assert c_cpu == c_gpu == [seed, 4, 0]
    tol = TOL["float32_step"]
    scale = float(np.abs(g_cpu[0]).max())
    assert_close(g_gpu[0], g_cpu[0], tol, scale=scale, what="first gradients")
    for k in range(4):
        assert_close(l_gpu[k], l_cpu[k], tol, what=f"loss of step {k + 1}")
    # the first Adam step moves each parameter by lr * g / (|g| + eps): where the gradient's sign is resolved (as
    # kernel_cases.check_train_steps), both land within tol * lr (every move within 8 lr, the check this replaced,
    # held for any two 4-step runs: a test audit's finding)
    resolved = np.abs(g_cpu[0]) > 10 * tol * scale
    assert resolved.sum() > resolved.size // 2
    assert_close(p_gpu[resolved], p_cpu[resolved], tol, scale=cfg.lr, what="parameters after the first step")


@pytest.mark.parametrize("name,encoder", cases([("sigma",), ("gamma",)]))
def test_a_step_split_into_row_shards_is_the_whole_batchs_step(rand, name, encoder):
    """train_step(parts=3) runs the batch as three row shards, one after another (the gpu has no workers): each
    draws its own rows' noise (its counters' COUNTER_ROW, in heads_forward and the sigma form's backward) and writes
    its partial gradient into grads[s]; adam_update sums them into grads[0]. Noise, losses, gradients and parameters
    are the unsplit step's up to the order of the float32 sums."""
    from fastvae.params import Layout, he_init
    b = load(name)
    cfg = Config(hidden=(13, 9), latent=3, batch_size=10, encoder=encoder)
    layout = Layout(cfg)
    params = he_init(layout, seed=int(rand.integers(1 << 30)))
    if encoder == "sigma":
        kc.sigma_away_from_zero(layout, params, cfg.latent)
    data = b.asarray(rand.integers(0, 256, (40, 784)), dtype=np.uint8)
    seed = int(rand.integers(1 << 40))
    runs = []
    for parts in (1, 3):
        st, ws = step.State(b, layout, params, seed, step=5), step.Workspace(b, cfg, 10)
        ws.loss[...] = 0
        step.train_step(b, cfg, st, ws, data, b.asarray(np.arange(10) + 3, dtype=np.int64), parts)
        assert st.grads.shape[0] == parts
        assert [int(c) for c in b.to_host(st.counters)] == [seed, 6, 0], "the step's own counters keep row 0"
        runs.append([b.to_host(a).astype(np.float64) for a in (ws.rows(10).z, ws.loss, st.grads[0], st.params)])
    (z1, loss1, g1, p1), (z3, loss3, g3, p3) = runs
    tol = TOL["float32_step"]
    assert_close(z3, z1, tol, what="z (each shard's own rows of the step's noise)")
    assert_close(loss3, loss1, tol, what="loss")
    assert_close(g3, g1, tol, what="gradient (the shards' sum)")
    # Adam's first steps move a parameter by about lr whatever its gradient's size: compare where the sign is sure
    resolved = np.abs(g1) > 10 * tol * np.abs(g1).max()
    assert_close(p3[resolved], p1[resolved], tol, scale=cfg.lr, what="params")


def test_the_vae_class_runs_on_the_gpu_backend(be, rand):
    """fit, evaluate (counters set per batch; two chunks of EVAL_ROWS, each with its own loss and counters), encode,
    reconstruct, sample and the IWAE bound (its codings drawn on the host for each chunk the device decodes) through
    the VAE class (given the backend object under test): the same numbers as the cpu backend's, within what a few
    float32 Adam steps in another summation order allow."""
    from fastvae import model
    from fastvae.evaluate import iwae_bound
    X = rand.integers(0, 256, (40, 784)).astype(np.uint8)
    results = {}
    for name in ("cpu", "gpu-under-test"):
        vae = model.VAE(hidden=(13, 9), latent=3, backend=be if name == "gpu-under-test" else name, seed=5,
                        batch_size=8)
        vae.fit(X[:32], epochs=1)
        mu, logvar = vae.encode(X[32:])
        bound = iwae_bound(vae, X[32:36], k=7, batch_size=5)["bound"][:, 0]     # chunks that cut images apart
        results[name] = (vae.evaluate(X[32:])["total"], vae.evaluate(np.tile(X, (4, 1))[:157])["total"], bound, mu,
                         logvar, vae.reconstruct(X[32:5 + 32]), vae.sample(5), vae.steps)
    (e_cpu, e2_cpu, b_cpu, *rest_cpu, t_cpu), (e_gpu, e2_gpu, b_gpu, *rest_gpu, t_gpu) = results["cpu"], results[
        "gpu-under-test"]
    assert t_cpu == t_gpu == 4
    assert abs(e_gpu - e_cpu) <= 1e-3 * abs(e_cpu) and abs(e2_gpu - e2_cpu) <= 1e-3 * abs(e2_cpu)
    assert np.all(np.abs(b_gpu - b_cpu) <= 1e-3 * np.abs(b_cpu)), (b_gpu, b_cpu)
    for a, b in zip(rest_gpu, rest_cpu):
        assert a.dtype == b.dtype == np.float32 and a.shape == b.shape
        assert np.max(np.abs(a - b)) <= 1e-2 * max(1.0, float(np.max(np.abs(b))))


class Recorder:
    """A RawModule-like wrapper that logs every launch: kernel, grid, block and each argument (an array's address,
    a scalar's type and value): what a captured CUDA graph would bake in."""

    def __init__(self, module):
        self.module, self.log = module, []

    def get_function(self, name):
        kernel = self.module.get_function(name)

        def launch(grid, block, args, shared_mem=0):
            self.log.append((name, grid, block, shared_mem, tuple(
                ("ptr", a.ctypes.data) if isinstance(a, np.ndarray) else (a.dtype.str, a.item()) for a in args)))
            kernel(grid, block, args, shared_mem)
        return launch


def test_every_kernel_of_the_module_is_launched_by_a_step():
    """Over the settings' values (and both data dtypes), training steps and inference (encode, decode) launch every
    kernel the module defines, and nothing else: no dead instance, no name the module lacks."""
    from fastvae.constants import ACTIVATIONS, ENCODERS, RECONSTRUCTIONS
    module = _emulated().impl.module
    recorder = Recorder(module)
    b = contract.Backend(gpu.CudaKernels(np, recorder))
    rand = np.random.default_rng(0)
    hidden = [a for a in ACTIVATIONS if a != "identity"]
    for k, activation in enumerate(hidden):
        cfg = Config(hidden=(5,), latent=2, batch_size=3, activation=activation,
                     encoder=ENCODERS[k % len(ENCODERS)], reconstruction=RECONSTRUCTIONS[k % len(RECONSTRUCTIONS)])
        st, ws, data = _small_run(b, rand, cfg, rows=3)
        if k == 1:
            data = b.asarray(data, dtype=np.float32) / 255
        step.train_step(b, cfg, st, ws, data, b.asarray(np.arange(3), dtype=np.int64))
    step.encode(b, cfg, st.weights, ws.rows(3))
    step.decode(b, cfg, st.weights, ws.rows(3))
    assert len(hidden) >= max(len(ENCODERS), len(RECONSTRUCTIONS), 2)
    assert {entry[0] for entry in recorder.log} == set(module.names)


# ---------------------------------------------------------------- load() and its refusals (stand-in CuPy)

def test_load_gives_the_contract_on_cupy(stand_in, rand):
    from fastvae import backends
    assert gpu.unavailable_reason() is None
    assert backends.get_backend("auto") is stand_in and gpu.load() is stand_in
    assert isinstance(stand_in, contract.Backend) and isinstance(stand_in.impl, gpu.CudaKernels)
    assert stand_in.name == "gpu" and stand_in.dtype == np.float32 and stand_in.xp is sys.modules["cupy"]
    assert callable(stand_in.capture) and stand_in.loss_check_interval == LOSS_CHECK_INTERVAL_DEVICE
    host = _emulated()               # over numpy: nothing to capture, and the loss is read every step
    assert host.capture is None and host.loss_check_interval == 1 and host.name == "gpu-emulated"
    assert not hasattr(gpu, "dense_forward")        # the module binds nothing: the backend is the object
    kc.check_train_steps(stand_in, Config(hidden=(13, 9), latent=3, batch_size=7), rand, 7, n_steps=2)


def test_a_driver_of_an_older_major_version_is_refused_by_the_device_count(fake_cupy, monkeypatch):
    """As with the real CuPy (tests/test_gpu_real_cupy.py tests the messages against it): the stand-in's CUDA 12.4
    driver under a CuPy built for CUDA 13.2 fails getDeviceCount; CUDA 13.0 is accepted."""
    from fastvae.errors import UserError
    monkeypatch.setenv("FASTVAE_STAND_IN_DRIVER", "13000")
    assert gpu.unavailable_reason() is None
    monkeypatch.setenv("FASTVAE_STAND_IN_DRIVER", "12040")
    assert "supports CUDA 12.4, older than the CUDA 13 this CuPy" in gpu.unavailable_reason()
    with pytest.raises(UserError, match=r"the gpu backend is not available: .*; use the cpu backend "
                                         r"\(backend=\"cpu\", --backend cpu\)"):
        gpu.load()


# ---------------------------------------------------------------- the captured step

def test_a_step_launches_the_same_kernels_with_the_same_arguments_every_time(stand_in, rand):
    """Graph readiness: two consecutive training steps (same buffers, new batch indices and step counter in
    device memory) launch identical kernel sequences with identical arguments, so a captured CUDA graph of one
    step replays every later step correctly."""
    cfg = Config(hidden=(13, 9), latent=3, batch_size=7)
    recorder = Recorder(stand_in.impl.module)
    b = contract.Backend(gpu.CudaKernels(stand_in.xp, recorder))
    st, ws, data = _small_run(b, rand, cfg)
    idx = b.empty(7, dtype=np.int64)                   # the batch's indices: one buffer, refilled per step
    logs = []
    for k in range(3):
        idx[...] = np.arange(7) + 7 * k
        recorder.log = []
        step.train_step(b, cfg, st, ws, data, idx)
        logs.append(recorder.log)
    assert logs[0] == logs[1] == logs[2]
    assert len(logs[0]) > 15 and int(st.counters[1]) == 3


def test_capture_records_a_step_without_running_it_and_replays_it(capturing, rand):
    """capture() only records: nothing changes until the replay, and each replay is one more step."""
    cfg = Config(hidden=(13, 9), latent=3, batch_size=7)
    st, ws, data = _small_run(capturing, rand, cfg)
    idx = capturing.asarray(np.arange(7), dtype=np.int64)
    before = capturing.to_host(st.params).copy()
    replay = capturing.capture(lambda: step.train_step(capturing, cfg, st, ws, data, idx))
    capturing.synchronize()
    assert np.array_equal(capturing.to_host(st.params), before) and int(capturing.to_host(st.counters)[1]) == 0
    replay()
    replay()
    capturing.synchronize()
    assert int(capturing.to_host(st.counters)[1]) == 2 and not np.array_equal(capturing.to_host(st.params), before)


def test_replaying_the_captured_step_trains_like_launching_every_step(capturing):
    kc.check_captured_steps(capturing)


def test_a_replay_that_loses_a_launch_fails_the_check(stand_in, fake_cupy, monkeypatch):
    """The check above can fail: a graph that drops its last launch (adam_update) trains differently."""
    def end_capture(self):
        launches, self.capturing = self.capturing[:-1], None
        fake_cupy.Stream._open.discard(self)
        return types.SimpleNamespace(launch=lambda stream: [kernel(*args) for kernel, args in launches])
    monkeypatch.setattr(fake_cupy.Stream, "end_capture", end_capture)
    with pytest.raises(AssertionError):
        kc.check_captured_steps(stand_in)


def test_the_vae_class_trains_through_one_captured_step(capturing, rand, monkeypatch):
    """VAE.fit on a backend that can capture records the step once per fit and replays it for every batch."""
    from fastvae import model
    monkeypatch.setattr(model, "get_backend", lambda name, notify=None: capturing)
    made = []
    real = step.Stepper

    class Counting(real):
        def __init__(self, *args):
            super().__init__(*args)
            made.append(self)
    monkeypatch.setattr(step, "Stepper", Counting)
    X = rand.integers(0, 256, (32, 784)).astype(np.uint8)
    vae = model.VAE(hidden=(13, 9), latent=3, backend="gpu", seed=5, batch_size=8)
    vae.fit(X, epochs=2)
    assert vae.steps == 8 and len(made) == 1 and made[0].captures == 1


def test_an_error_inside_a_capture_is_the_one_raised(stand_in, fake_cupy, monkeypatch):
    """On a device a launch that fails while a stream captures invalidates the capture, and end_capture() then raises
    cudaErrorStreamCaptureInvalidated, which replaced the launch's own error (a review against CuPy's source): the
    stand-in's end_capture made to raise so, the error raised is still the one inside; the caller's stream is current
    again and no capture is left open."""
    class Invalidated(RuntimeError):
        pass
    real_end = fake_cupy.cuda.Stream.end_capture

    def end_capture(self):
        real_end(self)
        raise Invalidated("cudaErrorStreamCaptureInvalidated")
    monkeypatch.setattr(fake_cupy.cuda.Stream, "end_capture", end_capture)
    mine = fake_cupy.cuda.Stream(non_blocking=True).use()

    def failing():
        raise RuntimeError("the launch's own error")
    with pytest.raises(RuntimeError, match="the launch's own error"):
        stand_in.capture(failing)
    assert fake_cupy.cuda.get_current_stream() is mine and not fake_cupy.cuda.Stream._open


def test_a_host_array_is_refused_before_a_launch_on_a_device():
    """CuPy passes a one-element host (NumPy) array to a kernel by value, where the kernel reads a pointer: an illegal
    address that breaks the context for the rest of the process (a review of CuPy's argument packing); larger ones it
    refuses. The launch code refuses any host array first, with the way out; the emulated backend (over numpy) takes
    them. An array module whose ndarray is not NumPy's stands for CuPy (no GPU here)."""
    device = types.SimpleNamespace(ndarray=type("DeviceArray", (), {}), zeros=np.zeros)
    kernels = gpu.CudaKernels(device, module=None)
    with pytest.raises(ValueError, match=r"gather_u8 was given a host \(NumPy\) array of shape \(1,\); pass arrays on the "
                                         r"device \(backend.asarray\)"):
        kernels._launch("gather_u8", (1,), (1,), (np.zeros(1, np.int64), np.int32(1)))


@pytest.mark.parametrize("be", ["gpu-emulated", pytest.param("gpu", marks=pytest.mark.gpu)], indirect=True)
def test_gather_takes_host_indices_outside_a_capture(be, rand):
    """gather_batch converted a non-int64 idx with the array module's ascontiguousarray, which on CuPy takes device
    arrays only (TypeError for a NumPy one): a host idx is copied to the device first."""
    data = be.asarray(rand.integers(0, 256, (20, 13)), dtype=np.uint8)
    x = be.empty((4, 13))
    idx = np.array([3, 0, 19, 7], dtype=np.int32)               # on the host, and not int64
    be.gather_batch(x, data, idx)
    np.testing.assert_array_equal(be.to_host(x), (be.to_host(data)[idx] / 255.0).astype(np.float32))


def test_capture_leaves_the_callers_current_stream_current(stand_in, fake_cupy, rand):
    """`with stream:` would make the default stream current on exit (CuPy issue #8377), dropping the caller's."""
    cfg = Config(hidden=(13, 9), latent=3, batch_size=7)
    st, ws, data = _small_run(stand_in, rand, cfg)
    idx = stand_in.asarray(np.arange(7), dtype=np.int64)
    mine = fake_cupy.cuda.Stream(non_blocking=True).use()
    stand_in.capture(lambda: step.train_step(stand_in, cfg, st, ws, data, idx))
    assert fake_cupy.cuda.get_current_stream() is mine


@pytest.mark.parametrize("data_dtype,idx_dtype", [(np.float64, np.int64), (np.uint8, np.int32)])
def test_work_that_allocates_is_refused_inside_a_capture(stand_in, rand, data_dtype, idx_dtype):
    """float64 data or non-int64 indices take the array module's gather or a conversion: an allocation and a copy,
    whose buffer a graph would replay after it is freed. Outside a capture they work."""
    cfg = Config(hidden=(13, 9), latent=3, batch_size=7)
    st, ws, data = _small_run(stand_in, rand, cfg)
    data, idx = data.astype(data_dtype), stand_in.asarray(np.arange(7), dtype=idx_dtype)
    with pytest.raises(ValueError, match="cannot be captured in a CUDA graph"):
        stand_in.capture(lambda: step.train_step(stand_in, cfg, st, ws, data, idx))
    step.train_step(stand_in, cfg, st, ws, data, idx)


def test_a_capture_records_its_own_threads_launches_only(stand_in, rand):
    """capture() kept every launch of the backend while it recorded: a model stepped in another thread meanwhile had
    its launches kept with the graph's and counted as its kernels, and its conversion of host indices refused as
    "captured" (a review of the gpu path). Per thread now: the other thread's step (host indices, int32) runs as it
    is launched, and the graph holds this thread's step alone."""
    cfg = Config(hidden=(13, 9), latent=3, batch_size=7)
    (st, ws, data), (other, other_ws, other_data) = _small_run(stand_in, rand, cfg), _small_run(stand_in, rand, cfg)
    idx = stand_in.asarray(np.arange(7), dtype=np.int64)
    alone = stand_in.capture(lambda: step.train_step(stand_in, cfg, st, ws, data, idx)).kernels
    errors = []

    def other_step():
        try:
            step.train_step(stand_in, cfg, other, other_ws, other_data, np.arange(7, dtype=np.int32))
        except BaseException as e:  # noqa: BLE001 (the test's thread reports it)
            errors.append(e)

    def during():
        step.train_step(stand_in, cfg, st, ws, data, idx)
        thread = threading.Thread(target=other_step)
        thread.start()
        thread.join()
    replay = stand_in.capture(during)
    assert not errors, errors
    assert replay.kernels == alone and len(replay.keep[0]) == alone
    assert int(stand_in.to_host(other.counters)[1]) == 1 and int(stand_in.to_host(st.counters)[1]) == 0


class Deferred:
    """A RawModule-like wrapper that queues every launch, to be run in an order the test picks: the order two
    threads' launches may take on a device."""

    def __init__(self, module):
        self.module, self.queue = module, []

    def get_function(self, name):
        kernel = self.module.get_function(name)

        def launch(grid, block, args, shared_mem=0):
            self.queue.append((name, lambda: kernel(grid, block, args, shared_mem)))
        return launch


def test_two_models_adam_steps_interleaved_take_each_their_own_step_size(rand):
    """Adam's bias-corrected step size was one buffer of the backend's, written by adam_begin and read by adam_update:
    where two models stepped in two threads, one's update launched after the other's adam_begin took the other's lr
    and t (a review of the gpu path: a step 20x too far). Each block of the pass forms it from the model's own
    counters now: two models' launches run interleaved (begin, begin, update, update), each as the reference."""
    deferred = Deferred(_emulated().impl.module)
    b = contract.Backend(gpu.CudaKernels(np, deferred))
    size, expected, got = 1000, [], []
    for lr, t in ((1e-3, 0), (1e-2, 500)):
        p, g = rand.normal(0, 1, size).astype(np.float32), rand.normal(0, 1e-2, (1, size)).astype(np.float32)
        m = rand.normal(0, 1e-2, size).astype(np.float32)
        v = (rand.normal(0, 1e-2, size) ** 2).astype(np.float32)
        counters = np.array([3, t, 0], dtype=np.int64)
        e = [a.astype(np.float64) for a in (p, g, m, v)] + [counters.copy()]
        ref.adam_update(*e, lr, 0.9, 0.999, 1e-8)
        expected.append((e[0], p.astype(np.float64), t + 1))
        got.append((p, counters))
        b.adam_update(p, g, m, v, counters, lr, 0.9, 0.999, 1e-8)
    assert [name for name, _ in deferred.queue] == ["adam_begin", "adam_update"] * 2
    for k in (0, 2, 1, 3):
        deferred.queue[k][1]()
    for (p, counters), (want, before, t) in zip(got, expected):
        assert int(counters[1]) == t
        moved = np.abs(want - before)           # the reference's step; float32's arithmetic errs far below 1e-3 of it
        assert np.all(np.abs(p - want) <= 1e-3 * moved + 2.0 ** -23 * np.abs(before))


def test_a_captured_stepper_is_freed_without_the_cyclic_gc(stand_in, rand):
    """The graph keeps what its launches use, and nothing refers back to the Stepper: dropping the Stepper frees
    the graph and the device data set at once."""
    import gc
    import weakref
    cfg = Config(hidden=(13, 9), latent=3, batch_size=7)
    st, ws, data = _small_run(stand_in, rand, cfg)
    stepper = step.Stepper(stand_in, cfg, st, ws, data)
    stepper(stand_in.asarray(np.arange(7), dtype=np.int64))
    assert stepper.captures == 1
    gone, data_gone = weakref.ref(stepper), weakref.ref(data)
    gc.disable()
    try:
        del stepper, data
        assert gone() is None and data_gone() is None
    finally:
        gc.enable()


def test_adams_bias_corrections_are_formed_once_per_step(rand):
    """Adam's two double-precision pow run in one thread of each block of the pass, not in every thread of it; the
    step is counted once (adam_begin, one thread)."""
    recorder = Recorder(_emulated().impl.module)
    b = contract.Backend(gpu.CudaKernels(np, recorder))
    cfg = Config(hidden=(13, 9), latent=3, batch_size=7)
    st, ws, data = _small_run(b, rand, cfg)
    step.train_step(b, cfg, st, ws, data, b.asarray(np.arange(7), dtype=np.int64))
    adam = [(name, grid, block) for name, grid, block, *_ in recorder.log if name.startswith("adam")]
    assert adam[0] == ("adam_begin", (1,), (1,)) and [a[0] for a in adam] == ["adam_begin", "adam_update"]
    from fastvae.cuda import sources
    body = sources.expand("adam.cu").split("void adam_update(")[1]
    first = body.split("if (threadIdx.x == 0) {")[1].split("}")[0]
    assert first.count("pow(") == body.count("pow(") == 2


class GridCheck:
    """A RawModule-like module that checks each launch's grid against CUDA's limits (x < 2^31, y and z <= 65535,
    as the emulator's cuda_emu.h and a device refuse) and runs nothing: the emulator cannot afford these sizes."""

    def __init__(self):
        self.grids = []

    def get_function(self, name):
        def launch(grid, block, args, shared_mem=0):
            grid = tuple(grid) + (1,) * (3 - len(grid))
            assert all(1 <= g <= limit for g, limit in zip(grid, (2 ** 31 - 1, 65535, 65535))), (name, grid)
            self.grids.append((name, grid))
        return launch


def test_products_take_more_rows_than_grid_y_allows():
    """2,097,121 rows are 65,536 row tiles: more than grid.y's 65,535 (decode_logits(rows=...), evaluate's
    --batch-size). Row tiles go on grid.x."""
    from fastvae.cuda.launch import TILE_MN
    n = 65535 * TILE_MN + 1
    module = GridCheck()
    b = gpu.CudaKernels(np, module)
    one = np.zeros(1, np.float32)
    col, loss, counters = np.zeros((n, 1), np.float32), np.zeros(2), np.zeros(COUNTERS, np.int64)
    wide = np.zeros((n, 2), np.float32)
    b.dense_forward(col, col, one.reshape(1, 1), one, "elu")
    b.dense_backward(col, one.reshape(1, 1), one, col, col, one.reshape(1, 1), col, "elu")
    b.heads_forward(col, wide, loss, col, np.zeros((1, 2), np.float32), np.zeros(2, np.float32), counters, 0,
                    "gamma")
    b.output_forward(col, loss, col, one.reshape(1, 1), one, col, "xent")
    assert {name.split("<")[0] for name, _ in module.grids} >= {"dense_forward", "dense_backward_input",
                                                                "heads_forward", "output_forward"}


def test_the_progress_bar_moves_at_the_rate_the_loss_is_read(rand, monkeypatch):
    """On a device the loss is read every LOSS_CHECK_INTERVAL_DEVICE steps (counted as (k + 1) % interval): the
    bar must move at those reads, not only at the epoch's last step."""
    import copy
    from fastvae import backends, model, training
    be = copy.copy(backends.get_backend("cpu"))
    be.loss_check_interval = LOSS_CHECK_INTERVAL_DEVICE
    monkeypatch.setattr(model, "get_backend", lambda name, notify=None: be)
    moves = []

    class Bar:
        def __init__(self, initial):
            self.n = initial

        def update(self, k):
            self.n += k
            moves.append(self.n)

        def set_postfix_str(self, text):
            pass

        def close(self):
            pass
    monkeypatch.setattr(training, "_progress_bar", lambda total, desc, initial: Bar(initial))
    from terminal import Terminal
    monkeypatch.setattr(sys, "stderr", Terminal().open_slave())     # (the bar is drawn on a terminal only)
    steps = 2 * LOSS_CHECK_INTERVAL_DEVICE + 3
    X = rand.integers(0, 256, (2 * steps, 784)).astype(np.uint8)
    model.VAE(hidden=(5,), latent=2, backend="cpu", seed=1, batch_size=2).fit(X, epochs=1, progress=True)
    assert moves == [LOSS_CHECK_INTERVAL_DEVICE, 2 * LOSS_CHECK_INTERVAL_DEVICE, steps]


def test_without_a_cpp_compiler_the_gpu_marked_tests_still_run(tmp_path):
    """A device without g++: this file skipped itself whole (the emulator cannot be built), so bench/device_run.sh's
    gpu marker would have checked no captured step (a review). Now only the emulated tests skip for it: here, with no
    compiler and no GPU, every gpu-marked test is skipped for the missing GPU, none for the compiler."""
    env = {**os.environ, "CXX": "no-such-compiler-fastvae"}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-m", "gpu",
                           __file__], capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    reasons = [line for line in proc.stdout.splitlines() if line.startswith("SKIPPED")]
    assert reasons and not any("C++ compiler" in line for line in reasons), proc.stdout[-2000:]
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-m", "not gpu",
                           "-k", "captured", __file__], capture_output=True, text=True, timeout=300, env=env,
                          cwd=tmp_path)
    assert "no C++ compiler (no-such-compiler-fastvae)" in proc.stdout, proc.stdout[-2000:]
