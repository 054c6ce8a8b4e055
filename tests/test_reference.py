"""The reference backend is the specification: its gradients are checked by central finite differences."""
import numpy as np
import pytest

from kernel_cases import sigma_away_from_zero
from tolerances import TOL, assert_close
from fastvae import step
from fastvae.backends import get_backend
from fastvae.backends import reference as ref
from fastvae.config import Config
from fastvae.constants import ACTIVATIONS, HIDDEN_ACTIVATIONS
from fastvae.params import Layout, he_init


def loss_and_grads(cfg, params, x, counters):
    layout = Layout(cfg)
    be = get_backend("reference")
    state = step.State(be, layout, params, seed=int(counters[0]), step=int(counters[1]))
    ws = step.Workspace(be, cfg, len(x))
    a = ws.rows(len(x))
    a.x[...] = x
    loss = np.zeros(2)
    step.forward(be, cfg, state.weights, a, loss, state.counters, 0)
    pattern = np.concatenate([(y > 0).ravel() for y in a.enc + a.dec])    # which side of 0 each unit is on
    step.backward(be, cfg, state.weights, state.gradients, a, state.counters, 0)
    return loss.sum(), state.grads[0].copy(), pattern


@pytest.mark.parametrize("hidden,encoder,reconstruction,activation", [
    ((13, 9), "gamma", "xent", "elu"), ((11,), "gamma", "xent", "elu"), ((6, 5, 4), "gamma", "xent", "elu"),
    ((13, 9), "sigma", "xent", "elu"), ((13, 9), "gamma", "mse", "elu"), ((7,), "sigma", "mse", "elu"),
    ((7,), "sigma", "mse", "tanh"), *[((13, 9), "gamma", "xent", a) for a in HIDDEN_ACTIVATIONS if a != "elu"]])
def test_gradients_match_finite_differences(rand, hidden, encoder, reconstruction, activation):
    """Every variant of the seed's model: the reference's analytic gradients against central differences.
    A difference whose two evaluations put some unit on different sides of 0 straddles a kink (ReLU's, or ELU's
    second-derivative jump) and measures neither side: such parameters are skipped, and they must be rare."""
    cfg = Config(hidden=hidden, latent=3, batch_size=5, encoder=encoder, reconstruction=reconstruction,
                 activation=activation)
    layout = Layout(cfg)
    params = he_init(layout, seed=int(rand.integers(1 << 30)), dtype=np.float64)
    params[layout.n_weights:] = rand.normal(0, 0.3, layout.size - layout.n_weights)  # non-zero biases
    if encoder == "sigma":     # near sigma = 0 the KL's third derivative (~ 4 / sigma^3) swamps a central difference
        sigma_away_from_zero(layout, params, cfg.latent)
    x = rand.uniform(0, 1, (5, 784))
    counters = np.array([int(rand.integers(1 << 40)), int(rand.integers(1000))])
    _, grads, _ = loss_and_grads(cfg, params, x, counters)
    # every bias and a random sample of each layer's weights
    picks = [np.arange(layout.n_weights, layout.size)]
    for L in layout.layers:
        picks.append(L.w_offset + rand.choice(L.fan_in * L.fan_out, size=min(40, L.fan_in * L.fan_out),
                                              replace=False))
    h = 1e-5
    picks = np.concatenate(picks)
    straddled = 0
    for i in picks:
        p = params.copy()
        p[i] += h
        up, _, up_pattern = loss_and_grads(cfg, p, x, counters)
        p[i] -= 2 * h
        down, _, down_pattern = loss_and_grads(cfg, p, x, counters)
        if np.any(up_pattern != down_pattern):
            straddled += 1
            continue
        fd = (up - down) / (2 * h)
        assert abs(fd - grads[i]) <= TOL["fd"] * max(1.0, abs(fd)), f"param {i}: fd {fd} vs grad {grads[i]}"
    assert straddled <= len(picks) // 20, f"{straddled} of {len(picks)} differences straddled a kink"


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_each_activations_derivative_from_its_output_is_its_derivative(rand, activation):
    """act'(z) computed from y = act(z) (what every backward uses, the pre-activation not being kept) against central
    differences of act itself, for every activation constants.py names (identity raised here, where the cpu kernels
    give 1: a contributor's trial). Points within 1e-3 of the kinks at 0 are left out."""
    z = rand.uniform(-4, 4, 1000)
    z = z[np.abs(z) > 1e-3]
    h = 1e-5                                                        # the table's "fd" step
    numeric = (ref.activate(z + h, activation) - ref.activate(z - h, activation)) / (2 * h)
    analytic = ref.activation_grad_from_output(ref.activate(z, activation), activation)
    assert np.all(np.abs(analytic - numeric) <= TOL["fd"] * np.maximum(1.0, np.abs(numeric))), activation


def test_loss_terms_match_their_definitions(rand):
    """Cross-entropy against the naive formula; KL of a standard normal is zero."""
    logits = rand.normal(0, 3, (4, 784))
    x = rand.uniform(0, 1, (4, 784))
    inp = np.eye(4, 4)
    w = np.zeros((4, 784))
    loss = np.zeros(2)
    dl = np.empty((4, 784))
    ref.output_forward(dl, loss, inp, w, np.zeros(784), x, "xent")  # zero logits: log 2 per pixel
    assert_close(loss[0], 4 * 784 * np.log(2.0), 1e-12)
    loss = np.zeros(2)
    ref.output_forward(dl, loss, np.eye(4), logits, np.zeros(784), x, "xent")
    p = 1 / (1 + np.exp(-logits))
    naive = -np.sum(x * np.log(p) + (1 - x) * np.log(1 - p))
    assert_close(loss[0], naive, 1e-10)
    assert_close(dl, p - x, 1e-12)


def test_kl_is_zero_at_the_prior_and_positive_elsewhere():
    n, latent, width = 3, 2, 4
    z, mu_logvar = np.empty((n, latent)), np.empty((n, 2 * latent))
    loss = np.zeros(2)
    ref.heads_forward(z, mu_logvar, loss, np.zeros((n, width)), np.zeros((width, 2 * latent)),
                      np.zeros(2 * latent), np.array([0, 0, 0]), 0, "gamma")
    assert loss[1] == 0.0
    ref.heads_forward(z, mu_logvar, loss, np.zeros((n, width)), np.zeros((width, 2 * latent)),
                      np.array([0.5, 0, 0, -1.0]), np.array([0, 0, 0]), 0, "gamma")
    assert loss[1] > 0.0


def test_first_adam_step_moves_each_parameter_by_lr_against_its_gradient(rand):
    g = rand.normal(0, 1, 1000)
    p = np.zeros(1000)
    m, v = np.zeros(1000), np.zeros(1000)
    counters = np.array([0, 0, 0])
    ref.adam_update(p, g[None, :], m, v, counters, 0.001, 0.9, 0.999, 1e-8)
    assert counters[1] == 1
    # m_hat / sqrt(v_hat) = sign(g) at t = 1; TF's epsilon sits on sqrt(v) = sqrt(1 - beta2) |g|
    assert_close(p, -0.001 * g / (np.abs(g) + 1e-8 / np.sqrt(0.001)), 1e-12)
    assert np.all(np.abs(np.abs(p) - 0.001) < 0.001 * 1e-8 / np.sqrt(0.001) / np.abs(g))
