"""A 16 x 16 transpose of 32-bit words from Numba, in vector registers: LLVM shufflevectors (vpermt2d on AVX-512).

Reads 16 rows of 16 uint32 from src (rows `src_stride` elements apart), writes their transpose to dst (rows
`dst_stride` apart). Why: the transposed bf16 pack of a weight (amx.pack_b_columns) gathers each row of the weight
into 16-word columns; written one word at a time its stores land 64 bytes apart, and that loop was the costliest
part of cpu-bf16's update (0.6 ms per step on one core of the Xeon). Built once per use site by Numba like any
intrinsic: plain vector IR, no CPU feature beyond what Numba's target has (LLVM picks the shuffles).
"""
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

N = 16
_I32 = ir.IntType(32)
_V = ir.VectorType(_I32, N)


def _stage_masks(bit):
    """The two shufflevector masks that swap index bit `bit` between the row and the column: rows i (bit clear) and
    i' = i | 2**bit become new_i[j] = old_i[j] where j's bit is clear, else old_i'[j ^ 2**bit]; and
    new_i'[j] = old_i[j ^ 2**bit] where j's bit is clear, else old_i'[j] (operand 2's lanes are numbered 16..31)."""
    step = 1 << bit
    low = [j if not j & step else N + (j ^ step) for j in range(N)]
    high = [j ^ step if not j & step else N + j for j in range(N)]
    return ir.Constant(ir.VectorType(_I32, N), low), ir.Constant(ir.VectorType(_I32, N), high)


_MASKS = [_stage_masks(bit) for bit in range(4)]


@intrinsic
def transpose16(typingctx, src, src_at, src_stride, dst, dst_at, dst_stride):
    """dst[dst_at + j dst_stride + i] = src[src_at + i src_stride + j] for i, j < 16; src, dst 1-D uint32 arrays."""
    if not (isinstance(src, types.Array) and isinstance(dst, types.Array)
            and src.dtype == dst.dtype == types.uint32):
        return None

    def codegen(context, builder, sig, args):
        src_data = context.make_array(sig.args[0])(context, builder, args[0]).data
        dst_data = context.make_array(sig.args[3])(context, builder, args[3]).data
        offsets = [context.cast(builder, args[k], sig.args[k], types.int64) for k in (1, 2, 4, 5)]
        s_at, s_stride, d_at, d_stride = offsets
        i64 = ir.IntType(64)

        def row_pointer(data, at, stride, i):
            word = builder.add(at, builder.mul(stride, ir.Constant(i64, i)))
            return builder.bitcast(builder.gep(data, [word]), _V.as_pointer())

        rows = [builder.load(row_pointer(src_data, s_at, s_stride, i), align=4) for i in range(N)]
        for bit, (low, high) in enumerate(_MASKS):
            step = 1 << bit
            new = list(rows)
            for i in range(N):
                if i & step:
                    continue
                a, b = rows[i], rows[i | step]
                new[i] = builder.shuffle_vector(a, b, low)
                new[i | step] = builder.shuffle_vector(a, b, high)
            rows = new
        for j in range(N):
            builder.store(rows[j], row_pointer(dst_data, d_at, d_stride, j), align=4)
        return context.get_dummy_value()
    return types.void(src, src_at, src_stride, dst, dst_at, dst_stride), codegen
