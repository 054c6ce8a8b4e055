"""The suite's one tolerance table and the comparison that uses it (tests and benchmarks import it)."""
import numpy as np

# One tolerance table for the whole suite, derived from the arithmetic, not tuned.
# float32 rounds each operation to 2**-24 ~ 6e-8 relative; a K-term dot product accumulates ~ sqrt(K)..K of
# those (K <= 784 here), and exp/log add a few ulps: about 1e-5 relative to the size of the terms summed.
# Values are compared as |a - b| <= RTOL * scale where scale is the largest |reference| in that array (or of the
# terms that formed it), so entries that cancel to ~0 are judged against the magnitude they were computed from.
# bfloat16 (the cpu-bf16 backend's products): 8 significant bits, so rounding an operand to nearest even moves it by
# at most u = 2**-8 of itself. A product term a b of two rounded operands is off by at most (2u + u^2) |a b|, and
# those errors add over the K terms at worst to (2u + u^2) * sum |a b| -- the same scale as above, whatever K is;
# the fp32 accumulation adds at most K * 2**-24 of it (K <= 4096 here: 2.4e-4). So 2u + u^2 + 4096 * 2**-24 ~ 8.1e-3
# bounds one product; the passes around it are float32 (1-Lipschitz activations, or scales the checks carry).
BF16_UNIT = 2.0 ** -8
BF16_PRODUCT = 2 * BF16_UNIT + BF16_UNIT ** 2 + 4096 * 2.0 ** -24
TOL = {
    "float32": 2e-5,        # one kernel's outputs vs the float64 reference
    "float32_step": 1e-4,   # a whole step: errors pass through ~10 chained kernels before reaching a gradient
    "bfloat16": BF16_PRODUCT,           # one kernel whose product takes bf16 operands (above)
    # a whole step: a first-layer weight gradient comes out of a chain of 4 h + 4 bf16 products for h hidden layers
    # (2 h + 2 forward, 2 h + 1 input gradients, 1 weight gradient), each adding its relative error to first order
    # through the 1-Lipschitz activations: 16 for the suite's deepest whole-step case (h = 3). (5x one kernel's,
    # float32's ratio, was exceeded by a two-layer tanh step in CI: 0.051.)
    "bfloat16_step": 16 * BF16_PRODUCT,
    # the decoder alone, codings to logits, same weights in bf16 and in fp32 (a bf16-trained checkpoint loaded at
    # either precision): h + 1 bf16 products in a chain (h hidden layers, h <= 3 here), each adding its relative
    # error to first order through the 1-Lipschitz activations, as in the step's bound above.
    "bfloat16_decoder": 4 * BF16_PRODUCT,
    "fd": 1e-6,             # float64 central differences, h = 1e-5: truncation ~h^2, rounding ~1e-16/h
    # an image's log-likelihood (nats, absolute) from a backend's float32 logits, the rest in float64 (evaluate's
    # IWAE): the logits carry relative errors ~1e-6 (a 64-term product plus ELU, ~2**-24 each); the log-likelihood's
    # derivative in a logit is sigmoid(l) - x, at most 1 in size, so 784 pixels move it by at most ~784 * 1e-6 ~ 1e-3
    # (measured: 2e-5 on values ~400)
    "nats_from_float32_logits": 1e-3,
    # a row's loss summed in float32 (the training loss's pass, and the IWAE bound's log-likelihoods on the float32
    # backends: fastvae.backends.cpu.row_losses): d terms, each a few roundings of its own size (<= 4 u |term|),
    # into 16 partial sums of ceil(d / 16) terms, then those 16 in order: recursive summation of m terms errs by at
    # most (m - 1) u sum |terms| (u = 2**-24), so (ceil(d / 16) + 15 + 4) u of the sum of |terms| in all; plus each
    # term's exp and log1p, ~1e-7 absolute (cpu_math: a few float32 ulps of values <= 1): float32_row_sum_tolerance.
    "float32_unit": 2.0 ** -24,
    # float64 sums of the same terms in another order (the IWAE codings' log p(z) - log q(z | x) in Numba, column by
    # column, against NumPy's sum): each order errs by at most (m - 1) u sum |terms| (u = 2**-53), so two orders
    # differ by at most twice that: float64_sum_order_tolerance.
    "float64_unit": 2.0 ** -53,
    "float32_exp_log1p": 2e-7,
}
PRECISIONS = {"cpu-bf16": "bfloat16"}    # backends whose products round their operands; all others float32
# The step bounds above carry each forward error into the backward through act'(z) computed from the output y, whose
# error is L |dy| for a derivative L-Lipschitz in y: 1 for ELU (1 or y + 1), 2 for tanh (1 - y^2 on [-1, 1]). For
# tanh every forward term of the first-order sum can therefore count twice: the bf16 step bound doubles. (Found
# when a two-layer tanh bf16 step in CI, seed 637966531, gave 0.158 of the largest gradient against 16 products'
# 0.129; the ELU-derived bound had been applied to tanh.)
DERIVATIVE_LIPSCHITZ = {"tanh": 2}
# Scope of the step bounds (a numerics review, 2026-12-07): they are relative to the largest |reference| entry of
# each array, which stands for the size of the terms summed only where those terms do not cancel: a fresh model (He
# init, random data: the suite's whole-step cases, 0.002-0.005 of the largest gradient measured in bf16). In a
# trained model a weight gradient's batch sum cancels to a small fraction of its terms, and bf16's error relative to
# the largest gradient reached 0.14-0.30 (hidden (32, 16), latent 3, 3 epochs of MNIST; elu and relu) -- the same
# 0.27 and 0.30 from the float64 reference with every product's operands rounded to bf16, so the kernels compute what
# bf16 operands give; it is the scale that does not carry over. relu's derivative is a step (not Lipschitz in y): its
# factor 1 holds only while no unit sits at the kink. Holding a trained bf16 step needs that bf16-operand reference
# (float32-tight), not a wider tolerance here.


def tolerance_for(be, step=False, activation=None):
    """The tolerance of backend `be` (a contract.Backend) for one kernel, or for a whole step of a model with the
    hidden `activation`."""
    precision = PRECISIONS.get(be.name, "float32")
    if not step:
        return TOL[precision]
    factor = DERIVATIVE_LIPSCHITZ.get(activation, 1) if precision == "bfloat16" else 1
    return factor * TOL[f"{precision}_step"]


def float32_row_sum_tolerance(d, abs_sum):
    """The bound on a float32 row loss of d columns whose terms' magnitudes sum to abs_sum (the table's derivation)."""
    return (-(-d // 16) + 19) * TOL["float32_unit"] * np.asarray(abs_sum) + d * TOL["float32_exp_log1p"]


def float64_sum_order_tolerance(m, abs_sum):
    """The bound on two float64 sums of the same m terms, in two orders, whose terms' magnitudes sum to abs_sum."""
    return 2 * (m - 1) * TOL["float64_unit"] * np.asarray(abs_sum)


AWKWARD_ROWS = (1, 7, 150, 257)


def assert_close(actual, expected, rtol, scale=None, what=""):
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    if scale is None:
        scale = max(float(np.max(np.abs(expected))), 1e-30) if expected.size else 1.0
    err = float(np.max(np.abs(actual - expected))) if expected.size else 0.0
    assert err <= rtol * scale, f"{what}: max abs error {err:.3g} > {rtol:g} * scale {scale:.3g}"
