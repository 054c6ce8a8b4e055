"""fastvae: variational autoencoders trained by hand-written fused kernels (Numba on the CPU, CuPy on NVIDIA GPUs).

Public names only; `import fastvae` loads NumPy and Numba, nothing optional (CuPy, matplotlib, tqdm load on use).
"""
__version__ = "0.1.0"

from . import numba_cache  # noqa: E402

numba_cache.ensure_a_place()     # before any kernel is defined: a read-only install without a cache folder
numba_cache.key_caches_by_package()     # and an edit of one kernel module recompiles the kernels that call it

from .config import Config  # noqa: E402
from .errors import StoppedBySignal, TrainingDiverged, TrainingInterrupted, UserError  # noqa: E402
from .model import VAE  # noqa: E402

__all__ = ["VAE", "Config", "UserError", "TrainingInterrupted", "TrainingDiverged", "StoppedBySignal", "__version__"]
