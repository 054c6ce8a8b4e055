"""The backends the kernel tests hold to the reference, and which cases each can afford, in one place.

cpu: the Numba backend. cpu-bf16: the same with its products in bf16, on AMX tiles or with AVX512-BF16 where there
is no AMX (skipped, with the reason, where the CPU has neither). gpu-emulated: the gpu backend's launch code over
the CUDA C run on the CPU by fastvae.cuda.emu (needs a C++ compiler; slow: one fiber per CUDA thread, so it takes
the cases up to a budget of multiply-adds, plus the seed's own layer shapes at batch 150). gpu: the same on a real
device (marker gpu).
"""
import pytest

from tolerances import AWKWARD_ROWS

# Shapes: (fan_in, fan_out) of dense layers, (fan_in, latent) of the heads, (fan_in, width) of the output layer.
# Each list has the seed's shape first, then widths that are no multiple of any tile (32 on the gpu, 16 SIMD lanes).
# Data widths other than MNIST's 784 (issue 15): 1, 101, 1024 (32 x 32) and 3072 (32 x 32 x 3) enter as the first
# layer's fan-in and leave as the output layer's width.
DATA_WIDTHS = [784, 1, 101, 1024, 3072]
DENSE_SHAPES = [(784, 500), (500, 500), (37, 53), (500, 40), (20, 257), (1, 3), (101, 37), (1024, 20), (3072, 13)]
HEADS_SHAPES = [(500, 20), (13, 3), (9, 1), (33, 7), (33, 37)]
OUTPUT_SHAPES = [(500, 784), (13, 37), (1, 1), (20, 53), (13, 101), (20, 1024), (9, 3072)]
ADAM_SIZES = [(1, 0), (1000, 0), (12345, 7), (1316824, 399)]      # (parameters, steps taken before)
SEED_ROWS = 150

BACKENDS = ("cpu", "cpu-bf16", "gpu-emulated", "gpu")
EMULATION_BUDGET = 2_000_000      # multiply-adds of one product the emulator takes at any row count


def _unavailable(name):
    if name == "cpu-bf16":
        from fastvae.backends import amx
        reason = amx.engine_unavailable_reason()
        return None if reason is None else f"cpu-bf16 backend unavailable: {reason}"
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
    gpu ones carry the gpu marker (a device) and ids name every part. The emulator takes the seed's shape beyond its
    budget with one of the extras only (ELU where it is one: the seed's), 4-5 s each: the other extras run the same
    kernel code with another epilogue, which the smaller shapes test."""
    params = []
    one_extra = "elu" if "elu" in extra else extra[0]
    for name in BACKENDS:
        marks = [pytest.mark.gpu] if name == "gpu" else []
        for n in rows:
            for k, (a, b) in enumerate(shapes):
                over_budget = name == "gpu-emulated" and n * work(a, b) > EMULATION_BUDGET
                for x in extra:
                    if affordable(name, n, work(a, b), k == 0) and not (over_budget and x != one_extra):
                        ident = f"{name}-{n}x{a}x{b}" + ("" if x is None else f"-{x}")
                        params.append(pytest.param(name, n, a, b, x, marks=marks, id=ident))
    return params
