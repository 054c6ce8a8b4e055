"""bf16 pairs of float32s, 16 uint32 words at a time in vector registers: the words every bf16 pack is made of.

Reads float32 bit patterns (uint32 arrays), writes uint32 words holding two bf16s each (the first of the pair in the
low half), rounded to nearest even as amx.bf16_bits rounds (a NaN stays a quiet NaN). Two shapes of pair:
- `column_pairs`: word c = (a[c], b[c]) from two rows: a VNNI word of the tiles' B operand (amx.pack_b_rows).
- `row_pairs`: word c = (a[2c], a[2c + 1]) from one row: a row of bf16s (the A operand, and each row of a transposed
  pack before its 16 x 16 transpose, amx.pack_b_columns).
Why intrinsics: the same arithmetic as a Numba loop over 16 words was vectorised by LLVM with an alias check and a
remainder per 16 words, and the weights' two packs took 0.7 ms per step on one core of the Xeon; emitted as plain
vector IR it is a few instructions per 16 words. No CPU feature beyond what Numba's target has (LLVM picks them).
"""
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

N = 16
_I32, _I64 = ir.IntType(32), ir.IntType(64)
_V = ir.VectorType(_I32, N)


def _splat(value):
    return ir.Constant(_V, [value] * N)


def _rounded(builder, u):
    """The bf16 bits (in the low half of each lane) nearest the float32 bits u, ties to even; NaN kept quiet."""
    is_nan = builder.icmp_unsigned(">", builder.and_(u, _splat(0x7FFFFFFF)), _splat(0x7F800000))
    high = builder.lshr(u, _splat(16))
    lsb = builder.and_(high, _splat(1))
    rounded = builder.lshr(builder.add(builder.add(u, _splat(0x7FFF)), lsb), _splat(16))
    return builder.select(is_nan, builder.or_(high, _splat(0x40)), rounded)


def _pointer(context, builder, array_type, array, at):
    data = context.make_array(array_type)(context, builder, array).data
    return builder.bitcast(builder.gep(data, [at]), _V.as_pointer())


def _is_words(*arrays):
    return all(isinstance(a, types.Array) and a.dtype == types.uint32 for a in arrays)


@intrinsic
def column_pairs(typingctx, src, a_at, b_at, dst, d_at):
    """dst[d_at + c] = (bf16 of src[a_at + c]) | (bf16 of src[b_at + c]) << 16 for c < 16; src, dst 1-D uint32."""
    if not _is_words(src, dst):
        return None

    def codegen(context, builder, sig, args):
        a_at, b_at, d_at = (context.cast(builder, args[k], sig.args[k], types.int64) for k in (1, 2, 4))
        a = _rounded(builder, builder.load(_pointer(context, builder, sig.args[0], args[0], a_at), align=4))
        b = _rounded(builder, builder.load(_pointer(context, builder, sig.args[0], args[0], b_at), align=4))
        word = builder.or_(a, builder.shl(b, _splat(16)))
        builder.store(word, _pointer(context, builder, sig.args[3], args[3], d_at), align=4)
        return context.get_dummy_value()
    return types.void(src, a_at, b_at, dst, d_at), codegen


_EVEN = ir.Constant(ir.VectorType(_I32, N), list(range(0, 2 * N, 2)))
_ODD = ir.Constant(ir.VectorType(_I32, N), list(range(1, 2 * N, 2)))


@intrinsic
def row_pairs(typingctx, src, at, dst, d_at):
    """dst[d_at + c] = (bf16 of src[at + 2c]) | (bf16 of src[at + 2c + 1]) << 16 for c < 16 (32 floats in, 16
    words out); src, dst 1-D uint32."""
    if not _is_words(src, dst):
        return None

    def codegen(context, builder, sig, args):
        at, d_at = (context.cast(builder, args[k], sig.args[k], types.int64) for k in (1, 3))
        first = builder.load(_pointer(context, builder, sig.args[0], args[0], at), align=4)
        second = builder.load(_pointer(context, builder, sig.args[0], args[0], builder.add(at, _I64(N))), align=4)
        first, second = _rounded(builder, first), _rounded(builder, second)
        even = builder.shuffle_vector(first, second, _EVEN)
        odd = builder.shuffle_vector(first, second, _ODD)
        word = builder.or_(even, builder.shl(odd, _splat(16)))
        builder.store(word, _pointer(context, builder, sig.args[2], args[2], d_at), align=4)
        return context.get_dummy_value()
    return types.void(src, at, dst, d_at), codegen
