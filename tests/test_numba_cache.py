"""Where the compiled kernels are cached when Numba has no place of its own (fastvae.numba_cache): a read-only
install in a container whose home is read-only too (a fresh user's trial: `import fastvae` raised RuntimeError)."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import fastvae
from fastvae import numba_cache

PACKAGE = Path(fastvae.__file__).resolve().parent
UNWRITABLE_HOME = {"HOME": "/proc", "XDG_CACHE_HOME": "/proc/no-cache"}     # (unwritable for root too)


def test_numba_has_a_place_here_and_none_for_a_file_in_an_unwritable_folder_without_a_home():
    """Numba's own locators decide: a checkout's module has one (its __pycache__); a file in /proc, with HOME and
    XDG_CACHE_HOME unwritable, has none (the same question in a subprocess, where those variables are read)."""
    assert not numba_cache.needs_fallback(PACKAGE / "barrier.py")
    code = "from fastvae import numba_cache as n; print(n.needs_fallback('/proc/version'))"
    env = {**os.environ, **UNWRITABLE_HOME}
    env.pop("NUMBA_CACHE_DIR", None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "True", out.stderr


def _read_only_mounts_work():
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-m", "sh", "-c", f"mount --bind {PACKAGE} {PACKAGE} && "
                            f"mount -o remount,bind,ro {PACKAGE}"], capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(not _read_only_mounts_work(), reason="needs `unshare -m` and mount (root with CAP_SYS_ADMIN) "
                    "to make the installed package read-only in a private mount namespace")
def test_a_read_only_install_without_a_writable_home_caches_its_kernels_in_the_temporary_folder(tmp_path):
    """The package folder mounted read-only (only for the subprocess: a private mount namespace), HOME unwritable,
    NUMBA_CACHE_DIR unset: importing fastvae and compiling a kernel works, and the kernel is cached under TMPDIR."""
    code = ("import numpy as np; from fastvae.backends import cpu_update as u; "
            "d = np.ones((3, 5), np.float32); db = np.empty(5, np.float32); u.column_sums(db, d); print(db.sum())")
    env = {**os.environ, **UNWRITABLE_HOME, "TMPDIR": str(tmp_path)}
    env.pop("NUMBA_CACHE_DIR", None)
    script = (f"mount --bind {PACKAGE} {PACKAGE} && mount -o remount,bind,ro {PACKAGE} && "
              f"exec {sys.executable} -c '{code}'")
    proc = subprocess.run(["unshare", "-m", "sh", "-c", script], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "15.0", proc.stderr[-2000:]
    assert list((tmp_path / f"fastvae-numba-cache-{os.getuid()}").rglob("*.nbi")), "nothing cached in TMPDIR"


def test_an_edit_of_a_called_module_recompiles_its_callers(tmp_path):
    """Numba checks a cached function against its own file only: a kernel calling another module's jitted function
    kept the old callee after that module's edit (cpu_bf16 calling cpu's pass: a contributor's trial). With the
    package's caches keyed by all its Numba sources, the caller sees the edit. A real package of two modules, a real
    cache folder, fresh processes."""
    import subprocess
    import sys
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "callee.py").write_text("from numba import njit\n\n@njit(cache=True)\ndef f():\n    return 1\n")
    (package / "caller.py").write_text("from numba import njit\nfrom pkg.callee import f\n\n"
                                       "@njit(cache=True)\ndef g():\n    return f() + 10\n")
    code = ("from fastvae import numba_cache\nassert numba_cache.key_caches_by_package(%r)\n"
            "from pkg.caller import g\nprint(g())\n" % str(package))
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "NUMBA_CACHE_DIR": str(tmp_path / "cache")}

    def run():
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.split()[-1]
    assert run() == "11"
    assert any((tmp_path / "cache").rglob("*.nbi"))                 # g was cached
    callee = package / "callee.py"
    callee.write_text(callee.read_text().replace("return 1", "return 2"))
    later = callee.stat().st_mtime + 10
    os.utime(callee, (later, later))
    assert run() == "12"
