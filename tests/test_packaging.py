"""The wheel carries what an installed fastvae needs outside a checkout: the embedded MNIST and kernels/*.cu."""
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
    # run from an empty folder with only the unpacked wheel on the path: no checkout to fall back on
    proc = subprocess.run([sys.executable, "-c", CHECK], cwd=tmp_path, capture_output=True, text=True,
                          env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ok")


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
