"""The CUDA C in kernels/ run on the CPU (fastvae.cuda.emu) through the gpu backend's own launch code, against the
float64 reference at awkward sizes, plus whole steps; and the harness refusing what it cannot emulate faithfully.
No GPU needed: only a C++ compiler (the module skips itself, with the reason, where there is none)."""
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import kernel_cases as kc
from tolerances import AWKWARD_ROWS, TOL, assert_close
from fastvae import rng, step
from fastvae.config import Config
from fastvae.cuda import emu, sources

if emu.unavailable_reason() is not None:
    pytest.skip(emu.unavailable_reason(), allow_module_level=True)

from fastvae.backends import cpu, gpu  # noqa: E402

STAND_IN = Path(__file__).resolve().parent / "stand_in"     # a stand-in cupy package (see its docstring)


@pytest.fixture(scope="module")
def be():
    return gpu.emulated()


# ---------------------------------------------------------------- every kernel against the reference

@pytest.mark.parametrize("elu", [True, False], ids=["dense_elu", "dense"])
@pytest.mark.parametrize("fan_in,fan_out", [(37, 53), (20, 257), (1, 3)])
@pytest.mark.parametrize("rows", AWKWARD_ROWS)
def test_dense(be, rand, rows, fan_in, fan_out, elu):
    kc.check_dense(be, rand, rows, fan_in, fan_out, elu)


@pytest.mark.parametrize("rows,fan_in,fan_out,elu", [(150, 784, 500, True), (150, 500, 40, False),
                                                     (257, 33, 1, True)])
def test_dense_seed_shapes(be, rand, rows, fan_in, fan_out, elu):
    kc.check_dense(be, rand, rows, fan_in, fan_out, elu)


@pytest.mark.parametrize("rows", AWKWARD_ROWS)
def test_gather(be, rand, rows):
    kc.check_gather(be, rand, rows)


@pytest.mark.parametrize("fan_in,latent", [(13, 3), (9, 1), (33, 37)])
@pytest.mark.parametrize("rows", AWKWARD_ROWS)
def test_heads(be, rand, rows, fan_in, latent):
    kc.check_heads(be, rand, rows, fan_in, latent)


def test_heads_seed_shape(be, rand):
    kc.check_heads(be, rand, 150, 500, 20)


@pytest.mark.parametrize("fan_in,width", [(13, 37), (1, 1), (20, 53)])
@pytest.mark.parametrize("rows", AWKWARD_ROWS)
def test_output(be, rand, rows, fan_in, width):
    kc.check_output(be, rand, rows, fan_in, width)


def test_output_seed_shape(be, rand):
    kc.check_output(be, rand, 150, 500, 784)


@pytest.mark.parametrize("fan_in,latent", [(13, 3), (33, 37)])
@pytest.mark.parametrize("rows", AWKWARD_ROWS)
def test_heads_sigma_variant(be, rand, rows, fan_in, latent):
    kc.check_heads_sigma(be, rand, rows, fan_in, latent)


@pytest.mark.parametrize("fan_in,width", [(13, 37), (1, 1)])
@pytest.mark.parametrize("rows", AWKWARD_ROWS)
def test_output_mse_variant(be, rand, rows, fan_in, width):
    kc.check_output_mse(be, rand, rows, fan_in, width)


@pytest.mark.parametrize("size,t", [(1, 0), (1000, 0), (12345, 7), (1316824, 399)])
def test_adam(be, rand, size, t):
    kc.check_adam(be, rand, size, t)


def test_noise_equals_the_reference_stream(be):
    """With W = 0 and b = 0 the heads give z = 0 + exp(0) * eps = eps: the kernel's Philox + Box-Muller draws the
    spec's normals bit for bit (or within one float32 ulp: the two libms may differ in a double's last bit)."""
    for rows, latent, seed, step_ in [(1, 1, 0, 0), (7, 3, 5, 9), (257, 20, 2**62 + 11, 2**33 + 5)]:
        z, stats = be.empty((rows, latent)), be.empty((rows, 2 * latent))
        loss = be.zeros(2, dtype=np.float64)
        counters = be.asarray([seed, step_], dtype=np.int64)
        be.heads_forward(z, stats, loss, be.zeros((rows, 4)), be.zeros((4, 2 * latent)), be.zeros(2 * latent),
                         counters, rng.STREAM_TRAIN)
        want = rng.normals(seed, rng.STREAM_TRAIN, step_, rows, latent)
        ulps = np.abs(z.view(np.int32).astype(np.int64) - want.view(np.int32))
        assert ulps.max() <= 1 and np.mean(ulps == 0) > 0.99


def test_dense_elu_backward_keeps_the_contract(be, rand):
    """dout holds dz afterwards (the contract); with store_dz=False it keeps dy and the gradients are the same."""
    inp, w, _ = kc.layer_inputs(rand, 9, 11, 13)
    y = be.empty((9, 13))
    be.dense_elu_forward(y, inp, w, np.zeros(13, np.float32))
    dy = rand.normal(0, 1, (9, 13)).astype(np.float32)
    results = []
    for store in (True, False):
        b = gpu.make_backend(np, be.module, store_dz=store)
        dout, dinp, dw, db = dy.copy(), b.empty((9, 11)), b.empty((11, 13)), b.empty(13)
        b.dense_elu_backward(dinp, dw, db, dout, inp, w, y)
        results.append((dout, dinp, dw, db))
    np.testing.assert_array_equal(results[0][0], dy * np.where(y > 0, np.float32(1), y + np.float32(1)))
    np.testing.assert_array_equal(results[1][0], dy)
    for a, b in zip(results[0][1:], results[1][1:]):
        np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------- whole steps

@pytest.mark.parametrize("hidden,latent,rows", [((13, 9), 3, 7), ((31,), 2, 1)])
def test_training_steps_match_the_reference(be, rand, hidden, latent, rows):
    kc.check_train_steps(be, Config(hidden=hidden, latent=latent, batch_size=rows), rand, rows)


@pytest.mark.parametrize("encoder,reconstruction", [("sigma", "xent"), ("gamma", "mse")])
def test_training_steps_of_the_variants_match_the_reference(be, rand, encoder, reconstruction):
    cfg = Config(hidden=(13, 9), latent=3, batch_size=7, encoder=encoder, reconstruction=reconstruction)
    kc.check_train_steps(be, cfg, rand, 7)


def test_training_steps_match_the_cpu_backend(be, rand):
    """A few full steps from the same state on the emulated gpu and on the cpu backend: same losses, gradients
    and counters (both float32, with different summation orders)."""
    from fastvae.params import Layout, he_init
    cfg = Config(hidden=(21, 17), latent=5, batch_size=33)
    layout = Layout(cfg)
    params = he_init(layout, seed=int(rand.integers(1 << 30)))
    data = rand.integers(0, 256, (100, 784)).astype(np.uint8)
    seed = int(rand.integers(1 << 40))
    runs = []
    for b in (cpu, be):
        st, ws = step.State(b, layout, params, seed), step.Workspace(b, cfg, cfg.batch_size)
        losses, grads = [], []
        for k in range(4):
            idx = b.asarray((np.arange(cfg.batch_size) * 3 + k) % len(data), dtype=np.int64)
            ws.loss[...] = 0
            step.train_step(b, cfg, st, ws, b.asarray(data, dtype=np.uint8), idx)
            losses.append(np.array(b.to_host(ws.loss), dtype=np.float64))
            grads.append(np.array(b.to_host(st.grads), dtype=np.float64))
        runs.append((losses, grads, np.array(b.to_host(st.params)), list(b.to_host(st.counters))))
    (l_cpu, g_cpu, p_cpu, c_cpu), (l_gpu, g_gpu, p_gpu, c_gpu) = runs
    assert c_cpu == c_gpu == [seed, 4]
    tol = TOL["float32_step"]
    assert_close(g_gpu[0], g_cpu[0], tol, scale=float(np.abs(g_cpu[0]).max()), what="first gradients")
    for k in range(4):
        assert_close(l_gpu[k], l_cpu[k], 10 * tol, what=f"loss of step {k + 1}")
    assert np.all(np.abs(p_gpu - p_cpu) <= 2 * 4 * cfg.lr)      # Adam moves each parameter by <= lr per step


def test_the_vae_class_runs_on_the_emulated_gpu_backend(be, rand, monkeypatch):
    """fit, evaluate (counters set per batch), encode, reconstruct and sample through the VAE class: the same
    numbers as the cpu backend's, within what a few float32 Adam steps in another summation order allow."""
    from fastvae import backends, model
    monkeypatch.setattr(model, "get_backend", lambda name, notify=None:
                        be if name == "gpu-emulated" else backends.get_backend(name, notify))
    X = rand.integers(0, 256, (40, 784)).astype(np.uint8)
    results = {}
    for name in ("cpu", "gpu-emulated"):
        vae = model.VAE(hidden=(13, 9), latent=3, backend=name, seed=5, batch_size=8)
        vae.fit(X[:32], epochs=1)
        mu, gamma = vae.encode(X[32:])
        results[name] = (vae.evaluate(X[32:])["total"], mu, gamma, vae.reconstruct(X[32:5 + 32]), vae.sample(5),
                         vae.steps)
    (e_cpu, *rest_cpu, t_cpu), (e_gpu, *rest_gpu, t_gpu) = results["cpu"], results["gpu-emulated"]
    assert t_cpu == t_gpu == 4
    assert abs(e_gpu - e_cpu) <= 1e-3 * abs(e_cpu)
    for a, b in zip(rest_gpu, rest_cpu):
        assert a.dtype == b.dtype == np.float32 and a.shape == b.shape
        assert np.max(np.abs(a - b)) <= 1e-2 * max(1.0, float(np.max(np.abs(b))))


@pytest.fixture
def fake_cupy(monkeypatch):
    """tests/stand_in/cupy (numpy arrays, the emulator's RawModule, a scripted CUDA runtime, stream capture), so
    that load(), unavailable_reason() and the module-level binding run here exactly as they will with CuPy."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("cupy", STAND_IN / "cupy" / "__init__.py")
    fake = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fake)
    monkeypatch.setitem(sys.modules, "cupy", fake)
    for attr in ("_cupy", "_cupy_error", "_loaded"):
        monkeypatch.setattr(gpu, attr, None)
    for attr in gpu.CONTRACT + gpu.HOOKS + ("loss_check_interval", "store_dz", "capture"):   # restored after
        monkeypatch.setattr(gpu, attr, None, raising=False)
    return fake.runtime


def test_load_binds_the_contract_at_module_level(fake_cupy, rand):
    from fastvae import backends
    assert gpu.unavailable_reason() is None
    be = backends.get_backend("auto")
    assert be is gpu and gpu.load() is gpu and be.name == "gpu" and be.dtype == np.float32
    assert all(callable(getattr(gpu, attr)) for attr in gpu.CONTRACT + gpu.HOOKS + ("capture",) if attr != "xp")
    assert gpu.launches >= 0 and gpu.store_dz is False
    kc.check_dense(be, rand, 7, 13, 9, True)
    kc.check_train_steps(be, Config(hidden=(13, 9), latent=3, batch_size=7), rand, 7, n_steps=2)
    kc.check_captured_steps(be)


@pytest.mark.parametrize("change,reason", [
    (dict(getDeviceCount=lambda: 0), "no CUDA device is visible"),
    (dict(getDeviceCount=lambda: (_ for _ in ()).throw(RuntimeError("cudaErrorNoDevice: no CUDA-capable device"))),
     "no usable CUDA device (cudaErrorNoDevice"),
    (dict(driverGetVersion=lambda: 11080), "supports CUDA 11.8, older than the CUDA 12.2 this CuPy needs"),
])
def test_unavailable_reasons(fake_cupy, change, reason):
    from fastvae.errors import UserError
    for key, value in change.items():
        setattr(fake_cupy, key, value)
    assert reason in gpu.unavailable_reason()
    with pytest.raises(UserError, match="--backend gpu is not available: .*; use --backend cpu"):
        gpu.load()


def test_without_cupy_the_reason_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)              # import cupy raises ModuleNotFoundError
    for attr in ("_cupy", "_cupy_error", "_loaded"):
        monkeypatch.setattr(gpu, attr, None)
    assert gpu.unavailable_reason() == ('CuPy is not installed: pip install "fastvae[gpu]" (cupy-cuda12x for '
                                        'CUDA 12 drivers, cupy-cuda13x for CUDA 13)')


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


def test_a_step_launches_the_same_kernels_with_the_same_arguments_every_time(be, rand):
    """Graph readiness: two consecutive training steps (same buffers, new batch indices and step counter in
    device memory) launch identical kernel sequences with identical arguments, so a captured CUDA graph of one
    step replays every later step correctly."""
    from fastvae.params import Layout, he_init
    cfg = Config(hidden=(13, 9), latent=3, batch_size=7)
    recorder = Recorder(be.module)
    b = gpu.make_backend(np, recorder)
    layout = Layout(cfg)
    st, ws = step.State(b, layout, he_init(layout, seed=1), seed=3), step.Workspace(b, cfg, 7)
    data = b.asarray(rand.integers(0, 256, (30, 784)), dtype=np.uint8)
    idx = b.empty(7, dtype=np.int64)                   # the batch's indices: one buffer, refilled per step
    logs = []
    for k in range(3):
        idx[...] = np.arange(7) + 7 * k
        recorder.log = []
        step.train_step(b, cfg, st, ws, data, idx)
        logs.append(recorder.log)
    assert logs[0] == logs[1] == logs[2]
    assert len(logs[0]) > 15 and int(st.counters[1]) == 3


def _small_run(b, rand, cfg, rows=7):
    from fastvae.params import Layout, he_init
    layout = Layout(cfg)
    st, ws = step.State(b, layout, he_init(layout, seed=1), seed=3), step.Workspace(b, cfg, rows)
    data = b.asarray(rand.integers(0, 256, (40, 784)), dtype=np.uint8)
    return st, ws, data


def test_capture_records_a_step_without_running_it_and_replays_it(be, rand):
    """capture() only records: nothing changes until the replay, and each replay is one more step."""
    cfg = Config(hidden=(13, 9), latent=3, batch_size=7)
    st, ws, data = _small_run(be, rand, cfg)
    idx = be.asarray(np.arange(7), dtype=np.int64)
    before = st.params.copy()
    replay = be.capture(lambda: step.train_step(be, cfg, st, ws, data, idx))
    assert np.array_equal(st.params, before) and int(st.counters[1]) == 0
    replay()
    replay()
    assert int(st.counters[1]) == 2 and not np.array_equal(st.params, before)


def test_replaying_the_captured_step_trains_like_launching_every_step(be):
    kc.check_captured_steps(be)


def test_the_vae_class_trains_through_one_captured_step(be, rand, monkeypatch):
    """VAE.fit on a backend that can capture records the step once per fit and replays it for every batch."""
    from fastvae import model
    monkeypatch.setattr(model, "get_backend", lambda name, notify=None: be)
    made = []
    real = step.Stepper

    class Counting(real):
        def __init__(self, *args):
            super().__init__(*args)
            made.append(self)
    monkeypatch.setattr(step, "Stepper", Counting)
    X = rand.integers(0, 256, (32, 784)).astype(np.uint8)
    vae = model.VAE(hidden=(13, 9), latent=3, backend="gpu-emulated", seed=5, batch_size=8)
    vae.fit(X, epochs=2)
    assert vae.steps == 8 and len(made) == 1 and made[0].captures == 1


# ---------------------------------------------------------------- the harness: faithful or loud

PROBES = r"""
extern "C" __global__ void exits_before_barrier(float* out, int n)
{
    const int t = (int)threadIdx.x;
    if (t >= n) return;                        // some threads leave, the others wait at the barrier
    __syncthreads();
    out[t] = 1.0f;
}

extern "C" __global__ void barrier_per_branch(float* out)
{
    if (threadIdx.x % 2) { __syncthreads(); out[threadIdx.x] = 1.0f; }
    else { __syncthreads(); out[threadIdx.x] = 2.0f; }
}

extern "C" __global__ void neighbour(float* out, int synced)
{
    __shared__ float s[64];
    s[threadIdx.x] = (float)threadIdx.x;
    if (synced) __syncthreads();               // without it, reading the neighbour's slot is a race
    out[threadIdx.x] = s[(threadIdx.x + 1) % blockDim.x];
    if (!synced) __syncthreads();              // (every thread still reaches exactly one barrier)
}

extern "C" __global__ void reads_unwritten_shared(float* out)
{
    __shared__ float s[64];
    if (threadIdx.x == 0) s[0] = 1.0f;
    __syncthreads();
    out[blockIdx.x * blockDim.x + threadIdx.x] = s[threadIdx.x];
}

extern "C" __global__ void block_sum(double* total, float value)
{
    __shared__ double partial[64];
    partial[threadIdx.x] = (double)value;
    __syncthreads();
    if (threadIdx.x == 0) {
        double s = 0.0;
        for (unsigned i = 0; i < blockDim.x; ++i) s += partial[i];
        atomicAdd(total, s);
    }
}
"""


@pytest.fixture(scope="module")
def probes():
    return emu.RawModule(PROBES)


def test_threads_that_exit_before_a_barrier_are_an_error(probes):
    out = np.zeros(64, np.float32)
    with pytest.raises(emu.EmulationError, match=r"exits_before_barrier: block \(0, 0, 0\): .*has exited"):
        probes.get_function("exits_before_barrier")((1,), (64,), (out, np.int32(40)))
    probes.get_function("exits_before_barrier")((1,), (64,), (out, np.int32(64)))     # all arrive: fine
    assert np.all(out == 1)


def test_threads_at_different_barriers_are_an_error(probes):
    with pytest.raises(emu.EmulationError, match="different __syncthreads"):
        probes.get_function("barrier_per_branch")((1,), (32,), (np.zeros(32, np.float32),))


def test_a_divergent_barrier_fails_in_a_fresh_process_without_hanging(probes):
    """The same in a subprocess under a timeout: an emulator that waited for the missing threads would hang."""
    script = textwrap.dedent(f"""
        import numpy as np
        from fastvae.cuda import emu
        m = emu.RawModule({PROBES!r})
        m.get_function("exits_before_barrier")((2,), (64,), (np.zeros(64, np.float32), np.int32(1)))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "EmulationError" in proc.stderr and "has exited" in proc.stderr


def test_a_race_on_shared_memory_shows(probes):
    """Threads run in a shuffled order between barriers, and shared memory starts as NaN in every block: a read
    of another thread's slot without a barrier between is wrong (as it may be on a GPU), with one it is right."""
    expect = (np.arange(64, dtype=np.float32) + 1) % 64
    for synced in (1, 0):
        out = np.zeros(64, np.float32)
        probes.get_function("neighbour")((1,), (64,), (out, np.int32(synced)))
        assert np.array_equal(out, expect) == bool(synced)
    out = np.zeros(128, np.float32)
    probes.get_function("reads_unwritten_shared")((2,), (64,), (out,))
    assert np.all(out[[0, 64]] == 1) and np.all(np.isnan(np.delete(out, [0, 64])))


def test_atomics_and_schedules(probes):
    total = np.zeros(1, np.float64)
    for mode in ("forward", "reverse", "shuffle"):
        probes.schedule(mode, seed=5)
        probes.get_function("block_sum")((3, 2, 2), (64,), (total, np.float32(0.5)))
    probes.schedule("shuffle", seed=1)
    assert total[0] == 3 * 12 * 64 * 0.5


def test_the_kernels_do_not_depend_on_the_order_threads_and_blocks_run_in(be, rand):
    """Same inputs under the three schedules: bit-identical outputs (no order dependence between barriers)."""
    inp, w, b = kc.layer_inputs(rand, 70, 37, 45)
    dout = rand.normal(0, 1, (70, 45)).astype(np.float32)
    results = []
    for mode in ("forward", "reverse", "shuffle"):
        be.module.schedule(mode, seed=11)
        y, dinp, dw, db, d = be.empty((70, 45)), be.empty((70, 37)), be.empty((37, 45)), be.empty(45), dout.copy()
        be.dense_elu_forward(y, inp, w, b)
        be.dense_elu_backward(dinp, dw, db, d, inp, w, y)
        results.append((y, dinp, dw, db, d))
    be.module.schedule("shuffle", seed=1)
    for other in results[1:]:
        for a, b_ in zip(results[0], other):
            np.testing.assert_array_equal(a, b_)


@pytest.mark.parametrize("grid,block,shared,message", [
    ((1,), (33, 32), 0, "exceeds 1024 threads"),
    ((1,), (1, 1, 65), 0, "exceeds 1024 threads"),
    ((1, 65536), (1,), 0, "grid exceeds"),
    ((0,), (64,), 0, "invalid configuration"),
    ((1,), (64,), 16, "dynamic shared memory"),
])
def test_launches_a_gpu_would_refuse_are_refused(probes, grid, block, shared, message):
    with pytest.raises(emu.EmulationError, match=message):
        probes.get_function("block_sum")(grid, block, (np.zeros(1), np.float32(1)), shared_mem=shared)


def test_arguments_must_have_the_kernels_exact_types(probes):
    k = probes.get_function("block_sum")
    assert k.signature == ("p", "f4")
    with pytest.raises(TypeError, match="float32"):
        k((1,), (64,), (np.zeros(1), 1.0))                     # a Python float: double or float? say it
    with pytest.raises(TypeError, match="float32"):
        k((1,), (64,), (np.zeros(1), np.float64(1)))
    with pytest.raises(TypeError, match="takes 2 arguments"):
        k((1,), (64,), (np.zeros(1),))
    with pytest.raises(emu.EmulationError, match="not C-contiguous"):
        k((1,), (64,), (np.zeros((4, 4))[:, 1], np.float32(1)))
    with pytest.raises(ValueError, match="C-contiguous float32"):   # the backend checks what kernels assume
        gpu.emulated().dense_forward(np.zeros((3, 4), np.float32), np.zeros((3, 5), np.float32),
                                     np.zeros((5, 4), np.float32).T.copy().T, np.zeros(4, np.float32))


def test_a_feature_the_harness_lacks_does_not_compile():
    source = 'extern "C" __global__ void k(unsigned* x) { x[threadIdx.x] = __activemask(); }\n'
    with pytest.raises(emu.EmulationError, match="__activemask is not emulated"):
        emu.RawModule(source)


WARPS = r"""
extern "C" __global__ void warp_ops(float* sums, float* xor_sums, float* scan, float* bcast, unsigned* votes,
                                    const float* x)
{
    const unsigned t = threadIdx.x, lane = t % 32;
    const float v = x[t];
    float s = v;
    for (int off = 16; off > 0; off /= 2) s += __shfl_down_sync(0xffffffffu, s, off);
    if (lane == 0) sums[t / 32] = s;
    float b = v;
    for (int m = 1; m < 32; m *= 2) b += __shfl_xor_sync(0xffffffffu, b, m);
    xor_sums[t] = b;
    float c = v;
    for (int off = 1; off < 32; off *= 2) {
        const float o = __shfl_up_sync(0xffffffffu, c, off);
        if (lane >= (unsigned)off) c += o;
    }
    scan[t] = c;
    bcast[t] = __shfl_sync(0xffffffffu, v, 3, 8);
    __syncwarp();
    votes[t] = __ballot_sync(0xffffffffu, v > 0.0f) ^ ((unsigned)__any_sync(0xffffffffu, v > 5.0f) << 31)
               ^ ((unsigned)__all_sync(0xffffffffu, v > -100.0f) << 30);
}

extern "C" __global__ void warp_sum(float* out, const float* x, unsigned mask, int only_below)
{
    float s = x[threadIdx.x];
    if ((int)threadIdx.x < only_below)
        for (int off = 16; off > 0; off /= 2) s += __shfl_down_sync(mask, s, off);
    out[threadIdx.x] = s;
}
"""


@pytest.fixture(scope="module")
def warps():
    return emu.RawModule(WARPS)


def test_warp_collectives(warps, rand):
    x = rand.normal(0, 1, 64).astype(np.float32)
    sums, xs, scan, bc = (np.zeros(n, np.float32) for n in (2, 64, 64, 64))
    votes = np.zeros(64, np.uint32)
    warps.get_function("warp_ops")((1,), (64,), (sums, xs, scan, bc, votes, x))
    w = x.reshape(2, 32)
    np.testing.assert_allclose(sums, w.sum(1), atol=1e-5)
    np.testing.assert_allclose(xs, np.repeat(w.sum(1), 32), atol=1e-5)
    np.testing.assert_allclose(scan, np.cumsum(w, 1).ravel(), atol=1e-5)
    np.testing.assert_array_equal(bc, x.reshape(8, 8)[:, 3].repeat(8))
    ballots = [sum(1 << i for i in range(32) if w[k, i] > 0) for k in range(2)]
    expect = [ballots[k] ^ (int((w[k] > 5).any()) << 31) ^ (1 << 30) for k in range(2) for _ in range(32)]
    np.testing.assert_array_equal(votes, np.array(expect, np.uint32))


@pytest.mark.parametrize("threads,mask,only_below,message", [
    (64, 0xFFFFFFFF, 16, r"thread \(16, 0, 0\), a lane of the same warp, has exited"),
    (64, 0x0000FFFF, 64, "leaves out lanes of the warp"),
    (48, 0xFFFFFFFF, 48, "would read lane 16, which this partial warp does not have"),
])
def test_warp_collectives_a_gpu_leaves_undefined_are_errors(warps, threads, mask, only_below, message):
    with pytest.raises(emu.EmulationError, match=message):
        warps.get_function("warp_sum")((1,), (threads,), (np.zeros(threads, np.float32),
                                                          np.ones(threads, np.float32), np.uint32(mask),
                                                          np.int32(only_below)))


def test_a_whole_partial_warp_may_shuffle_within_its_lanes(warps):
    out = np.zeros(40, np.float32)      # 40 threads: warp 1 has 8 lanes; offsets 16 and 8 read past them
    with pytest.raises(emu.EmulationError, match="partial warp"):
        warps.get_function("warp_sum")((1,), (40,), (out, np.ones(40, np.float32), np.uint32(0xFFFFFFFF),
                                                     np.int32(40)))
    warps.get_function("warp_sum")((1,), (32,), (out, np.ones(40, np.float32), np.uint32(0xFFFFFFFF),
                                                 np.int32(32)))
    assert out[0] == 32


def test_an_index_outside_a_shared_array_aborts_with_a_message():
    """heads_forward assumes 16 x 16 threads (its tiles and its block sum); launched with 32 x 16 it would index
    past its shared arrays: the sanitizer stops the process, naming the file and line, instead of reading a
    neighbour's memory."""
    script = textwrap.dedent("""
        import numpy as np
        from fastvae.backends import gpu
        k = gpu.emulated().module.get_function("heads_forward")
        f = lambda *s: np.zeros(s, np.float32)
        k((1, 1), (32, 16), (f(1, 1), f(1, 2), np.zeros(2), f(1, 1), f(1, 2), f(2), np.zeros(2, np.int64),
                             np.int32(0), np.int32(1), np.int32(1), np.int32(1)))
        print("no error")
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "no error" not in proc.stdout
    assert "out of bounds" in proc.stderr and ".cuh:" in proc.stderr


def test_a_kernel_that_never_finishes_stops_the_process_with_a_message():
    script = textwrap.dedent("""
        import numpy as np
        from fastvae.cuda import emu
        m = emu.RawModule('extern "C" __global__ void spin(float* x) { while (((volatile float*)x)[0] == 0.0f) {} }')
        m.timeout(1)
        m.get_function("spin")((1,), (2,), (np.zeros(1, np.float32),))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 124 and "kernel spin ran longer than 1 s" in proc.stderr


RACE_SCRIPT = """
import os, sys
import numpy as np
sys.path.insert(0, {tests!r})
from fastvae.cuda import emu
{body}
print("finished", flush=True)
os._exit(0)      # skip interpreter teardown under the preloaded race checker
"""


def run_race_checked(body):
    """`body` in a fresh Python with ThreadSanitizer's runtime preloaded; a race stops it with exit status 66."""
    import os
    from pathlib import Path
    env = dict(os.environ, LD_PRELOAD=emu.race_check_preload(), TSAN_OPTIONS="halt_on_error=1 exitcode=66")
    script = RACE_SCRIPT.format(tests=str(Path(__file__).parent), body=textwrap.dedent(body))
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env)


RACY = r'''
extern "C" __global__ void shared_sum(float* out, int atomic)
{
    __shared__ float s[1];
    if (threadIdx.x == 0) s[0] = 0.0f;
    __syncthreads();
    if (atomic) atomicAdd(&s[0], 1.0f); else s[0] += 1.0f;     // += from every thread: a race
    __syncthreads();
    if (threadIdx.x == 0) out[blockIdx.x] = s[0];
}

extern "C" __global__ void warp_neighbour(float* out, int synced)
{
    __shared__ float s[64];
    s[threadIdx.x] = (float)threadIdx.x;
    if (synced) __syncwarp();                  // orders the lanes of a warp, as __syncthreads does the block
    out[threadIdx.x] = s[(threadIdx.x / 32) * 32 + (threadIdx.x + 1) % 32];
    if (!synced) __syncwarp();
}
'''


@pytest.mark.parametrize("kernel,args,racy", [
    ("shared_sum", "np.int32(1)", False),
    ("shared_sum", "np.int32(0)", True),
    ("neighbour", "np.int32(1)", False),
    ("neighbour", "np.int32(0)", True),          # reads a neighbour's slot without a barrier between
    ("warp_neighbour", "np.int32(1)", False),
    ("warp_neighbour", "np.int32(0)", True),
])
def test_the_race_checker_reports_races_between_the_threads_of_a_block(kernel, args, racy):
    proc = run_race_checked(f"""
        m = emu.RawModule({(RACY + PROBES)!r}, race_check=True)
        m.get_function({kernel!r})((2,), (64,), (np.zeros(128, np.float32), {args}))
    """)
    if racy:
        assert proc.returncode == 66 and "ThreadSanitizer: data race" in proc.stderr, proc.stderr[-2000:]
        assert kernel in proc.stderr
    else:
        assert proc.returncode == 0 and "finished" in proc.stdout, proc.stderr[-2000:]


def test_fastvaes_kernels_have_no_races():
    """Every kernel through the gpu backend with ThreadSanitizer watching the threads of each block."""
    proc = run_race_checked("""
        import kernel_cases as kc
        from fastvae.backends import gpu
        be, rand = gpu.emulated(race_check=True), np.random.default_rng(4)
        kc.check_dense(be, rand, 7, 37, 53, True)
        kc.check_dense(be, rand, 40, 20, 33, False)
        kc.check_gather(be, rand, 7)
        kc.check_heads(be, rand, 7, 13, 3)
        kc.check_output(be, rand, 7, 13, 37)
        kc.check_heads_sigma(be, rand, 7, 13, 3)
        kc.check_output_mse(be, rand, 7, 13, 37)
        kc.check_adam(be, rand, 1000, 3)
    """)
    assert proc.returncode == 0 and "finished" in proc.stdout, proc.stderr[-3000:]


def test_race_checking_needs_the_runtime_preloaded():
    with pytest.raises(emu.EmulationError, match="LD_PRELOAD="):
        emu.RawModule(PROBES, race_check=True)


def test_the_module_is_cached_by_source(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTVAE_CUDA_EMU_CACHE", str(tmp_path))
    source = 'extern "C" __global__ void k(float* x) { x[threadIdx.x] = 2.0f; }\n'
    first = emu.build(source)
    stamp = first.stat().st_mtime_ns
    assert emu.build(source) == first and first.stat().st_mtime_ns == stamp      # no recompilation
    assert emu.build(source.replace("2.0f", "3.0f")) != first                     # a change recompiles
    x = np.zeros(4, np.float32)
    emu.RawModule(source.replace("2.0f", "3.0f")).get_function("k")((1,), (4,), (x,))
    assert np.all(x == 3)


def test_every_kernel_is_launchable(be):
    assert set(gpu.KERNELS) == set(sources.kernel_names(sources.module_source()))
