"""The input gradient on FMA vectors (fastvae.backends.dinp) against float64, on fresh random inputs at awkward sizes:
rows around the 16-row vectors and the 48/32/16-row blocks, widths around the 9-, 14- and 28-row weight blocks; its
scratch (one pair per output array, padding rows that are computed and dropped), and the sizes it leaves to
OpenBLAS. The cpu backend's kernels at 150 and 257 rows (tests/test_kernels.py) run it inside dense_backward."""
import numpy as np
import pytest

from fastvae.backends import cpu, dinp

from tolerances import TOL, assert_close

SIZES = [(32, 64, 64), (33, 65, 101), (47, 500, 9), (76, 500, 500), (74, 784, 500), (150, 500, 784),
         (257, 101, 65), (64, 777, 70), (96, 64, 1000)]


def _case(rand, m, k, n):
    return rand.standard_normal((m, k)).astype(np.float32), rand.standard_normal((n, k)).astype(np.float32)


def _check(out, dout, w):
    expected = dout.astype(np.float64) @ w.T.astype(np.float64)
    # each element is a k-term fp32 dot product: judged against the size of its terms (tolerances.py)
    assert_close(out, expected, TOL["float32"], scale=float(np.max(np.abs(dout) @ np.abs(w.T))), what="dinp")


@pytest.mark.parametrize("m,k,n", [s for s in SIZES if min(s[0], s[1]) >= dinp.MIN_ROWS and s[2] >= dinp.MIN_WIDTH])
def test_the_product_matches_float64(rand, m, k, n):
    dout, w = _case(rand, m, k, n)
    out = np.full((m, n), np.nan, np.float32)           # every element must be written
    a_t, out_t = dinp.scratch(out, dout, w)
    assert dinp.usable(out, dout, w, a_t, out_t)
    dinp.product(out, dout, w, a_t, out_t)
    _check(out, dout, w)


def test_the_padding_rows_are_dropped(rand):
    """76 rows padded to 80: whatever the padding holds (NaN here) never reaches dinp."""
    dout, w = _case(rand, 76, 500, 130)
    a_t, out_t = (np.full(s, np.nan, np.float32) for s in dinp.scratch_shapes(76, 130, 500))
    out = np.empty((76, 130), np.float32)
    dinp.product(out, dout, w, a_t, out_t)
    _check(out, dout, w)


def test_each_output_array_has_its_own_scratch(rand):
    dout, w = _case(rand, 76, 500, 500)
    one, two = np.empty((76, 500), np.float32), np.empty((76, 500), np.float32)
    first = dinp.scratch(one, dout, w)
    assert dinp.scratch(one, dout, w)[0] is first[0]                      # kept for the same array
    assert all(a is not b for a, b in zip(first, dinp.scratch(two, dout, w)))   # never shared by two at once
    assert not np.any(first[0])                                           # zeros where first made


def test_the_scratch_goes_with_the_array_it_serves(rand):
    """A workspace that goes away takes its scratch with it (a sweep over many models does not pile them up)."""
    dout, w = _case(rand, 76, 500, 500)
    workspace = np.empty((150, 500), np.float32)
    before = len(dinp._SCRATCH)
    dinp.scratch(workspace[:76], dout, w)
    dinp.scratch(workspace[76:152], dout[:74], w)
    assert len(dinp._SCRATCH) == before + 2
    del workspace
    assert len(dinp._SCRATCH) == before


@pytest.mark.parametrize("m,k,n", [(31, 500, 500), (76, 63, 500), (76, 500, 63)])
def test_small_sizes_are_left_to_openblas(rand, m, k, n):
    dout, w = _case(rand, m, k, n)
    out = np.empty((m, n), np.float32)
    a_t, out_t = dinp.scratch(out, dout, w)
    assert a_t.size == 0 and not dinp.usable(out, dout, w, a_t, out_t)


def test_strided_operands_are_not_taken(rand):
    dout, w = _case(rand, 76, 500, 200)
    out = np.empty((76, 200), np.float32)
    a_t, out_t = dinp.scratch(out, dout, w)
    assert dinp.usable(out, dout, w, a_t, out_t)
    wide = np.empty((76, 400), np.float32)[:, :200]                       # rows not contiguous with each other
    assert not dinp.usable(wide, dout, w, *dinp.scratch(wide, dout, w))
    assert not dinp.usable(out, dout, np.asfortranarray(w), a_t, out_t)
    padded = np.empty((76, 512), np.float32)[:, :500]                    # dout's rows padded in memory
    padded[...] = dout
    assert not dinp.usable(out, padded, w, a_t, out_t)
    out[...] = np.nan
    cpu.dense_backward(out, None, None, padded, None, w, None, "identity")   # (in sgemm, which takes the stride)
    _check(out, dout, w)


@pytest.mark.parametrize("layout", ["padded rows", "float64"])
def test_the_backends_kernels_still_take_what_sgemm_takes(rand, layout):
    """dense_backward's input gradient with rows padded in memory (sgemm takes any row stride) still runs, in sgemm;
    float64 arrays still get sgemm's one-line refusal (found by a fresh user's trial, 2026-12-06: both failed to
    compile once the kernel was in)."""
    dout, w = _case(rand, 76, 500, 300)
    if layout == "float64":
        dout64, w64 = dout.astype(np.float64), w.astype(np.float64)
        with pytest.raises(ValueError, match="float32"):
            cpu.dense_backward(np.empty((76, 300)), None, None, dout64, None, w64, None, "identity")
        return
    padded = np.full((76, 312), np.nan, np.float32)
    cpu.dense_backward(padded[:, :300], None, None, dout.copy(), None, w, None, "identity")
    _check(padded[:, :300], dout, w)
    assert np.all(np.isnan(padded[:, 300:]))                              # the padding is not written


@pytest.mark.parametrize("rows", [7, 76, 150])
def test_the_backends_dense_backward_uses_it_where_it_can(rand, rows):
    """cpu.dense_backward's input gradient, with and without this kernel's shapes, against float64."""
    dout, w = _case(rand, rows, 500, 300)
    dinp_out = np.full((rows, 300), np.nan, np.float32)
    cpu.dense_backward(dinp_out, None, None, dout.copy(), None, w, None, "identity")
    _check(dinp_out, dout, w)
    assert (dinp_out.ctypes.data, dinp_out.shape, 500) in dinp._SCRATCH or rows < dinp.MIN_ROWS
