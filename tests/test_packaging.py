"""The wheel carries what an installed fastvae needs outside a checkout: the embedded MNIST and kernels/*.cu."""
import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHECK = """
import fastvae, pathlib
from fastvae.data import load_mnist
from fastvae.cuda.sources import kernel_dir, module_source
here = pathlib.Path(fastvae.__file__).parent
d = load_mnist()
assert d.train_x.shape == (60000, 784) and d.test_x.shape == (10000, 784)
assert kernel_dir().resolve().is_relative_to(here.resolve()), kernel_dir()
assert "adam_update" in module_source()
import numpy as np
from fastvae.backends import cpu_update as u          # a kernel compiled, and cached (where: the test checks)
db = np.empty(5, np.float32)
u.column_sums(db, np.ones((3, 5), np.float32))
assert db.sum() == 15.0
print("ok", here)
"""


def test_an_unpacked_wheel_finds_its_data_and_kernels(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "-q",
                    "-w", str(tmp_path / "dist")], check=True, capture_output=True, timeout=300)
    wheel, = (tmp_path / "dist").glob("fastvae-*.whl")
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        z.extractall(site)
    assert "fastvae/kernels/dense.cu" in names and "fastvae/datasets/mnist/LICENSE.md" in names
    assert not any(n.startswith(("tests/", "bench/")) for n in names)
    # a type checker reads fastvae's hints (PEP 561), and the MIT terms the metadata declares travel with it (a
    # fresh user's trial found neither)
    assert "fastvae/py.typed" in names and any(n.endswith(".dist-info/licenses/LICENSE") for n in names), names
    # the embedded MNIST's CC BY-SA terms are declared and shipped as a licence too (the metadata said MIT only)
    assert any(n.endswith(".dist-info/licenses/fastvae/datasets/mnist/LICENSE.md") for n in names), names
    metadata = next(z for z in names if z.endswith(".dist-info/METADATA"))
    assert "License-Expression: MIT AND CC-BY-SA-3.0" in (site / metadata).read_text()
    # run from an empty folder with only the unpacked wheel on the path: no checkout to fall back on
    proc = subprocess.run([sys.executable, "-c", CHECK], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path / "home")})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ok")
    # the installed package's folder holds the wheel's files and Python's own bytecode only, which `pip uninstall`
    # removes: Numba's cache files there outlived it and made `import fastvae` succeed afterwards (a namespace
    # package without VAE); they are under fastvae's cache folder in the home
    strays = [str(p.relative_to(site)) for p in (site / "fastvae").rglob("*") if p.is_file()
              and str(p.relative_to(site)) not in names and p.suffix != ".pyc"]
    assert not strays, strays
    assert list((tmp_path / "home" / ".cache" / "fastvae" / "numba").rglob("cpu_update.column_sums-*.nbi"))


def test_import_fastvae_loads_neither_numpy_nor_numba_and_changes_no_handler():
    """`import fastvae` (and a tool's --version and --help) load no NumPy, no Numba (0.4 s before: the package's
    __init__ imported the model), and change no signal handler; the public names load their modules on first use."""
    import subprocess
    import sys
    code = ("import signal, sys; before = signal.getsignal(signal.SIGINT); import fastvae; "
            "print('numpy' in sys.modules, 'numba' in sys.modules, signal.getsignal(signal.SIGINT) is before); "
            "from fastvae import train; train.build_parser(); print('numba' in sys.modules); "
            "print(fastvae.VAE.__name__, 'VAE' in dir(fastvae), 'numba' in sys.modules); "
            "from fastvae import Config, UserError; print(Config.__module__, issubclass(UserError, ValueError))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[:4] == ["False False True", "False", "VAE True True", "fastvae.config True"]
    proc = subprocess.run([sys.executable, "-c", "import fastvae; fastvae.nothing"], capture_output=True, text=True,
                          timeout=120)
    assert "AttributeError: module 'fastvae' has no attribute 'nothing'" in proc.stderr
    # a submodule by its attribute, as the README's fastvae.evaluate.iwae_bound (it failed: a fresh user's trial);
    # dir() lists the public names and those two modules (it listed TYPE_CHECKING, annotations, importlib)
    code = ("import fastvae; print(fastvae.evaluate.iwae_bound.__name__, fastvae.data.load_mnist.__name__); "
            "print(dir(fastvae) == sorted([*fastvae.__all__, 'data', 'evaluate']))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stdout.split() == ["iwae_bound", "load_mnist", "True"], proc.stderr


def test_every_module_with_cached_numba_functions_sets_the_cache_up_first():
    """Numba picks a function's cache place when it is defined: numba_cache.setup() (a private place where Numba has
    none; the package-wide keys) must run before, which `import fastvae` no longer does. backends/__init__.py runs
    it for every module of backends/; any other module defining cached functions calls it before the first."""
    import re
    from pathlib import Path
    import fastvae
    root = Path(fastvae.__file__).parent
    init = (root / "backends" / "__init__.py").read_text()
    assert init.index("numba_cache.setup()") < init.index("\nfrom .contract")
    for path in root.rglob("*.py"):
        text = path.read_text()
        if "backends" in path.relative_to(root).parts or path.name == "numba_cache.py" or "cache=True" not in text:
            continue
        first = re.search(r"^@\w+\(.*cache=True", text, re.M)
        assert "numba_cache.setup()" in text[:first.start()], f"{path.name} defines cached functions before setup()"


def test_the_sdist_carries_what_its_tests_need(tmp_path):
    """Downstream packagers build from the sdist and run its tests: it carried tests/test_*.py alone (no conftest,
    no helpers, no known-answer data: collection failed, a packaging trial found); now the test helpers, the
    benchmarks and docs travel with it, the benchmark records do not, and its tests collect."""
    import tarfile
    build = ("import sys; from setuptools import build_meta; "
             "print(build_meta.build_sdist(sys.argv[1]))")
    made = subprocess.run([sys.executable, "-c", build, str(tmp_path / "dist")], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert made.returncode == 0, made.stderr[-2000:]
    sdist = tmp_path / "dist" / made.stdout.split()[-1]
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
        tar.extractall(tmp_path / "src", filter="data")
    for needed in ("tests/conftest.py", "tests/tolerances.py", "tests/kernel_cases.py", "tests/philox4x32-10-kat.txt",
                   "tests/strict_json.py", "bench/benchlib.py", "bench/conftest.py", "docs/threads.md",
                   "fastvae/kernels/dense.cu", "MANIFEST.in"):
        assert needed in names, needed
    assert any(n.startswith("tests/stand_in/") for n in names)
    assert not any(n.startswith("bench/results/") or "__pycache__" in n or n.endswith((".nbi", ".nbc"))
                   for n in names), sorted(n for n in names if "results" in n or "cache" in n)
    unpacked, = (tmp_path / "src").iterdir()
    collected = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                                "tests/test_rng.py", "tests/test_cli.py", "tests/test_kernels.py"], cwd=unpacked,
                               capture_output=True, text=True, timeout=300,
                               env={**os.environ, "PYTHONPATH": str(unpacked)})
    assert collected.returncode == 0, collected.stdout[-3000:] + collected.stderr[-2000:]

