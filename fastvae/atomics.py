"""Atomic operations and waiting for Numba kernels, as LLVM IR from Numba intrinsics.

claim(counter): counter[0]++ as one atomic read-modify-write, the value before returned (work claimed by threads:
cpu_update's items, the barrier's arrivals). load_acquire(array, i): array[i] read from memory every time (a loop
that waits on it is not hoisted). pause(): the x86 spin-wait hint. futex_wait / futex_wake: Linux's futex on the low
32 bits of an int64 element (a thread sleeps until another changes it and wakes it). libc's syscall() is called by a
symbol name that llvmlite resolves in each process (registered below), so Numba's cached code stays valid.
"""
import ctypes
import platform
import sys

from llvmlite import binding, ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

_I64 = ir.IntType(64)
# pause and the futex are x86-64 Linux's (the machines this project runs on); elsewhere FUTEX is False and
# fastvae.barrier is not used (fastvae.workers waits in Python instead), so these intrinsics are never compiled.
FUTEX = sys.platform.startswith("linux") and platform.machine() in ("x86_64", "AMD64")
_SYSCALL_SYMBOL = "fastvae_syscall"
if FUTEX:
    binding.add_symbol(_SYSCALL_SYMBOL, ctypes.cast(ctypes.CDLL(None).syscall, ctypes.c_void_p).value)
SYS_FUTEX = 202                            # x86-64
FUTEX_WAIT_PRIVATE, FUTEX_WAKE_PRIVATE = 128, 129


def _is_int64_array(a):
    return isinstance(a, types.Array) and a.dtype == types.int64 and a.ndim == 1


@intrinsic
def claim(typingctx, counter):
    """The next unclaimed item's index, counter[0]++ as one atomic read-modify-write (LLVM atomicrmw add,
    sequentially consistent; the value before is returned): items are claimed in order, each by exactly one thread.
    counter: a 1-D int64 array."""
    if not _is_int64_array(counter):
        return None

    def codegen(context, builder, sig, args):
        array = context.make_array(sig.args[0])(context, builder, args[0])
        return builder.atomic_rmw("add", array.data, ir.Constant(_I64, 1), "seq_cst")
    return types.int64(counter), codegen


@intrinsic
def load_acquire(typingctx, array, index):
    """array[index] (1-D int64) as an atomic load with acquire ordering."""
    if not _is_int64_array(array):
        return None

    def codegen(context, builder, sig, args):
        data = context.make_array(sig.args[0])(context, builder, args[0]).data
        at = context.cast(builder, args[1], sig.args[1], types.int64)
        return builder.load_atomic(builder.gep(data, [at]), "acquire", 8)
    return types.int64(array, index), codegen


@intrinsic
def pause(typingctx):
    """x86 pause: tells the core this is a spin-wait (less power, no memory-order stall when the wait ends)."""
    def codegen(context, builder, sig, args):
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), []), "llvm.x86.sse2.pause")
        builder.call(fn, [])
        return context.get_dummy_value()
    return types.void(), codegen


def _futex(context, builder, sig, args, op, value):
    data = context.make_array(sig.args[0])(context, builder, args[0]).data
    at = context.cast(builder, args[1], sig.args[1], types.int64)
    word = builder.bitcast(builder.gep(data, [at]), ir.IntType(32).as_pointer())       # the low half (x86-64)
    fnty = ir.FunctionType(_I64, [_I64], var_arg=True)
    fn = cgutils.get_or_insert_function(builder.module, fnty, _SYSCALL_SYMBOL)
    null = ir.Constant(ir.IntType(8).as_pointer(), None)
    return builder.call(fn, [ir.Constant(_I64, SYS_FUTEX), word, ir.Constant(ir.IntType(32), op), value, null, null,
                             ir.Constant(ir.IntType(32), 0)])


@intrinsic
def futex_wait(typingctx, array, index, expected):
    """Sleep while the low 32 bits of array[index] (1-D int64) equal `expected`'s, until a futex_wake on it (or a
    signal: the caller re-checks); returns at once when they differ already."""
    if not _is_int64_array(array):
        return None

    def codegen(context, builder, sig, args):
        value = builder.trunc(context.cast(builder, args[2], sig.args[2], types.int64), ir.IntType(32))
        _futex(context, builder, sig, args, FUTEX_WAIT_PRIVATE, value)
        return context.get_dummy_value()
    return types.void(array, index, expected), codegen


@intrinsic
def futex_wake(typingctx, array, index):
    """Wake every thread sleeping in futex_wait on array[index]."""
    if not _is_int64_array(array):
        return None

    def codegen(context, builder, sig, args):
        _futex(context, builder, sig, args, FUTEX_WAKE_PRIVATE, ir.Constant(ir.IntType(32), 2 ** 31 - 1))
        return context.get_dummy_value()
    return types.void(array, index), codegen


def _prefetch_codegen(for_write):
    """llvm.prefetch of element `offset` of a contiguous array: read (0) or write (1), into all cache levels (3)."""
    def codegen(context, builder, sig, args):
        data = context.make_array(sig.args[0])(context, builder, args[0]).data
        at = context.cast(builder, args[1], sig.args[1], types.int64)
        pointer = ir.IntType(8).as_pointer()
        address = builder.bitcast(builder.gep(data, [at]), pointer)
        i32 = ir.IntType(32)
        fn = builder.module.declare_intrinsic(          # named for the pointer type: llvm.prefetch.p0 (or .p0i8)
            "llvm.prefetch", [pointer], ir.FunctionType(ir.VoidType(), [pointer, i32, i32, i32]))
        builder.call(fn, [address, ir.Constant(i32, int(for_write)), ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()
    return codegen


@intrinsic
def prefetch(typingctx, array, offset):
    """Ask for the cache line holding element `offset` of the contiguous array (llvm.prefetch: read, into all cache
    levels; a hint, so it is a no-op where the target has no prefetch)."""
    if not isinstance(array, types.Array):
        return None
    return types.void(array, offset), _prefetch_codegen(False)


@intrinsic
def prefetch_for_write(typingctx, array, offset):
    """The same, for writing: x86's PREFETCHW (where the target has it; else a read prefetch or nothing) fetches the
    line in a state that lets this core store to it without asking the other cores for it again."""
    if not isinstance(array, types.Array):
        return None
    return types.void(array, offset), _prefetch_codegen(True)
