"""A stand-in `cupy` for tests on machines without a GPU: numpy arrays, fastvae's CPU emulation of the CUDA C as
RawModule, a scripted CUDA runtime and CuPy's stream-capture protocol. With it, fastvae's gpu backend runs its
real code path — load(), the availability checks, the launch code, capture and replay — up to the CuPy calls.

Use it in-process (tests/test_gpu_steps.py puts it in sys.modules) or for a subprocess by putting
tests/stand_in on PYTHONPATH (tests/test_cli.py runs `python -m fastvae.train --backend gpu` that way).
FASTVAE_STAND_IN_DRIVER / _RUNTIME set the reported CUDA versions (e.g. 11080 for a too-old driver).
"""
import os
import types

import numpy as np

from fastvae.cuda import emu

__version__ = "0.0-stand-in"
empty, zeros, array, asnumpy, ascontiguousarray = np.empty, np.zeros, np.array, np.asarray, np.ascontiguousarray

runtime = types.SimpleNamespace(
    getDeviceCount=lambda: 1,
    driverGetVersion=lambda: int(os.environ.get("FASTVAE_STAND_IN_DRIVER", 12040)),
    runtimeGetVersion=lambda: int(os.environ.get("FASTVAE_STAND_IN_RUNTIME", 12020)))


class Stream:
    """CuPy's stream-capture protocol as the gpu backend uses it: a launch made while a stream captures is
    recorded, not run; end_capture gives a graph whose launch(stream) replays the recording."""
    capturing = None

    def __init__(self, non_blocking=False):
        self.waited = []

    def synchronize(self):
        assert Stream.capturing is None, "synchronize inside a capture"

    def record(self):
        return object()

    def wait_event(self, event):
        self.waited.append(event)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def begin_capture(self):
        assert Stream.capturing is None, "nested capture"
        Stream.capturing = []

    def end_capture(self):
        launches, Stream.capturing = Stream.capturing, None
        return types.SimpleNamespace(launch=lambda stream: [kernel(*args) for kernel, args in launches])


_default = Stream()
cuda = types.SimpleNamespace(runtime=runtime, Stream=Stream, get_current_stream=lambda: _default)


class RawModule:
    """The emulator's RawModule, whose launches a capturing stream records instead of running."""

    def __init__(self, code, options=(), name_expressions=None):
        self.module = emu.RawModule(code, options, name_expressions=name_expressions)

    def get_function(self, name):
        kernel = self.module.get_function(name)

        def launch(*args):
            if Stream.capturing is not None:
                Stream.capturing.append((kernel, args))
            else:
                kernel(*args)
        return launch
