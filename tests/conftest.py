"""Shared fixtures: fresh random inputs and a small configuration (the tolerance table is in tolerances.py).

Every test that draws random inputs takes `rand`, seeded from the OS and printed with the test's output; a failing
test's seed is replayed with FASTVAE_TEST_SEED=<seed> python -m pytest <the test's node id>.
"""
import os
import signal

import numpy as np
import pytest

from fastvae.config import Config

SEED_VARIABLE = "FASTVAE_TEST_SEED"

# A fixed thread count for every fit the suite makes (in-process and in CLI subprocesses): OpenBLAS's sums depend on
# its thread count, so the adaptive count (fastvae.threads) would make the bit-exact comparisons (resume, the same
# model's same number) depend on the machine's load. An explicit OMP_NUM_THREADS is a user's choice and wins over
# the adaptation; tests/test_threads.py exercises the adaptation itself with its detection patched.
os.environ.setdefault("OMP_NUM_THREADS", str(len(os.sched_getaffinity(0))))

# The Ctrl-C tests send real SIGINTs to this process and to CLI subprocesses. A suite started in the background by a
# script (`nohup python -m pytest &`) inherits SIGINT ignored, and fastvae rightly keeps ignoring it there (a run
# started that way must not stop for a Ctrl-C meant for the script): those tests would then fail for the way the
# suite was started. Python's own handler is what an interactive start has, and a child's exec resets it to the
# default, so the subprocesses get an ordinary SIGINT too.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture
def rand():
    """A fresh generator per test, seeded from the OS (or from $FASTVAE_TEST_SEED), the seed printed on failure."""
    seed = int(os.environ.get(SEED_VARIABLE) or np.random.SeedSequence().entropy % 2**32)
    print(f"random seed for this test: {seed} (replay: {SEED_VARIABLE}={seed})")
    return np.random.default_rng(seed)


@pytest.fixture
def small_cfg():
    return Config(hidden=(13, 9), latent=3, batch_size=7, epochs=1)
