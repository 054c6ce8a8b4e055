"""The suite's one tolerance table and the comparison that uses it (tests and benchmarks import it)."""
import numpy as np

# One tolerance table for the whole suite, derived from the arithmetic, not tuned.
# float32 rounds each operation to 2**-24 ~ 6e-8 relative; a K-term dot product accumulates ~ sqrt(K)..K of
# those (K <= 784 here), and exp/log add a few ulps: about 1e-5 relative to the size of the terms summed.
# Values are compared as |a - b| <= RTOL * scale where scale is the largest |reference| in that array (or of the
# terms that formed it), so entries that cancel to ~0 are judged against the magnitude they were computed from.
TOL = {
    "float32": 2e-5,        # one kernel's outputs vs the float64 reference
    "float32_step": 1e-4,   # a whole step: errors pass through ~10 chained kernels before reaching a gradient
    "fd": 1e-6,             # float64 central differences, h = 1e-5: truncation ~h^2, rounding ~1e-16/h
}

AWKWARD_ROWS = (1, 7, 150, 257)


def assert_close(actual, expected, rtol, scale=None, what=""):
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    if scale is None:
        scale = max(float(np.max(np.abs(expected))), 1e-30) if expected.size else 1.0
    err = float(np.max(np.abs(actual - expected))) if expected.size else 0.0
    assert err <= rtol * scale, f"{what}: max abs error {err:.3g} > {rtol:g} * scale {scale:.3g}"
