"""The input gradient dinp = dout @ w.T in fp32, 16 rows of the batch per vector, the weight read where it lies.

Reads dout (m, k) and w (n, k) float32, C-ordered; writes dinp (m, n). Why not OpenBLAS: its sgemm with a transposed
operand runs a shard's input gradients (76 rows) at 105-115 GFLOP/s on one core of the project's Xeon, against
130-145 for the untransposed forward products of the same shapes. Here each vector holds 16 rows of dout.T (dout is
transposed into `a_t` first, 16 x 16 words at a time in registers), each term broadcasts one weight w[j, c]: a
register block of 48 rows x 9 weight rows (27 accumulators; 32 x 14 and 16 x 28 for the rows left) runs down k with
one FMA per 16 products, and the result, transposed in `out_t`, is transposed into dinp. The weight is read in place,
its rows streamed in order (no packing: a weight is packed by OpenBLAS in every call, or would have to be rewritten
by every update). Measured on one core of the Xeon (2026-12-06, 76 rows, one thread): 500 x 500 in 245 against
OpenBLAS's 327 us, 784 -> 500 398 against 555; the untransposed product this way was no faster than OpenBLAS (the
broadcasts walk down the weight's columns), so the forward products stay there.

Arithmetic: fp32 multiply-adds fused (one rounding per term), summed over k in order for each element: within the
fp32 tolerance of the float64 reference (tests/tolerances.py); not OpenBLAS's order, so not its bits, and its error
grows with k a little faster than OpenBLAS's blocked sums (measured by a fresh user's trial, relative to the largest
output: 76 x 500 -> 500 max 7.8e-7 against 3.9e-7, 64 x 4096 -> 4096 2.4e-6 against 5.2e-7). Plain LLVM vector
IR (<16 x float>, llvm.fma): it compiles for any x86-64 target Numba has (LLVM splits the vectors where AVX-512 is
missing), and Numba's cache keys the code by CPU.
"""
import weakref

import numpy as np
from llvmlite import binding as llvm
from llvmlite import ir
from numba import carray, cfunc, njit, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from .transpose import transpose16

LANES = 16
# Where it is used (usable()): fewer rows waste most of a 16-row vector; a narrower output or a shorter k is as fast in
# OpenBLAS (measured: 76 rows, 40 -> 500 in 33 us either way).
MIN_ROWS = 32
MIN_WIDTH = 64
NO_SCRATCH = np.empty((0, 0), np.float32)

_F32 = ir.FloatType()
_V = ir.VectorType(_F32, LANES)
_I32 = ir.IntType(32)
_I64 = ir.IntType(64)


def _register_block(vectors, columns):
    """An intrinsic block(out_t, a_t, w, r0, j0, nj): out_t[j0 + c, r0:r0 + 16 vectors] = sum over k of
    a_t[k, r0:...] * w[j0 + c, k], for c < nj <= columns (rows of w past nj are not read: the last valid one is read
    in their place, and the result is not stored). out_t, a_t, w: 2-D float32 C-ordered."""
    @intrinsic
    def block(typingctx, out_t, a_t, w, r0, j0, nj):
        def codegen(context, builder, sig, args):
            o = context.make_array(sig.args[0])(context, builder, args[0])
            a = context.make_array(sig.args[1])(context, builder, args[1])
            b = context.make_array(sig.args[2])(context, builder, args[2])
            first, j_first, count = (context.cast(builder, args[i], sig.args[i], types.int64) for i in (3, 4, 5))
            k, a_width = cgutils.unpack_tuple(builder, a.shape, 2)
            o_width = cgutils.unpack_tuple(builder, o.shape, 2)[1]
            w_width = cgutils.unpack_tuple(builder, b.shape, 2)[1]
            last = builder.sub(count, ir.Constant(_I64, 1))
            w_rows = []
            for c in range(columns):
                j = builder.select(builder.icmp_signed("<", ir.Constant(_I64, c), count), ir.Constant(_I64, c), last)
                w_rows.append(builder.gep(b.data, [builder.mul(builder.add(j_first, j), w_width)]))
            zero = ir.Constant(_V, [0.0] * LANES)
            acc = [[cgutils.alloca_once_value(builder, zero) for _ in range(vectors)] for _ in range(columns)]
            fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_V, [_V, _V, _V]), "llvm.fma.v16f32")
            splat = ir.Constant(ir.VectorType(_I32, LANES), [0] * LANES)
            a_first = builder.gep(a.data, [first])
            with cgutils.for_range(builder, k) as loop:
                a_row = builder.gep(a_first, [builder.mul(loop.index, a_width)])
                av = [builder.load(builder.bitcast(builder.gep(a_row, [ir.Constant(_I64, LANES * v)]), _V.as_pointer()),
                                   align=4) for v in range(vectors)]
                for c in range(columns):
                    s = builder.load(builder.gep(w_rows[c], [loop.index]), align=4)
                    s = builder.insert_element(ir.Constant(_V, ir.Undefined), s, ir.Constant(_I32, 0))
                    s = builder.shuffle_vector(s, ir.Constant(_V, ir.Undefined), splat)
                    for v in range(vectors):
                        builder.store(builder.call(fma, [av[v], s, builder.load(acc[c][v])]), acc[c][v])
            for c in range(columns):
                with builder.if_then(builder.icmp_signed("<", ir.Constant(_I64, c), count)):
                    row = builder.gep(o.data, [builder.add(builder.mul(builder.add(j_first, ir.Constant(_I64, c)),
                                                                       o_width), first)])
                    for v in range(vectors):
                        target = builder.bitcast(builder.gep(row, [ir.Constant(_I64, LANES * v)]), _V.as_pointer())
                        builder.store(builder.load(acc[c][v]), target, align=4)
            return context.get_dummy_value()
        return types.void(out_t, a_t, w, r0, j0, nj), codegen
    return block


_block3x9 = _register_block(3, 9)
_block2x14 = _register_block(2, 14)
_block1x28 = _register_block(1, 28)


def scratch_shapes(m, n, k):
    """(a_t, out_t) shapes for an (m, k) @ (k, n) input gradient: rows padded to whole vectors."""
    padded = (m + LANES - 1) // LANES * LANES
    return (k, padded), (n, padded)


@njit(cache=True, nogil=True)
def usable(dinp, dout, w, a_t, out_t):
    """Whether product() takes these (else the caller's sgemm): large enough (MIN_ROWS, MIN_WIDTH), C-ordered, and
    scratch of scratch_shapes()."""
    m, k = dout.shape
    n = w.shape[0]
    padded = (m + LANES - 1) // LANES * LANES
    return (m >= MIN_ROWS and n >= MIN_WIDTH and k >= MIN_WIDTH and w.shape[1] == k and dinp.shape[0] == m
            and dinp.shape[1] == n and a_t.shape[0] == k and a_t.shape[1] == padded and out_t.shape[0] == n
            and out_t.shape[1] == padded and dout.strides[1] == 4 and dout.strides[0] == 4 * k
            and dinp.strides[1] == 4 and dinp.strides[0] == 4 * n and w.strides[1] == 4 and w.strides[0] == 4 * k)


@njit(cache=True, nogil=True)
def product(dinp, dout, w, a_t, out_t):
    """dinp (m, n) = dout (m, k) @ w.T for w (n, k); usable() must hold. a_t's padding rows (columns m.. of each row)
    must be finite (scratch() makes them zeros and nothing writes them): their results are computed and dropped."""
    _transpose(a_t, dout)
    padded = a_t.shape[1]
    n = w.shape[0]
    r = 0
    while r < padded:
        left = padded - r
        if left >= 3 * LANES:
            for j in range(0, n, 9):
                _block3x9(out_t, a_t, w, r, j, min(9, n - j))
            r += 3 * LANES
        elif left >= 2 * LANES:
            for j in range(0, n, 14):
                _block2x14(out_t, a_t, w, r, j, min(14, n - j))
            r += 2 * LANES
        else:
            for j in range(0, n, 28):
                _block1x28(out_t, a_t, w, r, j, min(28, n - j))
            r += LANES
    _transpose_back(dinp, out_t)


def product_where_usable(dinp, dout, w, a_t, out_t):
    """Numba only: product() and True where every array is C-ordered float32 by its type and usable() holds, else
    False (nothing done: the caller's sgemm then). Decided by type when Numba compiles the caller, so a caller that
    also takes padded rows or other dtypes (cpu_blas.gemm does, or says why not) compiles for them."""
    raise NotImplementedError("for Numba-compiled code")


@overload(product_where_usable)
def _product_where_usable(dinp, dout, w, a_t, out_t):
    if all(isinstance(t, types.Array) and t.layout == "C" and t.dtype == types.float32 and t.ndim == 2
           for t in (dinp, dout, w, a_t, out_t)):
        def impl(dinp, dout, w, a_t, out_t):
            if usable(dinp, dout, w, a_t, out_t):
                _product_by_name(dinp.ctypes.data, dout.ctypes.data, w.ctypes.data, a_t.ctypes.data,
                                 out_t.ctypes.data, dout.shape[0], dout.shape[1], w.shape[0], a_t.shape[1])
                return True
            return False
        return impl
    return lambda dinp, dout, w, a_t, out_t: False


@njit(inline="always", cache=True, nogil=True)
def _transpose(dst, src):
    """dst[:, :m] = src.T for src (m, k) C-ordered, dst (k, padded) C-ordered; dst[:, m:] untouched."""
    _transpose_words(dst.reshape(-1).view(np.uint32), dst.shape[1], src.reshape(-1).view(np.uint32), src.shape[1],
                     src.shape[0], src.shape[1])


@njit(inline="always", cache=True, nogil=True)
def _transpose_back(dst, src):
    """dst (m, n) = src[:, :m].T for src (n, padded) C-ordered."""
    _transpose_words(dst.reshape(-1).view(np.uint32), dst.shape[1], src.reshape(-1).view(np.uint32), src.shape[1],
                     dst.shape[1], dst.shape[0])


@njit(inline="always", cache=True, nogil=True)
def _transpose_words(d, d_width, s, s_width, rows, cols):
    """d[c * d_width + r] = s[r * s_width + c] for r < rows, c < cols: whole 16 x 16 squares through transpose16,
    the edges word by word."""
    r = 0
    while r + LANES <= rows:
        c = 0
        while c + LANES <= cols:
            transpose16(s, r * s_width + c, s_width, d, c * d_width + r, d_width)
            c += LANES
        for cc in range(c, cols):
            for rr in range(r, r + LANES):
                d[cc * d_width + rr] = s[rr * s_width + cc]
        r += LANES
    for rr in range(r, rows):
        for cc in range(cols):
            d[cc * d_width + rr] = s[rr * s_width + cc]


# product() compiled once as a C function, which the kernels call by a symbol name (as cpu_blas calls sgemm): called
# as a Numba function instead, LLVM inlined it into every variant of every kernel that calls it and optimised it
# again there: a fresh process's first step took 8.2 s to compile, against 1.9 s at import + 5.6 s now (the Xeon).
_FLOATS = types.CPointer(types.float32)
_SIZE = types.int64


@cfunc(types.void(_FLOATS, _FLOATS, _FLOATS, _FLOATS, _FLOATS, _SIZE, _SIZE, _SIZE, _SIZE), cache=True)
def _product_c(dinp, dout, w, a_t, out_t, m, k, n, padded):
    product(carray(dinp, (m, n)), carray(dout, (m, k)), carray(w, (n, k)), carray(a_t, (k, padded)),
            carray(out_t, (n, padded)))


SYMBOL = "fastvae_dinp_product"
llvm.add_symbol(SYMBOL, _product_c.address)
_product_by_name = types.ExternalFunction(SYMBOL, types.void(*(types.uintp,) * 5, *(types.int64,) * 4))


def product_from_python(dinp, dout, w):
    """product() called from Python with scratch()'s pair where usable() holds: True; else False, nothing done."""
    a_t, out_t = scratch(dinp, dout, w)
    if a_t.size and usable(dinp, dout, w, a_t, out_t):
        product(dinp, dout, w, a_t, out_t)
        return True
    return False


_SCRATCH: dict = {}


def scratch(dinp, dout, w):
    """(a_t, out_t) for product(dinp, dout, w) (zeros where first made), or (NO_SCRATCH, NO_SCRATCH) where it would
    not be used (usable()'s size rules). One pair per output array (its address and shape), so the row shards of a
    step, which run at once, never share one, and a captured shard keeps its own (fastvae.backends.capture records
    them as arguments); two fits at once have their own workspaces, so their own pairs. A pair is dropped when the
    array holding dinp's memory is (a workspace that goes away takes its scratch with it)."""
    m, k = dout.shape
    n = w.shape[0]
    if m < MIN_ROWS or n < MIN_WIDTH or k < MIN_WIDTH:
        return NO_SCRATCH, NO_SCRATCH
    key = (dinp.ctypes.data, dinp.shape, k)
    pair = _SCRATCH.get(key)
    if pair is None:
        a_shape, out_shape = scratch_shapes(m, n, k)
        pair = _SCRATCH[key] = (np.zeros(a_shape, np.float32), np.zeros(out_shape, np.float32))
        owner = dinp if dinp.base is None else dinp.base
        weakref.finalize(owner, _SCRATCH.pop, key, None)
    return pair
