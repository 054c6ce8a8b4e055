"""The gpu backend on a real device (CuPy): what it is, and one epoch of MNIST. Skipped, with the reason, without CuPy
or a device. The kernels one by one are in test_kernels.py, whole steps (at the seed's sizes too) and the captured
step in test_gpu_steps.py: all of them run on the device too when there is one."""
import numpy as np
import pytest

from fastvae.backends import contract, gpu
from fastvae.constants import LOSS_CHECK_INTERVAL_DEVICE

pytestmark = pytest.mark.gpu

_REASON = gpu.unavailable_reason()
if _REASON is not None:
    pytest.skip(f"gpu backend unavailable: {_REASON}", allow_module_level=True)


def test_the_backend_is_the_checked_contract_with_graphs():
    from fastvae.backends import get_backend
    be = gpu.load()
    assert isinstance(be, contract.Backend) and get_backend("gpu") is be and get_backend("auto") is be
    assert be.name == "gpu" and be.dtype == np.float32
    assert callable(be.capture) and be.loss_check_interval == LOSS_CHECK_INTERVAL_DEVICE


def test_one_epoch_of_mnist():
    """The seed's model for one epoch: the test loss lands where the cpu backend's does (README: 120.1)."""
    from fastvae import VAE
    from fastvae.data import load_mnist
    mnist = load_mnist()
    vae = VAE(hidden=(500, 500), latent=20, backend="gpu", seed=0)
    vae.fit(mnist.train_x, epochs=1, batch_size=150)
    result = vae.evaluate(mnist.test_x)
    assert np.isfinite(result["total"]) and 110 < result["total"] < 135, result
    assert vae.backend.name == "gpu"
