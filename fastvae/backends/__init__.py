"""Backend selection. Every backend is a `contract.Backend`: the kernels and hooks declared in
fastvae/backends/contract.py, checked when the backend loads. CuPy is imported only when the gpu backend is asked
for."""
import importlib

from ..errors import UserError
from .contract import Backend

NAMES = ("auto", "cpu", "gpu", "reference")
_loaded = {}


def get_backend(name: str = "auto", notify=None) -> Backend:
    """The backend called `name`: "cpu" (Numba, float32), "reference" (NumPy, float64), "gpu" (CuPy, float32) or
    "auto" (gpu when usable, else cpu, telling `notify(message)` why). Raises UserError for an unknown name or,
    for "gpu", with the one-line reason the GPU cannot be used."""
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
    if name not in _loaded:
        _loaded[name] = Backend(importlib.import_module(f"{__name__}.{name}"))
    return _loaded[name]
