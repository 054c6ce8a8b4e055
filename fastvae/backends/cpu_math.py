"""Elementary functions for Numba loops, written as plain arithmetic so that LLVM vectorises them.

Numba's np.exp / np.expm1 / np.log1p inside a loop call libm one element at a time (ELU over 150 x 500 took
0.78 ms that way against 0.03 ms for NumPy's SIMD ufuncs). These polynomial forms use only +, *, / and
comparisons in float32 (16 lanes of AVX-512; float64 would be 8, and the loss pass took 2.8x as long in it), and
cover exactly the ranges the kernels need, to about float32's resolution (tests/test_cpu_math.py).
"""
import numpy as np
from numba import njit

@njit(inline="always", cache=True, error_model="numpy")
def expm1_nonpos_f32(x):
    """exp(x) - 1 for float32 x <= 0 in float32 arithmetic (16 SIMD lanes), relative error below ~1e-6.

    exp(x) - 1 = e(x / 32) doubled 5 times with e(2r) = e(r) (e(r) + 2): no cancellation, because e(r) is in
    (-1, 0]. The series to r**7 is exact to float32 for |r| <= 0.55, and each of the five doublings adds at most
    ~1.5 ulp. Used for ELU and the output layer's sigmoid, where float32 accuracy is all a float32 model keeps.
    """
    x = max(x, np.float32(-17.0))  # float32(exp(-17) - 1) == -1
    r = x * np.float32(0.03125)
    p = np.float32(1.0 / 5040)
    p = np.float32(1.0 / 720) + r * p
    p = np.float32(1.0 / 120) + r * p
    p = np.float32(1.0 / 24) + r * p
    p = np.float32(1.0 / 6) + r * p
    p = np.float32(0.5) + r * p
    p = np.float32(1.0) + r * p
    e = r * p
    two = np.float32(2.0)
    e = e * (e + two)
    e = e * (e + two)
    e = e * (e + two)
    e = e * (e + two)
    e = e * (e + two)
    return e


@njit(inline="always", cache=True, error_model="numpy")
def log1p_unit_f32(t):
    """log(1 + t) for float32 0 <= t <= 1 in float32 arithmetic (16 SIMD lanes): 2 atanh(s), s = t / (2 + t) <= 1/3,
    odd series to s**15 (the next term, s**17 / 17 < 1e-9, is below float32's resolution of the result)."""
    s = t / (np.float32(2.0) + t)
    s2 = s * s
    p = np.float32(1.0 / 15)
    p = np.float32(1.0 / 13) + s2 * p
    p = np.float32(1.0 / 11) + s2 * p
    p = np.float32(1.0 / 9) + s2 * p
    p = np.float32(1.0 / 7) + s2 * p
    p = np.float32(1.0 / 5) + s2 * p
    p = np.float32(1.0 / 3) + s2 * p
    p = np.float32(1.0) + s2 * p
    return np.float32(2.0) * s * p
