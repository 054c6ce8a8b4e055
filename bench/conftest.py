"""Benchmark fixtures and the machine recorded in every JSON (helpers shared by the suites: benchlib.py)."""
import os

import numpy as np
import pytest

import benchlib  # noqa: F401  (puts tests/ on the path: kernel_cases, tolerances)
from fastvae import machine


def pytest_benchmark_update_machine_info(config, machine_info):
    """CPU model, library versions and the BLAS-related environment, beside every number."""
    import numba
    machine_info["fastvae_machine"] = machine.describe()
    machine_info["numpy"] = np.__version__
    machine_info["numba"] = numba.__version__
    machine_info["env"] = {k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE",
                                                      "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS")
                           if k in os.environ}


@pytest.fixture
def rand():
    return np.random.default_rng(20261125)


@pytest.fixture(scope="session")
def mnist():
    from fastvae.data import load_mnist
    return load_mnist()


@pytest.fixture
def backend(request):
    from fastvae.backends import get_backend
    return get_backend(request.param)
