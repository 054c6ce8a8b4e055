"""fastvae.backends.cpu.row_losses (the IWAE bound's log-likelihoods on the float32 backends): each row's
reconstruction loss against the float64 formula, within the float32 row sum's bound, and the training loss's bits
row by row (its total is the rows' added in order)."""
import numpy as np
import pytest

from tolerances import AWKWARD_ROWS, float32_row_sum_tolerance
from fastvae.backends import cpu
from fastvae.constants import LOSS_RECONSTRUCTION


def _reference(logits, x, mse):
    """Per-row loss terms in float64: the stable sigmoid cross-entropy, or (sigmoid(l) - x)^2."""
    l, t = logits.astype(np.float64), x.astype(np.float64)
    if mse:
        return (0.5 * (1.0 + np.tanh(0.5 * l)) - t) ** 2
    return np.maximum(l, 0.0) - l * t + np.log1p(np.exp(-np.abs(l)))


@pytest.mark.parametrize("mse", [False, True], ids=["xent", "mse"])
@pytest.mark.parametrize("d", [784, 1, 37, 101, 3072])
@pytest.mark.parametrize("n", AWKWARD_ROWS)
def test_row_losses_are_the_float64_formula_and_the_training_losses_bits(rand, n, d, mse):
    logits = (rand.standard_normal((n, d)) * rand.choice([0.5, 5.0, 30.0])).astype(np.float32)
    x = rand.random((n, d)).astype(np.float32)
    x[:, ::3] = np.round(x[:, ::3])                  # some pixels at exactly 0 or 1, as MNIST's margins
    losses = np.full(n, np.nan)
    cpu.row_losses(losses, logits.copy(), x, mse)
    terms = _reference(logits, x, mse)
    want = terms.sum(axis=1)
    tol = float32_row_sum_tolerance(d, np.abs(terms).sum(axis=1))
    assert np.all(np.abs(losses - want) <= tol), (np.abs(losses - want) - tol).max()
    # the training loss's pass (bias 0: the logits hold it) sums the same row totals in row order
    loss = np.zeros(2)
    cpu._bias_loss_dlogits(logits.copy(), np.zeros(d, np.float32), x, loss, mse)
    total = 0.0
    for row in losses:
        total += row
    assert loss[LOSS_RECONSTRUCTION] == total


def test_row_losses_write_into_a_slice_of_the_output_and_read_x_only(rand):
    """The IWAE chunks write into a slice of one output array; x is read only."""
    logits = rand.standard_normal((9, 40)).astype(np.float32)
    x = rand.random((9, 40)).astype(np.float32)
    before = x.copy()
    out = np.full(20, -1.0)
    cpu.row_losses(out[3:12], logits.copy(), x, False)
    np.testing.assert_array_equal(x, before)
    assert np.all(out[:3] == -1.0) and np.all(out[12:] == -1.0) and np.all(out[3:12] > 0)
