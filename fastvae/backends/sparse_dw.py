"""The first layer's weight gradient g = x[:, cols].T @ dz over the rows where x is nonzero, 8 columns of x at a time.

Reads xk (rows, K) float32, the input's kept columns packed in the order the product takes them (order()), and dz
(rows, n) float32; writes row dest[k] of g (any rows x n float32 array) for each kept column k. Why: the first layer's
input is the data, and MNIST's pixels are 81 % zeros. cpu_update already skips the columns that are zero in the whole
batch (MNIST's borders); inside the others 70 % of the entries are still zero. A sparse product over each column's
nonzero rows alone is bound by loading a row of dz per nonzero (measured: no faster than OpenBLAS's dense product);
here a register block of 8 columns x 48 outputs (24 accumulators) runs over the union of the 8 columns' nonzero rows,
each row of dz loaded once for 8 columns. On 28 x 28 images (a width of 784) the columns are taken in tiles of 4 image
rows x 2 image columns, whose nonzero rows overlap most (the union is 46 % of a batch's rows, against 57 % for 8
pixels in a row). Measured on one core of the project's Xeon (2026-12-06, 150 MNIST rows, the seed's first layer):
the layer's two chunks in 0.28 ms against OpenBLAS's 0.48 on the same kept columns.

Arithmetic: fp32 multiply-adds fused, summed over the rows in order (zero terms of the union included): within the
fp32 tolerance of the float64 reference (tests/tolerances.py), the same bits however the update is split, and the
same whether the gradient is kept or not (cpu_update takes this path in both). Plain LLVM vector IR (<16 x float>,
llvm.fma, masked loads and stores, llvm.prefetch): it compiles for any x86-64 target Numba has.
"""
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

LANES = 16
COLUMNS = 8                 # columns of x per register block (rows of g)
VECTORS = 3                 # vectors of outputs per register block: 8 x 3 accumulators + 3 loads + a broadcast
WIDTH = LANES * VECTORS     # outputs per register block
AHEAD = 4                   # rows of dz prefetched ahead (the rows are the union's, not in a stride the hardware sees)
IMAGE_SIDE = 28             # a first layer this wide squared is taken as images, in tiles (order())
TILE_ROWS, TILE_COLUMNS = 4, 2

_F32 = ir.FloatType()
_V = ir.VectorType(_F32, LANES)
_I32 = ir.IntType(32)
_I64 = ir.IntType(64)
_MASK = ir.VectorType(ir.IntType(1), LANES)
_BYTES = ir.IntType(8).as_pointer()


def _splat(builder, value, vector_type):
    v = builder.insert_element(ir.Constant(vector_type, ir.Undefined), value, ir.Constant(_I32, 0))
    return builder.shuffle_vector(v, ir.Constant(vector_type, ir.Undefined),
                                  ir.Constant(ir.VectorType(_I32, LANES), [0] * LANES))


def _int64(builder, value):
    return builder.sext(value, _I64) if value.type.width < 64 else value


@intrinsic
def _block(typingctx, g, xk, dz, rows, count, j0, c0, dest, kept):
    """g[dest[j0 + i], c0:c0 + WIDTH] = sum over t < count of xk[b, j0 + i] * dz[b, c0:c0 + WIDTH], b = rows[t], for
    i < COLUMNS with j0 + i < kept (outputs past dz's width are neither read nor written). xk, dz, g: 2-D float32
    C-ordered; rows: 1-D int32; dest: 1-D int64."""
    def codegen(context, builder, sig, args):
        ga, xa, da, ra, dsa = (context.make_array(sig.args[i])(context, builder, args[i]) for i in (0, 1, 2, 3, 7))
        cnt, first, col0, valid = (context.cast(builder, args[i], sig.args[i], types.int64) for i in (4, 5, 6, 8))
        n = cgutils.unpack_tuple(builder, da.shape, 2)[1]
        xw = cgutils.unpack_tuple(builder, xa.shape, 2)[1]
        gw = cgutils.unpack_tuple(builder, ga.shape, 2)[1]
        lanes = ir.Constant(ir.VectorType(_I64, LANES), list(range(LANES)))
        left = builder.sub(n, col0)
        masks = [builder.icmp_signed("<", lanes, _splat(builder, builder.sub(left, ir.Constant(_I64, LANES * v)),
                                                        ir.VectorType(_I64, LANES))) for v in range(VECTORS)]
        module = builder.module
        load = cgutils.get_or_insert_function(module, ir.FunctionType(_V, [_V.as_pointer(), _I32, _MASK, _V]),
                                              "llvm.masked.load.v16f32.p0")
        store = cgutils.get_or_insert_function(module, ir.FunctionType(ir.VoidType(), [_V, _V.as_pointer(), _I32,
                                                                                        _MASK]),
                                               "llvm.masked.store.v16f32.p0")
        fma = cgutils.get_or_insert_function(module, ir.FunctionType(_V, [_V, _V, _V]), "llvm.fma.v16f32")
        prefetch = cgutils.get_or_insert_function(module, ir.FunctionType(ir.VoidType(), [_BYTES, _I32, _I32, _I32]),
                                                  "llvm.prefetch.p0")
        zero = ir.Constant(_V, [0.0] * LANES)
        acc = [[cgutils.alloca_once_value(builder, zero) for _ in range(VECTORS)] for _ in range(COLUMNS)]

        def dz_row(t):
            return builder.gep(da.data, [builder.add(builder.mul(_int64(builder, builder.load(
                builder.gep(ra.data, [t]))), n), col0)])
        with cgutils.for_range(builder, cnt) as loop:
            ahead = builder.add(loop.index, ir.Constant(_I64, AHEAD))
            later = dz_row(builder.select(builder.icmp_signed("<", ahead, cnt), ahead, loop.index))
            for off in range(0, WIDTH + LANES, LANES):      # (a row's outputs need not start on a line)
                builder.call(prefetch, [builder.bitcast(builder.gep(later, [ir.Constant(_I64, off)]), _BYTES),
                                        ir.Constant(_I32, 0), ir.Constant(_I32, 3), ir.Constant(_I32, 1)])
            row = dz_row(loop.index)
            dv = [builder.call(load, [builder.bitcast(builder.gep(row, [ir.Constant(_I64, LANES * v)]),
                                                      _V.as_pointer()), ir.Constant(_I32, 4), masks[v], zero])
                  for v in range(VECTORS)]
            b = _int64(builder, builder.load(builder.gep(ra.data, [loop.index])))
            x_row = builder.gep(xa.data, [builder.add(builder.mul(b, xw), first)])
            for i in range(COLUMNS):
                s = _splat(builder, builder.load(builder.gep(x_row, [ir.Constant(_I64, i)])), _V)
                for v in range(VECTORS):
                    builder.store(builder.call(fma, [s, dv[v], builder.load(acc[i][v])]), acc[i][v])
        for i in range(COLUMNS):
            j = builder.add(first, ir.Constant(_I64, i))
            with builder.if_then(builder.icmp_signed("<", j, valid)):
                out = builder.gep(ga.data, [builder.add(builder.mul(builder.load(builder.gep(dsa.data, [j])), gw),
                                                        col0)])
                for v in range(VECTORS):
                    target = builder.bitcast(builder.gep(out, [ir.Constant(_I64, LANES * v)]), _V.as_pointer())
                    builder.call(store, [builder.load(acc[i][v]), target, ir.Constant(_I32, 4), masks[v]])
        return context.get_dummy_value()
    return types.void(g, xk, dz, rows, count, j0, c0, dest, kept), codegen


@njit(cache=True, nogil=True)
def order(nonzero, r0, fan_in, cols):
    """cols[:K] = the columns r0 + c of the first layer's input with nonzero[c] set, in the order the product takes
    them; returns K. A fan-in of IMAGE_SIDE**2 is taken as images: tile by tile (TILE_ROWS x TILE_COLUMNS pixels,
    the tiles in rows), so that each block of COLUMNS columns is one tile; any other width in index order."""
    width = nonzero.size
    kept = 0
    if fan_in != IMAGE_SIDE * IMAGE_SIDE:
        for c in range(width):
            if nonzero[c]:
                cols[kept] = r0 + c
                kept += 1
        return kept
    for tile_row in range(0, IMAGE_SIDE, TILE_ROWS):
        for tile_column in range(0, IMAGE_SIDE, TILE_COLUMNS):
            for i in range(TILE_ROWS):
                for j in range(TILE_COLUMNS):
                    c = (tile_row + i) * IMAGE_SIDE + tile_column + j - r0
                    if 0 <= c < width and nonzero[c]:
                        cols[kept] = r0 + c
                        kept += 1
    return kept


@njit(inline="always", cache=True, nogil=True)
def _union_rows(bits, j0, rows):
    """rows[:count] = the rows b of xk (`bits`: its words as uint32) with a nonzero in columns j0 .. j0 + COLUMNS - 1,
    in order; returns count. A float is nonzero where its bits but the sign's are (-0.0 is zero, a NaN is not): the
    COLUMNS words ORed, as LLVM vectorises it (comparing each float took twice as long)."""
    count = 0
    for b in range(bits.shape[0]):
        word = bits[b]
        union = np.uint32(0)
        for i in range(COLUMNS):
            union |= word[j0 + i]
        rows[count] = b
        count += (union & np.uint32(0x7FFFFFFF)) != 0
    return count


@njit(inline="always", cache=True, nogil=True)
def _c_ordered(a):
    """Rows of 4-byte elements, each row right after the last (a stride of a length-1 axis, or of an empty array, is
    never used, whatever NumPy reports for it)."""
    return a.size == 0 or ((a.shape[1] == 1 or a.strides[1] == 4)
                           and (a.shape[0] == 1 or a.strides[0] == 4 * a.shape[1]))


@njit(cache=True, nogil=True)
def usable(g, xk, kept, dz, dest, rows):
    """Whether product() takes these: the shapes it documents, every array C-ordered (the register blocks address
    rows by their widths), and every dest[:kept] a row of g."""
    if not (xk.shape[1] == padded(kept) and dz.shape[0] == xk.shape[0] and g.shape[1] == dz.shape[1]
            and dest.size >= xk.shape[1] and rows.size >= xk.shape[0]):
        return False
    if not (_c_ordered(g) and _c_ordered(xk) and _c_ordered(dz)):
        return False
    for k in range(kept):
        if not 0 <= dest[k] < g.shape[0]:
            return False
    return True


@njit(cache=True, nogil=True)
def product(g, xk, kept, dz, dest, rows):
    """Row dest[k] of g = xk[:, k] @ dz for k < kept: xk (rows, K) with K = padded(kept), its columns past `kept`
    finite (zeros); g (any, n), dz (rows, n), all float32 C-ordered; dest int64 (K), each dest[k] < len(g); rows
    int32 scratch (at least xk's rows long). A row where xk is zero in a whole block adds nothing, also where dz is
    not finite (the reference would give NaN there; the step's loss is NaN already). Raises ValueError where
    usable() does not hold (Numba does not check bounds: a wrong shape would read or write past an array)."""
    if not usable(g, xk, kept, dz, dest, rows):
        raise ValueError("sparse_dw.product: shapes, layouts or dest out of its rules (see its docstring)")
    n = dz.shape[1]
    bits = xk.view(np.uint32)
    for j0 in range(0, kept, COLUMNS):
        count = _union_rows(bits, j0, rows)
        for c0 in range(0, n, WIDTH):
            _block(g, xk, dz, rows, count, j0, c0, dest, kept)


@njit(inline="always", cache=True, nogil=True)
def padded(kept):
    """Columns of xk for `kept` kept columns: whole blocks of COLUMNS."""
    return (kept + COLUMNS - 1) // COLUMNS * COLUMNS
