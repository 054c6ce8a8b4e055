"""Philox4x32-10 and the Box-Muller transform for Numba kernels; the same stream as fastvae.rng (the spec)."""
import math

import numpy as np
from numba import njit

from ..rng import PHILOX_M0, PHILOX_M1, PHILOX_W0, PHILOX_W1

_MASK32 = np.uint64(0xFFFFFFFF)


@njit(inline="always", cache=True)
def philox4x32_10(c0, c1, c2, c3, k0, k1):
    """One Philox block: four uint32 counter words and two key words (held in uint64) to four uint32 words."""
    for _ in range(10):
        p0 = np.uint64(PHILOX_M0) * c0
        p1 = np.uint64(PHILOX_M1) * c2
        c0, c1, c2, c3 = (p1 >> np.uint64(32)) ^ c1 ^ k0, p1 & _MASK32, (p0 >> np.uint64(32)) ^ c3 ^ k1, p0 & _MASK32
        k0 = (k0 + np.uint64(PHILOX_W0)) & _MASK32
        k1 = (k1 + np.uint64(PHILOX_W1)) & _MASK32
    return c0, c1, c2, c3


@njit(inline="always", cache=True)
def _uniform_open(word):
    return (np.float64(word) + 0.5) * (1.0 / 4294967296.0)


@njit(inline="always", cache=True)
def normals_block(block, k0, k1, s_lo, s_hi, stream):
    """The four normals of Philox block `block` (elements 4 block .. 4 block + 3 of the stream), in float64."""
    w0, w1, w2, w3 = philox4x32_10(np.uint64(block), s_lo, s_hi, np.uint64(stream), k0, k1)
    two_pi = 2.0 * math.pi
    r0 = math.sqrt(-2.0 * math.log(_uniform_open(w0)))
    a0 = two_pi * _uniform_open(w1)
    r1 = math.sqrt(-2.0 * math.log(_uniform_open(w2)))
    a1 = two_pi * _uniform_open(w3)
    return r0 * math.cos(a0), r0 * math.sin(a0), r1 * math.cos(a1), r1 * math.sin(a1)


@njit(inline="always", cache=True)
def stream_keys(seed, step):
    """Philox key words of `seed` and counter words of `step`, as normals_block takes them."""
    return (np.uint64(seed) & _MASK32, np.uint64(seed) >> np.uint64(32),
            np.uint64(step) & _MASK32, np.uint64(step) >> np.uint64(32))


@njit(cache=True, nogil=True)
def fill_normals(eps, seed, stream, step, first_row):
    """eps (rows, cols) float32 = rng.normals(seed, stream, step, rows, cols, first_row): element i = r * cols + c
    of eps is element first_row * cols + i of the step's draw."""
    flat = eps.reshape(-1)
    n = flat.size
    first = first_row * eps.shape[1]
    k0, k1, s_lo, s_hi = stream_keys(seed, step)
    for block in range(first // 4, (first + n + 3) // 4):
        four = normals_block(block, k0, k1, s_lo, s_hi, stream)
        for lane in range(4):
            i = 4 * block + lane - first
            if 0 <= i < n:
                flat[i] = four[lane]
