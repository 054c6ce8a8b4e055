"""Backend selection. A backend is a module of kernels with the same names and argument order everywhere
(see backends/reference.py for the contract) plus array hooks: xp, dtype, empty, zeros, asarray, to_host,
synchronize. CuPy is imported only when the gpu backend is asked for."""
import importlib
import sys

from ..errors import UserError

NAMES = ("auto", "cpu", "gpu", "reference")


def get_backend(name="auto", notify=None):
    """The backend module for `name`. `auto` picks gpu when it is usable, else cpu (telling `notify` why)."""
    if name not in NAMES:
        raise UserError(f"unknown backend {name!r}; choose one of {', '.join(NAMES)}")
    if name == "auto":
        from . import gpu
        problem = gpu.unavailable_reason()
        if problem is None:
            return gpu.load()
        if notify is not None:
            notify(f"fastvae: using the cpu backend ({problem})")
        name = "cpu"
    if name == "gpu":
        from . import gpu
        return gpu.load()
    return importlib.import_module(f"{__name__}.{name}")


def loaded_names():
    """Which backends are already imported (tests use it to check that imports stay lazy)."""
    return [n for n in NAMES if f"{__name__}.{n}" in sys.modules]
