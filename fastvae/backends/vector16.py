"""Elementwise passes 16 float32 lanes at a time, as explicit LLVM vector IR from Numba intrinsics.

Reads and writes float32 rows in place. Why: LLVM vectorises Numba's loops 8 lanes wide on this project's CPUs (it
prefers 256-bit vectors on Intel's server cores), and the passes' polynomials are a chain of dependent operations;
written over <16 x float> they run 16 lanes per instruction (AVX-512). The arithmetic is the same operations in
the same order as cpu_math's scalar functions (no fast-math, no contraction into FMAs), so each lane's result is
the same bits as the scalar code's.
"""
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, overload

N = 16
_F32 = ir.FloatType()
_V = ir.VectorType(_F32, N)


def _splat(value):
    return ir.Constant(_V, [float(value)] * N)


def _f32(value):
    """value rounded to float32, as Numba's np.float32(constant) is."""
    import numpy as np
    return float(np.float32(value))


def expm1_nonpos(builder, x):
    """cpu_math.expm1_nonpos_f32 on 16 lanes (the same operations, in the same order)."""
    x = builder.select(builder.fcmp_ordered("<", x, _splat(-17.0)), _splat(-17.0), x)   # max(x, -17): NaN stays
    r = builder.fmul(x, _splat(0.03125))
    p = _splat(_f32(1.0 / 5040))
    for c in (1.0 / 720, 1.0 / 120, 1.0 / 24, 1.0 / 6, 0.5, 1.0):
        p = builder.fadd(_splat(_f32(c)), builder.fmul(r, p))
    e = builder.fmul(r, p)
    for _ in range(5):
        e = builder.fmul(e, builder.fadd(e, _splat(2.0)))
    return e


def unit_stride_body(n, arrays):
    """How many of n columns (a multiple of 16) the vector code takes: all whole groups of 16 when every array of the
    tuple `arrays` is C-ordered (its rows have unit stride), else none (the caller's scalar loop does them all).
    Decided when Numba compiles the caller, from the arrays' types."""
    raise NotImplementedError("for Numba-compiled code")


@overload(unit_stride_body)
def _unit_stride_body(n, arrays):
    if all(isinstance(t, types.Array) and t.layout == "C" for t in arrays.types):
        return lambda n, arrays: n - n % N
    return lambda n, arrays: 0


def _unit_stride(*array_types):
    return all(t.layout == "C" for t in array_types)


def _row_pointer(context, builder, array_type, array, at):
    data = context.make_array(array_type)(context, builder, array).data
    return builder.bitcast(builder.gep(data, [at]), _V.as_pointer())


@intrinsic
def bias_elu16(typingctx, row, b, at):
    """row[at:at+16] = elu(row[at:at+16] + b[at:at+16]) (float32 1-D arrays; C-ordered, else nothing is done: see
    unit_stride_body)."""
    def codegen(context, builder, sig, args):
        if not _unit_stride(*sig.args[:2]):
            return context.get_dummy_value()
        at = context.cast(builder, args[2], sig.args[2], types.int64)
        rp = _row_pointer(context, builder, sig.args[0], args[0], at)
        bp = _row_pointer(context, builder, sig.args[1], args[1], at)
        z = builder.fadd(builder.load(rp, align=4), builder.load(bp, align=4))
        y = builder.select(builder.fcmp_ordered(">", z, _splat(0.0)), z, expm1_nonpos(builder, z))
        builder.store(y, rp, align=4)
        return context.get_dummy_value()
    return types.void(row, b, at), codegen


def log1p_unit(builder, t):
    """cpu_math.log1p_unit_f32 on 16 lanes (the same operations, in the same order)."""
    s = builder.fdiv(t, builder.fadd(_splat(2.0), t))
    s2 = builder.fmul(s, s)
    p = _splat(_f32(1.0 / 15))
    for c in (1.0 / 13, 1.0 / 11, 1.0 / 9, 1.0 / 7, 1.0 / 5, 1.0 / 3, 1.0):
        p = builder.fadd(_splat(_f32(c)), builder.fmul(s2, p))
    return builder.fmul(builder.fmul(_splat(2.0), s), p)


def _fabs(builder, x):
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_V, [_V]), "llvm.fabs.v16f32")
    return builder.call(fn, [x])


@intrinsic
def cross_entropy_rows16(typingctx, d, b, x, acc, body):
    """cpu._bias_loss_dlogits' cross-entropy body for one row, 16 columns at a time, columns 0 .. body - 1 (body a
    multiple of 16): l = d + b, d = sigmoid(l) - x, acc[lane] += each column's loss term (column j in lane j % 16,
    in column order). d, b, x, acc: 1-D float32 (acc 16 long, read and written), C-ordered, else nothing is done (see
    unit_stride_body)."""
    def codegen(context, builder, sig, args):
        if not _unit_stride(*sig.args[:4]):
            return context.get_dummy_value()
        count = builder.udiv(context.cast(builder, args[4], sig.args[4], types.int64), ir.Constant(ir.IntType(64), N))
        acc_p = _row_pointer(context, builder, sig.args[3], args[3], ir.Constant(ir.IntType(64), 0))
        total = cgutils.alloca_once_value(builder, builder.load(acc_p, align=4))
        one, zero = _splat(1.0), _splat(0.0)
        with cgutils.for_range(builder, count) as loop:
            at = builder.mul(loop.index, ir.Constant(ir.IntType(64), N))
            dp = _row_pointer(context, builder, sig.args[0], args[0], at)
            l = builder.fadd(builder.load(dp, align=4),
                             builder.load(_row_pointer(context, builder, sig.args[1], args[1], at), align=4))
            t = builder.load(_row_pointer(context, builder, sig.args[2], args[2], at), align=4)
            e = builder.fadd(one, expm1_nonpos(builder, builder.fneg(_fabs(builder, l))))
            s = builder.fdiv(one, builder.fadd(one, e))
            es = builder.fmul(e, s)
            p = builder.select(builder.fcmp_ordered(">=", l, zero), s, es)
            builder.store(builder.fsub(p, t), dp, align=4)
            relu = builder.select(builder.fcmp_ordered(">", zero, l), zero, l)      # max(l, 0): NaN stays
            term = builder.fadd(builder.fsub(relu, builder.fmul(l, t)), log1p_unit(builder, e))
            builder.store(builder.fadd(builder.load(total), term), total)
        builder.store(builder.load(total), acc_p, align=4)
        return context.get_dummy_value()
    return types.void(d, b, x, acc, body), codegen
