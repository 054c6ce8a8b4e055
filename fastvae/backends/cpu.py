"""The cpu backend: float32 Numba kernels, with the matrix products in NumPy's BLAS (OpenBLAS in its wheels).

Implements the contract of backends/contract.py. Each layer is one Numba call: the BLAS product, called from inside
the kernel (cpu_blas), then one fused pass over its output: bias + activation (forward), act' + bias gradient
(backward), bias + sampling + KL (heads), bias + loss + dlogits (output). Measured here, OpenBLAS sgemm beats a
plain Numba loop several times over at these shapes, so the products stay in BLAS, except where an input is mostly
zeros (MNIST's pixels: then the first layer's forward product skips them) and the input gradients dout @ w.T of a
shard's size, which run on FMA vectors over the batch's rows (backends/dinp.py: 25 % faster than OpenBLAS's
transposed sgemm there).

Every kernel releases the GIL: the step runs row shards of a batch on the backend's `workers` at once (one-thread
BLAS each), and Adam splits the flat buffer between them (fastvae.workers, fastvae.step.train_step).
"""
import math
from functools import partial

import numpy as np
from numba import njit

from ..constants import (ACTIVATIONS, COUNTER_ROW, COUNTER_SEED, COUNTER_STEP, LOSS_KL, LOSS_RECONSTRUCTION,
                         SIGMA_SMOOTHING)
from ..atomics import prefetch
from .. import barrier
from ..workers import Workers
from . import cpu_blas, cpu_update, dinp as dinp_t
from .capture import call, record, refuse  # noqa: F401  (record: the contract's hook)
from .vector16 import bias_elu16, cross_entropy_rows16, unit_stride_body
from .cpu_blas import gemm
from .cpu_math import expm1_nonpos_f32, log1p_unit_f32
from .cpu_philox import fill_normals, normals_block, stream_keys
from .cpu_update import column_sums
from .reference import synchronize, to_host  # noqa: F401  (hooks: host arrays alike)

name = "cpu"
dtype = np.float32
xp = np


# The array hooks: host arrays of the backend's dtype unless another is asked for; asarray always copies.
empty = partial(np.empty, dtype=dtype)
zeros = partial(np.zeros, dtype=dtype)
asarray = partial(np.array, dtype=dtype, copy=True)
host_data = True            # gather_batch reads the data set where it lies (step.data_for)


# ---------------------------------------------------------------- batch gather

_GATHER_AHEAD = 32    # rows whose cache lines are asked for before the row being copied


@njit(inline="always", cache=True, nogil=True)
def _prefetch_row(row, per_line):
    """Ask for the cache lines of `row` (a row of the data set; contiguous in every array the trainer makes: in
    another layout the hint asks for the wrong lines, which costs nothing but its use)."""
    for j in range(0, row.size, per_line):
        prefetch(row, j)


@njit(cache=True, nogil=True, error_model="numpy")
def _gather_u8(x, data, idx):
    """x = data[idx] / 255, correctly rounded: the bits of the float images (data / 255).astype(float32), so that
    uint8 images and the same images as floats train alike (a product with float32(1 / 255) differed in 126 of the
    256 values: an auditor's trial). The rows are random rows of the data set (47 MB for MNIST, mostly not in cache),
    so each row's cache lines are prefetched _GATHER_AHEAD rows ahead, and their misses overlap: measured on the Xeon
    with the caches flushed, 75 MNIST rows in 45-51 us against 66-71 row by row. (The division costs nothing here:
    75 random MNIST rows, warm, EPYC: 16.9-18.1 us against 16.8-24.7 with the product, five rounds each.)"""
    divisor = np.float32(255.0)
    for r in range(min(_GATHER_AHEAD, idx.size)):
        _prefetch_row(data[idx[r]], 64)
    for r in range(idx.size):
        if r + _GATHER_AHEAD < idx.size:
            _prefetch_row(data[idx[r + _GATHER_AHEAD]], 64)
        src = data[idx[r]]
        dst = x[r]
        for j in range(dst.size):
            dst[j] = np.float32(src[j]) / divisor


@njit(cache=True, nogil=True, error_model="numpy")
def _gather_float(x, data, idx):
    """x = data[idx] (float data), rows prefetched as _gather_u8's."""
    per_line = max(1, 64 // data.itemsize)
    for r in range(min(_GATHER_AHEAD, idx.size)):
        _prefetch_row(data[idx[r]], per_line)
    for r in range(idx.size):
        if r + _GATHER_AHEAD < idx.size:
            _prefetch_row(data[idx[r + _GATHER_AHEAD]], per_line)
        x[r, :] = data[idx[r]]


def gather_batch(x, data, idx):
    """x = data[idx] as float32 in [0, 1]; uint8 data is divided by 255 on the fly (correctly rounded)."""
    call(_gather_u8 if data.dtype == np.uint8 else _gather_float, x, data, idx)


# ---------------------------------------------------------------- activations, from the output alone

ACTIVATION_CODES = {name: code for code, name in enumerate(ACTIVATIONS)}

# Each layer one Numba call: NumPy's BLAS product called from inside the kernel, then the fused pass (cpu_blas: no
# GIL taken between them, which matters with row shards on two threads). False where NumPy's BLAS cannot be called
# so (cpu_blas.AVAILABLE); then np.matmul and the same passes. Tests switch it to run both.
FUSED = cpu_blas.AVAILABLE
# Numba reads module globals as compile-time constants: the branches below name their activation, not a number.
_IDENTITY, _ELU, _RELU, _TANH = (ACTIVATION_CODES[a] for a in ("identity", "elu", "relu", "tanh"))
_NAN32 = np.float32(np.nan)


@njit(inline="always", cache=True, error_model="numpy")
def _activate(z, code):
    """act(z) in float32 arithmetic. `code` is constant over a kernel's loops: LLVM hoists the branch out of them
    (loop unswitching), so each activation runs its own vectorised loop (ELU measured as fast as an ELU-only loop).
    tanh(|z|) = -e / (2 + e) with e = exp(-2|z|) - 1 in (-1, 0]: no cancellation, and SIMD arithmetic instead of
    a libm call per element. A code without a branch here gives NaN, so an activation added to constants.py but
    not here fails every test and trips the divergence guard instead of silently acting as the identity."""
    if code == _ELU:
        return z if z > 0 else expm1_nonpos_f32(z)
    if code == _RELU:
        return np.float32(0.0) if z < 0 else z     # a NaN passes through, as np.maximum and the CUDA C let it
    if code == _TANH:
        e = expm1_nonpos_f32(np.float32(-2.0) * abs(z))
        t = -e / (np.float32(2.0) + e)
        return t if z >= 0 else -t
    if code == _IDENTITY:
        return z
    return _NAN32


@njit(inline="always", cache=True, error_model="numpy")
def _grad_from_output(y, code):
    """act'(z) from y = act(z): elu 1 if y > 0 else y + 1; relu 1 if y > 0 else 0; tanh 1 - y^2; identity 1;
    NaN for a code without a branch (see _activate)."""
    one = np.float32(1.0)
    if code == _ELU:
        return one if y > 0 else y + one
    if code == _RELU:
        return one if y > 0 else np.float32(0.0)
    if code == _TANH:
        return one - y * y
    if code == _IDENTITY:
        return one
    return _NAN32


# ---------------------------------------------------------------- dense layers: forward and backward side by side

@njit(cache=True, nogil=True, error_model="numpy")
def _bias_act(out, b, code):
    """out = act(out + b) in place (out holds inp @ w). ELU 16 columns at a time in explicit vector code
    (vector16.bias_elu16: the same operations, the same bits; measured on the Xeon, 75 x 500: 21 -> 15 us)."""
    n = b.size
    body = unit_stride_body(n, (out, b)) if code == _ELU else 0
    for r in range(out.shape[0]):
        row = out[r]
        for j in range(0, body, 16):
            bias_elu16(row, b, j)
        for j in range(body, n):
            row[j] = _activate(row[j] + b[j], code)


@njit(cache=True, nogil=True, fastmath=True, error_model="numpy")
def _act_grad_bias(dout, out, db, code):
    """dout = dz = dout * act'(z) in place, from the output y; db = sum of dz over rows (reassociation allowed:
    lanes accumulate in parallel)."""
    db[:] = 0.0
    for r in range(dout.shape[0]):
        d, y = dout[r], out[r]
        for j in range(db.size):
            dz = d[j] * _grad_from_output(y[j], code)
            d[j] = dz
            db[j] += dz


@njit(cache=True, nogil=True, error_model="numpy")
def _act_grad(dout, out, code):
    """dout = dz = dout * act'(z) in place, from the output y (no bias gradient: weight_update forms it)."""
    for r in range(dout.shape[0]):
        d, y = dout[r], out[r]
        for j in range(d.size):
            d[j] *= _grad_from_output(y[j], code)


@njit(inline="always", cache=True, error_model="numpy")
def _dz_and_bias_grad(db, dout, out, code):
    """dz in dout (in place) and, unless db is None, db = its column sums. out None: the identity (dz = dout)."""
    if out is None:
        if db is not None:
            column_sums(db, dout)
    elif db is None:
        _act_grad(dout, out, code)
    else:
        _act_grad_bias(dout, out, db, code)


# An input at most this dense (a share of nonzero entries) is multiplied by skipping its zeros: MNIST's pixels are
# 19 % nonzero, and there, at 75 rows x 784 @ 784 x 500 on one core of the project's Xeon, the sparse product took
# 0.28 ms against 0.48 for OpenBLAS's sgemm; its time grows with the nonzeros, so they cross near 33 %.
SPARSE_DENSITY = 0.25
_SPARSE_MIN_FAN_IN = 64       # counting the zeros of a narrower input costs more than skipping them saves


@njit(cache=True, nogil=True)
def _mostly_zeros(inp):
    if inp.shape[1] < _SPARSE_MIN_FAN_IN:
        return False
    nonzero = 0
    for r in range(inp.shape[0]):
        row = inp[r]
        for j in range(row.size):
            nonzero += row[j] != 0
    return nonzero <= SPARSE_DENSITY * inp.size


@njit(cache=True, nogil=True, fastmath=True, error_model="numpy")
def _sparse_product(out, inp, w):
    """out = inp @ w over the nonzero entries of each row of inp: out[r] = sum of inp[r, j] w[j] for inp[r, j] != 0,
    eight rows of w per pass over out[r] (which stays in L1), so loads of out are 1/8 of the multiply-adds."""
    fan_in, fan_out = w.shape
    nonzero = np.empty(fan_in, np.int64)
    for r in range(inp.shape[0]):
        x, o = inp[r], out[r]
        count = 0
        for j in range(fan_in):
            if x[j] != 0:
                nonzero[count] = j
                count += 1
        for c in range(fan_out):
            o[c] = 0.0
        t = 0
        while t + 8 <= count:
            j0, j1, j2, j3 = nonzero[t], nonzero[t + 1], nonzero[t + 2], nonzero[t + 3]
            j4, j5, j6, j7 = nonzero[t + 4], nonzero[t + 5], nonzero[t + 6], nonzero[t + 7]
            a0, a1, a2, a3, a4, a5, a6, a7 = x[j0], x[j1], x[j2], x[j3], x[j4], x[j5], x[j6], x[j7]
            w0, w1, w2, w3, w4, w5, w6, w7 = w[j0], w[j1], w[j2], w[j3], w[j4], w[j5], w[j6], w[j7]
            for c in range(fan_out):
                o[c] += ((a0 * w0[c] + a1 * w1[c]) + (a2 * w2[c] + a3 * w3[c])) + \
                    ((a4 * w4[c] + a5 * w5[c]) + (a6 * w6[c] + a7 * w7[c]))
            t += 8
        for k in range(t, count):
            a, wk = x[nonzero[k]], w[nonzero[k]]
            for c in range(fan_out):
                o[c] += a * wk[c]


@njit(cache=True, nogil=True, error_model="numpy")
def _dense_forward(out, inp, w, b, code):
    if _mostly_zeros(inp):
        _sparse_product(out, inp, w)
    else:
        gemm(out, inp, False, w, False)
    _bias_act(out, b, code)


@njit(cache=True, nogil=True, error_model="numpy")
def _dense_backward(dinp, dw, db, dout, inp, w, out, code, a_t, out_t):
    """`out` None: the identity (no derivative to apply); `dinp` None: the first layer (no input gradient); `dw`
    and `db` None: no weight gradient (weight_update forms it from the dz left in dout). dinp = dout @ w.T in
    fastvae.backends.dinp (a_t, out_t: its scratch) where it takes the shapes, else in OpenBLAS."""
    _dz_and_bias_grad(db, dout, out, code)
    if dw is not None:
        gemm(dw, inp, True, dout, False)
    if dinp is not None and not dinp_t.product_where_usable(dinp, dout, w, a_t, out_t):
        gemm(dinp, dout, False, w, True)


def _dinp_scratch(dinp, dout, w):
    return (dinp_t.NO_SCRATCH, dinp_t.NO_SCRATCH) if dinp is None else dinp_t.scratch(dinp, dout, w)


def dense_forward(out, inp, w, b, activation):
    if FUSED:
        call(_dense_forward, out, inp, w, b, ACTIVATION_CODES[activation])
        return
    refuse("np.matmul (FUSED is off)")
    if _mostly_zeros(inp):
        _sparse_product(out, inp, w)
    else:
        np.matmul(inp, w, out=out)
    _bias_act(out, b, ACTIVATION_CODES[activation])


def dense_backward(dinp, dw, db, dout, inp, w, out, activation):
    if FUSED:
        call(_dense_backward, dinp, dw, db, dout, inp, w, None if activation == "identity" else out,
             ACTIVATION_CODES[activation], *_dinp_scratch(dinp, dout, w))
        return
    refuse("np.matmul (FUSED is off)")
    _dz_and_bias_grad(db, dout, None if activation == "identity" else out, ACTIVATION_CODES[activation])
    if dw is not None:
        np.matmul(inp.T, dout, out=dw)
    if dinp is not None and not dinp_t.product_from_python(dinp, dout, w):     # (dinp.py is not BLAS)
        np.matmul(dout, w.T, out=dinp)


# ---------------------------------------------------------------- heads: sampling and KL, forward and backward

@njit(cache=True, nogil=True, error_model="numpy")
def _heads_sample_kl(z, mu_logvar, b, loss, seed, noise_stream, step, first_row, sigma_form):
    """mu_logvar += b; z = mu + s * eps (eps drawn into z first); loss[KL] += KL. The heads' second half is
    logvar (s = exp(logvar / 2)), or in the seed's first form sigma itself (s = sigma)."""
    n, latent = z.shape
    fill_normals(z, seed, noise_stream, step, first_row)
    kl = 0.0
    for r in range(n):
        for j in range(2 * latent):
            mu_logvar[r, j] += b[j]
        for j in range(latent):
            mu = np.float64(mu_logvar[r, j])
            second = np.float64(mu_logvar[r, latent + j])
            if sigma_form:
                z[r, j] = mu + second * np.float64(z[r, j])
                kl += second * second + mu * mu - 1.0 - math.log(SIGMA_SMOOTHING + second * second)
            else:
                z[r, j] = mu + math.exp(0.5 * second) * np.float64(z[r, j])
                kl += math.exp(second) + mu * mu - 1.0 - second
    loss[LOSS_KL] += 0.5 * kl


@njit(cache=True, nogil=True, error_model="numpy")
def _heads_grad(dmu_logvar, dz, mu_logvar, z):
    """d mu = dz + mu; d logvar = dz (z - mu) / 2 + (exp(logvar) - 1) / 2, using z - mu = exp(logvar / 2) eps."""
    n, latent = z.shape
    for r in range(n):
        for j in range(latent):
            mu = mu_logvar[r, j]
            logvar = np.float64(mu_logvar[r, latent + j])
            dmu_logvar[r, j] = dz[r, j] + mu
            dmu_logvar[r, latent + j] = 0.5 * dz[r, j] * (z[r, j] - mu) + 0.5 * (math.exp(logvar) - 1.0)


@njit(cache=True, nogil=True, error_model="numpy")
def _heads_sigma_grad(dmu_sigma, dz, mu_sigma, seed, noise_stream, step, first_row):
    """d mu = dz + mu; d sigma = dz eps + sigma - sigma / (1e-10 + sigma^2), eps drawn again from its counter
    (sigma may be 0, so z cannot give it back), one Philox block of four at a time."""
    n, latent = dz.shape
    first = first_row * latent
    k0, k1, s_lo, s_hi = stream_keys(seed, step)
    for block in range(first // 4, (first + n * latent + 3) // 4):
        four = normals_block(block, k0, k1, s_lo, s_hi, noise_stream)
        for lane in range(4):
            i = 4 * block + lane - first
            if not 0 <= i < n * latent:
                continue
            r, j = divmod(i, latent)
            sigma = np.float64(mu_sigma[r, latent + j])
            dmu_sigma[r, j] = dz[r, j] + mu_sigma[r, j]
            dmu_sigma[r, latent + j] = dz[r, j] * four[lane] + sigma - sigma / (SIGMA_SMOOTHING + sigma * sigma)


@njit(cache=True, nogil=True, error_model="numpy")
def _heads_forward(z, mu_logvar, loss, inp, w, b, counters, noise_stream, sigma_form):
    gemm(mu_logvar, inp, False, w, False)
    _heads_sample_kl(z, mu_logvar, b, loss, counters[COUNTER_SEED], noise_stream, counters[COUNTER_STEP],
                     counters[COUNTER_ROW], sigma_form)


@njit(cache=True, nogil=True, error_model="numpy")
def _heads_dmu_logvar(dmu_logvar, dz, mu_logvar, z, counters, noise_stream, sigma_form):
    """The heads' gradient in either form (the sigma form draws its noise again from the counters)."""
    if sigma_form:
        _heads_sigma_grad(dmu_logvar, dz, mu_logvar, counters[COUNTER_SEED], noise_stream, counters[COUNTER_STEP],
                          counters[COUNTER_ROW])
    else:
        _heads_grad(dmu_logvar, dz, mu_logvar, z)


@njit(cache=True, nogil=True, error_model="numpy")
def _heads_backward(dinp, dw, db, dmu_logvar, dz, inp, w, mu_logvar, z, counters, noise_stream, sigma_form, a_t,
                    out_t):
    _heads_dmu_logvar(dmu_logvar, dz, mu_logvar, z, counters, noise_stream, sigma_form)
    _dense_backward(dinp, dw, db, dmu_logvar, inp, w, None, 0, a_t, out_t)


def heads_forward(z, mu_logvar, loss, inp, w, b, counters, noise_stream, encoder):
    if FUSED:
        call(_heads_forward, z, mu_logvar, loss, inp, w, b, counters, noise_stream, ENCODER_IS_SIGMA[encoder])
        return
    refuse("np.matmul (FUSED is off)")
    np.matmul(inp, w, out=mu_logvar)
    _heads_sample_kl(z, mu_logvar, b, loss, counters[COUNTER_SEED], noise_stream, counters[COUNTER_STEP],
                     counters[COUNTER_ROW], ENCODER_IS_SIGMA[encoder])


def heads_backward(dinp, dw, db, dmu_logvar, dz, inp, w, mu_logvar, z, counters, noise_stream, encoder):
    if FUSED:
        call(_heads_backward, dinp, dw, db, dmu_logvar, dz, inp, w, mu_logvar, z, counters, noise_stream,
             ENCODER_IS_SIGMA[encoder], *_dinp_scratch(dinp, dmu_logvar, w))
        return
    call(_heads_dmu_logvar, dmu_logvar, dz, mu_logvar, z, counters, noise_stream, ENCODER_IS_SIGMA[encoder])
    dense_backward(dinp, dw, db, dmu_logvar, inp, w, None, "identity")


ENCODER_IS_SIGMA = {"gamma": False, "sigma": True}


# ---------------------------------------------------------------- output layer: loss and dlogits in one pass

_LANES = 16        # the loss pass's partial sums: one per float32 lane of an AVX-512 register


@njit(inline="always", cache=True, error_model="numpy")
def _loss_and_dlogit(l, t, mse):
    """(loss term, dlogit) of logit l against target t in float32, from e = exp(-|l|) in [0, 1] (no overflow, no
    cancellation: p = 1 / (1 + e) for l >= 0, e / (1 + e) below; e = 1 + expm1(-|l|), absolute error ~1e-7, which is
    what p keeps in float32 anyway, and 0 below l = -17, where p < 5e-8)."""
    one, zero = np.float32(1.0), np.float32(0.0)
    e = one + expm1_nonpos_f32(-abs(l))
    s = one / (one + e)
    es = e * s
    p = s if l >= zero else es                      # sigmoid(l)
    q = es if l >= zero else s                      # 1 - sigmoid(l)
    diff = p - t
    if mse:
        return diff * diff, np.float32(2.0) * diff * p * q
    return max(l, zero) - l * t + log1p_unit_f32(e), diff


@njit(cache=True, nogil=True, error_model="numpy")
def _bias_loss_dlogits(dlogits, b, x, loss, mse):
    """l = dlogits + b (dlogits holds inp @ w), p = sigmoid(l). Cross-entropy: loss += sum of max(l, 0) - l x +
    log1p(exp(-|l|)), dlogits = p - x. Squared error (mse): loss += sum (p - x)^2, dlogits = 2 (p - x) p (1 - p).

    Float32 arithmetic, vectorised (measured on the project's Xeon: 75 x 784 in 0.088 ms, against 0.154 in float64,
    which made it the step's most expensive pass; the cross-entropy 16 columns at a time in explicit vector code,
    vector16.cross_entropy_rows16, the same operations and bits: 0.085 -> 0.070 ms). No fastmath, and the sum in a fixed
    order: element j of a row goes to partial sum j % 16, the partial sums are added in order and each row's total to a
    float64 one, so the loss is the same bits however LLVM compiles the loop. (With fastmath's reassociation a freshly
    compiled kernel and its copy loaded from Numba's cache summed in different orders, 1e-8 apart, and a checkpoint's
    metrics did not match the same model evaluated in another process; with fastmath and these lanes it took 0.072
    ms.)"""
    total = 0.0
    vector_body = unit_stride_body(b.size, (dlogits, b, x))     # 0 unless the rows have unit stride
    acc = np.empty(_LANES, np.float32)
    for r in range(dlogits.shape[0]):
        total += np.float64(_row_loss(dlogits[r], b, x[r], acc, vector_body, mse))
    loss[LOSS_RECONSTRUCTION] += total


@njit(inline="always", cache=True, error_model="numpy")
def _row_loss(d, b, xr, acc, vector_body, mse):
    """One row of _bias_loss_dlogits: d = dlogits of l = d + b against xr; returns the row's loss, float32 (its
    16 partial sums in acc, added in order)."""
    n = b.size
    acc[:] = 0.0
    if mse:
        body = n - n % _LANES
        for j0 in range(0, body, _LANES):
            for lane in range(_LANES):
                j = j0 + lane
                term, d[j] = _loss_and_dlogit(d[j] + b[j], xr[j], mse)
                acc[lane] += term
        start = body
    else:
        cross_entropy_rows16(d, b, xr, acc, vector_body)
        start = vector_body
    for j in range(start, n):
        term, d[j] = _loss_and_dlogit(d[j] + b[j], xr[j], mse)
        acc[j % _LANES] += term
    row = np.float32(0.0)
    for lane in range(_LANES):
        row += acc[lane]
    return row


@njit(cache=True, nogil=True, error_model="numpy")
def row_losses(losses, logits, x, mse):
    """losses[r] = the reconstruction loss of row r, float64 (n,), from logits (n, d) float32 (the output layer's,
    bias included; overwritten with sigmoid(l) - x) against x (n, d) float32: the training loss's arithmetic and
    bits row by row (_bias_loss_dlogits), for the IWAE bound's log-likelihoods (fastvae.evaluate)."""
    zero = np.zeros(logits.shape[1], np.float32)
    vector_body = unit_stride_body(zero.size, (logits, zero, x))
    acc = np.empty(_LANES, np.float32)
    for r in range(logits.shape[0]):
        losses[r] = np.float64(_row_loss(logits[r], zero, x[r], acc, vector_body, mse))


@njit(cache=True, nogil=True, error_model="numpy")
def _output_forward(dlogits, loss, inp, w, b, x, mse):
    gemm(dlogits, inp, False, w, False)
    _bias_loss_dlogits(dlogits, b, x, loss, mse)


def output_forward(dlogits, loss, inp, w, b, x, reconstruction):
    if FUSED:
        call(_output_forward, dlogits, loss, inp, w, b, x, RECONSTRUCTION_IS_MSE[reconstruction])
        return
    refuse("np.matmul (FUSED is off)")
    np.matmul(inp, w, out=dlogits)
    _bias_loss_dlogits(dlogits, b, x, loss, RECONSTRUCTION_IS_MSE[reconstruction])


RECONSTRUCTION_IS_MSE = {"xent": False, "mse": True}


# ---------------------------------------------------------------- the update (fastvae.backends.cpu_update)

def adam_update(params, grads, m, v, counters, lr, beta1, beta2, eps):
    cpu_update.adam_update(workers, params, grads, m, v, counters, lr, beta1, beta2, eps)


def weight_update(params, grads, m, v, counters, inputs, douts, lr, beta1, beta2, eps):
    cpu_update.weight_update(workers, params, grads, m, v, counters, inputs, douts, lr, beta1, beta2, eps)


def layer_done(ready, layer):
    """The contract's layer_done: this row shard's backward of `layer` is done (fastvae.barrier.mark: the update's
    parts wait for every shard's mark of a layer before they update it)."""
    call(barrier.mark, ready, layer)


def weight_update_parts(params, grads, m, v, counters, inputs, douts, lr, beta1, beta2, eps):
    return cpu_update.weight_update_parts(workers, params, grads, m, v, counters, inputs, douts, lr, beta1, beta2,
                                          eps)


def weight_update_steps(params, grads, m, v, inputs, douts, beta1, beta2, eps, steps):
    return cpu_update.weight_update_steps(params, grads, m, v, inputs, douts, beta1, beta2, eps, steps)


# The backend's threads (fastvae.workers): the step runs row shards of a batch on them (every kernel here releases
# the GIL) and Adam splits the buffer between them. One thread until fastvae.threads sets the count for a fit.
workers = Workers()

