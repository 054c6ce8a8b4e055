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


def pytest_benchmark_update_json(config, benchmarks, output_json):
    """The saved report is strict JSON (RFC 8259): a NaN or Inf anywhere in it (a statistic of one round, a
    diverged peer's loss) is written as null."""
    from fastvae.jsonfile import strict
    output_json.update(strict(output_json))


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
