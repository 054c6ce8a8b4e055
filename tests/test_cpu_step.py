"""A whole training step on the cpu backend against the float64 reference."""
import pytest

import kernel_cases as kc
from fastvae.backends import get_backend
from fastvae.config import Config
from fastvae.constants import HIDDEN_ACTIVATIONS


@pytest.mark.parametrize("hidden,latent,rows", [((13, 9), 3, 7), ((31,), 2, 1), ((500, 500), 20, 150),
                                                 ((37, 11, 5), 4, 257)])
def test_training_steps_match_the_reference(rand, hidden, latent, rows):
    kc.check_train_steps(get_backend("cpu"), Config(hidden=hidden, latent=latent, batch_size=rows), rand, rows)


@pytest.mark.parametrize("encoder,reconstruction", [("sigma", "xent"), ("gamma", "mse"), ("sigma", "mse")])
def test_training_steps_of_the_seed_variants_match_the_reference(rand, encoder, reconstruction):
    cfg = Config(hidden=(37, 11), latent=4, batch_size=7, encoder=encoder, reconstruction=reconstruction)
    kc.check_train_steps(get_backend("cpu"), cfg, rand, 7)


@pytest.mark.parametrize("activation", [a for a in HIDDEN_ACTIVATIONS if a != "elu"])
def test_training_steps_with_other_activations_match_the_reference(rand, activation):
    cfg = Config(hidden=(37, 11), latent=4, batch_size=7, activation=activation)
    kc.check_train_steps(get_backend("cpu"), cfg, rand, 7)


@pytest.mark.parametrize("width,image_shape", [(64, (8, 8)), (1, None), (3072, None)])
def test_training_steps_at_other_data_widths_match_the_reference(rand, width, image_shape):
    cfg = Config(hidden=(37, 11), latent=4, batch_size=7, input_width=width, image_shape=image_shape)
    kc.check_train_steps(get_backend("cpu"), cfg, rand, 7)
