"""NumPy's own BLAS called from inside Numba kernels: a layer's product and its fused pass in one call.

Why: the cpu step runs row shards on two Python threads, and every Python-level call (np.matmul, then a Numba pass)
takes and drops the GIL; measured on the project's Xeon, the two shards of a step lost 0.2 ms to that against one
shard beside a thread that never needs the GIL. Calling sgemm from the kernel makes each layer one GIL-free call.

How: the kernels call a fixed name, `fastvae_cblas_sgemm64`, with 64-bit integers; its address is registered with
LLVM here, at import. The compiled code refers to the name, not to an address, so Numba's on-disk cache stays valid
from one process to the next, whichever function the name stands for:
- a BLAS with 64-bit integers (ILP64: NumPy 2's wheels' `scipy_cblas_sgemm64_`, NumPy 1.26's `cblas_sgemm64_`,
  MKL's `cblas_sgemm_64`): that function itself (KIND "ilp64");
- a BLAS with 32-bit integers (LP64: conda-forge's and Debian's NumPy, MKL's `cblas_sgemm`): a C-callable function
  compiled here that passes the sizes on as 32-bit integers (KIND "lp64"; every size of a step's products is far
  below 2**31);
- none found: fastvae's own loops (KIND "loops": correct; the seed's step 1.8x slower on the EPYC). AVAILABLE is
  then False and fastvae.backends.cpu calls np.matmul (NumPy's BLAS, whatever it is) for the layers' products, which
  leaves only the update's weight gradients to the loops; NOTE says so in one line (the model's notify hears it).
The libraries looked in: NumPy's BLAS first (threadpoolctl, a core dependency, lists what the process loaded; NumPy's
wheels keep theirs under numpy.libs), then any other BLAS loaded. FASTVAE_BLAS, where set, names the one library to
use instead (a path: one that does not load or has no sgemm is a UserError at import), or "none" for the loops: the
tests run the kernels through each kind so.

Before 2026-12-07 the name was registered only for `scipy_cblas_sgemm64_`; elsewhere (NumPy 1.26, which `pip install
matplotlib==3.7.5` brings back) the update's weight gradients called address 0 and the interpreter died without a
word (a packaging trial).
"""
import ctypes
import os

import numpy as np
from llvmlite import binding as llvm
from numba import carray, cfunc, njit, types

from ..errors import UserError

SYMBOL = "fastvae_cblas_sgemm64"
LP64_SYMBOL = "fastvae_cblas_sgemm32"            # the 32-bit-integer function the shim calls (KIND "lp64")
ENV = "FASTVAE_BLAS"
# the names tried in each library, in order, each with whether its integers are 64-bit
CANDIDATES = (("scipy_cblas_sgemm64_", True), ("cblas_sgemm64_", True), ("cblas_sgemm_64", True),
              ("scipy_cblas_sgemm", False), ("cblas_sgemm", False))
ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112       # CBLAS enum values

_i32, _i64, _f32, _ptr = types.int32, types.int64, types.float32, types.uintp
# void cblas_sgemm(order, trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc)
_ILP64_SIGNATURE = types.void(_i32, _i32, _i32, _i64, _i64, _i64, _f32, _ptr, _i64, _ptr, _i64, _f32, _ptr, _i64)
_FLOATS = types.CPointer(types.float32)         # (the C functions below take their pointers typed)
_LP64_SIGNATURE = types.void(_i32, _i32, _i32, _i32, _i32, _i32, _f32, _FLOATS, _i32, _FLOATS, _i32, _f32, _FLOATS,
                             _i32)
_sgemm = types.ExternalFunction(SYMBOL, _ILP64_SIGNATURE)
_sgemm_lp64 = types.ExternalFunction(LP64_SYMBOL, _LP64_SIGNATURE)


def libraries():
    """The paths of the BLAS libraries to look in, in order (see the module's docstring)."""
    chosen = os.environ.get(ENV)
    if chosen:
        return [] if chosen == "none" else [chosen]
    from threadpoolctl import threadpool_info      # (after `import numpy` above loaded NumPy's BLAS)
    paths = [lib["filepath"] for lib in threadpool_info() if lib.get("user_api") == "blas" and lib.get("filepath")]
    return sorted(paths, key=lambda path: "numpy" not in path)     # (a stable sort: NumPy's first)


def find(paths):
    """(address, name, path, 64-bit integers) of the first sgemm of CANDIDATES in the libraries at `paths`, or None."""
    for path in paths:
        try:
            handle = ctypes.CDLL(path)
        except OSError:
            continue
        for name, ilp64 in CANDIDATES:
            fn = getattr(handle, name, None)
            if fn is not None:
                return ctypes.cast(fn, ctypes.c_void_p).value, name, path, ilp64 or _openblas_ilp64(handle)
    return None


def _openblas_ilp64(handle):
    """Whether the library is an OpenBLAS built with 64-bit integers under the plain names (Debian's
    libopenblas64.so.0 keeps `cblas_sgemm`: a review's reading), as its own configuration string says."""
    config = getattr(handle, "openblas_get_config", None)
    if config is None:
        return False
    config.restype = ctypes.c_char_p
    return b"USE64BITINT" in (config() or b"")


# The shim and the loops, compiled only where they are used (the C signature: the kernels' call, pointers typed)
_C_SIGNATURE = types.void(_i32, _i32, _i32, _i64, _i64, _i64, _f32, _FLOATS, _i64, _FLOATS, _i64, _f32, _FLOATS, _i64)


def _lp64(order, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
    _sgemm_lp64(order, trans_a, trans_b, np.int32(m), np.int32(n), np.int32(k), alpha, a, np.int32(lda), b,
                np.int32(ldb), beta, c, np.int32(ldc))


def _loops(order, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
    """C = alpha op(A) op(B) in float32 for row-major operands and beta 0 (what gemm below asks for); the inner
    loop runs along B's contiguous rows where B is not transposed, else along A's and B's rows (a dot product)."""
    A = carray(a, (k if trans_a == TRANS else m, lda))
    B = carray(b, (n if trans_b == TRANS else k, ldb))
    C = carray(c, (m, ldc))
    for i in range(m):
        for j in range(n):
            C[i, j] = 0.0
    if trans_b == TRANS:
        for i in range(m):
            for j in range(n):
                s = np.float32(0.0)
                for p in range(k):
                    s += (A[p, i] if trans_a == TRANS else A[i, p]) * B[j, p]
                C[i, j] = alpha * s
    elif trans_a == TRANS:
        for p in range(k):
            for i in range(m):
                x = alpha * A[p, i]
                for j in range(n):
                    C[i, j] += x * B[p, j]
    else:
        for i in range(m):
            for p in range(k):
                x = alpha * A[i, p]
                for j in range(n):
                    C[i, j] += x * B[p, j]


def _register():
    """Registers SYMBOL (see the module's docstring); returns (KIND, SOURCE: what the products call, in words, NOTE:
    the line for the user where that is the loops, else None)."""
    looked = libraries()
    found = find(looked)
    chosen = os.environ.get(ENV)
    if chosen and chosen != "none" and found is None:     # the user's own choice: said wrong, not passed over
        try:
            ctypes.CDLL(chosen)
            problem = f"has none of the functions {', '.join(name for name, _ in CANDIDATES)}"
        except OSError as e:
            problem = f"cannot be loaded ({' '.join(str(e).split())})"
        raise UserError(f"{ENV}={chosen} {problem}; name a BLAS library's path (an OpenBLAS's libopenblas.so, say), "
                        f"or {ENV}=none for fastvae's own loops, or unset it")
    if found is not None and found[3]:
        llvm.add_symbol(SYMBOL, found[0])
        return "ilp64", f"{found[1]} in {found[2]}", None
    if found is not None:
        llvm.add_symbol(LP64_SYMBOL, found[0])
        _KEPT.append(cfunc(_C_SIGNATURE, cache=True)(_lp64))
        llvm.add_symbol(SYMBOL, _KEPT[-1].address)
        return "lp64", f"{found[1]} in {found[2]} (32-bit integers)", None
    _KEPT.append(cfunc(_C_SIGNATURE, cache=True)(_loops))
    llvm.add_symbol(SYMBOL, _KEPT[-1].address)
    where = f"looked in {', '.join(looked)}" if looked else f"{ENV}=none" if os.environ.get(ENV) else "none loaded"
    return "loops", f"fastvae's own loops (no cblas_sgemm: {where})", (
        f"fastvae: no BLAS function that fastvae's kernels can call ({where}): the layers' products run in "
        "np.matmul and the update's weight gradients in fastvae's own loops, slower; set "
        f"{ENV} to a BLAS library's path (an OpenBLAS's libopenblas.so, say) to use it")


_KEPT: list = []            # the compiled shim or loops: their code lives as long as they do
KIND, SOURCE, NOTE = _register()
AVAILABLE = KIND != "loops"     # products in a BLAS, called from the kernels (else cpu calls np.matmul: see above)


@njit(inline="always", cache=True, nogil=True)
def gemm(out, a, transpose_a, b, transpose_b):
    """out = op(a) @ op(b) in float32, op transposing when asked; row-major arrays whose rows are contiguous (any
    row stride), through SYMBOL (a BLAS's sgemm, or the loops: KIND)."""
    if a.strides[1] != 4 or b.strides[1] != 4 or out.strides[1] != 4:
        raise ValueError("gemm needs float32 arrays with contiguous rows")
    m, n = out.shape
    k = a.shape[0] if transpose_a else a.shape[1]
    _sgemm(ROW_MAJOR, TRANS if transpose_a else NO_TRANS, TRANS if transpose_b else NO_TRANS, m, n, k,
           1.0, a.ctypes.data, a.strides[0] // 4, b.ctypes.data, b.strides[0] // 4,
           0.0, out.ctypes.data, out.strides[0] // 4)
