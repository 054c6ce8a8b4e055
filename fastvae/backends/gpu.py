"""The gpu backend (CuPy over the CUDA C in kernels/). Not built yet: see issue 3."""
from ..errors import UserError

_INSTALL = 'pip install "fastvae[gpu]"'


def unavailable_reason():
    """None when the gpu backend can run here, else a short reason."""
    return "the gpu backend is not implemented yet in this version of fastvae"


def load():
    raise UserError(f"--backend gpu is not available: {unavailable_reason()}; use --backend cpu")
