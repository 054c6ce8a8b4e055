"""The cpu backend: float32 Numba kernels, with the matrix products in BLAS (NumPy's OpenBLAS).

Same contract as backends/reference.py. Each layer is one BLAS product plus one fused Numba pass over its
output: bias + ELU (forward), ELU' + bias gradient (backward), bias + sampling + KL (heads), bias + loss +
dlogits (output). Measured here, OpenBLAS sgemm beats a hand-written Numba product several times over at
these shapes, so the products stay in BLAS and the fusion happens in the passes around them.
"""
import math

import numpy as np
from numba import njit

from .cpu_math import exp_nonpos, expm1_nonpos_f32, log1p_unit
from .cpu_philox import fill_normals, normals_block, stream_keys
from .reference import SIGMA_SMOOTHING, synchronize, to_host  # noqa: F401  (hooks: host arrays alike)

name = "cpu"
dtype = np.float32
xp = np


def empty(shape, dtype=dtype):
    return np.empty(shape, dtype=dtype)


def zeros(shape, dtype=dtype):
    return np.zeros(shape, dtype=dtype)


def asarray(a, dtype=dtype):
    return np.array(a, dtype=dtype, copy=True)


# ---------------------------------------------------------------- batch gather

@njit(cache=True, error_model="numpy")
def _gather_u8(x, data, idx):
    scale = np.float32(1.0 / 255.0)
    for r in range(idx.size):
        src = data[idx[r]]
        dst = x[r]
        for j in range(dst.size):
            dst[j] = np.float32(src[j]) * scale


@njit(cache=True, error_model="numpy")
def _gather_float(x, data, idx):
    for r in range(idx.size):
        x[r, :] = data[idx[r]]


def gather_batch(x, data, idx):
    """x = data[idx] as float32 in [0, 1]; uint8 data is scaled by 1/255 on the fly."""
    if data.dtype == np.uint8:
        _gather_u8(x, data, idx)
    else:
        _gather_float(x, data, idx)


# ---------------------------------------------------------------- dense layers (linear)

@njit(cache=True, fastmath=True, error_model="numpy")
def _column_sums(db, d):
    """db = sum over rows of d (reassociation allowed: lanes accumulate in parallel)."""
    db[:] = 0.0
    for r in range(d.shape[0]):
        row = d[r]
        for j in range(db.size):
            db[j] += row[j]


def dense_forward(out, inp, w, b):
    np.matmul(inp, w, out=out)
    out += b


def dense_backward(dinp, dw, db, dout, inp, w):
    np.matmul(inp.T, dout, out=dw)
    _column_sums(db, dout)
    if dinp is not None:
        np.matmul(dout, w.T, out=dinp)


# ---------------------------------------------------------------- dense + ELU: forward and backward side by side

@njit(cache=True, error_model="numpy")
def _bias_elu(out, b):
    """out = ELU(out + b) in place; ELU(z) = z for z > 0, else exp(z) - 1."""
    for r in range(out.shape[0]):
        row = out[r]
        for j in range(row.size):
            z = row[j] + b[j]
            row[j] = z if z > 0 else expm1_nonpos_f32(z)


@njit(cache=True, fastmath=True, error_model="numpy")
def _elu_grad_bias(dout, out, db):
    """dout = dz = dout * ELU'(z) in place, ELU'(z) = 1 if y > 0 else y + 1 (from the output y); db = sum dz."""
    db[:] = 0.0
    for r in range(dout.shape[0]):
        d, y = dout[r], out[r]
        for j in range(db.size):
            yj = y[j]
            dz = d[j] * (np.float32(1.0) if yj > 0 else yj + np.float32(1.0))
            d[j] = dz
            db[j] += dz


def dense_elu_forward(out, inp, w, b):
    np.matmul(inp, w, out=out)
    _bias_elu(out, b)


def dense_elu_backward(dinp, dw, db, dout, inp, w, out):
    _elu_grad_bias(dout, out, db)
    np.matmul(inp.T, dout, out=dw)
    if dinp is not None:
        np.matmul(dout, w.T, out=dinp)


# ---------------------------------------------------------------- heads: sampling and KL, forward and backward

@njit(cache=True, error_model="numpy")
def _heads_sample_kl(z, stats, b, loss, seed, stream, step, sigma_form):
    """stats += b; z = mu + s * eps (eps drawn into z first); loss[1] += KL. The heads' second half is
    gamma = log sigma^2 (s = exp(gamma / 2)), or in the seed's first form sigma itself (s = sigma)."""
    n, latent = z.shape
    fill_normals(z, seed, stream, step)
    kl = 0.0
    for r in range(n):
        for j in range(2 * latent):
            stats[r, j] += b[j]
        for j in range(latent):
            mu = np.float64(stats[r, j])
            second = np.float64(stats[r, latent + j])
            if sigma_form:
                z[r, j] = mu + second * np.float64(z[r, j])
                kl += second * second + mu * mu - 1.0 - math.log(SIGMA_SMOOTHING + second * second)
            else:
                z[r, j] = mu + math.exp(0.5 * second) * np.float64(z[r, j])
                kl += math.exp(second) + mu * mu - 1.0 - second
    loss[1] += 0.5 * kl


@njit(cache=True, error_model="numpy")
def _heads_grad(dstats, dz, stats, z):
    """d mu = dz + mu; d gamma = dz (z - mu) / 2 + (exp(gamma) - 1) / 2, using z - mu = exp(gamma / 2) eps."""
    n, latent = z.shape
    for r in range(n):
        for j in range(latent):
            mu = stats[r, j]
            gamma = np.float64(stats[r, latent + j])
            dstats[r, j] = dz[r, j] + mu
            dstats[r, latent + j] = 0.5 * dz[r, j] * (z[r, j] - mu) + 0.5 * (math.exp(gamma) - 1.0)


@njit(cache=True, error_model="numpy")
def _heads_sigma_grad(dstats, dz, stats, seed, stream, step):
    """d mu = dz + mu; d sigma = dz eps + sigma - sigma / (1e-10 + sigma^2), eps drawn again from its counter
    (sigma may be 0, so z cannot give it back), one Philox block of four at a time."""
    n, latent = dz.shape
    k0, k1, s_lo, s_hi = stream_keys(seed, step)
    for block in range((n * latent + 3) // 4):
        four = normals_block(block, k0, k1, s_lo, s_hi, stream)
        for lane in range(min(4, n * latent - 4 * block)):
            r, j = divmod(4 * block + lane, latent)
            sigma = np.float64(stats[r, latent + j])
            dstats[r, j] = dz[r, j] + stats[r, j]
            dstats[r, latent + j] = dz[r, j] * four[lane] + sigma - sigma / (SIGMA_SMOOTHING + sigma * sigma)


def heads_forward(z, stats, loss, inp, w, b, counters, stream):
    np.matmul(inp, w, out=stats)
    _heads_sample_kl(z, stats, b, loss, counters[0], stream, counters[1], False)


def heads_backward(dinp, dw, db, dstats, dz, inp, w, stats, z):
    _heads_grad(dstats, dz, stats, z)
    dense_backward(dinp, dw, db, dstats, inp, w)


def heads_sigma_forward(z, stats, loss, inp, w, b, counters, stream):
    np.matmul(inp, w, out=stats)
    _heads_sample_kl(z, stats, b, loss, counters[0], stream, counters[1], True)


def heads_sigma_backward(dinp, dw, db, dstats, dz, inp, w, stats, counters, stream):
    _heads_sigma_grad(dstats, dz, stats, counters[0], stream, counters[1])
    dense_backward(dinp, dw, db, dstats, inp, w)


# ---------------------------------------------------------------- output layer: loss and dlogits in one pass

@njit(cache=True, fastmath=True, error_model="numpy")
def _bias_loss_dlogits(dlogits, b, x, loss):
    """logits = dlogits + b (dlogits holds inp @ w); loss[0] += sum of max(l, 0) - l x + log1p(exp(-|l|));
    dlogits = sigmoid(l) - x, with sigmoid(l) = 1 / (1 + e) for l >= 0 and e / (1 + e) below, e = exp(-|l|)."""
    total = 0.0
    for r in range(dlogits.shape[0]):
        d, xr = dlogits[r], x[r]
        for j in range(b.size):
            l = np.float64(d[j] + b[j])
            t = np.float64(xr[j])
            e = exp_nonpos(-abs(l))
            total += max(l, 0.0) - l * t + log1p_unit(e)
            s = 1.0 / (1.0 + e)
            d[j] = (s if l >= 0.0 else e * s) - t
    loss[0] += total


def output_forward(dlogits, loss, inp, w, b, x):
    np.matmul(inp, w, out=dlogits)
    _bias_loss_dlogits(dlogits, b, x, loss)


@njit(cache=True, fastmath=True, error_model="numpy")
def _bias_mse_dlogits(dlogits, b, x, loss):
    """The squared-error variant: p = sigmoid(l), l = dlogits + b; loss[0] += sum (p - x)^2;
    dlogits = 2 (p - x) p (1 - p), with p and 1 - p both formed from e = exp(-|l|) (no cancellation)."""
    total = 0.0
    for r in range(dlogits.shape[0]):
        d, xr = dlogits[r], x[r]
        for j in range(b.size):
            l = np.float64(d[j] + b[j])
            e = exp_nonpos(-abs(l))
            s = 1.0 / (1.0 + e)
            p, q = (s, e * s) if l >= 0.0 else (e * s, s)      # p = sigmoid(l), q = 1 - p
            diff = p - np.float64(xr[j])
            total += diff * diff
            d[j] = 2.0 * diff * p * q
    loss[0] += total


def output_mse_forward(dlogits, loss, inp, w, b, x):
    np.matmul(inp, w, out=dlogits)
    _bias_mse_dlogits(dlogits, b, x, loss)


# ---------------------------------------------------------------- Adam: one pass over the flat buffer

# Serial on purpose: LLVM vectorises this loop (0.5 ms over 1.3 M parameters, the buffers sit in L3), while a
# parallel loop's threads fight OpenBLAS's spinning threads on 2 cores (the whole epoch took 2x longer with prange).
@njit(cache=True, fastmath=True, error_model="numpy")
def _adam(params, grads, m, v, lr_t, beta1, beta2, eps):
    b1 = np.float32(beta1)
    b2 = np.float32(beta2)
    c1 = np.float32(1.0 - beta1)
    c2 = np.float32(1.0 - beta2)
    lr = np.float32(lr_t)
    e = np.float32(eps)
    for i in range(params.size):
        g = grads[i]
        mi = b1 * m[i] + c1 * g
        vi = b2 * v[i] + c2 * g * g
        m[i] = mi
        v[i] = vi
        params[i] -= lr * mi / (np.sqrt(vi) + e)


def adam_update(params, grads, m, v, counters, lr, beta1, beta2, eps):
    """TensorFlow's Adam (the seed's): bias correction folded into lr_t, eps added to sqrt(v)."""
    t = int(counters[1]) + 1
    lr_t = lr * math.sqrt(1.0 - beta2 ** t) / (1.0 - beta1 ** t)
    _adam(params, grads, m, v, lr_t, beta1, beta2, eps)
    counters[1] = t
