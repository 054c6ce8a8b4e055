"""The gpu backend: CuPy launching the CUDA C in kernels/ (one RawModule, compiled once by NVRTC).

The contract (fastvae/backends/contract.py) is implemented once, by `CudaKernels`, over two things: an array module
`xp` and a module of compiled kernels with CuPy's RawModule interface. With CuPy they are cupy and a cupy.RawModule
(`load()`); in the tests they are numpy and fastvae.cuda.emu.RawModule, which runs the same CUDA C on the CPU
(`emulated()`), or the stand-in CuPy of tests/stand_in, which runs load() itself on the emulator.

A setting (activation, encoder, reconstruction) picks a template instance of one kernel, compiled for every value
(fastvae.cuda.sources.instance): `dense_forward(..., activation="elu")` launches `dense_forward<ACTIVATION_ELU>`.

Per-step values (Adam's t, the noise step) are read by the kernels from `counters` in device memory and advanced
by a kernel, so no launch argument changes from one step to the next: on a device `capture` records a whole step
once as a CUDA graph and step.Stepper replays it every step.
"""
import numpy as np

from ..constants import LOSS_CHECK_INTERVAL_DEVICE
from ..cuda import sources
from ..cuda.launch import ADAM_BLOCKS, THREADS, TILE_MN, TILE_T
from ..errors import UserError
from .contract import Backend

_INSTALL = 'pip install "fastvae[gpu]" (cupy-cuda12x for CUDA 12 drivers, cupy-cuda13x for CUDA 13)'
TILE_BLOCK = (TILE_T, TILE_T)     # threads of a product kernel's block, TILE_MN x TILE_MN outputs

_i32, _i64, _f64 = np.int32, np.int64, np.float64


def _tiles(n):
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
        # Each read of the loss waits for the step to finish on a device: the trainer checks it less often there.
        self.loss_check_interval = 1 if self._host else LOSS_CHECK_INTERVAL_DEVICE
        if self._host:
            self.capture = None

    def _launch(self, kernel, grid, block, args):
        if kernel not in self._functions:
            self._functions[kernel] = self.module.get_function(kernel)
        self.launches += 1
        self._functions[kernel](grid, block, args)

    def capture(self, fn):
        """Record the launches `fn` makes as a CUDA graph, without running them, and return a function that
        replays it: captured in relaxed mode on a stream of its own, launched on the current stream so it stays
        ordered with the work around it. The graph bakes in every launch argument; fn keeps the arrays alive."""
        cuda = self.xp.cuda
        before = self.launches
        capturing = cuda.Stream(non_blocking=True)
        capturing.wait_event(cuda.get_current_stream().record())     # buffers written before are ready
        with capturing:
            capturing.begin_capture()
            try:
                fn()
            finally:
                graph = capturing.end_capture()

        def replay():
            graph.launch(stream=cuda.get_current_stream())
        replay.keep = (fn, capturing)                   # every captured array stays referenced (through fn)
        replay.kernels = self.launches - before         # the graph's kernel nodes
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
        """x = data[idx] as float32 in [0, 1]; uint8 data is scaled by 1/255 on the fly."""
        n, cols = x.shape
        _check(x, (n, cols), "x")
        if idx.dtype != np.int64 or not idx.flags.c_contiguous:
            idx = self.xp.ascontiguousarray(idx, dtype=np.int64)
        _check(idx, (n,), "idx", np.int64)
        if data.dtype not in (np.uint8, np.float32) or not data.flags.c_contiguous or data.ndim != 2:
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
        self._launch(sources.instance("dense_forward", "activation", activation), (_tiles(N), _tiles(n)), TILE_BLOCK,
                     (out, inp, w, b, _i32(n), _i32(K), _i32(N)))

    def dense_backward(self, dinp, dw, db, dout, inp, w, out, activation):
        """dz = dout * act'(out) is formed inside both products; dout keeps dy."""
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
        self._launch(sources.instance("dense_backward_weights", "activation", activation), (_tiles(N), _tiles(K)),
                     TILE_BLOCK, (dw, db, dout, out, inp, *dims))
        if dinp is not None:
            self._launch(sources.instance("dense_backward_input", "activation", activation), (_tiles(K), _tiles(n)),
                         TILE_BLOCK, (dinp, dout, out, w, *dims))

    def heads_forward(self, z, mu_logvar, loss, inp, w, b, counters, noise_stream, encoder):
        n, L = z.shape
        n, K, _ = self._dense_shapes(mu_logvar, inp, w, b)
        _check(z, (n, L), "z")
        _check(mu_logvar, (n, 2 * L), "mu_logvar")
        _check(loss, (2,), "loss", np.float64)
        _check(counters, (2,), "counters", np.int64)
        self._launch(sources.instance("heads_forward", "encoder", encoder), (_tiles(L), _tiles(n)), TILE_BLOCK,
                     (z, mu_logvar, loss, inp, w, b, counters, _i32(noise_stream), _i32(n), _i32(K), _i32(L)))

    def heads_backward(self, dinp, dw, db, dmu_logvar, dz, inp, w, mu_logvar, z, counters, noise_stream, encoder):
        """dmu_logvar in one elementwise pass (the gamma form reads z, the sigma form draws eps again from
        counters), then the heads' products: the identity's dense backward."""
        n, L = dz.shape
        for a, what in ((dmu_logvar, "dmu_logvar"), (mu_logvar, "mu_logvar")):
            _check(a, (n, 2 * L), what)
        for a, what in ((dz, "dz"), (z, "z")):
            _check(a, (n, L), what)
        _check(counters, (2,), "counters", np.int64)
        self._launch(sources.instance("heads_backward_mu_logvar", "encoder", encoder), (_blocks(n * L),), (THREADS,),
                     (dmu_logvar, dz, mu_logvar, z, counters, _i32(noise_stream), _i32(n), _i32(L)))
        self.dense_backward(dinp, dw, db, dmu_logvar, inp, w, None, "identity")

    def output_forward(self, dlogits, loss, inp, w, b, x, reconstruction):
        n, K, N = self._dense_shapes(dlogits, inp, w, b)
        _check(x, (n, N), "x")
        _check(loss, (2,), "loss", np.float64)
        self._launch(sources.instance("output_forward", "reconstruction", reconstruction), (_tiles(N), _tiles(n)),
                     TILE_BLOCK, (dlogits, loss, inp, w, b, x, _i32(n), _i32(K), _i32(N)))

    def adam_update(self, params, grads, m, v, counters, lr, beta1, beta2, eps):
        size = params.size
        for a, what in ((params, "params"), (grads, "grads"), (m, "m"), (v, "v")):
            _check(a, (size,), what)
        _check(counters, (2,), "counters", np.int64)
        grid = max(1, min(ADAM_BLOCKS, _blocks(size)))
        self._launch("adam_update", (grid,), (THREADS,),
                     (params, grads, m, v, counters, _f64(lr), _f64(beta1), _f64(beta2), _f64(eps), _i64(size)))
        self._launch("adam_advance", (1,), (1,), (counters,))     # counters[COUNTER_STEP] += 1, after every block


_emulated = {}


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
            _cupy_error = exc
    return _cupy


def _cuda_version(v):
    return f"{v // 1000}.{v % 1000 // 10}"


def unavailable_reason():
    """None when the gpu backend can run here, else a one-line reason."""
    cp = _import_cupy()
    if cp is None:
        if isinstance(_cupy_error, ModuleNotFoundError) and _cupy_error.name == "cupy":
            return f"CuPy is not installed: {_INSTALL}"
        return f"CuPy does not import ({type(_cupy_error).__name__}: {str(_cupy_error).splitlines()[0]})"
    try:
        count = cp.cuda.runtime.getDeviceCount()
    except Exception as exc:
        return f"no usable CUDA device ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
    if count == 0:
        return "no CUDA device is visible"
    try:
        driver, runtime = cp.cuda.runtime.driverGetVersion(), cp.cuda.runtime.runtimeGetVersion()
    except Exception as exc:
        return f"the CUDA driver does not answer ({str(exc).splitlines()[0]})"
    if driver < runtime:
        return (f"the NVIDIA driver supports CUDA {_cuda_version(driver)}, older than the CUDA "
                f"{_cuda_version(runtime)} this CuPy needs: update the driver or install the CuPy for "
                f"CUDA {driver // 1000} (cupy-cuda{driver // 1000}x)")
    return None


_loaded = None


def load():
    """The gpu backend on CuPy (the kernels compiled once by NVRTC), as a contract.Backend; UserError with the
    one-line reason where it cannot run."""
    global _loaded
    if _loaded is None:
        problem = unavailable_reason()
        if problem is not None:
            raise UserError(f"--backend gpu is not available: {problem}; use --backend cpu")
        from ..cuda import nvrtc
        _loaded = Backend(CudaKernels(_cupy, compile_module(_cupy.RawModule, options=nvrtc.OPTIONS)))
    return _loaded
