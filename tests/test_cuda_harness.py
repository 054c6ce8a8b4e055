"""The CUDA emulation harness (fastvae.cuda.emu) on its own: faithful or loud. Barriers, warps, atomics and schedules
behave as on a GPU; what a GPU leaves undefined (divergent barriers, races, reads past a shared array, launches it
would refuse) is an error with a message, never a silent answer or a hang; modules are cached by their source. And
fastvae's own kernels under those checks: no order dependence, no races. No GPU needed: only a C++ compiler (the
module skips itself, with the reason, where there is none). The kernels against the reference: test_kernels.py."""
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from fastvae import constants
from fastvae.cuda import emu, sources

if emu.unavailable_reason() is not None:
    pytest.skip(emu.unavailable_reason(), allow_module_level=True)

from fastvae.backends import gpu  # noqa: E402


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


@pytest.mark.parametrize("activation", ["elu", "tanh"])
def test_the_kernels_do_not_depend_on_the_order_threads_and_blocks_run_in(rand, activation):
    """fastvae's dense kernels on the same inputs under the three schedules: bit-identical outputs (no order
    dependence between barriers)."""
    be = gpu.emulated()
    module = be.impl.module
    inp, w, b = (rand.normal(0, 1, shape).astype(np.float32) for shape in ((70, 37), (37, 45), (45,)))
    dout = rand.normal(0, 1, (70, 45)).astype(np.float32)
    results = []
    try:
        for mode in ("forward", "reverse", "shuffle"):
            module.schedule(mode, seed=11)
            y, dinp, dw, db = be.empty((70, 45)), be.empty((70, 37)), be.empty((37, 45)), be.empty(45)
            d = dout.copy()
            be.dense_forward(y, inp, w, b, activation)
            be.dense_backward(dinp, dw, db, d, inp, w, y, activation)
            results.append((y, dinp, dw, db, d))
    finally:
        module.schedule("shuffle", seed=1)
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
                                     np.zeros((5, 4), np.float32).T.copy().T, np.zeros(4, np.float32), "elu")


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
    """heads_forward assumes TILE_T x TILE_T threads (its tiles and its block sum); launched with twice as many it
    would index past its shared arrays: the sanitizer stops the process, naming the file and line, instead of
    reading a neighbour's memory."""
    script = textwrap.dedent("""
        import numpy as np
        from fastvae.backends import gpu
        from fastvae.constants import COUNTERS
        from fastvae.cuda.launch import TILE_T
        k = gpu.emulated().impl.module.get_function("heads_forward<ENCODER_GAMMA>")
        f = lambda *s: np.zeros(s, np.float32)
        k((1, 1), (2 * TILE_T, TILE_T), (f(1, 1), f(1, 2), np.zeros(2), f(1, 1), f(1, 2), f(2),
                                         np.zeros(COUNTERS, np.int64), np.int32(0), np.int32(1), np.int32(1),
                                         np.int32(1)))
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
    """Every kernel instance through the gpu backend (tests/kernel_cases.py's checks) with ThreadSanitizer watching
    the threads of each block."""
    proc = run_race_checked("""
        import kernel_cases as kc
        from fastvae.backends import gpu
        from fastvae.constants import ACTIVATIONS, ENCODERS, RECONSTRUCTIONS
        be, rand = gpu.emulated(race_check=True), np.random.default_rng(4)
        for activation in ACTIVATIONS:
            kc.check_dense(be, rand, 7, 37, 53, activation)
        kc.check_dense(be, rand, 40, 20, 33, "elu")
        kc.check_gather(be, rand, 7)
        for encoder in ENCODERS:
            kc.check_heads(be, rand, 7, 13, 3, encoder)
        for reconstruction in RECONSTRUCTIONS:
            kc.check_output(be, rand, 7, 13, 37, reconstruction)
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


def test_a_changed_constant_is_a_new_module(tmp_path, monkeypatch):
    """The #defines generated from fastvae/constants.py are part of the source, hence of the cache key."""
    monkeypatch.setenv("FASTVAE_CUDA_EMU_CACHE", str(tmp_path))
    kernel = 'extern "C" __global__ void k(double* x) { x[0] = SIGMA_SMOOTHING; }\n'
    first = emu.RawModule(sources.defines() + kernel)
    monkeypatch.setattr(constants, "SIGMA_SMOOTHING", 1e-8)
    second = emu.RawModule(sources.defines() + kernel)
    assert second.path != first.path
    x = np.zeros(1)
    second.get_function("k")((1,), (1,), (x,))
    assert x[0] == 1e-8


TEMPLATED = r"""
template <int SCALE> __global__ void scaled(float* x) { x[threadIdx.x] = (float)(SCALE * (int)threadIdx.x); }
extern "C" __global__ void plain(float* x) { x[threadIdx.x] = 1.0f; }
"""


def test_template_instances_launch_by_their_name_expressions():
    """As CuPy's RawModule(name_expressions=...): each instance is fetched by its expression, beside the extern "C"
    kernels; an instance not asked for does not exist."""
    m = emu.RawModule(TEMPLATED, name_expressions=("scaled<2>", "scaled<3>"))
    assert m.names == ["plain", "scaled<2>", "scaled<3>"]
    x = np.zeros(4, np.float32)
    m.get_function("scaled<3>")((1,), (4,), (x,))
    assert list(x) == [0, 3, 6, 9]
    assert m.get_function("scaled<2>").signature == ("p",)
    with pytest.raises(emu.EmulationError, match="no kernel named 'scaled<4>'"):
        m.get_function("scaled<4>")


def test_the_emulators_library_cache_is_not_taken_from_a_folder_others_could_write(tmp_path, monkeypatch):
    """The emulator loads the shared libraries it caches (dlopen): FASTVAE_CUDA_EMU_CACHE naming a folder others
    could write let them plant one (a security review). Such a folder is passed over for a private one."""
    import os
    from fastvae import numba_cache
    from fastvae.cuda import emu
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    os.chmod(shared, 0o777)
    monkeypatch.setenv("FASTVAE_CUDA_EMU_CACHE", str(shared))
    numba_cache.checked_folder.cache_clear()
    try:
        assert emu.cache_dir() != shared
        mine = tmp_path / "mine"
        monkeypatch.setenv("FASTVAE_CUDA_EMU_CACHE", str(mine))
        assert emu.cache_dir() == mine and os.stat(mine).st_mode & 0o777 == 0o700
    finally:
        numba_cache.checked_folder.cache_clear()
