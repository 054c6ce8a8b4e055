"""The first layer's weight gradient over its input's nonzero rows (fastvae.backends.sparse_dw) against float64, on
fresh random inputs at awkward sizes: rows of the batch (1, 7, 150, 257), kept columns around the 8-column blocks,
outputs around the 48-output blocks; inputs as sparse as MNIST's and denser, with -0.0 (a zero) and rows that are
zero in a whole block; the columns' order (tiles of 28 x 28 images, index order otherwise). cpu_update's
weight_update runs it on the first layer (tests/test_kernels.py: test_weight_update with zero columns)."""
import numpy as np
import pytest

from fastvae.backends import sparse_dw

from tolerances import AWKWARD_ROWS, TOL, assert_close


def _sparse(rand, rows, cols, density):
    x = rand.random((rows, cols)).astype(np.float32)
    x[rand.random((rows, cols)) >= density] = 0.0
    x[rand.random((rows, cols)) < 0.05] = -0.0                  # a zero too, whatever its sign bit
    return x


def _packed(x, cols):
    """xk: x's columns `cols`, then zero columns up to whole blocks."""
    xk = np.zeros((x.shape[0], sparse_dw.padded(len(cols))), np.float32)
    xk[:, :len(cols)] = x[:, cols]
    return xk


@pytest.mark.parametrize("rows", AWKWARD_ROWS)
@pytest.mark.parametrize("kept,n", [(1, 1), (7, 47), (8, 48), (9, 49), (17, 500), (346, 500), (33, 1000)])
@pytest.mark.parametrize("density", [0.2, 0.9])
def test_the_product_matches_float64(rand, rows, kept, n, density):
    x = _sparse(rand, rows, kept, density)
    dz = rand.standard_normal((rows, n)).astype(np.float32)
    dest = rand.permutation(kept + 3)[:kept]                    # rows of g in any order; three rows not written
    g = np.full((kept + 3, n), np.nan, np.float32)
    xk = _packed(x, np.arange(kept))
    sparse_dw.product(g, xk, kept, dz, np.concatenate([dest, np.zeros(xk.shape[1] - kept, np.int64)]),
                      np.empty(rows, np.int32))
    expected = x.T.astype(np.float64) @ dz.astype(np.float64)
    # each element is a sum of `rows` fp32 products: judged against the size of its terms (tolerances.py)
    assert_close(g[dest], expected, TOL["float32"], scale=max(float(np.max(np.abs(x.T) @ np.abs(dz))), 1e-30),
                 what="dw")
    assert np.all(np.isnan(np.delete(g, dest, axis=0))), "a row of g that no column goes to was written"


def test_the_padding_columns_are_computed_and_dropped(rand):
    """Columns past `kept` (to whole blocks) take part in the unions as zeros and are never stored."""
    x = _sparse(rand, 150, 13, 0.3)
    dz = rand.standard_normal((150, 100)).astype(np.float32)
    g = np.full((16, 100), np.nan, np.float32)
    sparse_dw.product(g, _packed(x, np.arange(13)), 13, dz, np.arange(16), np.empty(150, np.int32))
    assert np.all(np.isnan(g[13:])) and not np.any(np.isnan(g[:13]))


def test_a_block_with_no_nonzero_row_gives_zeros(rand):
    x = np.zeros((150, 8), np.float32)
    x[:, 5] = -0.0
    g = np.full((8, 60), np.nan, np.float32)
    sparse_dw.product(g, x, 8, rand.standard_normal((150, 60)).astype(np.float32), np.arange(8),
                      np.empty(150, np.int32))
    assert np.array_equal(g, np.zeros_like(g))


def test_a_nan_in_the_input_reaches_its_gradient(rand):
    x = _sparse(rand, 7, 8, 0.5)
    x[3, 2] = np.nan
    g = np.zeros((8, 20), np.float32)
    sparse_dw.product(g, x, 8, rand.standard_normal((7, 20)).astype(np.float32), np.arange(8),
                      np.empty(7, np.int32))
    assert np.all(np.isnan(g[2])) and not np.any(np.isnan(np.delete(g, 2, axis=0)))


@pytest.mark.parametrize("r0,r1", [(0, 784), (0, 512), (512, 784), (100, 357)])
def test_images_are_taken_tile_by_tile(rand, r0, r1):
    """A first layer 784 wide: every kept column once, each whole 4 x 2 tile of the 28 x 28 image one block of 8."""
    nonzero = (rand.random(r1 - r0) < 0.7).astype(np.uint8)
    cols = np.empty(r1 - r0, np.int64)
    kept = sparse_dw.order(nonzero, r0, 784, cols)
    assert sorted(cols[:kept]) == [r0 + c for c in np.flatnonzero(nonzero)]
    tile = lambda c: (c // 28 // 4, c % 28 // 2)                  # noqa: E731
    assert [tile(c) for c in cols[:kept]] == sorted(tile(c) for c in cols[:kept])   # tiles in order, each whole
    full, cols = np.ones(784, np.uint8), np.empty(784, np.int64)
    assert sparse_dw.order(full, 0, 784, cols) == 784
    assert all(len({tile(c) for c in cols[j:j + 8]}) == 1 for j in range(0, 784, 8))


@pytest.mark.parametrize("fan_in,r0", [(257, 0), (1000, 512), (783, 0)])
def test_other_widths_are_taken_in_index_order(rand, fan_in, r0):
    width = min(512, fan_in - r0)
    nonzero = (rand.random(width) < 0.6).astype(np.uint8)
    cols = np.empty(width, np.int64)
    kept = sparse_dw.order(nonzero, r0, fan_in, cols)
    assert list(cols[:kept]) == [r0 + c for c in np.flatnonzero(nonzero)]


def test_arrays_out_of_its_rules_are_refused(rand):
    """Numba does not check bounds: a strided operand, an unpadded xk, a short dz or a dest past g would read or
    write past an array, so product() refuses them (ValueError) instead."""
    x = _sparse(rand, 20, 8, 0.5)
    dz = rand.standard_normal((20, 48)).astype(np.float32)
    g = np.zeros((8, 48), np.float32)
    ok = dict(g=g, xk=x, kept=8, dz=dz, dest=np.arange(8), rows=np.empty(20, np.int32))
    sparse_dw.product(**ok)
    wrong = [dict(dz=np.zeros((20, 64), np.float32)[:, :48]),          # rows not contiguous with each other
             dict(g=np.zeros((8, 96), np.float32)[:, ::2]),
             dict(xk=x[:, :7], kept=7),                                 # not padded to a whole block
             dict(dz=dz[:19]), dict(g=np.zeros((8, 47), np.float32)),
             dict(dest=np.array([0, 1, 2, 3, 4, 5, 6, 8])),             # a row past g
             dict(dest=np.arange(7)), dict(rows=np.empty(19, np.int32))]
    for change in wrong:
        with pytest.raises(ValueError, match="sparse_dw.product"):
            sparse_dw.product(**{**ok, **change})


def test_the_path_does_not_depend_on_the_threads_scratch(rand):
    """The first layer's update takes the same path, so gives the same bits, whatever this thread's scratch holds
    (it only grows: a wider model trained before in the same process made it larger). A fresh user's trial found
    the old rule, 'too small a scratch: OpenBLAS's product instead', changing the bits of a fit after another."""
    from fastvae.backends import cpu_update
    rows, shapes = 700, ((784, 50), (50, 10))
    x = _sparse(rand, rows, 784, 0.3)
    x[:, 400:512] = 0
    dz = [rand.standard_normal((rows, n)).astype(np.float32) * 1e-2 for _, n in shapes]
    inputs = (x, rand.standard_normal((rows, 50)).astype(np.float32))
    size = sum(k * n + n for k, n in shapes)
    start = [rand.standard_normal(size).astype(np.float32), np.zeros(size, np.float32),
             np.full(size, 1e-4, np.float32)]
    results = []
    small = cpu_update.WEIGHT_CHUNK_ROWS * 50                # enough for every item but the skip's own scratch
    assert small < cpu_update.zero_columns_scratch(shapes, rows, cpu_update.WEIGHT_CHUNK_ROWS)
    for scratch in (cpu_update.aligned_empty(small, np.float32), cpu_update.aligned_empty(10 ** 6, np.float32)):
        p, m, v = (a.copy() for a in start)
        items = cpu_update.plan(shapes, cpu_update.WEIGHT_CHUNK_ROWS)
        cpu_update._weight_items(p, None, m, v, inputs, tuple(dz), items, np.zeros(3, np.int64), False, 1e-3, 0.9,
                                 0.999, 1e-8, scratch, None, True, None)
        results.append(p)
    assert np.array_equal(*results)
