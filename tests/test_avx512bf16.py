"""The AVX512-BF16 product (fastvae.backends.avx512bf16.vector_product) from amx's packed operands, where the CPU has
the instruction; and, everywhere, that a CPU without it gets one line and never this code (Numba's cache included).

Tolerance, from the arithmetic: bf16 x bf16 products are exact in fp32 (and in float64), so against the float64 product
of the bf16-rounded operands the only error is the fp32 accumulation: k terms summed in sequence into an fp32
accumulator, each addition rounded to nearest (2**-24 relative), err_ij <= (k - 1) 2**-24 / (1 - (k - 1) 2**-24)
sum_l |a_il b_lj| <= k 2**-24 sum_l |a_il b_lj| (for k <= 4096); the zero padding adds exact zeros. That bound is
checked element by element. vdpbf16ps flushes denormal inputs and results to zero: a term below 2**-126 is lost,
which N(0, 1) operands never come near. AMX's tdpbf16ps obeys the same bound but adds in another order (about 80 %
of the outputs differ from this kernel's in the last bits at k = 784), so the two may differ by twice it.
"""

import numpy as np
import pytest

from test_amx import _python, _without_bf16, cached_features
from fastvae.backends import amx, avx512bf16

needs_bf16 = pytest.mark.skipif(avx512bf16.unavailable_reason() is not None,
                                reason=f"no AVX512-BF16 here: {avx512bf16.unavailable_reason()}")
needs_amx = pytest.mark.skipif(amx.unavailable_reason() is not None, reason=f"no AMX here: {amx.unavailable_reason()}")

POISON_BITS = 0x7FC07FC0            # a bf16 pair of quiet NaNs: what padding that must not be read holds
MODEL = [(rows, k, n) for rows in (75, 150) for k, n in ((784, 500), (500, 500), (500, 784))] + [(32, 160, 784)]
AWKWARD = [(1, 1, 1), (1, 20, 16), (7, 33, 20), (7, 1, 500), (16, 150, 40), (16, 500, 16), (17, 500, 101),
           (17, 1, 40), (75, 150, 20), (150, 33, 1), (257, 20, 784), (257, 150, 101), (1, 500, 784)]


def _packs(a, b, spare_rows=0, spare_strips=0):
    """amx's packs of a (m, k) and b (k, n), sized as amx.product sizes them, plus spare rows / strips (then filled
    with NaN pairs: the kernel must not let rows or columns past out's reach it). k's padding stays zero."""
    m, k = a.shape
    n = b.shape[1]
    kq = amx._padded(max(k, 1), 32) // 2
    pa = np.empty((amx._padded(m, 16) + spare_rows, kq), np.uint32)
    amx._pack_a(pa, np.ascontiguousarray(a).view(np.uint32), False)
    pb = np.empty((amx._padded(n, 32) // 16 + spare_strips, kq, 16), np.uint32)
    amx._pack_b(pb, np.ascontiguousarray(b).view(np.uint32), False)
    if spare_rows or spare_strips:
        pa[m:, :(k + 1) // 2] = POISON_BITS
        for j in range(n, 16 * pb.shape[0]):
            pb[j // 16, :(k + 1) // 2, j % 16] = POISON_BITS
    return pa, pb


def _inputs(rand, m, k, n):
    return rand.normal(0, 1, (m, k)).astype(np.float32), rand.normal(0, 1, (k, n)).astype(np.float32)


def _check_against_float64(out, a, b):
    """Element by element: |out - exact| <= k 2**-24 sum |a b| (the module docstring's bound)."""
    ar = amx.round_to_bf16(a).astype(np.float64)
    br = amx.round_to_bf16(b).astype(np.float64)
    err = np.abs(out.astype(np.float64) - ar @ br)
    bound = a.shape[1] * 2.0 ** -24 * (np.abs(ar) @ np.abs(br))
    assert np.all(err <= bound), f"{a.shape} @ {b.shape}: error up to {np.max(err / bound):.3g} x the bound"


def _product_into_poisoned_buffer(a, b, pa, pb):
    """vector_product into an (m, n) C-ordered view with poison before and after it (more than the padded rows'
    and columns' worth), returning the view after checking that the poison is intact."""
    m, n = a.shape[0], b.shape[1]
    margin = 16 * (n + 48) + 64
    host = np.full(m * n + 2 * margin, -7.0, np.float32)
    out = host[margin:margin + m * n].reshape(m, n)
    avx512bf16.vector_product(out, pa, pb, np.full((32, 32), np.nan, np.float32))
    assert np.all(host[:margin] == -7.0) and np.all(host[margin + m * n:] == -7.0), "wrote outside out"
    return out


@needs_bf16
@pytest.mark.parametrize("m,k,n", MODEL + AWKWARD)
def test_products_match_float64_of_the_bf16_operands(rand, m, k, n):
    a, b = _inputs(rand, m, k, n)
    out = _product_into_poisoned_buffer(a, b, *_packs(a, b))
    _check_against_float64(out, a, b)


@needs_bf16
@pytest.mark.parametrize("m,k,n", [(1, 20, 1), (7, 33, 20), (17, 500, 101), (75, 784, 500), (150, 500, 784)])
def test_padding_past_out_is_never_read_into_it(rand, m, k, n):
    """Packs larger than out (m < m_p - 16, n < n_p - 32, as the contract allows) with NaN in every row and column
    past out: rows and columns beyond m, n may be computed, but nothing of them reaches out."""
    a, b = _inputs(rand, m, k, n)
    out = _product_into_poisoned_buffer(a, b, *_packs(a, b, spare_rows=16, spare_strips=2))
    assert np.all(np.isfinite(out))
    _check_against_float64(out, a, b)


@needs_bf16
@needs_amx
@pytest.mark.parametrize("m,k,n", MODEL + [(7, 33, 20), (17, 500, 101), (257, 150, 101)])
def test_products_agree_with_the_amx_tiles_on_the_same_packs(rand, m, k, n):
    """Both kernels are within k 2**-24 sum |a b| of the exact product of the same packed operands, so within twice
    that of each other; equality is not promised (their order of additions differs)."""
    a, b = _inputs(rand, m, k, n)
    pa, pb = _packs(a, b)
    mine, tiles = np.empty((m, n), np.float32), np.empty((m, n), np.float32)
    avx512bf16.vector_product(mine, pa, pb, np.empty((32, 32), np.float32))
    amx.require()
    amx._tiles_product(tiles, pa, pb, amx._CFG, np.empty((32, 32), np.float32))
    size = np.abs(amx.round_to_bf16(a).astype(np.float64)) @ np.abs(amx.round_to_bf16(b).astype(np.float64))
    assert np.all(np.abs(mine.astype(np.float64) - tiles) <= 2 * k * 2.0 ** -24 * size)


@needs_bf16
def test_exact_sums_are_exact():
    """Small integers (exact in bf16, every partial sum exact in fp32) come out exactly, zero padding included."""
    a = np.arange(-3, 4, dtype=np.float32)[np.arange(7 * 45) % 7].reshape(7, 45)
    b = np.arange(-2, 3, dtype=np.float32)[np.arange(45 * 37) % 5].reshape(45, 37)
    out = np.empty((7, 37), np.float32)
    avx512bf16.vector_product(out, *_packs(a, b), np.empty((32, 32), np.float32))
    assert np.array_equal(out, a.astype(np.float64) @ b)


@needs_bf16
def test_a_too_small_block_scratch_is_refused():
    a, b = np.ones((3, 5), np.float32), np.ones((5, 4), np.float32)
    with pytest.raises(ValueError, match="block scratch"):
        avx512bf16.vector_product(np.empty((3, 4), np.float32), *_packs(a, b), np.empty((4, 4), np.float32))


# ---------------------------------------------------------------- a CPU without AVX512-BF16, and Numba's cache

def test_a_cpu_without_avx512bf16_gets_one_line(tmp_path):
    """Under Numba's target for a CPU without AVX512-BF16, require() refuses in one line (UserError), before any
    vdpbf16ps could run."""
    out = _python("""
        from fastvae.backends import avx512bf16
        from fastvae.errors import UserError
        try:
            avx512bf16.require()
        except UserError as exc:
            print(repr(str(exc)))
    """, _without_bf16(), tmp_path)
    assert "AVX512-BF16 is unavailable" in out and "avx512bf16" in out and "\\n" not in out


_LOAD_CACHED = """
    import numpy as np
    from numba import typeof
    from fastvae.backends import avx512bf16
    disp = avx512bf16.vector_product
    args = (np.zeros((1, 1), np.float32), np.zeros((16, 16), np.uint32), np.zeros((2, 16, 16), np.uint32),
            np.zeros((32, 32), np.float32))
    sig = tuple(typeof(a) for a in args)
    print("hit" if disp._cache.load_overload(sig, disp.targetctx) is not None else "miss")
"""


@needs_bf16
def test_the_numba_cache_never_hands_bf16_code_to_another_cpu(tmp_path):
    """Numba keys every cached overload by (signature, (target triple, CPU name, CPU feature string), source
    hashes) -- codegen.magic_tuple() in numba/core/caching.py's _index_key -- so an index written here has no entry
    that a CPU without AVX512-BF16 could load. The kernel compiled and cached in one process is loaded by a second
    with the same target, and not by one whose target lacks the instruction (the same cache directory)."""
    _python("""
        import numpy as np
        from fastvae.backends import amx, avx512bf16
        a, b = np.ones((3, 7), np.float32), np.ones((7, 5), np.float32)
        pa, pb = np.empty((16, 16), np.uint32), np.empty((2, 16, 16), np.uint32)
        amx._pack_a(pa, a.view(np.uint32), False)
        amx._pack_b(pb, b.view(np.uint32), False)
        out = np.empty((3, 5), np.float32)
        avx512bf16.vector_product(out, pa, pb, np.empty((32, 32), np.float32))
        assert np.all(out == 7)
        print("compiled")
    """, {}, tmp_path)
    assert "+avx512bf16" in cached_features(tmp_path, "vector_product")
    assert _python(_LOAD_CACHED, {}, tmp_path) == "hit"
    assert _python(_LOAD_CACHED, _without_bf16(), tmp_path) == "miss"
