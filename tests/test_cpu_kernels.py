"""Every Numba kernel against the float64 reference on fresh random inputs at awkward sizes."""
import numpy as np
import pytest

import kernel_cases as kc
from tolerances import AWKWARD_ROWS
from fastvae.backends import cpu

SHAPES = [(784, 500), (37, 53), (500, 40), (20, 257), (1, 3)]


@pytest.mark.parametrize("rows", AWKWARD_ROWS)
def test_gather(rand, rows):
    kc.check_gather(cpu, rand, rows)


@pytest.mark.parametrize("elu", [True, False], ids=["dense_elu", "dense"])
@pytest.mark.parametrize("fan_in,fan_out", SHAPES)
@pytest.mark.parametrize("rows", AWKWARD_ROWS)
def test_dense(rand, rows, fan_in, fan_out, elu):
    kc.check_dense(cpu, rand, rows, fan_in, fan_out, elu)


@pytest.mark.parametrize("fan_in,latent", [(500, 20), (13, 3), (9, 1), (33, 7)])
@pytest.mark.parametrize("rows", AWKWARD_ROWS)
def test_heads(rand, rows, fan_in, latent):
    kc.check_heads(cpu, rand, rows, fan_in, latent)


@pytest.mark.parametrize("fan_in,width", [(500, 784), (13, 37), (1, 1)])
@pytest.mark.parametrize("rows", AWKWARD_ROWS)
def test_output(rand, rows, fan_in, width):
    kc.check_output(cpu, rand, rows, fan_in, width)


@pytest.mark.parametrize("fan_in,latent", [(500, 20), (13, 3), (9, 1)])
@pytest.mark.parametrize("rows", AWKWARD_ROWS)
def test_heads_sigma_variant(rand, rows, fan_in, latent):
    kc.check_heads_sigma(cpu, rand, rows, fan_in, latent)


@pytest.mark.parametrize("fan_in,width", [(500, 784), (13, 37)])
@pytest.mark.parametrize("rows", AWKWARD_ROWS)
def test_output_mse_variant(rand, rows, fan_in, width):
    kc.check_output_mse(cpu, rand, rows, fan_in, width)


@pytest.mark.parametrize("size,t", [(1, 0), (1000, 0), (12345, 7), (1316824, 399)])
def test_adam(rand, size, t):
    kc.check_adam(cpu, rand, size, t)


def test_cpu_noise_equals_the_reference_stream():
    """The Numba Philox + Box-Muller draws the spec's normals bit for bit (or within 1 float32 ulp)."""
    from fastvae import rng
    from fastvae.backends.cpu_philox import fill_normals
    for rows, cols, seed, step in [(1, 1, 0, 0), (7, 3, 5, 9), (257, 20, 2**62 + 11, 2**33 + 5)]:
        got = np.empty((rows, cols), np.float32)
        fill_normals(got, seed, rng.STREAM_TRAIN, step)
        want = rng.normals(seed, rng.STREAM_TRAIN, step, rows, cols)
        ulps = np.abs(got.view(np.int32).astype(np.int64) - want.view(np.int32))
        assert ulps.max() <= 1 and np.mean(ulps == 0) > 0.99
