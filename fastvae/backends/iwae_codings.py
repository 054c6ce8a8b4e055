"""The IWAE bound's codings, drawn on the thread that decodes them (fastvae.evaluate on the float32 backends).

Reads mu, sigma, logvar (images, latent) float64; writes z (rows, latent) float32 and log_ratio (rows,) float64.
The formulas are evaluate's float64 NumPy ones (its reference and float64 path), with the same noise: on the calling
thread they took 7 % of a k = 5000 bound on the EPYC (rng.normals in NumPy, 2 ms per 2048 samples, while the workers
waited), here 0.75 ms per 2048 samples spread over the threads that decode them.
"""
import math

import numpy as np
from numba import njit

from .cpu_philox import fill_normals

_LOG_2PI = math.log(2.0 * math.pi)


@njit(cache=True, nogil=True, error_model="numpy")
def iwae_codings(z, log_ratio, mu, sigma, logvar, images, s0, s1, first, seed, stream):
    """Rows first .. first + len(z) - 1 of the (image, sample) grid images x [s0, s1), image by image (row q is
    sample s0 + q % (s1 - s0) of image images[q // (s1 - s0)]): z = mu + sigma eps, formed in float64 and rounded to
    float32 (what the decoder takes), and log_ratio = log p(z) - log q(z | x) = -1/2 sum (z^2 + log 2 pi) + 1/2 sum
    (eps^2 + logvar + log 2 pi), with eps = rng.normals(seed, stream, image, ..., first_row=sample): the image's
    index is the noise's step, the sample's its row (fastvae.evaluate's docstring). The sums run in column order.
    z (rows, latent) float32 and log_ratio (rows,) float64 are written; mu, sigma = exp(logvar / 2) and logvar
    (images, latent) float64 read, by the image's index."""
    per = s1 - s0
    rows, latent = z.shape
    q = 0
    while q < rows:
        g = first + q
        i, s = images[g // per], s0 + g % per
        run = min(rows - q, per - g % per)        # the rows of this image in the chunk, one draw
        fill_normals(z[q:q + run], seed, stream, i, s)
        for r in range(q, q + run):
            pz = 0.0
            qz = 0.0
            for c in range(latent):
                eps = np.float64(z[r, c])
                zc = mu[i, c] + sigma[i, c] * eps
                z[r, c] = np.float32(zc)
                pz += zc * zc + _LOG_2PI
                qz += eps * eps + logvar[i, c] + _LOG_2PI
            log_ratio[r] = -0.5 * pz + 0.5 * qz
        q += run
