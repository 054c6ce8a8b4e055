"""Backend selection. Every backend is a `contract.Backend`: the kernels and hooks declared in
fastvae/backends/contract.py, checked when the backend loads. CuPy is imported only when the gpu backend is asked
for."""
import importlib

from ..errors import UserError
from .contract import Backend

NAMES = ("auto", "cpu", "cpu-bf16", "gpu", "reference")
MODULES = {"cpu-bf16": "cpu_bf16"}     # a backend's module where its name is no Python identifier
_loaded = {}


def get_backend(name: str = "auto", notify=None) -> Backend:
    """The backend called `name`: "cpu" (Numba, float32), "reference" (NumPy, float64), "gpu" (CuPy, float32) or
    "auto" (gpu when it starts, else cpu, telling `notify(message)` why), "cpu-bf16" (cpu with the products on
    AMX tiles in bf16). Raises UserError for an unknown name or, for "gpu", with the one-line reason the GPU cannot
    be used (gpu.Unavailable: no CuPy, no device, no headers or NVRTC, a compile or load error, a busy or full
    device); for a backend module with `unavailable_reason()` (cpu-bf16: no AMX), with that reason. A Backend
    given instead of a name is returned as it is."""
    if isinstance(name, Backend):
        return name
    if name not in NAMES:
        raise UserError(f"unknown backend {name!r}; choose one of {', '.join(NAMES)}")
    if name == "auto":
        from . import gpu
        try:
            return gpu.load()
        except gpu.Unavailable as exc:          # every way the GPU can fail to start, as one line
            if notify is not None:
                notify(f"fastvae: using the cpu backend ({exc.reason})")
        name = "cpu"
    if name == "gpu":
        from . import gpu
        return gpu.load()
    if name not in _loaded:
        module = importlib.import_module(f"{__name__}.{MODULES.get(name, name)}")
        reason = module.unavailable_reason() if hasattr(module, "unavailable_reason") else None
        if reason is not None:
            raise UserError(f"the {name} backend cannot run here: {reason}")
        _loaded[name] = Backend(module)
    return _loaded[name]
