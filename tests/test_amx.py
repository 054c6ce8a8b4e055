"""The bf16 products (fastvae.backends.amx: AMX tiles, else the AVX512-BF16 engine from the same packs) and the
cpu-bf16 backend's whole steps and weight packs, wherever the CPU has either engine (until 2026-12-07 on AMX only: the
packs' race below was there to be found on the EPYC); and, everywhere, that a CPU without AMX gets one line and never
AMX code (Numba's on-disk cache included).

The products are checked tightly: against float64 products of the bf16-rounded operands, so only the fp32
accumulation may differ (K * 2**-24 of the terms' size), at every awkward size and in all three of a layer's
forms. The rounding itself is checked against an independent float64 formulation of round-to-nearest-even.
"""
import os
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import backends
import kernel_cases as kc
from tolerances import AWKWARD_ROWS, assert_close
from fastvae.backends import amx, avx512bf16, get_backend
from fastvae.config import Config

needs_amx = pytest.mark.skipif(amx.unavailable_reason() is not None,
                               reason=f"no AMX here: {amx.unavailable_reason()}")
# cpu-bf16 runs on AMX tiles, or else on AVX512-BF16: what both engines share (the weight packs) is tested on either
needs_bf16 = pytest.mark.skipif(amx.engine_unavailable_reason() is not None,
                                reason=f"no bf16 products here: {amx.engine_unavailable_reason()}")
WIDTHS = (784, 500, 40, 20, 101, 3, 1)


def bf16_reference(x):
    """float32 -> nearest bf16 (ties to even) as float32, in float64 arithmetic: scale the value so that its 8
    significant bits (or, below 2**-126, the subnormal grid 2**-133) are the integer part, np.round (half to even),
    scale back. Overflow past bf16's largest finite value becomes inf, NaN stays NaN."""
    x = np.asarray(x, np.float32).astype(np.float64)
    _, e = np.frexp(x)
    grid = np.ldexp(1.0, np.maximum(e - 8, -133))
    with np.errstate(over="ignore", invalid="ignore"):
        return (np.round(x / grid) * grid).astype(np.float32)


def test_bf16_rounding_is_to_nearest_even():
    rand = np.random.default_rng(5)
    bits = np.concatenate([rand.integers(0, 2**32, 200_000, dtype=np.uint64).astype(np.uint32),
                           # exact ties (low half 0x8000) at even and odd bf16, and around them
                           np.array([0x3F808000, 0x3F818000, 0x3F807FFF, 0x3F808001, 0xBF818000, 0x00008000,
                                     0x00018000, 0x7F7FFFFF, 0x7F7F8000, 0xFF7FFFFF, 0x7F800000, 0x80000000,
                                     0x00000001, 0x007FFFFF], np.uint32)])
    x = bits.view(np.float32)
    finite = np.isfinite(x)
    got = amx.round_to_bf16(x)
    assert np.array_equal(got[finite].view(np.uint32), bf16_reference(x[finite]).view(np.uint32))
    assert np.array_equal(np.isnan(got), np.isnan(x)) and np.array_equal(got[np.isinf(x)], x[np.isinf(x)])
    assert amx.round_to_bf16(np.float32([1.00390625]))[0] == 1.0            # 1 + 2**-8: a tie, to even
    assert amx.round_to_bf16(np.float32([1.01171875]))[0] == 1.015625       # 1 + 3 * 2**-8: a tie, to even


def _exact(a, b):
    return bf16_reference(a).astype(np.float64) @ bf16_reference(b).astype(np.float64)


@needs_bf16
@pytest.mark.parametrize("rows", AWKWARD_ROWS)
@pytest.mark.parametrize("k,n", [(784, 500), (500, 40), (20, 500), (101, 3), (40, 1), (1, 101), (3, 20)])
def test_products_in_all_three_forms(rand, rows, k, n):
    """out = inp @ w, dw = inp.T @ dz, dinp = dz @ w.T, into poisoned buffers; exact but for fp32 accumulation."""
    inp = rand.normal(0, 1, (rows, k)).astype(np.float32)
    w = rand.normal(0, 1, (k, n)).astype(np.float32)
    dz = rand.normal(0, 1, (rows, n)).astype(np.float32)
    for a, b in ((inp, w), (inp.T, dz), (dz, w.T)):
        buf = kc.Buffers(get_backend("cpu"))
        out = buf.out((a.shape[0], b.shape[1]))
        amx.matmul(out, a, b)
        scale = kc.product_scale(bf16_reference(a), bf16_reference(b))
        assert_close(out, _exact(a, b), a.shape[1] * 2.0 ** -24, scale=scale, what=f"{a.shape} @ {b.shape}")
        buf.check_poison()


@needs_bf16
def test_products_into_a_strided_output_and_from_copied_operands(rand):
    """An output that is not C-contiguous goes through the block scratch; an operand that is neither C-ordered nor
    a transposed C array is copied first."""
    a = rand.normal(0, 1, (37, 2 * 101)).astype(np.float32)[:, ::2]
    b = rand.normal(0, 1, (101, 45)).astype(np.float32)
    big = np.full((37, 90), -7.0, np.float32)
    amx.matmul(big[:, ::2], a, b)
    assert_close(big[:, ::2], _exact(a, b), 101 * 2.0 ** -24, scale=kc.product_scale(a, b))
    assert np.all(big[:, 1::2] == -7.0)


@needs_bf16
@pytest.mark.parametrize("hidden,latent,rows", [((13, 9), 3, 7), ((31,), 2, 1), ((500, 500), 20, 150),
                                                 ((37, 11, 5), 4, 257)])
def test_bf16_training_steps_match_the_reference(rand, hidden, latent, rows):
    kc.check_train_steps(backends.load("cpu-bf16"), Config(hidden=hidden, latent=latent, batch_size=rows), rand,
                         rows)


@needs_bf16
@pytest.mark.parametrize("hidden,latent,rows,parts", [((13, 9), 3, 7, 2), ((500, 500), 20, 150, 2),
                                                       ((37, 11, 5), 5, 257, 3)])
def test_bf16_training_steps_split_between_threads_match_the_reference(rand, hidden, latent, rows, parts):
    """Row shards on the cpu backend's workers, each thread with its own packing buffers (and, on AMX, tile state)."""
    from fastvae.backends import cpu
    before, cpu.workers.count = cpu.workers.count, parts
    try:
        kc.check_train_steps(backends.load("cpu-bf16"), Config(hidden=hidden, latent=latent, batch_size=rows), rand,
                             rows, parts=parts)
    finally:
        cpu.workers.count = before


@needs_bf16
@pytest.mark.parametrize("encoder,reconstruction,activation", [("sigma", "xent", "elu"), ("gamma", "mse", "elu"),
                                                               ("gamma", "xent", "tanh")])
def test_bf16_training_steps_of_the_variants_match_the_reference(rand, encoder, reconstruction, activation):
    cfg = Config(hidden=(37, 11), latent=4, batch_size=7, encoder=encoder, reconstruction=reconstruction,
                 activation=activation)
    kc.check_train_steps(backends.load("cpu-bf16"), cfg, rand, 7)


# ---------------------------------------------------------------- weights packed once per step

@needs_bf16
def test_weight_packs_follow_adam_and_new_arrays(rand):
    """A product with a weight's cached pack equals one that packs it afresh, bit for bit: after adam_update changed
    the weights (the pack is made again) and for a new array of the same shape (never another array's pack)."""
    from fastvae.backends import cpu_bf16
    be = get_backend("cpu-bf16")
    x = rand.normal(0, 1, (37, 101)).astype(np.float32)

    def both(w):
        cached, fresh = np.empty((37, 53), np.float32), np.empty((37, 53), np.float32)
        be.dense_forward(cached, x, w, np.zeros(53, np.float32), "identity")
        amx.matmul(fresh, x, w)
        return cached, fresh

    flat = rand.normal(0, 1, 101 * 53).astype(np.float32)
    w = flat.reshape(101, 53)
    a, b = both(w)
    assert np.array_equal(a, b)
    before = cpu_bf16.PACKS.packs
    assert np.array_equal(*both(w)) and cpu_bf16.PACKS.packs == before        # the same step: packed once
    g = rand.normal(0, 1, (1, flat.size)).astype(np.float32)
    be.adam_update(flat, g, np.zeros_like(flat), np.zeros_like(flat), np.zeros(3, np.int64), 0.1, 0.9, 0.999, 1e-8)
    a2, b2 = both(w)
    assert np.array_equal(a2, b2) and not np.array_equal(a2, a)
    for _ in range(20):                 # new arrays, some of them at a freed one's address
        del w
        w = rand.normal(0, 1, (101, 53)).astype(np.float32)
        assert np.array_equal(*both(w))


@needs_bf16
@pytest.mark.parametrize("count", [1, 2])
def test_weight_update_writes_the_packs_the_next_products_load(rand, count):
    """weight_update rewrites the packs of the weights it changes (as the weight and as its transpose) in its own pass:
    afterwards every product with a cached pack equals one that packs the new weights afresh, bit for bit, and no
    weight was packed anew; a weight of another buffer keeps its pack."""
    from fastvae.backends import cpu_bf16
    from fastvae.params import flat_offsets
    be = get_backend("cpu-bf16")
    shapes = ((101, 53), (53, 300), (300, 37))
    offsets, size = flat_offsets(shapes)
    flat = rand.normal(0, 1, size).astype(np.float32)
    ws = [flat[o:o + k * n].reshape(k, n) for (k, n), (o, _) in zip(shapes, offsets)]
    other = rand.normal(0, 1, (101, 53)).astype(np.float32)
    rows = 19

    def products(w, x, dz):
        k, n = w.shape
        cached = np.empty((rows, n), np.float32), np.empty((rows, k), np.float32)
        be.dense_forward(cached[0], x, w, np.zeros(n, np.float32), "identity")
        be.dense_backward(cached[1], None, None, dz.copy(), x, w, None, "identity")
        fresh = amx.matmul(np.empty((rows, n), np.float32), x, w), amx.matmul(np.empty((rows, k), np.float32), dz, w.T)
        return cached, fresh

    xs = [rand.normal(0, 1, (rows, k)).astype(np.float32) for k, _ in shapes]
    dzs = [rand.normal(0, 1, (rows, n)).astype(np.float32) for _, n in shapes]
    # a second view object of the first weight has packs of its own: the update copies its new ones there (a mutant
    # that skipped the copy passed every test before)
    alias = flat[offsets[0][0]:offsets[0][0] + 101 * 53].reshape(101, 53)
    for w, x, dz in zip(ws + [other, alias], xs + xs[:1] * 2, dzs + dzs[:1] * 2):
        products(w, x, dz)                                              # the packs are made here
    other_before = amx.matmul(np.empty((rows, 53), np.float32), xs[0], other)
    before, be.workers.count = be.workers.count, count
    try:
        be.weight_update(flat, np.zeros(size, np.float32), np.zeros(size, np.float32), np.zeros(size, np.float32),
                         np.zeros(3, np.int64), tuple(xs), tuple(dzs), 0.1, 0.9, 0.999, 1e-8)
    finally:
        be.workers.count = before
    packs = cpu_bf16.PACKS.packs
    for w, x, dz in zip(ws + [alias], xs + xs[:1], dzs + dzs[:1]):
        (f, b), (f_fresh, b_fresh) = products(w, x, dz)
        assert np.array_equal(f, f_fresh) and np.array_equal(b, b_fresh)
    assert cpu_bf16.PACKS.packs == packs                                # nothing packed again
    cached = np.empty((rows, 53), np.float32)
    be.dense_forward(cached, xs[0], other, np.zeros(53, np.float32), "identity")
    assert np.array_equal(cached, other_before)


@needs_bf16
def test_a_split_step_packs_each_weight_once_per_layout(rand):
    from fastvae import step
    from fastvae.backends import cpu, cpu_bf16
    from fastvae.params import Layout, he_init
    be, cfg = get_backend("cpu-bf16"), Config(hidden=(37, 11), latent=5, batch_size=64)
    layout = Layout(cfg)
    st, ws = step.State(be, layout, he_init(layout, 1), seed=1), step.Workspace(be, cfg, 64)
    data = rand.integers(0, 256, (64, 784)).astype(np.uint8)
    before, cpu.workers.count = cpu.workers.count, 2
    try:
        step.train_step(be, cfg, st, ws, data, np.arange(64), 2)       # warm: the first packs of these arrays
        packs = cpu_bf16.PACKS.packs
        step.train_step(be, cfg, st, ws, data, np.arange(64), 2)
    finally:
        cpu.workers.count = before
    # forward: every layer's W; input gradients: every layer's W.T but the first's
    assert cpu_bf16.PACKS.packs - packs == 2 * len(layout.layers) - 1


@needs_bf16
@pytest.mark.parametrize("threads", [1, 2])
def test_two_bf16_models_training_at_once_keep_their_own_packs(threads):
    """One model's Adam repacks only its own weights: bf16 fits in Python threads end bit-identical to the same fits
    run alone. With two threads each they share the workers (a busy pool runs a fit's shards on its own thread):
    their captured shards must not share a thread's packing buffers (capture.private; found 2026-12-06: three
    such fits at once differed from alone by up to 1e-2 of weights of size 3). Ran on AMX only until 2026-12-07; on
    the AVX512-BF16 engine one fit of three died of the packs' race below (1 of 10 runs)."""
    seeds = (1, 2) if threads == 1 else (1, 2, 3)
    for alone, together in zip(*kc.fits_alone_and_at_once("cpu-bf16", threads=threads, epochs=2, seeds=seeds)):
        assert np.array_equal(together, alone)


@needs_bf16
def test_a_weight_freed_by_the_garbage_collector_while_the_packs_are_read(rand):
    """The packs' cache forgets a weight when it is freed (a weak reference's callback), which runs wherever the
    garbage collector happens to run: inside another thread's reading of the cache, or this one's. Weights held only
    by reference cycles, and a collection due after n more allocations, for every n up to past the reading's:
    every pack is still found or skipped (found 2026-12-07: "dictionary changed size during iteration" killed one of
    three cpu-bf16 fits at once)."""
    import gc

    from fastvae.backends import cpu_bf16
    from fastvae.params import flat_offsets
    shapes = ((33, 20), (20, 7))
    offsets, size = flat_offsets(shapes)
    params = rand.normal(0, 1, size).astype(np.float32)
    live = [params[o:o + k * n].reshape(k, n) for (k, n), (o, _) in zip(shapes, offsets)]
    threshold, enabled = gc.get_threshold(), gc.isenabled()
    try:
        for n in range(48):                             # (the reading's allocations: 17-26 and 33 failed)
            packs = cpu_bf16.WeightPacks()
            for w in live:
                packs.get(w, False)
            gc.disable()
            for _ in range(12):
                cycle = [rand.normal(0, 1, (33, 20)).astype(np.float32)]
                packs.get(cycle[0], True)
                cycle.append(cycle)                     # freed only by a collection
            del cycle
            gc.set_threshold(gc.get_count()[0] + n)
            gc.enable()
            forward, transposed, copies = packs.of_buffer(params, shapes)
            packs.refresh(params, cpu_bf16.cpu.workers)
            gc.set_threshold(*threshold)
            gc.collect(0)                               # (the cycles are young: made with the collector off)
            assert all(f.size for f in forward) and not any(t.size for t in transposed) and not copies
            assert len(packs._entries) == len(live)     # the cycles' weights forgotten
    finally:
        gc.set_threshold(*threshold)
        (gc.enable if enabled else gc.disable)()


# ---------------------------------------------------------------- a CPU without AMX, and Numba's cache

def _python(code, env_extra, cache_dir):
    """The last line `code` prints, run in a subprocess with env_extra and Numba's cache at cache_dir (None: the
    suite's own cache)."""
    env = {**os.environ, **({} if cache_dir is None else {"NUMBA_CACHE_DIR": str(cache_dir)}), **env_extra}
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True,
                          timeout=600, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()[-1]


def cached_features(cache_dir, kernel):
    """The CPU features in the key of the one cached overload of `kernel` in Numba's cache at `cache_dir`."""
    index = [p for p in cache_dir.rglob("*.nbi") if kernel in p.name]
    assert len(index) == 1
    with open(index[0], "rb") as f:
        pickle.load(f)                                 # Numba's version
        _, overloads = pickle.loads(f.read())
    (key,) = [k for k in overloads]
    _, (triple, cpu_name, features), _ = key
    return features.split(",")


def _without_amx():
    """Numba's target as a CPU without AMX would give it (Zen 4's name; this machine's features less amx-*)."""
    return _target_without("znver4", ("amx",))


def as_a_cpu_without_amx(tmp_path):
    """(environment, cache folder) for a subprocess that runs as a CPU with AVX512-BF16 and no AMX: on an AMX machine
    Numba's target without amx-* and a cache of its own; where the CPU itself has no AMX (Zen 4), this process's own
    target and the suite's cache (None), so the suite does not compile the same kernels again for each such test."""
    return (_without_amx(), tmp_path) if amx.USE_AMX else ({}, None)


def _without_bf16():
    """Numba's target as a CPU without AMX or AVX512-BF16 would give it (Ice Lake's name; this machine's features
    less amx-* and avx512bf16)."""
    return _target_without("icelake-server", ("amx", "avx512bf16"))


def _target_without(cpu_name, prefixes):
    from numba.core.codegen import get_host_cpu_features
    features = ",".join("-" + f[1:] if f[1:].startswith(prefixes) else f for f in get_host_cpu_features().split(","))
    return {"NUMBA_CPU_NAME": cpu_name, "NUMBA_CPU_FEATURES": features}


_LOAD_CACHED = """
    import numpy as np
    from numba import typeof
    from fastvae.backends import amx
    disp = amx._tiles_product
    args = (np.zeros((1, 1), np.float32), np.zeros((32, 16), np.uint32), np.zeros((2, 16, 16), np.uint32),
            amx._CFG, np.zeros((32, 32), np.float32))
    sig = tuple(typeof(a) for a in args)
    print("hit" if disp._cache.load_overload(sig, disp.targetctx) is not None else "miss")
"""


def test_a_cpu_without_amx_or_avx512bf16_gets_one_line(tmp_path):
    """Under Numba's target for a CPU with neither AMX nor AVX512-BF16, get_backend("cpu-bf16") refuses in one line
    (UserError) before anything is compiled or any bf16 instruction runs."""
    out = _python("""
        from fastvae.backends import get_backend
        from fastvae.errors import UserError
        try:
            get_backend("cpu-bf16")
        except UserError as exc:
            print(repr(str(exc)))
    """, _without_bf16(), tmp_path)
    assert "cpu-bf16 backend cannot run here" in out and "amx-tile" in out and "avx512bf16" in out
    assert "\\n" not in out


@pytest.mark.skipif(avx512bf16.unavailable_reason() is not None, reason=f"no AVX512-BF16 here: "
                    f"{avx512bf16.unavailable_reason()}")
def test_without_amx_the_bf16_backend_runs_on_avx512bf16(rand, tmp_path):
    """A CPU with AVX512-BF16 but no AMX (Zen 4; on an AMX machine Numba's target without amx-*): cpu-bf16 runs every
    product with vdpbf16ps (amx.tiles), and its whole steps, split or not, and its weight update match the reference
    within the bf16 tolerances, as on AMX."""
    out = _python("""
        import sys
        import numpy as np
        sys.path.insert(0, "tests")
        import kernel_cases as kc
        from fastvae.backends import amx, get_backend
        from fastvae.config import Config
        assert not amx.USE_AMX and amx.engine_unavailable_reason() is None
        be, rand = get_backend("cpu-bf16"), np.random.default_rng(%d)
        kc.check_train_steps(be, Config(hidden=(37, 11), latent=5, batch_size=75), rand, 75)
        be.workers.count = 2
        kc.check_train_steps(be, Config(hidden=(37, 11), latent=5, batch_size=75), rand, 75, parts=2)
        kc.check_weight_update(be, rand, 75, ((784, 500), (500, 40), (20, 257)), 3)
        kc.check_dense(be, rand, 7, 101, 37, "elu")
        print("ok")
    """ % int(rand.integers(1 << 30)), *as_a_cpu_without_amx(tmp_path))
    assert out == "ok"


@needs_amx
def test_the_numba_cache_never_hands_amx_code_to_another_cpu(tmp_path):
    """Numba keys every cached overload by (signature, (target triple, CPU name, CPU feature string), source
    hashes) -- codegen.magic_tuple() in numba/core/caching.py's _index_key -- so an index written on an AMX
    machine has no entry a CPU with another name or other features could load. Here: the AMX kernel compiled and
    cached in one process is loaded by a second process with the same target, and not by one whose target is a
    CPU without AMX (the same cache directory, as on a shared disk)."""
    _python("""
        import numpy as np
        from fastvae.backends import amx
        out = np.empty((3, 5), np.float32)
        amx.matmul(out, np.ones((3, 7), np.float32), np.ones((7, 5), np.float32))
        assert np.all(out == 7)
        print("compiled")
    """, {}, tmp_path)
    features = cached_features(tmp_path, "_tiles_product")
    assert "+amx-tile" in features and "+amx-bf16" in features
    assert _python(_LOAD_CACHED, {}, tmp_path) == "hit"
    assert _python(_LOAD_CACHED, _without_amx(), tmp_path) == "miss"


@needs_amx
def test_without_the_tile_permission_the_first_tile_instruction_is_sigill(tmp_path):
    """Why every entry point calls amx.require() first: a process that runs tile code without asking the kernel
    for the tile state (arch_prctl) dies of SIGILL. The kernel is called here directly, bypassing require()."""
    code = textwrap.dedent("""
        import numpy as np
        from fastvae.backends import amx
        amx._tiles_product(np.zeros((1, 1), np.float32), np.zeros((32, 16), np.uint32),
                           np.zeros((2, 16, 16), np.uint32), amx._CFG, np.zeros((32, 32), np.float32))
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)})
    assert done.returncode == -4, (done.returncode, done.stderr[-2000:])     # -SIGILL


def test_the_register_transpose_moves_every_word_and_nothing_else(rand):
    """transpose.transpose16 (the transposed pack's inner step): dst's 16 x 16 block at any offset and row stride is
    src's block transposed, bit for bit, and no other word of dst changes."""
    from numba import njit

    from fastvae.backends.transpose import transpose16

    @njit(cache=False)
    def run(src, src_at, src_stride, dst, dst_at, dst_stride):
        transpose16(src, src_at, src_stride, dst, dst_at, dst_stride)

    for src_at, src_stride, dst_at, dst_stride in ((0, 16, 0, 16), (5, 37, 3, 41), (1, 400, 16, 16)):
        src = rand.integers(0, 2 ** 32, 16 * src_stride + src_at + 16, dtype=np.uint64).astype(np.uint32)
        dst = rand.integers(0, 2 ** 32, 16 * dst_stride + dst_at + 16, dtype=np.uint64).astype(np.uint32)
        before = dst.copy()
        run(src, src_at, src_stride, dst, dst_at, dst_stride)
        block = np.lib.stride_tricks.as_strided(src[src_at:], (16, 16), (4 * src_stride, 4))
        got = np.lib.stride_tricks.as_strided(dst[dst_at:], (16, 16), (4 * dst_stride, 4))
        assert np.array_equal(got, block.T)
        touched = np.zeros(dst.size, bool)
        for j in range(16):
            touched[dst_at + j * dst_stride:dst_at + j * dst_stride + 16] = True
        assert np.array_equal(dst[~touched], before[~touched])


def _special_floats(rand, size):
    """float32 bits: random values of every magnitude, with ties, NaNs, infinities, zeros and subnormals mixed in."""
    x = (rand.standard_normal(size) * np.exp2(rand.integers(-140, 120, size))).astype(np.float32)
    bits = x.view(np.uint32)
    special = np.array([0x7FC00000, 0x7F800001, 0xFF800000, 0x7F800000, 0x80000000, 0x00000001, 0x3F808000,
                        0x3F818000, 0x7F7FFFFF, 0x00018000], np.uint32)
    at = rand.choice(size, min(size, special.size), replace=False)
    bits[at] = special[:at.size]
    return bits


def _same_floats(got, want):
    """Equal values, NaN where the other has NaN."""
    nan = np.isnan(got)
    return np.array_equal(nan, np.isnan(want)) and np.array_equal(got[~nan], want[~nan])


def _halves(words):
    """(the low bf16s, the high bf16s) of uint32 words, as float32."""
    return ((words & 0xFFFF) << 16).astype(np.uint32).view(np.float32), (words & 0xFFFF0000).view(np.float32)


@pytest.mark.filterwarnings("ignore:invalid value encountered in cast")    # the reference's cast of a signalling NaN
def test_the_vector_pairs_round_and_place_every_word_and_nothing_else(rand):
    """bf16_pairs.column_pairs / row_pairs (every pack's words, 16 at a time in vector registers): each word is the
    two inputs rounded as an independent float64 rounding does (NaN stays NaN), at any offset, and no other word of
    dst changes."""
    from numba import njit

    from fastvae.backends.bf16_pairs import column_pairs, row_pairs

    @njit(cache=False)
    def columns(src, a_at, b_at, dst, d_at):
        column_pairs(src, a_at, b_at, dst, d_at)

    @njit(cache=False)
    def rows(src, at, dst, d_at):
        row_pairs(src, at, dst, d_at)

    for a_at, b_at, d_at in ((0, 16, 0), (5, 77, 3), (40, 1, 17)):
        src = _special_floats(rand, 100)
        x = src.view(np.float32)
        before = rand.integers(0, 2 ** 32, 40, dtype=np.uint64).astype(np.uint32)
        untouched = np.ones(before.size, bool)
        untouched[d_at:d_at + 16] = False

        dst = before.copy()
        columns(src, a_at, b_at, dst, d_at)
        low, high = _halves(dst[d_at:d_at + 16])
        assert _same_floats(low, bf16_reference(x[a_at:a_at + 16]))
        assert _same_floats(high, bf16_reference(x[b_at:b_at + 16]))
        assert np.array_equal(dst[untouched], before[untouched])

        dst = before.copy()
        rows(src, a_at, dst, d_at)
        low, high = _halves(dst[d_at:d_at + 16])
        assert _same_floats(low, bf16_reference(x[a_at:a_at + 32:2]))
        assert _same_floats(high, bf16_reference(x[a_at + 1:a_at + 32:2]))
        assert np.array_equal(dst[untouched], before[untouched])


@pytest.mark.skipif(amx.engine_unavailable_reason() is not None,
                    reason=f"no bf16 engine here: {amx.engine_unavailable_reason()}")
def test_packs_and_scratch_start_on_cache_lines(rand):
    """What the tiles load (a weight's packs, the A and B scratch, amx.Workspace's buffers) and the gradient scratch
    they store into start on a 64-byte boundary, so a 64-byte tile row is one cache line (aligned_words)."""
    from fastvae.backends import cpu_update

    for size in (1, 7, 16, 1000, 250_000):
        assert amx.aligned_words(size).ctypes.data % 64 == 0 and amx.aligned_words(size).size == size
        assert cpu_update.aligned_empty(size, np.float32).ctypes.data % 64 == 0
    for k, n in ((784, 500), (101, 3)):
        assert amx.pack_b(rand.standard_normal((k, n)).astype(np.float32)).ctypes.data % 64 == 0
    a, b, block, _ = amx.scratch(12345, 6789)
    assert a.ctypes.data % 64 == 0 and b.ctypes.data % 64 == 0 and block.ctypes.data % 64 == 0
    ws = amx.Workspace()
    assert ws.take("a", (80, 400)).ctypes.data % 64 == 0 and ws.take("b", (32, 400, 16)).ctypes.data % 64 == 0
    assert cpu_update.scratch(3000).ctypes.data % 64 == 0


@pytest.mark.parametrize("rows", AWKWARD_ROWS)
@pytest.mark.parametrize("width,c0,c1", [(784, 768, 784), (784, 32, 64), (101, 96, 101), (20, 0, 20), (3, 0, 3)])
def test_the_weight_gradients_a_pack_is_the_columns_in_bf16_pairs(rand, rows, width, c0, c1):
    """amx_update._pack_a_columns (A of a weight-gradient block: the input's columns c0..c1 as rows, bf16 pairs along
    the batch, 16 x 16 words at a time through the register transpose): word for word what NumPy's rounding and
    pairing of the same columns give, zero in the padding."""
    from fastvae.backends import amx_update

    src = rand.standard_normal((rows, width)).astype(np.float32)
    kq = -(-max(rows, 1) // 32) * 16
    dst = rand.integers(0, 2 ** 32, (amx.BLOCK, kq), dtype=np.uint64).astype(np.uint32)     # poison: all rewritten
    amx_update._pack_a_columns(dst, src.view(np.uint32), c0, c1, np.empty((16, 16), np.uint32))
    padded = np.zeros((amx.BLOCK, 2 * kq), np.float32)
    padded[:c1 - c0, :rows] = src[:, c0:c1].T
    half = bf16_reference(padded).view(np.uint32) >> 16
    assert np.array_equal(dst, half[:, 0::2] | (half[:, 1::2] << 16))
