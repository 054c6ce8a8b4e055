"""The reference backend: float64 NumPy, written to be read. It is the specification every kernel is tested against.

It implements the contract in fastvae/backends/contract.py (names, argument order, shapes, roles); its own
gradients are checked by central finite differences (tests/test_reference.py).
"""
from functools import partial

import numpy as np

from .. import rng
from ..constants import COUNTER_ROW, COUNTER_SEED, COUNTER_STEP, LOSS_KL, LOSS_RECONSTRUCTION, SIGMA_SMOOTHING
from ..params import flat_offsets, update_shapes

name = "reference"
dtype = np.float64
xp = np


# The array hooks: host arrays of the backend's dtype unless another is asked for; asarray always copies.
empty = partial(np.empty, dtype=dtype)
zeros = partial(np.zeros, dtype=dtype)
asarray = partial(np.array, dtype=dtype, copy=True)
host_data = True            # gather_batch reads the data set where it lies (step.data_for)


def to_host(a):
    return np.asarray(a)


def synchronize():
    pass


# ---------------------------------------------------------------- activations: y = act(z), act'(z) from y alone
# Each derivative follows from the output, so the forward pass keeps only y (constants.ACTIVATIONS).

def activate(z, activation):
    """act(z) for activation in constants.ACTIVATIONS."""
    if activation == "elu":
        return np.where(z > 0, z, np.expm1(np.minimum(z, 0.0)))
    if activation == "relu":
        return np.maximum(z, 0.0)
    if activation == "tanh":
        return np.tanh(z)
    if activation == "identity":
        return z
    raise ValueError(f"unknown activation {activation!r}")


def activation_grad_from_output(y, activation):
    """act'(z) from y = act(z): elu 1 where y > 0, else exp(z) = y + 1; relu 1 where y > 0, else 0 (the kink at 0
    takes the left derivative); tanh 1 - y^2; identity 1 (as the cpu kernels' `_grad_from_output`)."""
    if activation == "identity":
        return np.ones_like(y)
    if activation == "elu":
        return np.where(y > 0, 1.0, y + 1.0)
    if activation == "relu":
        return np.where(y > 0, 1.0, 0.0)
    if activation == "tanh":
        return 1.0 - y * y
    raise ValueError(f"unknown activation {activation!r}")


def sigmoid(z):
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def gather_batch(x, data, idx):
    """x = data[idx] as floats in [0, 1]; uint8 data is divided by 255."""
    rows = data[idx]
    x[...] = rows / 255.0 if rows.dtype == np.uint8 else rows


# ---------------------------------------------------------------- dense layers: forward and backward side by side

def dense_forward(out, inp, w, b, activation):
    """out (n, N) = act(inp (n, K) @ w (K, N) + b (N,))."""
    out[...] = activate(inp @ w + b, activation)


def dense_backward(dinp, dw, db, dout, inp, w, out, activation):
    """dz = dout * act'(z), from the forward output `out` (not needed for identity); dw = inp.T @ dz,
    db = sum of dz over rows, dinp = dz @ w.T (unless dinp is None: the first layer has no input gradient).
    dw and db None: no weight gradient (weight_update forms it); dz is left in dout."""
    dz = dout if activation == "identity" else dout * activation_grad_from_output(out, activation)
    if dw is None:
        dout[...] = dz
    else:
        dw[...] = inp.T @ dz
        db[...] = dz.sum(axis=0)
    if dinp is not None:
        dinp[...] = dz @ w.T


# ---------------------------------------------------------------- heads: sampling and KL, forward and backward

def _scale_and_kl(second, encoder):
    """(sigma, KL terms) of the heads' second half: logvar (sigma = exp(logvar / 2), KL term exp(lv) - 1 - lv
    before mu^2) or, in the seed's first form, sigma itself (with log(SIGMA_SMOOTHING + sigma^2))."""
    if encoder == "gamma":
        return np.exp(0.5 * second), np.exp(second) - 1.0 - second
    if encoder == "sigma":
        return second, second * second - 1.0 - np.log(SIGMA_SMOOTHING + second * second)
    raise ValueError(f"unknown encoder {encoder!r}")


def _eps(counters, noise_stream, n, latent):
    """The noise of rows counters[ROW] .. + n of the step's draw (seed, noise_stream, step), in float64."""
    return rng.normals(counters[COUNTER_SEED], noise_stream, counters[COUNTER_STEP], n, latent,
                       first_row=counters[COUNTER_ROW]).astype(np.float64)


def heads_forward(z, mu_logvar, loss, inp, w, b, counters, noise_stream, encoder):
    """mu_logvar = [mu | logvar] = inp @ w + b; z = mu + sigma * eps; loss[KL] += KL(q(z|x) || N(0, I))
    = 0.5 sum(exp(logvar) + mu^2 - 1 - logvar) (Kingma & Welling 2014, appendix B). encoder "sigma": the second
    half is sigma and the KL 0.5 sum(sigma^2 + mu^2 - 1 - log(1e-10 + sigma^2)) (the seed's first form)."""
    mu_logvar[...] = inp @ w + b
    n, latent = z.shape
    mu, second = mu_logvar[:, :latent], mu_logvar[:, latent:]
    sigma, kl_terms = _scale_and_kl(second, encoder)
    eps = _eps(counters, noise_stream, n, latent)
    z[...] = mu + sigma * eps
    loss[LOSS_KL] += 0.5 * np.sum(kl_terms + mu * mu)


def heads_backward(dinp, dw, db, dmu_logvar, dz, inp, w, mu_logvar, z, counters, noise_stream, encoder):
    """d mu = dz + mu. gamma form: d logvar = dz (z - mu) / 2 + (exp(logvar) - 1) / 2, with z - mu = sigma eps.
    sigma form: d sigma = dz eps + sigma - sigma / (1e-10 + sigma^2), eps drawn again from its counter (sigma may
    be 0, so z cannot give it back). Then the heads' linear backward."""
    n, latent = dz.shape
    mu, second = mu_logvar[:, :latent], mu_logvar[:, latent:]
    dmu_logvar[:, :latent] = dz + mu
    if encoder == "gamma":
        dmu_logvar[:, latent:] = 0.5 * dz * (z - mu) + 0.5 * (np.exp(second) - 1.0)
    elif encoder == "sigma":
        eps = _eps(counters, noise_stream, n, latent)
        dmu_logvar[:, latent:] = dz * eps + second - second / (SIGMA_SMOOTHING + second * second)
    else:
        raise ValueError(f"unknown encoder {encoder!r}")
    dense_backward(dinp, dw, db, dmu_logvar, inp, w, None, "identity")


# ---------------------------------------------------------------- output layer with its loss

def output_forward(dlogits, loss, inp, w, b, x, reconstruction):
    """logits = inp @ w + b. "xent": loss[RECONSTRUCTION] += sum of sigmoid cross-entropy against x (stable form
    max(l, 0) - l x + log(1 + exp(-|l|))), dlogits = sigmoid(l) - x. "mse": p = sigmoid(l), loss += sum (p - x)^2,
    dlogits = 2 (p - x) p (1 - p)."""
    logits = inp @ w + b
    p = sigmoid(logits)
    if reconstruction == "xent":
        loss[LOSS_RECONSTRUCTION] += np.sum(np.maximum(logits, 0.0) - logits * x + np.log1p(np.exp(-np.abs(logits))))
        dlogits[...] = p - x
    elif reconstruction == "mse":
        loss[LOSS_RECONSTRUCTION] += np.sum((p - x) ** 2)
        dlogits[...] = 2.0 * (p - x) * p * (1.0 - p)
    else:
        raise ValueError(f"unknown reconstruction {reconstruction!r}")


# ---------------------------------------------------------------- Adam

def adam_update(params, grads, m, v, counters, lr, beta1, beta2, eps):
    """One Adam step in TensorFlow's form (the seed's): eps is added to sqrt(v), the bias correction to lr.
    Kingma & Ba 2015, section 2 (the form before algorithm 1's last line). grads (S, P) holds the partial gradients
    of S row shards; their sum is the step's gradient, and is left in grads[0]."""
    t = int(counters[COUNTER_STEP]) + 1
    grads[0] = grads.sum(axis=0)
    grads = grads[0]
    m[...] = beta1 * m + (1.0 - beta1) * grads
    v[...] = beta2 * v + (1.0 - beta2) * grads * grads
    lr_t = lr * np.sqrt(1.0 - beta2 ** t) / (1.0 - beta1 ** t)
    params -= lr_t * m / (np.sqrt(v) + eps)
    counters[COUNTER_STEP] = t


def weight_update(params, grads, m, v, counters, inputs, douts, lr, beta1, beta2, eps):
    """The weight gradients of a whole batch, then Adam: for each layer l, dw_l = inputs[l].T @ douts[l] and
    db_l = sum of douts[l] over rows at the layer's offsets of the flat layout (fastvae.params.flat_offsets);
    then adam_update with that one gradient (grads None: not kept). Raises ValueError when the layers' shapes do not
    make params' size."""
    offsets, _ = flat_offsets(update_shapes(inputs, douts, params.size))
    if grads is None:
        grads = np.empty_like(params)
    for (w_off, b_off), inp, dz in zip(offsets, inputs, douts):
        fan_in, fan_out = inp.shape[1], dz.shape[1]
        grads[w_off:w_off + fan_in * fan_out] = (inp.T @ dz).reshape(-1)
        grads[b_off:b_off + fan_out] = dz.sum(axis=0)
    adam_update(params, grads[None], m, v, counters, lr, beta1, beta2, eps)

