"""The reference backend: float64 NumPy, written to be read. It is the specification every kernel is tested against.

Kernel contract (identical names and argument order on every backend; outputs first, then inputs, then settings):
activation gradients are written with `=`, parameter gradients with `=` (one batch per step), losses with `+=`
into a float64[2] accumulator (reconstruction, KL), `counters` is int64[2] = (seed, steps taken so far).
A backward kernel's `dout` is scratch: here and on the cpu it holds dz afterwards, the gpu leaves dy there (storing
dz would cost a pass the step never reads: step.backward uses each dout once).
Dense layers are y = x @ W + b with W stored (fan_in, fan_out).
"""
import numpy as np

from .. import rng

name = "reference"
dtype = np.float64
xp = np


def empty(shape, dtype=dtype):
    return np.empty(shape, dtype=dtype)


def zeros(shape, dtype=dtype):
    return np.zeros(shape, dtype=dtype)


def asarray(a, dtype=dtype):
    return np.array(a, dtype=dtype, copy=True)


def to_host(a):
    return np.asarray(a)


def synchronize():
    pass


def elu(z):
    return np.where(z > 0, z, np.expm1(np.minimum(z, 0.0)))


def elu_grad_from_output(y):
    """ELU'(z) from y = ELU(z): 1 where y > 0, else exp(z) = y + 1. The pre-activation is never stored."""
    return np.where(y > 0, 1.0, y + 1.0)


def sigmoid(z):
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def gather_batch(x, data, idx):
    """x = data[idx] as floats in [0, 1]; uint8 data is divided by 255."""
    rows = data[idx]
    x[...] = rows / 255.0 if rows.dtype == np.uint8 else rows


def dense_forward(out, inp, w, b):
    out[...] = inp @ w + b


def dense_backward(dinp, dw, db, dout, inp, w):
    dw[...] = inp.T @ dout
    db[...] = dout.sum(axis=0)
    if dinp is not None:
        dinp[...] = dout @ w.T


def dense_elu_forward(out, inp, w, b):
    out[...] = elu(inp @ w + b)


def dense_elu_backward(dinp, dw, db, dout, inp, w, out):
    """dout (dL/dy) is overwritten with dz = dL/dy * ELU'(z) (scratch, see above); then a linear layer's gradients."""
    dout *= elu_grad_from_output(out)
    dense_backward(dinp, dw, db, dout, inp, w)


def heads_forward(z, stats, loss, inp, w, b, counters, stream):
    """stats = [mu | gamma] = inp @ w + b; z = mu + exp(gamma / 2) * eps; loss[1] += KL(q(z|x) || N(0, I))."""
    stats[...] = inp @ w + b
    n, latent = z.shape
    mu, gamma = stats[:, :latent], stats[:, latent:]
    eps = rng.normals(counters[0], stream, counters[1], n, latent).astype(np.float64)
    z[...] = mu + np.exp(0.5 * gamma) * eps
    loss[1] += 0.5 * np.sum(np.exp(gamma) + mu * mu - 1.0 - gamma)


def heads_backward(dinp, dw, db, dstats, dz, inp, w, stats, z):
    """dstats from dz (the decoder's input gradient) and the KL term; z - mu = exp(gamma / 2) * eps."""
    latent = z.shape[1]
    mu, gamma = stats[:, :latent], stats[:, latent:]
    dstats[:, :latent] = dz + mu
    dstats[:, latent:] = 0.5 * dz * (z - mu) + 0.5 * (np.exp(gamma) - 1.0)
    dense_backward(dinp, dw, db, dstats, inp, w)


# The seed's first form of the heads: they output sigma itself, and the KL term carries a smoothing constant
# inside the log so that sigma = 0 does not give log(0).
SIGMA_SMOOTHING = 1e-10


def heads_sigma_forward(z, stats, loss, inp, w, b, counters, stream):
    """stats = [mu | sigma] = inp @ w + b; z = mu + sigma * eps; loss[1] += 0.5 sum(sigma^2 + mu^2 - 1 -
    log(1e-10 + sigma^2))."""
    stats[...] = inp @ w + b
    n, latent = z.shape
    mu, sigma = stats[:, :latent], stats[:, latent:]
    eps = rng.normals(counters[0], stream, counters[1], n, latent).astype(np.float64)
    z[...] = mu + sigma * eps
    loss[1] += 0.5 * np.sum(sigma * sigma + mu * mu - 1.0 - np.log(SIGMA_SMOOTHING + sigma * sigma))


def heads_sigma_backward(dinp, dw, db, dstats, dz, inp, w, stats, counters, stream):
    """d mu = dz + mu; d sigma = dz eps + sigma - sigma / (1e-10 + sigma^2). eps is drawn again from its
    counter (sigma may be 0, so it cannot be recovered from z)."""
    n, latent = dz.shape
    mu, sigma = stats[:, :latent], stats[:, latent:]
    eps = rng.normals(counters[0], stream, counters[1], n, latent).astype(np.float64)
    dstats[:, :latent] = dz + mu
    dstats[:, latent:] = dz * eps + sigma - sigma / (SIGMA_SMOOTHING + sigma * sigma)
    dense_backward(dinp, dw, db, dstats, inp, w)


def output_forward(dlogits, loss, inp, w, b, x):
    """logits = inp @ w + b; loss[0] += sum of sigmoid cross-entropy (stable form); dlogits = sigmoid - x."""
    logits = inp @ w + b
    loss[0] += np.sum(np.maximum(logits, 0.0) - logits * x + np.log1p(np.exp(-np.abs(logits))))
    dlogits[...] = sigmoid(logits) - x


def output_mse_forward(dlogits, loss, inp, w, b, x):
    """The squared-error variant: p = sigmoid(inp @ w + b); loss[0] += sum (p - x)^2; dlogits = 2 (p - x) p (1 - p)."""
    p = sigmoid(inp @ w + b)
    loss[0] += np.sum((p - x) ** 2)
    dlogits[...] = 2.0 * (p - x) * p * (1.0 - p)


def adam_update(params, grads, m, v, counters, lr, beta1, beta2, eps):
    """One Adam step in TensorFlow's form (the seed's): eps is added to sqrt(v), the bias correction to lr."""
    t = int(counters[1]) + 1
    m[...] = beta1 * m + (1.0 - beta1) * grads
    v[...] = beta2 * v + (1.0 - beta2) * grads * grads
    lr_t = lr * np.sqrt(1.0 - beta2 ** t) / (1.0 - beta1 ** t)
    params -= lr_t * m / (np.sqrt(v) + eps)
    counters[1] = t
