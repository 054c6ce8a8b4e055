"""Every kernel of every backend against the float64 reference, on fresh random inputs at awkward sizes.

One module for all backends (tests/backends.py: which, and the shape lists); the checks themselves are in
kernel_cases.py. The reference's own gradients are checked by finite differences in test_reference.py.
"""
import numpy as np
import pytest

import backends
import kernel_cases as kc
from tolerances import AWKWARD_ROWS, TOL, tolerance_for
from fastvae import rng
from fastvae.backends import contract
from fastvae.constants import ACTIVATIONS, ENCODERS, RECONSTRUCTIONS


@pytest.mark.parametrize("name", [pytest.param(n, marks=[pytest.mark.gpu] if n == "gpu" else [])
                                  for n in backends.BACKENDS])
def test_the_backend_has_exactly_the_contract(name):
    be = backends.load(name)
    assert isinstance(be, contract.Backend)
    for kernel in contract.KERNELS:
        assert callable(getattr(be, kernel)), kernel
    assert be.dtype == np.float32


@pytest.mark.parametrize("name,rows,width,_,__", backends.cases([(w, 0) for w in backends.DATA_WIDTHS],
                                                                 work=lambda a, b: a))
@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_gather(rand, name, rows, width, _, __, dtype):
    kc.check_gather(backends.load(name), rand, rows, width, dtype)


@pytest.mark.parametrize("name,rows,fan_in,fan_out,activation", backends.cases(backends.DENSE_SHAPES, ACTIVATIONS))
def test_dense(rand, name, rows, fan_in, fan_out, activation):
    kc.check_dense(backends.load(name), rand, rows, fan_in, fan_out, activation)


@pytest.mark.parametrize("zeros", [0.81, 0.5])
@pytest.mark.parametrize("name,rows,fan_in,fan_out,activation", [
    # (the CUDA kernels have no path for zeros: at the seed's shape, 4-5 s each in the emulator, they would run
    # test_dense's seed-shape case again)
    case for case in backends.cases([(784, 500), (101, 37)], ["elu", "identity"])
    if not case.id.startswith(f"gpu-emulated-{backends.SEED_ROWS}x784x500")])
def test_dense_on_a_mostly_zero_input(rand, name, rows, fan_in, fan_out, activation, zeros):
    """Inputs mostly zeros, as MNIST's pixels are (the cpu backend skips them below its SPARSE_DENSITY), and half."""
    kc.check_dense(backends.load(name), rand, rows, fan_in, fan_out, activation, zeros)


@pytest.mark.parametrize("name,rows,fan_in,fan_out,activation",
                         backends.cases([(784, 500), (37, 53)], ACTIVATIONS))
def test_first_layer_backward_without_input_gradient(rand, name, rows, fan_in, fan_out, activation):
    kc.check_first_layer_backward(backends.load(name), rand, rows, fan_in, fan_out, activation)


@pytest.mark.parametrize("first_layer", [False, True])
@pytest.mark.parametrize("name,rows,fan_in,fan_out,activation",
                         [p for p in backends.cases([(784, 500), (37, 53)], ACTIVATIONS)
                          if p.values[0] in ("cpu", "cpu-bf16")])
def test_backward_without_weight_gradient(rand, name, rows, fan_in, fan_out, activation, first_layer):
    """The backward the step runs on a backend with weight_update (the gpu has none)."""
    kc.check_backward_without_weight_gradient(backends.load(name), rand, rows, fan_in, fan_out, activation,
                                              first_layer)


@pytest.mark.parametrize("name,rows,fan_in,latent,encoder",
                         backends.cases(backends.HEADS_SHAPES, ENCODERS, work=lambda a, b: 2 * a * b))
def test_heads(rand, name, rows, fan_in, latent, encoder):
    kc.check_heads(backends.load(name), rand, rows, fan_in, latent, encoder)


@pytest.mark.parametrize("name,rows,fan_in,fan_out,activation", backends.cases([(37, 53)], ACTIVATIONS, rows=(7,)))
def test_a_nan_in_a_layers_input_comes_out_as_nan(rand, name, rows, fan_in, fan_out, activation):
    """A diverging step's NaN must reach the loss, where the divergence guard sees it: a NaN in one row's input makes
    that row's outputs NaN whatever the activation (relu's z < 0 ? 0 : z lets it through, as np.maximum does; one
    written z > 0 ? z : 0 made it 0 and hid it: a mutant no test caught), the other rows' as the reference's."""
    be = backends.load(name)
    inp, w, b = kc.layer_inputs(rand, rows, fan_in, fan_out)
    inp[2, 5] = np.nan
    buf = kc.Buffers(be)
    out = buf.out((rows, fan_out))
    be.dense_forward(out, buf.inp(inp), buf.inp(w), buf.inp(b), activation)
    got = kc.host(be, out)
    assert np.isnan(got[2]).all(), got[2]
    expect = np.empty((rows, fan_out))
    kc.ref.dense_forward(expect, *(a.astype(np.float64) for a in (inp, w, b)), activation)
    assert np.isnan(expect[2]).all() and not np.isnan(np.delete(got, 2, axis=0)).any()


@pytest.mark.parametrize("name,rows,fan_in,latent,_", backends.cases([(13, 3)], rows=(7,), work=lambda a, b: 2 * a * b))
def test_the_sigma_forms_kl_is_finite_where_sigma_is_zero(rand, name, rows, fan_in, latent, _):
    """The sigma form's KL takes log(1e-10 + sigma^2), finite at sigma = 0 (a head whose weights and bias are zero):
    the reference's value, where log(sigma^2) would give inf (a mutant no test caught: the tests keep sigma away
    from 0 for their gradients' sake)."""
    be = backends.load(name)
    inp, w, b = kc.layer_inputs(rand, rows, fan_in, 2 * latent)
    w[:, latent:], b[latent:] = 0.0, 0.0
    counters = np.array([5, 9, 0], dtype=np.int64)
    buf = kc.Buffers(be)
    z, mu_logvar = buf.out((rows, latent)), buf.out((rows, 2 * latent))
    loss = buf.out(2, np.float64, fill=[0.0, 0.0])
    be.heads_forward(z, mu_logvar, loss, buf.inp(inp), buf.inp(w), buf.inp(b), buf.inp(counters, np.int64), 0,
                     "sigma")
    e_z, e_ml, e_loss = np.empty((rows, latent)), np.empty((rows, 2 * latent)), np.zeros(2)
    kc.ref.heads_forward(e_z, e_ml, e_loss, *(a.astype(np.float64) for a in (inp, w, b)), counters, 0, "sigma")
    kl = float(kc.host(be, loss)[1])
    # 0.5 sum(mu^2 - 1 - log 1e-10) per coding: mu's error is all there is, at most the product's tolerance of its
    # terms' sizes (err); the KL moves by mu err + err^2 / 2 per coding
    mu = e_ml[:, :latent]
    err = tolerance_for(be) * (np.abs(inp) @ np.abs(w[:, :latent]) + np.abs(b[:latent])).astype(np.float64)
    bound = float(np.sum((np.abs(mu) + err / 2) * err)) + TOL["float32"] * abs(e_loss[1])
    assert np.isfinite(kl) and abs(kl - e_loss[1]) <= bound, (kl, e_loss[1], bound)


@pytest.mark.parametrize("name,rows,fan_in,width,reconstruction",
                         backends.cases(backends.OUTPUT_SHAPES, RECONSTRUCTIONS))
def test_output(rand, name, rows, fan_in, width, reconstruction):
    kc.check_output(backends.load(name), rand, rows, fan_in, width, reconstruction)


@pytest.mark.parametrize("shards", [1, 2, 3])
@pytest.mark.parametrize("name,_,size,t,__", backends.cases(backends.ADAM_SIZES, rows=(1,), work=lambda a, b: 0))
def test_adam(rand, name, _, size, t, __, shards):
    kc.check_adam(backends.load(name), rand, size, t, shards)


# weight_update's layer lists: the seed's (1.3 M parameters: split between two workers), and awkward ones (no fan-in
# or fan-out a multiple of 16 or 32, a single 1 x 1 layer)
UPDATE_LAYERS = {
    "seed": ((784, 500), (500, 500), (500, 40), (20, 500), (500, 500), (500, 784)),
    "awkward": ((7, 33), (33, 65), (65, 101), (101, 3)),
    "wide": ((100, 257), (257, 37), (37, 1000)),
    "single": ((1, 1),),
}


@pytest.mark.parametrize("zero_columns", [False, True])
@pytest.mark.parametrize("count", [1, 2])
@pytest.mark.parametrize("layers", list(UPDATE_LAYERS))
@pytest.mark.parametrize("rows", AWKWARD_ROWS)
@pytest.mark.parametrize("name", ["cpu", "cpu-bf16"])
def test_weight_update(rand, name, rows, layers, count, zero_columns):
    """The backends that have weight_update (the gpu forms weight gradients in dense_backward), on one thread and
    split between two; with whole columns of the first layer's input zero, as MNIST's borders are."""
    be = backends.load(name)
    before = be.workers.count
    try:
        be.workers.count = count
        kc.check_weight_update(be, rand, rows, UPDATE_LAYERS[layers], t=int(rand.integers(0, 400)),
                               zero_columns=zero_columns)
    finally:
        be.workers.count = before


def test_weight_update_refuses_shapes_that_do_not_make_the_buffer():
    be = backends.load("cpu")
    x, dz = np.zeros((3, 4), np.float32), np.zeros((3, 5), np.float32)
    for inputs, douts, size in (((x,), (dz,), 24), ((x, x), (dz,), 25), ((x,), (np.zeros((2, 5), np.float32),), 25)):
        with pytest.raises(ValueError, match="weight_update"):
            be.weight_update(np.zeros(size, np.float32), np.zeros(size, np.float32), np.zeros(size, np.float32),
                             np.zeros(size, np.float32), np.zeros(3, np.int64), inputs, douts, 1e-3, 0.9, 0.999, 1e-8)


@pytest.mark.parametrize("name,_,rows,cols,seed_step", backends.cases(
    [(1, 1), (7, 3), (257, 20)], [(0, 0), (5, 9), (2**62 + 11, 2**33 + 5)], rows=(1,), work=lambda a, b: 0))
def test_noise_equals_the_reference_stream(name, _, rows, cols, seed_step):
    """z = mu + sigma eps with mu = 0, sigma = 1 (logvar = 0) is eps itself: the backend's Philox + Box-Muller
    draws the spec's normals bit for bit, or within one float32 ulp (the two libms' last bit, DESIGN.md)."""
    be = backends.load(name)
    seed, step = seed_step
    z, ml = be.zeros((rows, cols)), be.zeros((rows, 2 * cols))
    want = rng.normals(seed, rng.STREAM_TRAIN, step, rows, cols)
    # the whole draw, then its rows in two shards (rows first.. drawn with COUNTER_ROW = first): the same numbers
    first = rows // 2 + 1 if rows > 1 else 0
    for lo, hi in ((0, rows), (0, first), (first, rows)):
        if hi == lo:
            continue
        z, ml = be.zeros((hi - lo, cols)), be.zeros((hi - lo, 2 * cols))
        counters = be.asarray(np.array([seed, step, lo]), dtype=np.int64)
        be.heads_forward(z, ml, be.zeros(2, dtype=np.float64), be.zeros((hi - lo, 1)), be.zeros((1, 2 * cols)),
                         be.zeros(2 * cols), counters, rng.STREAM_TRAIN, "gamma")
        got = np.asarray(be.to_host(z), dtype=np.float32)
        ulps = np.abs(got.view(np.int32).astype(np.int64) - want[lo:hi].view(np.int32))
        assert ulps.max() <= 1 and np.mean(ulps == 0) > 0.99, (lo, hi)


def test_the_shape_lists_cover_the_awkward_sizes():
    """Each backend gets the seed's shapes at batch 150 and at least one width no tile divides, at 1 and 257 rows."""
    for name in backends.BACKENDS:
        dense = [(n, a, b) for n in AWKWARD_ROWS for a, b in backends.DENSE_SHAPES
                 if backends.affordable(name, n, a * b, (a, b) == backends.DENSE_SHAPES[0])]
        assert (150, 784, 500) in dense
        assert any(n == 257 and b % 32 and b % 16 for n, a, b in dense)
        assert any(n == 1 for n, a, b in dense)
