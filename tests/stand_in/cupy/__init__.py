"""A stand-in `cupy` for what the real CuPy cannot do on a machine without a GPU: allocate, launch kernels, hold
streams and capture graphs. numpy arrays, fastvae's CPU emulation of the CUDA C as RawModule, a scripted CUDA
runtime, CuPy's current-stream rules and its stream-capture protocol. With it, fastvae's gpu backend runs its real
code path — load(), capture and replay, the launch code — up to the CuPy calls.

Everything here bears a name of the real package and means what it means there: tests/test_gpu_real_cupy.py checks
each name, signature and exception class against the real CuPy (the `test` extra installs it). What the real CuPy
answers without a device (versions, compile errors, the exception classes) is tested against the real package.

Use it in-process (tests/test_gpu_steps.py puts it in sys.modules) or for a subprocess by putting
tests/stand_in on PYTHONPATH (tests/test_cli.py runs `python -m fastvae.train --backend gpu` that way).
FASTVAE_STAND_IN_DRIVER / _RUNTIME set the reported CUDA versions; as with the real CuPy, a driver of an older
major version than the runtime's makes getDeviceCount raise cudaErrorInsufficientDriver.
"""
import os
import threading
import types

import numpy as np

from fastvae.cuda import emu

__version__ = "0.0-stand-in"


# numpy behind CuPy's signatures
def empty(shape, dtype=float, order="C"):
    return np.empty(shape, dtype=dtype, order=order)


def zeros(shape, dtype=float, order="C"):
    return np.zeros(shape, dtype=dtype, order=order)


def array(obj, dtype=None, copy=True, order="K", subok=False, ndmin=0, *, blocking=False):
    return np.array(obj, dtype=dtype, copy=copy, order=order, subok=subok, ndmin=ndmin)


def asnumpy(a, stream=None, order="C", out=None, *, blocking=True):
    assert out is None, "the stand-in has no asnumpy(out=)"
    return np.asarray(a, order=order)


def asarray(a, dtype=None, order=None, copy=None, *, blocking=False):
    return np.asarray(a, dtype=dtype, order=order, copy=copy)


def ascontiguousarray(a, dtype=None):
    # (CuPy's takes its own arrays only, a NumPy one is a TypeError; here host and device arrays are one type)
    return np.ascontiguousarray(a, dtype=dtype)


ndarray = np.ndarray        # the stand-in's device arrays are numpy's


_ERRORS = {2: "cudaErrorMemoryAllocation: out of memory",
           35: "cudaErrorInsufficientDriver: CUDA driver version is insufficient for CUDA runtime version",
           46: "cudaErrorDevicesUnavailable: CUDA-capable device(s) is/are busy or unavailable",
           100: "cudaErrorNoDevice: no CUDA-capable device is detected"}


class CUDARuntimeError(RuntimeError):
    """cupy_backends.cuda.api.runtime.CUDARuntimeError: built from a cudaError_t status, named in its message."""

    def __init__(self, status):
        self.status = status
        super().__init__(_ERRORS.get(status, f"cudaError {status}"))


def _driver():
    return int(os.environ.get("FASTVAE_STAND_IN_DRIVER", 13000))


def runtimeGetVersion():            # since CuPy 13: the CUDA version CuPy was built with
    return int(os.environ.get("FASTVAE_STAND_IN_RUNTIME", 13020))


def getDeviceCount():
    if _driver() // 1000 < runtimeGetVersion() // 1000:
        raise CUDARuntimeError(35)
    return 1


runtime = types.SimpleNamespace(getDeviceCount=getDeviceCount, driverGetVersion=_driver,
                                runtimeGetVersion=runtimeGetVersion, CUDARuntimeError=CUDARuntimeError)


class OutOfMemoryError(MemoryError):
    """cupy.cuda.memory.OutOfMemoryError(size, total, limit=0)."""

    def __init__(self, size, total, limit=0):
        super().__init__(f"Out of memory allocating {size:,} bytes (allocated so far: {total:,} bytes).")


class CompileException(Exception):
    """cupy.cuda.compiler.CompileException(msg, source, name, options, backend='nvrtc')."""

    def __init__(self, msg, source, name, options, backend="nvrtc"):
        super().__init__(msg)
        self._msg, self.source, self.name, self.options, self.backend = msg, source, name, options, backend


class CUDADriverError(RuntimeError):
    """cupy_backends.cuda.api.driver.CUDADriverError(status) (the real one asks libcuda for its message)."""

    def __init__(self, status):
        self.status = status
        super().__init__({209: "CUDA_ERROR_NO_BINARY_FOR_GPU: no kernel image is available for execution on the "
                               "device"}.get(status, f"CUDA_ERROR {status}"))


class Stream:
    """A stream as CuPy keeps them: `use()` makes it current, for the calling thread (CuPy's current stream and its
    `with` stack are per thread); `with stream:` pushes it and, on exit, makes current what is below it on the stack
    (the default stream if only `use()` was called: CuPy issue #8377). A launch made while the calling thread's
    current stream captures is recorded, not run (another thread's launches on its own stream run: relaxed mode);
    end_capture gives a graph whose launch(stream) replays it."""
    _local = None       # the calling thread's current stream and `with` stack
    _open = set()       # the streams capturing now

    def __init__(self, null=False, non_blocking=False, ptds=False, priority=None):
        self.waited = []
        self.capturing = None           # the launches recorded while this stream captures

    @staticmethod
    def _state():
        local = Stream._local
        if not hasattr(local, "stack"):
            local.stack = [_DEFAULT]
            local.current = _DEFAULT
        return local

    def synchronize(self):
        assert self.capturing is None, "synchronize inside a capture"

    def record(self, event=None):
        return object()

    def wait_event(self, event):
        self.waited.append(event)

    def use(self):
        Stream._state().current = self
        return self

    def __enter__(self):
        Stream._state().stack.append(self)
        return self.use()

    def __exit__(self, *exc):
        state = Stream._state()
        state.stack.pop()
        state.current = state.stack[-1]

    def begin_capture(self, mode=None):
        assert self.capturing is None, "nested capture"
        self.capturing = []
        Stream._open.add(self)

    def end_capture(self):
        launches, self.capturing = self.capturing, None
        Stream._open.discard(self)
        return types.SimpleNamespace(launch=lambda stream=None: [kernel(*args) for kernel, args in launches])


Stream._local = threading.local()
_DEFAULT = Stream()


def get_current_stream(device_id=-1):
    return Stream._state().current


cuda = types.SimpleNamespace(runtime=runtime, Stream=Stream, get_current_stream=get_current_stream,
                             memory=types.SimpleNamespace(OutOfMemoryError=OutOfMemoryError),
                             compiler=types.SimpleNamespace(CompileException=CompileException),
                             driver=types.SimpleNamespace(CUDADriverError=CUDADriverError))


class RawModule:
    """The emulator's RawModule, whose launches a capturing stream records instead of running."""

    def __init__(self, *, code=None, path=None, options=(), backend="nvrtc", translate_cucomplex=False,
                 enable_cooperative_groups=False, name_expressions=None, jitify=None):
        self.module = emu.RawModule(code, options, name_expressions=name_expressions)

    def get_function(self, name):
        kernel = self.module.get_function(name)

        def launch(*args):
            recording = get_current_stream().capturing
            if recording is not None:
                recording.append((kernel, args))
            else:
                kernel(*args)
        return launch
