"""fastvae: variational autoencoders trained by hand-written fused kernels (Numba on the CPU, CuPy on NVIDIA GPUs).

Public names only. `import fastvae` loads nothing else (a few milliseconds, no NumPy, no Numba, no signal handler
changed): each name loads its module on first use (PEP 562), so `fastvae-train --help` and `--version` answer at
once, and a Ctrl-C in a tool's first moments is the tool's to handle. CuPy, matplotlib and tqdm load on use.
"""
from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# each public name -> the module that defines it
_WHERE = {"VAE": "model", "Config": "config", "UserError": "errors", "TrainingInterrupted": "errors",
          "TrainingDiverged": "errors", "StoppedBySignal": "errors"}

__all__ = ["VAE", "Config", "UserError", "TrainingInterrupted", "TrainingDiverged", "StoppedBySignal", "__version__"]

if TYPE_CHECKING:                           # (what type checkers and editors see: the names themselves)
    from .config import Config
    from .errors import StoppedBySignal, TrainingDiverged, TrainingInterrupted, UserError
    from .model import VAE


def __getattr__(name: str):
    if name in _WHERE:
        value = getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
        globals()[name] = value             # (once: later lookups find it without this function)
        return value
    # a submodule by its attribute (fastvae.evaluate.iwae_bound, fastvae.data.load_mnist after `import fastvae`: the
    # README's own example failed so, as Python binds a submodule only once something imports it)
    if not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*__all__, *_SUBMODULES])


_SUBMODULES = ("data", "evaluate")          # the modules the README's library examples reach as attributes
