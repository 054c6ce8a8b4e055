"""Counter-based noise: Philox4x32-10 and the fixed transform to standard normals.

Every random number in training is a pure function of (seed, stream, step, index), so every backend draws the
same noise, a resumed run draws what an uninterrupted one would have, and tests can recompute it.  This NumPy
version is the specification; the Numba and CUDA versions are tested against it and against the Random123
known-answer vectors.
"""
import numpy as np

PHILOX_M0 = 0xD2511F53
PHILOX_M1 = 0xCD9E8D57
PHILOX_W0 = 0x9E3779B9
PHILOX_W1 = 0xBB67AE85
_MASK32 = 0xFFFFFFFF

# Streams keep the uses of one seed apart: the training noise of step t never equals the evaluation noise.
STREAM_TRAIN = 0
STREAM_EVAL = 1
STREAM_SAMPLE = 2
STREAM_IWAE = 3       # fastvae.evaluate's importance samples: step = image index, row = sample index


def philox4x32_10(counter, key):
    """Philox4x32 with 10 rounds. counter: uint32 (..., 4); key: uint32 (..., 2). Returns uint32 (..., 4)."""
    c = [np.asarray(counter, dtype=np.uint64)[..., i] for i in range(4)]
    k0 = np.asarray(key, dtype=np.uint64)[..., 0].copy()
    k1 = np.asarray(key, dtype=np.uint64)[..., 1].copy()
    for _ in range(10):
        p0 = np.uint64(PHILOX_M0) * c[0]
        p1 = np.uint64(PHILOX_M1) * c[2]
        hi0, lo0 = p0 >> np.uint64(32), p0 & np.uint64(_MASK32)
        hi1, lo1 = p1 >> np.uint64(32), p1 & np.uint64(_MASK32)
        c = [hi1 ^ c[1] ^ k0, lo1, hi0 ^ c[3] ^ k1, lo0]
        k0 = (k0 + np.uint64(PHILOX_W0)) & np.uint64(_MASK32)
        k1 = (k1 + np.uint64(PHILOX_W1)) & np.uint64(_MASK32)
    return np.stack(c, axis=-1).astype(np.uint32)


def uniform_open(words):
    """uint32 words -> float64 in the open interval (0, 1): (x + 0.5) * 2**-32, exact in float64."""
    return (words.astype(np.float64) + 0.5) * (1.0 / 4294967296.0)


def normals(seed, stream, step, rows, cols, first_row=0):
    """Standard normals eps[r, c] for (seed, stream, step) as float32 (rows, cols), rows first_row onwards.

    Element i = (first_row + r) * cols + c comes from Philox block i // 4 (counter = (block, step lo, step hi,
    stream), key = (seed lo, seed hi)), lane i % 4; lanes (0, 1) and (2, 3) are Box-Muller pairs (cos, sin),
    computed in float64 and then rounded to float32. Rows 0..n of one draw are rows 0..k and k..n of two draws
    with first_row 0 and k.
    """
    first = int(first_row) * cols
    n = rows * cols
    lo, hi = first // 4, (first + n + 3) // 4
    blocks = hi - lo
    seed, step = int(seed), int(step)
    ctr = np.zeros((blocks, 4), dtype=np.uint64)
    ctr[:, 0] = np.arange(lo, hi, dtype=np.uint64)
    ctr[:, 1] = step & _MASK32
    ctr[:, 2] = (step >> 32) & _MASK32
    ctr[:, 3] = int(stream) & _MASK32
    key = np.array([seed & _MASK32, (seed >> 32) & _MASK32], dtype=np.uint64)
    u = uniform_open(philox4x32_10(ctr, np.broadcast_to(key, (blocks, 2))))
    radius = np.sqrt(-2.0 * np.log(u[:, 0::2]))          # pairs (u0, u1) and (u2, u3)
    angle = 2.0 * np.pi * u[:, 1::2]
    out = np.empty((blocks, 4), dtype=np.float64)
    out[:, 0::2] = radius * np.cos(angle)
    out[:, 1::2] = radius * np.sin(angle)
    skip = first - 4 * lo
    return out.reshape(-1)[skip:skip + n].astype(np.float32).reshape(rows, cols)


def epoch_permutation(seed, epoch, n):
    """The order of the n training images in an epoch: a pure function of (seed, epoch)."""
    return np.random.default_rng([int(seed), int(epoch), 0x5EED]).permutation(n)
