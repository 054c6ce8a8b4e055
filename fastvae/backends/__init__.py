"""Backend selection. Every backend is a `contract.Backend`: the kernels and hooks declared in
fastvae/backends/contract.py, checked when the backend loads. CuPy is imported only when the gpu backend is asked
for. `resolve` turns a backend name and a precision into the backend to load: the precision rules live there only."""
import importlib

from .. import numba_cache, numba_signals

numba_cache.setup()         # before any of backends/' Numba functions is defined

import numpy as np  # noqa: E402

from ..constants import BACKENDS as NAMES, PRECISIONS  # noqa: E402, F401  (PRECISIONS: what precision= takes)
from ..errors import UserError  # noqa: E402
from .contract import Backend  # noqa: E402

MODULES = {"cpu-bf16": "cpu_bf16"}     # a backend's module where its name is no Python identifier
BF16_BACKENDS = ("cpu-bf16",)          # backends whose products take bf16 operands (fp32 master weights and sums)
NUMBA_BACKENDS = ("cpu", "cpu-bf16")   # backends whose kernels Numba compiles
_loaded: dict[str, Backend] = {}


def get_backend(name: str = "auto", notify=None) -> Backend:
    """The backend called `name`: "cpu" (Numba, float32), "reference" (NumPy, float64), "gpu" (CuPy, float32) or
    "auto" (gpu when it starts, else cpu, telling `notify(message)` why), "cpu-bf16" (cpu with the products on
    AMX tiles in bf16). Raises UserError for an unknown name or, for "gpu", with the one-line reason the GPU cannot
    be used (gpu.Unavailable: no CuPy, no device, no headers or NVRTC, a compile or load error, a busy or full
    device); for a backend module with `unavailable_reason()` (cpu-bf16: no AMX), with that reason. A Backend
    given instead of a name is returned as it is."""
    if isinstance(name, Backend):
        return name
    with numba_signals.within():            # (its first call compiles or loads kernels: see numba_signals)
        return _get_backend(name, notify)


def _get_backend(name, notify):
    _check_name(name)
    if name == "auto":
        gpu = _auto_gpu(notify)
        if gpu is not None:
            return gpu
        name = "cpu"
    if name == "gpu":
        from . import gpu
        return gpu.load()
    if name not in _loaded:
        module = importlib.import_module(f"{__name__}.{MODULES.get(name, name)}")
        reason = _without_numba() if name in NUMBA_BACKENDS else None
        if reason is None and hasattr(module, "unavailable_reason"):
            reason = module.unavailable_reason()
        if reason is not None:
            raise UserError(f"the {name} backend cannot run here: {reason}")
        _loaded[name] = Backend(module)
    if name in NUMBA_BACKENDS and notify is not None:
        _note_blas(notify)
    return _loaded[name]


_noted: list = []


def _note_blas(notify):
    """Tells `notify`, once a process, where the kernels' products cannot call a BLAS (cpu_blas.NOTE: its loops)."""
    from . import cpu_blas
    if cpu_blas.NOTE is not None and not _noted:
        _noted.append(True)
        notify(cpu_blas.NOTE)


def resolve(name: str | Backend = "auto", precision: str | None = None, notify=None) -> str | Backend:
    """The backend to hand get_backend for backend `name` at `precision`, following the rules of issue 13:

    - None: the backend's own precision (bf16 for "cpu-bf16", float64 for "reference", else fp32): `name` as it is.
    - "fp32": `name` as it is; with "cpu-bf16" (whose products are bf16) a UserError: the two contradict.
    - "bf16": "cpu-bf16" stays; "cpu", and "auto" where the GPU does not start (`notify` hears why, as get_backend's
      auto does), become the CPU's bf16 backend (`cpu_bf16_backend`); where this CPU has none, `notify` hears one
      line saying why and "cpu" (fp32) is returned. "gpu", "auto" where the GPU starts, and "reference" (float64,
      the specification) are a UserError.
    A Backend given instead of a name is returned as it is when the rules above keep its name (or, for a backend of
    no name here, when it computes in `precision`); a precision that needs another backend is a UserError.
    Raises UserError (one line) for an unknown name or precision."""
    if precision is not None and precision not in PRECISIONS:
        raise UserError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if isinstance(name, Backend):
        # kept where it computes in `precision`: by the rules for its name, or by its own precision for a backend no
        # name loads (a test's)
        if precision is None:
            return name
        named = name.name in NAMES
        if not (resolve(name.name, precision, notify) == name.name if named else precision_of(name) == precision):
            raise UserError(f"the {name.name} backend object given does not compute in {precision}; pass a backend "
                            f"name (e.g. 'cpu') with precision {precision!r} instead")
        return name
    _check_name(name)
    if precision is None:
        return name
    if precision == "fp32":
        if name in BF16_BACKENDS:
            raise UserError(f"backend {name} computes in bf16, which contradicts precision fp32; use backend cpu "
                            "(--backend cpu) for fp32, or precision bf16")
        return name
    if name in BF16_BACKENDS:
        return name
    if name == "reference":
        raise UserError("precision bf16 does not apply to the reference backend (float64: the specification); "
                        "use precision fp32 (--precision fp32) or backend cpu (--backend cpu)")
    if name == "gpu" or (name == "auto" and _auto_gpu(notify) is not None):
        chose = " (which auto chose: the GPU is usable)" if name == "auto" else ""
        raise UserError(f"precision bf16 is not implemented on the gpu backend{chose} yet; use precision fp32 "
                        "(--precision fp32) or backend cpu (--backend cpu)")
    bf16, reason = cpu_bf16_backend()
    if bf16 is None:
        if notify is not None:
            notify(f"fastvae: precision bf16 needs AMX or AVX512-BF16, unavailable here ({reason}); using fp32 on the "
                   "cpu backend")
        return "cpu"
    return bf16


def cpu_bf16_backend() -> tuple[str | None, str | None]:
    """(name of the backend that runs the cpu backend's products in bf16 on this CPU, None), or (None, the one-line
    reason there is none): cpu-bf16, whose products run on AMX tiles, or where the CPU has none (AMD's Zen 4) with
    AVX512-BF16's vdpbf16ps (fastvae.backends.amx.tiles)."""
    from . import amx
    reason = amx.engine_unavailable_reason()
    return ("cpu-bf16", None) if reason is None else (None, reason)


def precision_of(be: Backend) -> str:
    """The precision a backend's products compute in: "bf16" (bf16 operands, fp32 sums: BF16_BACKENDS), "fp64" (the
    float64 reference) or "fp32". Master weights, gradients and Adam's moments are the backend's dtype throughout."""
    if be.name in BF16_BACKENDS:
        return "bf16"
    return "fp64" if np.dtype(be.dtype) == np.float64 else "fp32"


def _without_numba():
    """Why Numba's kernels cannot run (one line), or None: NUMBA_DISABLE_JIT=1 runs jitted functions as Python,
    where the kernels' intrinsics (pause, prefetch, the AMX tiles) do not exist (a fresh user's trial: a traceback
    after the run folder was made, "<intrinsic pause> is not usable in pure-python")."""
    from numba.core import config
    if config.DISABLE_JIT:
        return ("NUMBA_DISABLE_JIT is set, and its kernels need Numba's compiler (their intrinsics have no Python "
                "form); unset it, or use the reference backend (float64, slow)")
    return None


def _check_name(name):
    if name not in NAMES:
        raise UserError(f"unknown backend {name!r}; choose one of {', '.join(NAMES)}")


def _auto_gpu(notify):
    """What "auto" finds: the gpu backend where it starts, else None after telling `notify` why (one line)."""
    from . import gpu
    try:
        return gpu.load()
    except gpu.Unavailable as exc:          # every way the GPU can fail to start, as one line
        if notify is not None:
            notify(f"fastvae: using the CPU ({exc.reason})")   # (the header says which backend)
        return None
