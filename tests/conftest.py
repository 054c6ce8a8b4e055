"""Shared fixtures: fresh random inputs and a small configuration (the tolerance table is in tolerances.py)."""
import numpy as np
import pytest

from fastvae.config import Config


@pytest.fixture
def rand():
    """A fresh generator per test, seeded from the OS, with the seed printed on failure."""
    seed = np.random.SeedSequence().entropy % 2**32
    print(f"random seed for this test: {seed}")
    return np.random.default_rng(seed)


@pytest.fixture
def small_cfg():
    return Config(hidden=(13, 9), latent=3, batch_size=7, epochs=1)
