"""The backends the kernel tests hold to the reference, and which cases each can afford, in one place.

cpu: the Numba backend. gpu-emulated: the gpu backend's launch code over the CUDA C run on the CPU by
fastvae.cuda.emu (needs a C++ compiler; slow: one fiber per CUDA thread, so it takes the cases up to a budget of
multiply-adds, plus the seed's own layer shapes at batch 150). gpu: the same on a real device (marker gpu).
"""
import pytest

from tolerances import AWKWARD_ROWS

# Shapes: (fan_in, fan_out) of dense layers, (fan_in, latent) of the heads, (fan_in, width) of the output layer.
# Each list has the seed's shape first, then widths that are no multiple of any tile (32 on the gpu, 16 SIMD lanes).
DENSE_SHAPES = [(784, 500), (500, 500), (37, 53), (500, 40), (20, 257), (1, 3)]
HEADS_SHAPES = [(500, 20), (13, 3), (9, 1), (33, 7), (33, 37)]
OUTPUT_SHAPES = [(500, 784), (13, 37), (1, 1), (20, 53)]
ADAM_SIZES = [(1, 0), (1000, 0), (12345, 7), (1316824, 399)]      # (parameters, steps taken before)
SEED_ROWS = 150

BACKENDS = ("cpu", "gpu-emulated", "gpu")
EMULATION_BUDGET = 2_000_000      # multiply-adds of one product the emulator takes at any row count


def _unavailable(name):
    if name == "gpu-emulated":
        from fastvae.cuda import emu
        return emu.unavailable_reason()
    if name == "gpu":
        from fastvae.backends import gpu
        reason = gpu.unavailable_reason()
        return None if reason is None else f"gpu backend unavailable: {reason}"
    return None


_cache = {}


def load(name):
    """The contract.Backend called `name` (skipping the test, with the reason, where it cannot run here)."""
    reason = _unavailable(name)
    if reason is not None:
        pytest.skip(reason)
    if name not in _cache:
        from fastvae.backends import get_backend, gpu
        _cache[name] = gpu.emulated() if name == "gpu-emulated" else get_backend(name)
    return _cache[name]


def affordable(name, rows, work, seed_shape):
    """Whether backend `name` runs a case of `rows` rows and `work` multiply-adds per row."""
    return name != "gpu-emulated" or rows * work <= EMULATION_BUDGET or (seed_shape and rows == SEED_ROWS)


def cases(shapes, extra=(None,), rows=AWKWARD_ROWS, work=lambda a, b: a * b):
    """pytest params (backend, rows, a, b, extra) over every backend, each case only where `affordable`; the
    gpu ones carry the gpu marker (a device) and ids name every part."""
    params = []
    for name in BACKENDS:
        marks = [pytest.mark.gpu] if name == "gpu" else []
        for n in rows:
            for k, (a, b) in enumerate(shapes):
                for x in extra:
                    if affordable(name, n, work(a, b), k == 0):
                        ident = f"{name}-{n}x{a}x{b}" + ("" if x is None else f"-{x}")
                        params.append(pytest.param(name, n, a, b, x, marks=marks, id=ident))
    return params
