"""Each kernel at the seed's shapes (batch 150), per backend: checked against the reference first, then timed.

extra_info carries the FLOPs and bytes of one call, so the JSON gives GFLOP/s and GB/s (bench/report.py).
"""
import numpy as np
import pytest

import kernel_cases as kc
from benchlib import SEED_CFG, backend_params, timed
from fastvae.constants import COUNTER_SEED, COUNTER_STEP, COUNTERS
from fastvae.params import Layout

ROWS = SEED_CFG.batch_size
F32 = 4
# (name, fan_in, fan_out) of the four hidden layers: encoder 1 and 2, decoder 1 and 2
HIDDEN_LAYERS = [("enc1", 784, 500), ("enc2", 500, 500), ("dec1", 20, 500), ("dec2", 500, 500)]
BACKENDS = backend_params()


def _counters(backend, seed, step):
    """The counters of a whole batch: (seed, step), first row 0."""
    counters = np.zeros(COUNTERS, dtype=np.int64)
    counters[COUNTER_SEED], counters[COUNTER_STEP] = seed, step
    return backend.asarray(counters, dtype=np.int64)


def _hidden_layer(benchmark, backend, rand, kernel, layer, fan_in, fan_out):
    """Names the group, checks the kernels against the reference, and returns a hidden layer's (inp, w, b, out)."""
    benchmark.group = f"kernel {kernel} elu {layer} {ROWS}x{fan_in}->{fan_out}"
    kc.check_dense(backend, rand, ROWS, fan_in, fan_out, "elu")
    inp, w, b = (backend.asarray(a) for a in kc.layer_inputs(rand, ROWS, fan_in, fan_out))
    return inp, w, b, backend.empty((ROWS, fan_out))


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
@pytest.mark.parametrize("layer,fan_in,fan_out", HIDDEN_LAYERS, ids=[n for n, _, _ in HIDDEN_LAYERS])
def test_dense_forward(benchmark, backend, rand, layer, fan_in, fan_out):
    inp, w, b, out = _hidden_layer(benchmark, backend, rand, "dense_forward", layer, fan_in, fan_out)
    timed(benchmark, backend, lambda: backend.dense_forward(out, inp, w, b, "elu"),
          flops=2 * ROWS * fan_in * fan_out + 2 * ROWS * fan_out,
          nbytes=F32 * (ROWS * fan_in + fan_in * fan_out + fan_out + ROWS * fan_out))


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
@pytest.mark.parametrize("layer,fan_in,fan_out", HIDDEN_LAYERS, ids=[n for n, _, _ in HIDDEN_LAYERS])
def test_dense_backward(benchmark, backend, rand, layer, fan_in, fan_out):
    inp, w, b, out = _hidden_layer(benchmark, backend, rand, "dense_backward", layer, fan_in, fan_out)
    backend.dense_forward(out, inp, w, b, "elu")
    dout0 = backend.asarray(rand.normal(0, 1, (ROWS, fan_out)))
    dout = backend.empty((ROWS, fan_out))
    dinp, dw, db = backend.empty((ROWS, fan_in)), backend.empty((fan_in, fan_out)), backend.empty(fan_out)
    first = layer == "enc1"                        # the first layer needs no input gradient
    timed(benchmark, backend,
          lambda: backend.dense_backward(None if first else dinp, dw, db, dout, inp, w, out, "elu"),
          setup=lambda: dout.__setitem__(Ellipsis, dout0),      # dz overwrites dout: restore it each round
          flops=(2 if first else 4) * ROWS * fan_in * fan_out + 3 * ROWS * fan_out,
          nbytes=F32 * (2 * ROWS * fan_out * 2 + ROWS * fan_in * (1 if first else 2)
                        + 2 * fan_in * fan_out + fan_out))


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_heads_forward_and_backward(benchmark, backend, rand):
    fan_in, latent = 500, SEED_CFG.latent
    benchmark.group = f"kernel heads forward+backward {ROWS}x{fan_in}->{2 * latent}"
    kc.check_heads(backend, rand, ROWS, fan_in, latent, "gamma")
    inp, w, b = (backend.asarray(a) for a in kc.layer_inputs(rand, ROWS, fan_in, 2 * latent))
    z, mu_logvar, dmu_logvar = backend.empty((ROWS, latent)), backend.empty((ROWS, 2 * latent)), \
        backend.empty((ROWS, 2 * latent))
    dz = backend.asarray(rand.normal(0, 1, (ROWS, latent)))
    dinp, dw, db = backend.empty((ROWS, fan_in)), backend.empty((fan_in, 2 * latent)), backend.empty(2 * latent)
    loss = backend.zeros(2, dtype=np.float64)
    counters = _counters(backend, 1, 2)

    def both():
        backend.heads_forward(z, mu_logvar, loss, inp, w, b, counters, 0, "gamma")
        backend.heads_backward(dinp, dw, db, dmu_logvar, dz, inp, w, mu_logvar, z, counters, 0, "gamma")

    timed(benchmark, backend, both, flops=3 * 2 * ROWS * fan_in * 2 * latent,
          nbytes=F32 * (2 * ROWS * fan_in + 2 * fan_in * 2 * latent + 4 * ROWS * 2 * latent))


def _output_layer(benchmark, backend, rand, what, check):
    """Names the group, runs `check` (the kernel against the reference) and returns the output layer's
    (fan_in, width, inp, w, b) at the seed's shape."""
    fan_in, width = 500, 784
    benchmark.group = f"kernel {what} {ROWS}x{fan_in}->{width}"
    check(backend, rand, ROWS, fan_in, width)
    return (fan_in, width, *(backend.asarray(a) for a in kc.layer_inputs(rand, ROWS, fan_in, width)))


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_output_forward_with_loss(benchmark, backend, rand):
    fan_in, width, inp, w, b = _output_layer(benchmark, backend, rand, "output_forward+loss",
                                             lambda *a: kc.check_output(*a, "xent"))
    x = backend.asarray(rand.uniform(0, 1, (ROWS, width)))
    dlogits, loss = backend.empty((ROWS, width)), backend.zeros(2, dtype=np.float64)
    timed(benchmark, backend, lambda: backend.output_forward(dlogits, loss, inp, w, b, x, "xent"),
          flops=2 * ROWS * fan_in * width + 10 * ROWS * width,
          nbytes=F32 * (ROWS * fan_in + fan_in * width + width + 2 * ROWS * width))


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_output_backward(benchmark, backend, rand):
    fan_in, width, inp, w, _ = _output_layer(benchmark, backend, rand, "dense_backward (output)",
                                             lambda *a: kc.check_dense(*a, "identity"))
    dout = backend.asarray(rand.normal(0, 1, (ROWS, width)))
    dinp, dw, db = backend.empty((ROWS, fan_in)), backend.empty((fan_in, width)), backend.empty(width)
    timed(benchmark, backend, lambda: backend.dense_backward(dinp, dw, db, dout, inp, w, None, "identity"),
          flops=4 * ROWS * fan_in * width + ROWS * width,
          nbytes=F32 * (ROWS * width + 2 * ROWS * fan_in + 2 * fan_in * width + width))


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_adam_over_the_flat_buffer(benchmark, backend, rand):
    size = Layout(SEED_CFG).size
    benchmark.group = f"kernel adam {size:,} parameters"
    kc.check_adam(backend, rand, size, t=5)
    p, g, m = (backend.asarray(rand.normal(0, 1e-2, size)) for _ in range(3))
    g = g.reshape(1, size)          # grads is (S, P): one row shard, the whole batch's gradient
    v = backend.asarray(rand.normal(0, 1e-2, size) ** 2)
    counters = _counters(backend, 0, 10)
    timed(benchmark, backend, lambda: backend.adam_update(p, g, m, v, counters, 1e-3, 0.9, 0.999, 1e-8),
          flops=12 * size, nbytes=F32 * 7 * size)    # reads p, g, m, v; writes p, m, v


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_gather_batch(benchmark, backend, rand, mnist):
    benchmark.group = f"kernel gather_batch {ROWS}x784 from uint8"
    kc.check_gather(backend, rand, ROWS)
    data = backend.asarray(mnist.train_x, dtype=np.uint8)
    idx = backend.asarray(rand.permutation(len(mnist.train_x))[:ROWS], dtype=np.int64)
    x = backend.empty((ROWS, 784))
    timed(benchmark, backend, lambda: backend.gather_batch(x, data, idx), flops=ROWS * 784,
          nbytes=ROWS * 784 * (1 + F32))
