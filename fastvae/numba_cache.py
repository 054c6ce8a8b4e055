"""Where Numba keeps fastvae's compiled kernels (`cache=True`): its own choice, or a folder in the temporary
directory where Numba has none.

Numba caches a module's functions beside its source (__pycache__, when that folder is writable) or in the user's
cache folder (~/.cache/numba, when writable), or where NUMBA_CACHE_DIR says. A read-only install in a container whose
home is read-only too has none of them, and there every `@njit(cache=True)` raised RuntimeError ("no locator
available") at `import fastvae` (a fresh user's trial). There the kernels are cached under the temporary directory
instead (per user; compiled once per boot, as after an install). Numba's cache index keys every entry by the CPU's
name and features, so a folder shared by machines never hands one CPU's code to another.

Numba checks a cached function against its own source file only: a kernel that calls another module's jitted
function (cpu_bf16's dense_forward calls cpu's bias-and-activation pass) kept running the old callee after that
module was edited (a contributor's trial: "max abs error nan" from a cache, not from the edit; the same after a
`git pull` into an editable install). key_caches_by_package adds to every fastvae function's stamp a digest of the
package's Numba sources, so an edit of any of them recompiles them all.
"""
import hashlib
import os
import tempfile
from functools import lru_cache
from pathlib import Path


def _probe():
    """(a function for Numba's locators to place, as they would any of this package's)"""


def fallback_folder() -> Path:
    return Path(tempfile.gettempdir()) / f"fastvae-numba-cache-{os.getuid() if hasattr(os, 'getuid') else 'user'}"


def needs_fallback(source: str | Path = __file__) -> bool:
    """Whether Numba finds no place to cache functions defined in `source` (a .py file), with the environment as it
    is now; False where NUMBA_CACHE_DIR is set, and where Numba's internals are not as this reads them (then Numba
    decides, as it would without fastvae)."""
    try:
        from numba.core import caching, config
        if config.CACHE_DIR:
            return False
        impl = getattr(caching, "CacheImpl", None) or getattr(caching, "_CacheImpl")
        return all(locator.from_function(_probe, str(source)) is None for locator in impl._locator_classes)
    except Exception:  # noqa: BLE001  (another Numba: its own behaviour)
        return False


def ensure_a_place() -> Path | None:
    """Points Numba's cache at fallback_folder() where it has no place of its own for this package (the
    folder returned), else changes nothing (None). Called by `import fastvae`, before any kernel is defined."""
    if not needs_fallback():
        return None
    from numba.core import config
    folder = fallback_folder()
    config.CACHE_DIR = str(folder)
    return folder


@lru_cache(maxsize=None)
def package_stamp(root: str) -> str:
    """A digest of the path, size and modification time of every .py file under `root` that uses Numba or llvmlite
    (read once a process: an edit takes effect in the next one, as Numba's own stamps do)."""
    digest = hashlib.sha256()
    for path in sorted(Path(root).rglob("*.py")):
        try:
            text = path.read_text(errors="replace")
            st = path.stat()
        except OSError:
            continue
        if "numba" in text or "llvmlite" in text:
            digest.update(f"{path.relative_to(root)}:{st.st_mtime_ns}:{st.st_size};".encode())
    return digest.hexdigest()


def _from_function(cls, py_func, py_file):
    if not os.path.abspath(py_file).startswith(cls.package_root + os.sep):
        return None                         # another package's function: the locators after this one place it
    return cls.numba_locator.from_function.__func__(cls, py_func, py_file)


def _get_source_stamp(self):
    return type(self).numba_locator.get_source_stamp(self), package_stamp(type(self).package_root)


def key_caches_by_package(root: str | Path = Path(__file__).resolve().parent) -> bool:
    """Numba's cache locators, each with a copy in front of it for the functions defined under `root` (fastvae's
    package by default) whose stamp is the source file's and package_stamp(root): any edit of the package's Numba
    sources invalidates every one of its cached functions. Called by `import fastvae`, before any kernel is
    defined; True once installed, False where Numba's internals are not as this reads them (Numba decides then)."""
    try:
        from numba.core import caching
        impl = getattr(caching, "CacheImpl", None) or getattr(caching, "_CacheImpl")
        root = str(Path(root).resolve())
        if any(getattr(c, "package_root", None) == root for c in impl._locator_classes):
            return True
        # copies of Numba's own locators only (not of another package's copies), each calling its own original
        keyed = [type(f"Package{base.__name__}", (base,), {
            "package_root": root, "numba_locator": base, "from_function": classmethod(_from_function),
            "get_source_stamp": _get_source_stamp})
            for base in impl._locator_classes
            if hasattr(base, "get_source_stamp") and not hasattr(base, "package_root")]
        impl._locator_classes[:0] = keyed
        return True
    except Exception:  # noqa: BLE001  (another Numba: its own behaviour)
        return False
