"""The gpu backend: CuPy launching the CUDA C in kernels/ (one RawModule, compiled once by NVRTC).

The contract (fastvae/backends/contract.py) is implemented once, by `CudaKernels`, over two things: an array module
`xp` and a module of compiled kernels with CuPy's RawModule interface. With CuPy they are cupy and a cupy.RawModule
(`load()`); in the tests they are numpy and fastvae.cuda.emu.RawModule, which runs the same CUDA C on the CPU
(`emulated()`), or the stand-in CuPy of tests/stand_in, which runs load() itself on the emulator.

A setting (activation, encoder, reconstruction) picks a template instance of one kernel, compiled for every value
(fastvae.cuda.sources.instance): `dense_forward(..., activation="elu")` launches `dense_forward<ACTIVATION_ELU>`.

Per-step values (Adam's t, the noise step; the first row of the noise, 0 for a whole batch) are read by the kernels
from `counters` in device memory and the step is advanced by a kernel, so no launch argument changes from one step to
the next: on a device `capture` records a whole step once as a CUDA graph and step.Stepper replays it every step.
"""
import contextlib
import ctypes
import sys
import threading

import numpy as np

from ..constants import COUNTERS, LOSS_CHECK_INTERVAL_DEVICE
from ..cuda import sources
from ..cuda.launch import ADAM_BLOCKS, THREADS, TILE_MN, TILE_T
from ..errors import UserError
from .contract import Backend

# The packages of pyproject.toml's extras gpu-cuda13 and gpu-cuda12 (tests/test_gpu_real_cupy.py holds them equal),
# named in the install hints: `pip install "fastvae[gpu-cuda13]"` would fetch the package index's fastvae, which is
# another project, wherever this one was installed from a checkout (a fresh user's trial).
EXTRAS = {13: ("cupy-cuda13x>=14,<15", "nvidia-cuda-nvrtc>=13,<14", "nvidia-cuda-runtime>=13,<14"),
          12: ("cupy-cuda12x>=14,<15", "nvidia-cuda-nvrtc-cu12>=12,<13", "nvidia-cuda-runtime-cu12>=12,<13")}


def pip_install(major, upgrade=False):
    """The pip command that installs CuPy, NVRTC and the CUDA headers for CUDA `major` (the gpu-cuda<major> extra)."""
    packages = EXTRAS.get(major, (f"cupy-cuda{major}x",))
    return "pip install " + "-U " * upgrade + " ".join(f'"{p}"' for p in packages)


_INSTALL = (f"{pip_install(13)} for a CUDA 13 driver, {pip_install(12)} for CUDA 12 (nvidia-smi shows the "
            "driver's CUDA version)")
TILE_BLOCK = (TILE_T, TILE_T)     # threads of a product kernel's block, TILE_MN x TILE_MN outputs

_i32, _i64, _f64 = np.int32, np.int64, np.float64


def _tiles(n):
    """Tiles of TILE_MN along n. Row tiles go on grid.x (up to 2^31 - 1), never on grid.y (65535: 2,097,120 rows)."""
    return (n + TILE_MN - 1) // TILE_MN


def _blocks(count):
    return (count + THREADS - 1) // THREADS


def _check(a, shape, what, dt=np.float32):
    """A kernel sees only a pointer: the array must be contiguous, of the dtype and shape it assumes."""
    if a.dtype != dt or tuple(a.shape) != tuple(shape) or not a.flags.c_contiguous:
        raise ValueError(f"gpu backend: {what} must be a C-contiguous {np.dtype(dt)} array of shape {tuple(shape)}, "
                         f"got {a.dtype} {tuple(a.shape)}{'' if a.flags.c_contiguous else ' (not contiguous)'}")


def compile_module(raw_module, **options):
    """kernels/ as one module: `raw_module(code=..., name_expressions=...)` with every template instance named."""
    code = sources.module_source()
    return raw_module(code=code, name_expressions=sources.name_expressions(code), **options)


class CudaKernels:
    """The contract over `xp` (numpy, cupy or the stand-in) and `module` (RawModule-like: get_function(name)).

    On the host (xp is numpy) there is no stream to capture: `capture` is None and step.Stepper calls train_step.
    `launches` counts kernel launches (a replayed graph counts as none)."""

    dtype = np.float32

    def __init__(self, xp, module, name="gpu"):
        self.xp, self.module, self.name = xp, module, name
        self._host = xp is np
        self._functions = {}
        self.launches = 0
        # while capture() records on a thread: that thread's launches' arguments, kept for the graph. Per thread: a
        # model fitted in another thread meanwhile launches on its own stream, and its launches were counted and kept
        # in this graph's, and refused as "captured" (a review)
        self._local = threading.local()
        # Each read of the loss waits for the step to finish on a device: the trainer checks it less often there.
        self.loss_check_interval = 1 if self._host else LOSS_CHECK_INTERVAL_DEVICE
        if self._host:
            self.capture = None

    def function(self, kernel):
        """The module's kernel (a name or a name expression), fetched once: with CuPy, compiled and loaded then."""
        if kernel not in self._functions:
            self._functions[kernel] = self.module.get_function(kernel)
        return self._functions[kernel]

    def _launch(self, kernel, grid, block, args):
        if not self._host:
            for a in args:                  # CuPy passes a one-element host array by value, as a bogus pointer
                if isinstance(a, np.ndarray) and not isinstance(a, self.xp.ndarray):
                    raise ValueError(f"gpu backend: {kernel} was given a host (NumPy) array of shape {a.shape}; pass "
                                     "arrays on the device (backend.asarray)")
        fn = self.function(kernel)
        self.launches += 1
        captured = getattr(self._local, "captured", None)
        if captured is not None:
            captured.append(args)
        fn(grid, block, args)

    def _not_while_capturing(self, what):
        """Work that allocates or copies cannot sit in a graph: its buffer would dangle on every replay."""
        if getattr(self._local, "captured", None) is not None:
            raise ValueError(f"gpu backend: {what} cannot be captured in a CUDA graph (it allocates); pass it "
                             "converted before the step")

    def capture(self, fn):
        """Record the launches `fn` makes as a CUDA graph, without running them, and return a function that
        replays it: captured in relaxed mode on a stream of its own, launched on the current stream so it stays
        ordered with the work around it. The graph bakes in every launch argument; fn keeps the arrays alive."""
        cuda = self.xp.cuda
        caller = cuda.get_current_stream()
        capturing = cuda.Stream(non_blocking=True)
        capturing.wait_event(caller.record())           # buffers written before are ready
        # .use() and back rather than `with capturing:`, whose exit makes the default stream current, not the
        # caller's (CuPy issue #8377)
        capturing.use()
        self._local.captured = []
        try:
            capturing.begin_capture()
            try:
                fn()
            except BaseException:
                # the capture is ended, and fn's own error raised: end_capture() would raise "capture invalidated"
                # over it (a review: the first failing launch's message was lost so)
                with contextlib.suppress(Exception):
                    capturing.end_capture()
                raise
            graph = capturing.end_capture()
            arguments = self._local.captured
        finally:
            self._local.captured = None
            caller.use()

        def replay():
            graph.launch(stream=cuda.get_current_stream())
        # Every array a captured launch reads or writes stays referenced, and nothing refers back to fn or its
        # owner: no reference cycle keeps the graph and the device data set alive until the cyclic GC runs.
        replay.keep = (arguments, capturing)
        replay.kernels = len(arguments)                 # the graph's kernel nodes
        return replay

    # ---- hooks
    def empty(self, shape, dtype=np.float32):
        return self.xp.empty(shape, dtype=dtype)

    def zeros(self, shape, dtype=np.float32):
        return self.xp.zeros(shape, dtype=dtype)

    def asarray(self, a, dtype=np.float32):
        return self.xp.array(a, dtype=dtype, copy=True)

    def to_host(self, a):
        return np.asarray(a) if self._host else self.xp.asnumpy(a)

    def synchronize(self):
        if not self._host:
            self.xp.cuda.get_current_stream().synchronize()

    # ---- kernels (contract order: outputs, inputs, settings)
    def gather_batch(self, x, data, idx):
        """x = data[idx] as float32 in [0, 1]; uint8 data is divided by 255 on the fly (correctly rounded)."""
        n, cols = x.shape
        _check(x, (n, cols), "x")
        if idx.dtype != np.int64 or not idx.flags.c_contiguous or not isinstance(idx, self.xp.ndarray):
            self._not_while_capturing(f"idx of dtype {idx.dtype} (not a contiguous int64 array on the device)")
            # (CuPy's ascontiguousarray takes device arrays only: a host idx is copied over first)
            idx = self.xp.ascontiguousarray(self.xp.asarray(idx, dtype=np.int64))
        _check(idx, (n,), "idx", np.int64)
        if data.dtype not in (np.uint8, np.float32) or not data.flags.c_contiguous or data.ndim != 2:
            self._not_while_capturing(f"data of dtype {data.dtype} (not a contiguous uint8 or float32 matrix)")
            x[...] = data[idx]           # other dtypes and layouts: the array module's gather, then a cast
            return
        _check(data, (data.shape[0], cols), "data", data.dtype)
        kernel = "gather_u8" if data.dtype == np.uint8 else "gather_f32"
        self._launch(kernel, (_blocks(n * cols),), (THREADS,), (x, data, idx, _i32(n), _i32(cols)))

    def _dense_shapes(self, out, inp, w, b):
        n, K = inp.shape
        N = w.shape[1]
        _check(inp, (n, K), "inp")
        _check(w, (K, N), "w")
        _check(out, (n, N), "out")
        if b is not None:
            _check(b, (N,), "b")
        return n, K, N

    def dense_forward(self, out, inp, w, b, activation):
        n, K, N = self._dense_shapes(out, inp, w, b)
        self._launch(sources.instance("dense_forward", "activation", activation), (_tiles(n), _tiles(N)), TILE_BLOCK,
                     (out, inp, w, b, _i32(n), _i32(K), _i32(N)))

    def dense_backward(self, dinp, dw, db, dout, inp, w, out, activation):
        """dz = dout * act'(out) is formed inside both products; dout keeps dy."""
        if dw is None or db is None:
            raise ValueError("the gpu backend forms weight gradients in dense_backward (it has no weight_update): "
                             "pass dw and db")
        n, K, N = self._dense_shapes(dout, inp, w, None)
        _check(dw, (K, N), "dw")
        _check(db, (N,), "db")
        if dinp is not None:
            _check(dinp, (n, K), "dinp")
        if out is None:
            if activation != "identity":
                raise ValueError(f"gpu backend: dense_backward needs the forward output for activation {activation!r}")
            out = dout                  # identity: act' = 1 reads nothing, but the kernel takes a readable buffer
        _check(out, (n, N), "out")
        dims = (_i32(n), _i32(K), _i32(N))
        self._launch(sources.instance("dense_backward_weights", "activation", activation), (_tiles(K), _tiles(N)),
                     TILE_BLOCK, (dw, db, dout, out, inp, *dims))
        if dinp is not None:
            self._launch(sources.instance("dense_backward_input", "activation", activation), (_tiles(n), _tiles(K)),
                         TILE_BLOCK, (dinp, dout, out, w, *dims))

    def heads_forward(self, z, mu_logvar, loss, inp, w, b, counters, noise_stream, encoder):
        n, L = z.shape
        n, K, _ = self._dense_shapes(mu_logvar, inp, w, b)
        _check(z, (n, L), "z")
        _check(mu_logvar, (n, 2 * L), "mu_logvar")
        _check(loss, (2,), "loss", np.float64)
        _check(counters, (COUNTERS,), "counters", np.int64)
        self._launch(sources.instance("heads_forward", "encoder", encoder), (_tiles(n), _tiles(L)), TILE_BLOCK,
                     (z, mu_logvar, loss, inp, w, b, counters, _i32(noise_stream), _i32(n), _i32(K), _i32(L)))

    def heads_backward(self, dinp, dw, db, dmu_logvar, dz, inp, w, mu_logvar, z, counters, noise_stream, encoder):
        """dmu_logvar in one elementwise pass (the gamma form reads z, the sigma form draws eps again from
        counters), then the heads' products: the identity's dense backward."""
        n, L = dz.shape
        for a, what in ((dmu_logvar, "dmu_logvar"), (mu_logvar, "mu_logvar")):
            _check(a, (n, 2 * L), what)
        for a, what in ((dz, "dz"), (z, "z")):
            _check(a, (n, L), what)
        _check(counters, (COUNTERS,), "counters", np.int64)
        self._launch(sources.instance("heads_backward_mu_logvar", "encoder", encoder), (_blocks(n * L),), (THREADS,),
                     (dmu_logvar, dz, mu_logvar, z, counters, _i32(noise_stream), _i32(n), _i32(L)))
        self.dense_backward(dinp, dw, db, dmu_logvar, inp, w, None, "identity")

    def output_forward(self, dlogits, loss, inp, w, b, x, reconstruction):
        n, K, N = self._dense_shapes(dlogits, inp, w, b)
        _check(x, (n, N), "x")
        _check(loss, (2,), "loss", np.float64)
        self._launch(sources.instance("output_forward", "reconstruction", reconstruction), (_tiles(n), _tiles(N)),
                     TILE_BLOCK, (dlogits, loss, inp, w, b, x, _i32(n), _i32(K), _i32(N)))

    def adam_update(self, params, grads, m, v, counters, lr, beta1, beta2, eps):
        """grads (S, P): the partial gradients of S row shards, summed by the pass itself into grads[0] (S = 1 on the
        gpu's own steps: the batch runs whole)."""
        size = params.size
        shards = max(1, grads.shape[0]) if grads.ndim == 2 else 1     # (0, P) or 1-D grads fail the check below
        _check(grads, (shards, size), "grads")
        for a, what in ((params, "params"), (m, "m"), (v, "v")):
            _check(a, (size,), what)
        _check(counters, (COUNTERS,), "counters", np.int64)
        grid = max(1, min(ADAM_BLOCKS, _blocks(size)))
        # t = ++counters[COUNTER_STEP] in device memory (a captured graph replays it); each block of the pass forms
        # lr_t from the model's own t
        self._launch("adam_begin", (1,), (1,), (counters,))
        self._launch("adam_update", (grid,), (THREADS,), (params, grads, m, v, counters, _f64(lr), _f64(beta1),
                                                          _f64(beta2), _f64(eps), _i64(size), _i32(shards)))


_emulated: dict[bool, Backend] = {}


def emulated(race_check=False):
    """The backend over numpy and the CPU emulation of the CUDA C (fastvae.cuda.emu): slow, for tests, memoized.
    race_check: ThreadSanitizer watches every launch (the process must start with LD_PRELOAD of libtsan)."""
    if race_check not in _emulated:
        from ..cuda import emu
        module = compile_module(emu.RawModule, race_check=race_check)
        _emulated[race_check] = Backend(CudaKernels(np, module, name="gpu-emulated"))
    return _emulated[race_check]


# ---- CuPy: imported only when the gpu backend is asked for; the import error is kept and shown
_cupy = None
_cupy_error = None


def _import_cupy():
    global _cupy, _cupy_error
    if _cupy is None and _cupy_error is None:
        try:
            import cupy
            _cupy = cupy
        except Exception as exc:        # ImportError, or a broken install (missing CUDA libraries)
            _cupy_error = _without_frames(exc)
    return _cupy


def _without_frames(exc):
    """`exc` (and the exceptions chained to it) without its traceback, to be kept for the process's life: a
    traceback holds its frames, and through them every caller's locals (the first VAE() of a program without CuPy
    kept the caller's arrays alive for good: 400 MB in a fresh user's trial)."""
    seen, todo = set(), [exc]
    while todo:
        e = todo.pop()
        if e is not None and id(e) not in seen:
            seen.add(id(e))
            e.__traceback__ = None
            todo += [e.__cause__, e.__context__]
    return exc


def driver_present():
    """Whether an NVIDIA driver's CUDA library loads here: asked without CuPy, so that a machine with no NVIDIA GPU
    is not told to install CuPy, which could not help it."""
    try:
        ctypes.CDLL("nvcuda.dll" if sys.platform == "win32" else "libcuda.so.1")
        return True
    except OSError:
        return False


def _cuda_version(v):
    return f"{v // 1000}.{v % 1000 // 10}"


def _first_line(exc):
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _built_for(cp):
    """The CUDA major version this CuPy was built for (runtimeGetVersion gives the build's version since CuPy 13)."""
    return cp.cuda.runtime.runtimeGetVersion() // 1000


def unavailable_reason():
    """None when the gpu backend can run here, else a one-line reason.

    CuPy runs on any driver of the CUDA major version it was built for, older minor versions included (it compiles
    the kernels to SASS for that), so no version is compared here: a driver of an older major version is refused by
    getDeviceCount itself, with cudaErrorInsufficientDriver."""
    cp = _import_cupy()
    if cp is None:
        if isinstance(_cupy_error, ModuleNotFoundError) and _cupy_error.name == "cupy":
            if not driver_present():
                return "no NVIDIA driver is installed (libcuda.so.1 was not found), nor CuPy"
            return f"CuPy is not installed: {_INSTALL}"
        return f"CuPy does not import ({type(_cupy_error).__name__}: {_first_line(_cupy_error)})"
    runtime = cp.cuda.runtime
    try:
        count = runtime.getDeviceCount()
    except runtime.CUDARuntimeError as exc:
        if "cudaErrorInsufficientDriver" not in str(exc):
            return f"no usable CUDA device ({_first_line(exc)})"
        driver, major = runtime.driverGetVersion(), _built_for(cp)
        if driver == 0:
            return "no NVIDIA driver is installed (libcuda.so.1 was not found)"
        return (f"the NVIDIA driver supports CUDA {_cuda_version(driver)}, older than the CUDA {major} this CuPy "
                f"(cupy-cuda{major}x) is built for: update the driver or install the CuPy for CUDA {driver // 1000}: "
                f"{pip_install(driver // 1000)}")
    if count == 0:
        return "no CUDA device is visible"
    return None


def describe_failure(exc, cp):
    """The one-line reason, with its fix, for an exception raised while the gpu backend starts on CuPy `cp` (the
    module compiled and loaded, a first allocation); None for one that is not such a failure (a bug: let it show)."""
    cuda, text, major = cp.cuda, _first_line(exc), _built_for(cp)
    if isinstance(exc, cuda.memory.OutOfMemoryError) or "cudaErrorMemoryAllocation" in text:
        return f"the GPU is out of memory ({text}): free it (nvidia-smi lists the processes that hold it)"
    if isinstance(exc, cuda.compiler.CompileException):
        if major >= 13:     # (NVRTC 13 compiles for 7.5 or newer: it told a V100's user "6.0 or newer", a review)
            return (f"fastvae's CUDA kernels do not compile for this GPU ({text}); with CUDA {major} they need compute "
                    "capability 7.5 or newer: for a GPU of 6.0-7.2 (P100, V100) install the CuPy for CUDA 12, which "
                    f"a CUDA {major} driver runs too: {pip_install(12)}; else report it with the output of nvidia-smi")
        return (f"fastvae's CUDA kernels do not compile for this GPU ({text}); they need compute capability 6.0 or "
                "newer: report it with the output of nvidia-smi")
    if isinstance(exc, cuda.runtime.CUDARuntimeError):
        if "cudaErrorDevicesUnavailable" in text or "cudaErrorDeviceUnavailable" in text:
            return (f"the GPU is busy ({text}): it is in exclusive-process mode and another process holds it; "
                    "wait for it or pick another GPU with CUDA_VISIBLE_DEVICES")
        return f"the CUDA runtime failed ({text})"
    if isinstance(exc, cuda.driver.CUDADriverError):
        if "NO_BINARY_FOR_GPU" in text or "UNSUPPORTED_PTX_VERSION" in text or "INVALID_PTX" in text:
            return (f"the CUDA driver cannot load the kernels NVRTC compiled ({text}): the GPU or the driver is newer "
                    f"than this NVRTC; update it: {pip_install(major, upgrade=True)}")
        return f"the CUDA driver failed ({text})"
    if isinstance(exc, (RuntimeError, OSError, ImportError)):
        if "CUDA headers" in text:
            return (f"CuPy cannot find the CUDA headers ({text}): {pip_install(major)} (they bring them), or set "
                    "CUDA_PATH to a CUDA toolkit")
        if "nvrtc" in text.lower():
            return (f"CuPy cannot load NVRTC, the CUDA compiler ({text}): {pip_install(major)} (they bring it), or "
                    "install the CUDA toolkit")
    return None


class Unavailable(UserError):
    """The gpu backend cannot run here; `reason` is the one-line why, with its fix."""

    def __init__(self, reason):
        # (raised by the library and the command line alike: the advice names both spellings)
        super().__init__(f"the gpu backend is not available: {reason}; use the cpu backend (backend=\"cpu\", "
                         "--backend cpu)")
        self.reason = reason


def _start(cp):
    """The backend on CuPy, brought up far enough to fail here rather than in the first step: every kernel compiled
    and loaded on the device, and one allocation made."""
    from ..cuda import nvrtc
    impl = CudaKernels(cp, compile_module(cp.RawModule, options=nvrtc.OPTIONS))
    for name in sources.entry_points(sources.module_source()):
        impl.function(name)
    cp.cuda.get_current_stream().synchronize()
    return Backend(impl)


_loaded = None


def load():
    """The gpu backend on CuPy (the kernels compiled once by NVRTC), as a contract.Backend; `Unavailable` (a
    UserError) with the one-line reason, and its fix, where it cannot run."""
    global _loaded
    if _loaded is None:
        problem = unavailable_reason()
        if problem is not None:
            raise Unavailable(problem)
        try:
            _loaded = _start(_cupy)
        except Exception as exc:
            problem = describe_failure(exc, _cupy)
            if problem is None:
                raise
            raise Unavailable(problem) from exc
    return _loaded
