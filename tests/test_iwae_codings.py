"""fastvae.backends.iwae_codings (the IWAE bound's codings, drawn in the decoder's chunks on the float32 backends)
against evaluate's float64 NumPy formulas (the reference backend's path), on fresh random inputs at awkward sizes."""
import math

import numpy as np
import pytest

from fastvae import rng
from fastvae.backends.iwae_codings import iwae_codings
from fastvae.rng import STREAM_IWAE

from tolerances import AWKWARD_ROWS, float64_sum_order_tolerance

_LOG_2PI = math.log(2.0 * math.pi)


def _numpy_codings(mu, sigma, logvar, images, s0, s1, seed):
    """evaluate._float64_log_weights' codings, for every row of the (image, sample) grid: z float64, the two sums'
    terms, and log p(z) - log q(z | x)."""
    owner = np.repeat(images, s1 - s0)
    eps = np.concatenate([rng.normals(seed, STREAM_IWAE, i, s1 - s0, mu.shape[1], first_row=s0)
                          for i in images]).astype(np.float64)
    z = mu[owner] + sigma[owner] * eps
    pz_terms, qz_terms = z ** 2 + _LOG_2PI, eps ** 2 + logvar[owner] + _LOG_2PI
    return z, pz_terms, qz_terms, -0.5 * pz_terms.sum(axis=1) + 0.5 * qz_terms.sum(axis=1)


@pytest.mark.parametrize("rows", AWKWARD_ROWS)
@pytest.mark.parametrize("latent", [1, 7, 20, 33])
def test_a_chunk_of_codings_is_numpys_draw_and_formula(rows, latent):
    """A chunk that starts inside an image's samples and ends inside another's, the images out of order: z bit for
    bit (the same noise and the same float64 operations), the log-ratio within two float64 sum orders."""
    r = np.random.default_rng([rows, latent])
    n = 9
    mu = r.standard_normal((n, latent)) * 2
    logvar = r.standard_normal((n, latent))
    sigma = np.exp(0.5 * logvar)
    per = int(r.integers(1, 60))
    images = r.permutation(n).astype(np.int64)
    s0 = int(r.integers(0, 500))
    seed = int(r.integers(0, 2 ** 63))
    total = len(images) * per
    # (the grid grown until the chunk fits: rows past one image's samples cross into the next image's draw)
    while total < rows + 3:
        images = np.concatenate([images, r.permutation(n).astype(np.int64)])
        total = len(images) * per
    first = int(r.integers(0, total - rows + 1))
    z = np.full((rows, latent), np.nan, dtype=np.float32)
    ratio = np.full(rows, np.nan)
    iwae_codings(z, ratio, mu, sigma, logvar, images, s0, s0 + per, first, seed, STREAM_IWAE)
    z64, pz_terms, qz_terms, expected = _numpy_codings(mu, sigma, logvar, images, s0, s0 + per, seed)
    part = slice(first, first + rows)
    assert np.array_equal(z, z64[part].astype(np.float32))
    bound = 0.5 * (float64_sum_order_tolerance(latent, np.abs(pz_terms[part]).sum(axis=1))
                   + float64_sum_order_tolerance(latent, np.abs(qz_terms[part]).sum(axis=1)))
    assert np.all(np.abs(ratio - expected[part]) <= bound), np.max(np.abs(ratio - expected[part]) / bound)


def test_the_codings_are_a_pure_function_of_seed_image_and_sample():
    """A sample's coding does not depend on the chunk it falls in: one chunk of the grid or the grid cut into chunks
    of every size give the same bits; another seed draws other codings."""
    r = np.random.default_rng(11)
    n, latent, per = 4, 5, 13
    mu, logvar = r.standard_normal((n, latent)), r.standard_normal((n, latent))
    sigma = np.exp(0.5 * logvar)
    images = np.array([3, 0, 2], dtype=np.int64)
    whole_z, whole_r = np.empty((3 * per, latent), np.float32), np.empty(3 * per)
    iwae_codings(whole_z, whole_r, mu, sigma, logvar, images, 4, 4 + per, 0, 7, STREAM_IWAE)
    for size in (1, 5, per, 2 * per - 1):
        for start in range(0, 3 * per, size):
            stop = min(start + size, 3 * per)
            z, ratio = np.empty((stop - start, latent), np.float32), np.empty(stop - start)
            iwae_codings(z, ratio, mu, sigma, logvar, images, 4, 4 + per, start, 7, STREAM_IWAE)
            assert np.array_equal(z, whole_z[start:stop]) and np.array_equal(ratio, whole_r[start:stop])
    other = np.empty_like(whole_z)
    iwae_codings(other, np.empty(3 * per), mu, sigma, logvar, images, 4, 4 + per, 0, 8, STREAM_IWAE)
    assert not np.any(other == whole_z)
