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
