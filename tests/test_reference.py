"""The reference backend is the specification: its gradients are checked by central finite differences."""
import numpy as np
import pytest

from kernel_cases import sigma_away_from_zero
from tolerances import TOL, assert_close
from fastvae import step
from fastvae.backends import reference as ref
from fastvae.config import Config
from fastvae.params import Layout, he_init


def loss_and_grads(cfg, params, x, counters):
    layout = Layout(cfg)
    state = step.State(ref, layout, params, seed=int(counters[0]), step=int(counters[1]))
    ws = step.Workspace(ref, cfg, len(x))
    a = ws.rows(len(x))
    a.x[...] = x
    loss = np.zeros(2)
    step.forward(ref, cfg, state.weights, a, loss, state.counters, 0)
    step.backward(ref, cfg, state.weights, state.gradients, a, state.counters, 0)
    return loss.sum(), state.grads.copy()


@pytest.mark.parametrize("hidden,encoder,reconstruction", [
    ((13, 9), "gamma", "xent"), ((11,), "gamma", "xent"), ((6, 5, 4), "gamma", "xent"),
    ((13, 9), "sigma", "xent"), ((13, 9), "gamma", "mse"), ((7,), "sigma", "mse")])
def test_gradients_match_finite_differences(rand, hidden, encoder, reconstruction):
    """Every variant of the seed's model: the reference's analytic gradients against central differences."""
    cfg = Config(hidden=hidden, latent=3, batch_size=5, encoder=encoder, reconstruction=reconstruction)
    layout = Layout(cfg)
    params = he_init(layout, seed=int(rand.integers(1 << 30)), dtype=np.float64)
    params[layout.n_weights:] = rand.normal(0, 0.3, layout.size - layout.n_weights)  # non-zero biases
    if encoder == "sigma":     # near sigma = 0 the KL's third derivative (~ 4 / sigma^3) swamps a central difference
        sigma_away_from_zero(layout, params, cfg.latent)
    x = rand.uniform(0, 1, (5, 784))
    counters = np.array([int(rand.integers(1 << 40)), int(rand.integers(1000))])
    _, grads = loss_and_grads(cfg, params, x, counters)
    # every bias and a random sample of each layer's weights
    picks = [np.arange(layout.n_weights, layout.size)]
    for L in layout.layers:
        picks.append(L.w_offset + rand.choice(L.fan_in * L.fan_out, size=min(40, L.fan_in * L.fan_out),
                                              replace=False))
    h = 1e-5
    for i in np.concatenate(picks):
        p = params.copy()
        p[i] += h
        up, _ = loss_and_grads(cfg, p, x, counters)
        p[i] -= 2 * h
        down, _ = loss_and_grads(cfg, p, x, counters)
        fd = (up - down) / (2 * h)
        assert abs(fd - grads[i]) <= TOL["fd"] * max(1.0, abs(fd)) * 10, f"param {i}: fd {fd} vs grad {grads[i]}"


def test_loss_terms_match_their_definitions(rand):
    """Cross-entropy against the naive formula; KL of a standard normal is zero."""
    logits = rand.normal(0, 3, (4, 784))
    x = rand.uniform(0, 1, (4, 784))
    inp = np.eye(4, 4)
    w = np.zeros((4, 784))
    loss = np.zeros(2)
    dl = np.empty((4, 784))
    ref.output_forward(dl, loss, inp, w, np.zeros(784), x)  # zero logits: log 2 per pixel
    assert_close(loss[0], 4 * 784 * np.log(2.0), 1e-12)
    loss = np.zeros(2)
    ref.output_forward(dl, loss, np.eye(4), logits, np.zeros(784), x)
    p = 1 / (1 + np.exp(-logits))
    naive = -np.sum(x * np.log(p) + (1 - x) * np.log(1 - p))
    assert_close(loss[0], naive, 1e-10)
    assert_close(dl, p - x, 1e-12)


def test_kl_is_zero_at_the_prior_and_positive_elsewhere():
    n, latent, width = 3, 2, 4
    z, stats = np.empty((n, latent)), np.empty((n, 2 * latent))
    loss = np.zeros(2)
    ref.heads_forward(z, stats, loss, np.zeros((n, width)), np.zeros((width, 2 * latent)),
                      np.zeros(2 * latent), np.array([0, 0]), 0)
    assert loss[1] == 0.0
    ref.heads_forward(z, stats, loss, np.zeros((n, width)), np.zeros((width, 2 * latent)),
                      np.array([0.5, 0, 0, -1.0]), np.array([0, 0]), 0)
    assert loss[1] > 0.0


def test_first_adam_step_moves_each_parameter_by_lr_against_its_gradient(rand):
    g = rand.normal(0, 1, 1000)
    p = np.zeros(1000)
    m, v = np.zeros(1000), np.zeros(1000)
    counters = np.array([0, 0])
    ref.adam_update(p, g, m, v, counters, 0.001, 0.9, 0.999, 1e-8)
    assert counters[1] == 1
    # m_hat / sqrt(v_hat) = sign(g) at t = 1; TF's epsilon sits on sqrt(v) = sqrt(1 - beta2) |g|
    assert_close(p, -0.001 * g / (np.abs(g) + 1e-8 / np.sqrt(0.001)), 1e-12)
    assert np.all(np.abs(np.abs(p) - 0.001) < 0.001 * 1e-8 / np.sqrt(0.001) / np.abs(g))
