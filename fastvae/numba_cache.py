"""Where Numba keeps fastvae's compiled kernels (`cache=True`): its own choice, or a folder in the temporary
directory where Numba has none.

Numba caches a module's functions beside its source (__pycache__, when that folder is writable) or in the user's
cache folder (~/.cache/numba, when writable), or where NUMBA_CACHE_DIR says. A read-only install in a container whose
home is read-only too has none of them, and there every `@njit(cache=True)` raised RuntimeError ("no locator
available") at `import fastvae` (a fresh user's trial). There the kernels are cached under the temporary directory
instead (per user; compiled once per boot, as after an install). Numba's cache index keys every entry by the CPU's
name and features, so a folder shared by machines never hands one CPU's code to another.
"""
import os
import tempfile
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
