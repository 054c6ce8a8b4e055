"""NumPy's own BLAS called from inside Numba kernels: a layer's product and its fused pass in one call.

Why: the cpu step runs row shards on two Python threads, and every Python-level call (np.matmul, then a Numba pass)
takes and drops the GIL; measured on the project's Xeon, the two shards of a step lost 0.2 ms to that against one
shard beside a thread that never needs the GIL. Calling sgemm from the kernel makes each layer one GIL-free call.

How: NumPy's wheels ship OpenBLAS built for 64-bit integers with prefixed, suffixed names (`scipy_cblas_sgemm64_`);
threadpoolctl (a core dependency) tells which library NumPy loaded. Its address is registered with LLVM under a fixed
name (`fastvae_cblas_sgemm64`), and the kernels call that name: the compiled code refers to the symbol, not to an
address, so Numba's on-disk cache stays valid from one process to the next. Where NumPy's BLAS has no such symbol
(a NumPy built against MKL, Accelerate or a 32-bit-integer BLAS), AVAILABLE is False and fastvae.backends.cpu calls
np.matmul instead, with the same passes around it.
"""
import ctypes

from llvmlite import binding as llvm
from numba import njit, types

SYMBOL = "fastvae_cblas_sgemm64"
_CANDIDATES = ("scipy_cblas_sgemm64_",)          # 64-bit integers (ILP64), as the kernels' signature says
ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112       # CBLAS enum values


def _numpy_sgemm():
    """The address of NumPy's BLAS's ILP64 cblas_sgemm, or None."""
    import numpy  # noqa: F401  (loads its BLAS, so that threadpoolctl can see it)
    from threadpoolctl import threadpool_info
    for lib in threadpool_info():
        if lib.get("user_api") != "blas" or "numpy" not in lib.get("filepath", ""):
            continue
        try:
            handle = ctypes.CDLL(lib["filepath"])
        except OSError:
            continue
        for name in _CANDIDATES:
            fn = getattr(handle, name, None)
            if fn is not None:
                return ctypes.cast(fn, ctypes.c_void_p).value
    return None


_address = _numpy_sgemm()
AVAILABLE = _address is not None
if AVAILABLE:
    llvm.add_symbol(SYMBOL, _address)

_i32, _i64, _f32, _ptr = types.int32, types.int64, types.float32, types.uintp
# void cblas_sgemm(order, trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc) with 64-bit integers
_sgemm = types.ExternalFunction(SYMBOL, types.void(_i32, _i32, _i32, _i64, _i64, _i64, _f32, _ptr, _i64, _ptr, _i64,
                                                  _f32, _ptr, _i64))


@njit(inline="always", cache=True, nogil=True)
def gemm(out, a, transpose_a, b, transpose_b):
    """out = op(a) @ op(b) in float32, op transposing when asked; row-major arrays whose rows are contiguous (any
    row stride). Only AVAILABLE makes the symbol exist: calling this without it is a programming error."""
    if a.strides[1] != 4 or b.strides[1] != 4 or out.strides[1] != 4:
        raise ValueError("gemm needs float32 arrays with contiguous rows")
    m, n = out.shape
    k = a.shape[0] if transpose_a else a.shape[1]
    _sgemm(ROW_MAJOR, TRANS if transpose_a else NO_TRANS, TRANS if transpose_b else NO_TRANS, m, n, k,
           1.0, a.ctypes.data, a.strides[0] // 4, b.ctypes.data, b.strides[0] // 4,
           0.0, out.ctypes.data, out.strides[0] // 4)
