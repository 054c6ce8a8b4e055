"""Which sgemm the cpu kernels call (fastvae.backends.cpu_blas), for each kind a user's NumPy can bring: a BLAS with
64-bit integers (NumPy's wheels: what the rest of the suite runs), one with 32-bit integers called through the shim
(conda-forge's and Debian's NumPy; SciPy's wheel carries such an OpenBLAS, the real library these tests take), and
none (fastvae's own loops). The symbol is registered once a process, at import, so each kind runs the cpu kernels'
and training steps' tests against the reference in a fresh process (FASTVAE_BLAS chooses). Before 2026-12-07 a
NumPy without `scipy_cblas_sgemm64_` (1.26) left the symbol unregistered, and the update called address 0: the
interpreter died without a word (a packaging trial)."""
import ctypes.util
import glob
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import fastvae
from fastvae.backends import cpu_blas

ROOT = Path(fastvae.__file__).resolve().parent.parent
# every test of a kernel that calls gemm (dense layers both ways, the heads, the output layer, the update), on the
# cpu backend, and the whole training steps, whole and split between threads, against the reference
KERNEL_TESTS = ["tests/test_kernels.py", "tests/test_cpu_step.py", "-k",
                "cpu and not bf16 and (dense or heads or output or weight_update or backward) "
                "or training_steps_match or training_steps_split"]


def _lp64_library():
    """A real BLAS whose sgemm takes 32-bit integers: SciPy's wheel's OpenBLAS (scikit-learn, a test dependency,
    brings SciPy)."""
    scipy = pytest.importorskip("scipy", reason="SciPy's wheel carries the 32-bit-integer OpenBLAS these tests use")
    found = glob.glob(os.path.join(os.path.dirname(scipy.__file__) + ".libs", "libscipy_openblas-*.so"))
    if not found:
        pytest.skip(f"SciPy here has no libscipy_openblas beside it ({scipy.__file__}): no 32-bit-integer BLAS")
    return found[0]


def _run(env_value, *args, timeout=900):
    env = {**os.environ, cpu_blas.ENV: env_value}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def test_find_tells_the_integer_width_of_each_library():
    """NumPy's wheels' OpenBLAS: 64-bit integers; SciPy's: 32-bit; a path that does not load: nothing."""
    numpy_blas = [p for p in cpu_blas.libraries() if "numpy" in p]
    if not any("libscipy_openblas64_" in p for p in numpy_blas):
        pytest.skip(f"NumPy's BLAS here is not the wheels' OpenBLAS ({numpy_blas})")
    _, name, _, ilp64 = cpu_blas.find(numpy_blas)
    assert (name, ilp64) == ("scipy_cblas_sgemm64_", True)
    _, name, path, ilp64 = cpu_blas.find([_lp64_library()])
    assert (name, ilp64) == ("scipy_cblas_sgemm", False) and "libscipy_openblas-" in path
    assert cpu_blas.find(["/nonexistent/libblas.so"]) is None
    # an OpenBLAS under the plain names with 64-bit integers says so in its configuration string (Debian's
    # libopenblas64.so.0); SciPy's 32-bit one does not
    import ctypes
    assert not cpu_blas._openblas_ilp64(ctypes.CDLL(_lp64_library()))


# every transpose and padded leading dimensions (rows longer than the operand), against float64 (the kernels call
# only some of them, and the loops only the weight gradients' (A transposed) where FUSED is off: a review's finding)
PRODUCTS = """
import numpy as np
from numba import njit
from fastvae.backends import cpu_blas
from tolerances import TOL

@njit
def product(out, a, ta, b, tb):
    cpu_blas.gemm(out, a, ta, b, tb)

rand = np.random.default_rng(5)
for m, n, k in ((1, 1, 1), (7, 13, 29), (150, 37, 500)):
    for ta in (False, True):
        for tb in (False, True):
            a = rand.standard_normal((k, m + 3) if ta else (m, k + 3)).astype(np.float32)[:, :m if ta else k]
            b = rand.standard_normal((n, k + 2) if tb else (k, n + 2)).astype(np.float32)[:, :k if tb else n]
            out = np.full((m, n + 5), np.nan, np.float32)
            product(out[:, :n], a, ta, b, tb)
            exact = (a.T if ta else a).astype(np.float64) @ (b.T if tb else b).astype(np.float64)
            scale = (np.abs(a.T if ta else a).astype(np.float64) @ np.abs(b.T if tb else b)).max()
            assert np.abs(out[:, :n] - exact).max() <= TOL["float32"] * scale, (m, n, k, ta, tb)
            assert np.isnan(out[:, n:]).all()           # the padding past each row is not written
print(cpu_blas.KIND, cpu_blas.AVAILABLE)
"""


@pytest.mark.parametrize("kind", ["lp64", "loops"])
def test_the_kernels_and_steps_through_each_kind_of_sgemm_match_the_reference(kind):
    chosen = _lp64_library() if kind == "lp64" else "none"
    probe = _run(chosen, "-c", f"import sys; sys.path.insert(0, 'tests')\n{PRODUCTS}")
    assert probe.stdout.split() == [kind, str(kind != "loops")], probe.stdout + probe.stderr
    run = _run(chosen, "-m", "pytest", "-q", "-p", "no:cacheprovider", *KERNEL_TESTS)
    passed = re.search(r"(\d+) passed", run.stdout)
    assert run.returncode == 0 and passed and int(passed.group(1)) >= 200, run.stdout[-3000:] + run.stderr[-2000:]


def test_without_a_blas_a_model_says_so_once():
    """The loops are slower: the user hears it in one line, once a process, with what to do."""
    run = _run("none", "-c", "from fastvae import VAE\n"
               "notes = []\n"
               "for _ in range(2):\n"
               "    VAE(hidden=(8,), latent=2, backend='cpu', notify=notes.append)\n"
               "print(len(notes)); print(notes[0])", timeout=300)
    lines = run.stdout.splitlines()
    assert run.returncode == 0 and lines[0] == "1", run.stdout + run.stderr
    assert "FASTVAE_BLAS=none" in lines[1] and "set FASTVAE_BLAS to a BLAS library's path" in lines[1], lines


@pytest.mark.parametrize("chosen, says", [
    ("/nonexistent/libblas.so", "FASTVAE_BLAS=/nonexistent/libblas.so cannot be loaded ("),
    (ctypes.util.find_library("c") or "libc.so.6", "has none of the functions scipy_cblas_sgemm64_, ")])
def test_a_blas_named_that_cannot_serve_is_refused_in_one_line(tmp_path, chosen, says):
    """FASTVAE_BLAS is the user's own choice: a path that does not load (a typo) or a library without sgemm is said,
    and nothing is trained or written (it fell back to the loops with a note that did not name the problem, and
    --quiet hid even that: a new user's trial)."""
    run = _run(chosen, "-m", "fastvae.train", "--backend", "cpu", "--epochs", "1", "--train-images", "60",
               "--test-images", "20", "--hidden", "8", "--latent", "2", "--batch-size", "20", "--no-plots", "--quiet",
               "--out", str(tmp_path / "run"), timeout=300)
    lines = run.stderr.splitlines()
    assert run.returncode == 2 and len(lines) == 1 and says in lines[0], run.stderr
    assert "or FASTVAE_BLAS=none for fastvae's own loops, or unset it" in lines[0]
    assert not (tmp_path / "run").exists()


def test_with_the_wheels_blas_nothing_is_said():
    if cpu_blas.NOTE is not None:
        pytest.skip(f"this NumPy's BLAS cannot be called from the kernels here: {cpu_blas.SOURCE}")
    notes = []
    fastvae.VAE(hidden=(8,), latent=2, backend="cpu", notify=notes.append)
    assert notes == []
