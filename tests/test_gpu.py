"""The gpu backend on a real device (CuPy): every kernel against the float64 reference at awkward sizes, whole steps
against the reference and the cpu backend, and one epoch of MNIST. Skipped, with the reason, without CuPy or a
device; the same launch code runs on the CPU in CI through the emulator (tests/test_cuda_emulation.py)."""
import numpy as np
import pytest

import kernel_cases as kc
from tolerances import AWKWARD_ROWS
from fastvae.backends import gpu
from fastvae.config import Config

pytestmark = pytest.mark.gpu

_REASON = gpu.unavailable_reason()
if _REASON is not None:
    pytest.skip(f"gpu backend unavailable: {_REASON}", allow_module_level=True)

SHAPES = [(784, 500), (37, 53), (500, 40), (20, 257), (1, 3)]


@pytest.fixture(scope="module")
def be():
    return gpu.load()


def test_the_backend_is_this_module_with_the_contract_bound(be):
    from fastvae.backends import reference
    assert be is gpu and be.name == "gpu" and be.dtype == np.float32
    for name in gpu.CONTRACT + gpu.HOOKS:
        assert callable(getattr(be, name)) or name == "xp", name
    assert set(gpu.CONTRACT) <= set(dir(reference))


@pytest.mark.parametrize("rows", AWKWARD_ROWS)
def test_gather(be, rand, rows):
    kc.check_gather(be, rand, rows)


@pytest.mark.parametrize("elu", [True, False], ids=["dense_elu", "dense"])
@pytest.mark.parametrize("fan_in,fan_out", SHAPES)
@pytest.mark.parametrize("rows", AWKWARD_ROWS)
def test_dense(be, rand, rows, fan_in, fan_out, elu):
    kc.check_dense(be, rand, rows, fan_in, fan_out, elu)


@pytest.mark.parametrize("fan_in,latent", [(500, 20), (13, 3), (9, 1), (33, 7)])
@pytest.mark.parametrize("rows", AWKWARD_ROWS)
def test_heads(be, rand, rows, fan_in, latent):
    kc.check_heads(be, rand, rows, fan_in, latent)


@pytest.mark.parametrize("fan_in,width", [(500, 784), (13, 37), (1, 1)])
@pytest.mark.parametrize("rows", AWKWARD_ROWS)
def test_output(be, rand, rows, fan_in, width):
    kc.check_output(be, rand, rows, fan_in, width)


@pytest.mark.parametrize("fan_in,latent", [(500, 20), (13, 3), (33, 7)])
@pytest.mark.parametrize("rows", AWKWARD_ROWS)
def test_heads_sigma_variant(be, rand, rows, fan_in, latent):
    kc.check_heads_sigma(be, rand, rows, fan_in, latent)


@pytest.mark.parametrize("fan_in,width", [(500, 784), (13, 37), (1, 1)])
@pytest.mark.parametrize("rows", AWKWARD_ROWS)
def test_output_mse_variant(be, rand, rows, fan_in, width):
    kc.check_output_mse(be, rand, rows, fan_in, width)


@pytest.mark.parametrize("size,t", [(1, 0), (1000, 0), (12345, 7), (1316824, 399)])
def test_adam(be, rand, size, t):
    kc.check_adam(be, rand, size, t)


def test_noise_equals_the_reference_stream(be):
    """W = 0, b = 0: z = eps, the spec's normals within one float32 ulp (CUDA's and NumPy's libms)."""
    from fastvae import rng
    for rows, latent, seed, step_ in [(1, 1, 0, 0), (7, 3, 5, 9), (257, 20, 2**62 + 11, 2**33 + 5)]:
        z, stats = be.empty((rows, latent)), be.empty((rows, 2 * latent))
        be.heads_forward(z, stats, be.zeros(2, dtype=np.float64), be.zeros((rows, 4)), be.zeros((4, 2 * latent)),
                         be.zeros(2 * latent), be.asarray([seed, step_], dtype=np.int64), rng.STREAM_TRAIN)
        got = be.to_host(z)
        want = rng.normals(seed, rng.STREAM_TRAIN, step_, rows, latent)
        ulps = np.abs(got.view(np.int32).astype(np.int64) - want.view(np.int32))
        assert ulps.max() <= 1 and np.mean(ulps == 0) > 0.99


@pytest.mark.parametrize("hidden,latent,rows", [((13, 9), 3, 7), ((31,), 2, 1), ((500, 500), 20, 150),
                                                 ((37, 11, 5), 4, 257)])
def test_training_steps_match_the_reference(be, rand, hidden, latent, rows):
    kc.check_train_steps(be, Config(hidden=hidden, latent=latent, batch_size=rows), rand, rows)


@pytest.mark.parametrize("encoder,reconstruction", [("sigma", "xent"), ("gamma", "mse")])
def test_training_steps_of_the_variants_match_the_reference(be, rand, encoder, reconstruction):
    cfg = Config(hidden=(37, 11), latent=4, batch_size=150, encoder=encoder, reconstruction=reconstruction)
    kc.check_train_steps(be, cfg, rand, 150)


def test_training_steps_match_the_cpu_backend(be, rand):
    """Four steps of the seed's model from one state on the gpu and the cpu backend: same losses."""
    from fastvae import step
    from fastvae.backends import cpu
    from fastvae.params import Layout, he_init
    from tolerances import TOL
    cfg = Config(batch_size=150)
    layout = Layout(cfg)
    params = he_init(layout, seed=int(rand.integers(1 << 30)))
    data = rand.integers(0, 256, (600, 784)).astype(np.uint8)
    losses = []
    for b in (cpu, be):
        st, ws = step.State(b, layout, params, 7), step.Workspace(b, cfg, 150)
        d = b.asarray(data, dtype=np.uint8)
        run = []
        for k in range(4):
            ws.loss[...] = 0
            step.train_step(b, cfg, st, ws, d, b.asarray(np.arange(150) + 150 * k, dtype=np.int64))
            run.append(np.array(b.to_host(ws.loss), dtype=np.float64))
        losses.append(np.array(run))
    np.testing.assert_allclose(losses[1], losses[0], rtol=10 * TOL["float32_step"])


def test_replaying_the_captured_graph_trains_like_launching_every_step(be):
    kc.check_captured_steps(be)


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
