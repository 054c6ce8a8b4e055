"""The gpu backend: CuPy launching the CUDA C in kernels/ (one RawModule, compiled once by NVRTC).

Same contract as backends/reference.py. The launch code is written once, in `Backend`, over two things: an array
module `xp` and a module of kernels with CuPy's RawModule interface. With CuPy they are cupy and a cupy.RawModule
(`load()`, which also binds the contract's names at module level, so this module is the backend); in the tests
they are numpy and fastvae.cuda.emu.RawModule, which runs the same CUDA C on the CPU (`emulated()`).

Per-step values (Adam's t, the noise step) are read by the kernels from `counters` in device memory and advanced
by a kernel, so no launch argument changes from one step to the next: `capture` records a whole step once (a CUDA
graph on a device, a list of launches on the host) and step.Stepper replays it every step.
"""
import sys

import numpy as np

from ..errors import UserError

name = "gpu"
dtype = np.float32

_INSTALL = 'pip install "fastvae[gpu]" (cupy-cuda12x for CUDA 12 drivers, cupy-cuda13x for CUDA 13)'
TILE = 32                # outputs per side of a product kernel's block (TILE_MN in kernels/tile.cuh)
TILE_BLOCK = (16, 16)    # threads of a product kernel's block (TILE_T x TILE_T); block_sum_add needs all 256
THREADS = 256            # threads per block of the elementwise kernels
ADAM_BLOCKS = 2048       # adam_update is a grid-stride loop: enough blocks to fill a GPU, fewer for a small buffer

# The contract's kernels (reference.py) and the hooks, bound at module level by load().
CONTRACT = ("gather_batch", "dense_forward", "dense_backward", "dense_elu_forward", "dense_elu_backward",
            "heads_forward", "heads_backward", "output_forward", "adam_update",
            "heads_sigma_forward", "heads_sigma_backward", "output_mse_forward")     # the last three: variants
HOOKS = ("xp", "empty", "zeros", "asarray", "to_host", "synchronize")
# The CUDA entry points they launch.
KERNELS = ("gather_u8", "gather_f32", "dense_forward", "dense_elu_forward", "dense_backward_weights",
           "dense_elu_backward_weights", "dense_backward_input", "dense_elu_backward_input", "dense_elu_store_dz",
           "heads_forward", "heads_backward_stats", "output_forward", "adam_update", "adam_advance",
           "heads_sigma_forward", "heads_sigma_backward_stats", "output_mse_forward")

_i32, _i64, _f64 = np.int32, np.int64, np.float64


def _tiles(n):
    return (n + TILE - 1) // TILE


def _blocks(count):
    return (count + THREADS - 1) // THREADS


def _check(a, shape, what, dt=np.float32):
    """A kernel sees only a pointer: the array must be contiguous, of the dtype and shape it assumes."""
    if a.dtype != dt or tuple(a.shape) != tuple(shape) or not a.flags.c_contiguous:
        raise ValueError(f"gpu backend: {what} must be a C-contiguous {np.dtype(dt)} array of shape {tuple(shape)}, "
                         f"got {a.dtype} {tuple(a.shape)}{'' if a.flags.c_contiguous else ' (not contiguous)'}")


class Backend:
    """The contract over `xp` (numpy or cupy) and `module` (a RawModule-like with get_function(name))."""

    dtype = np.float32

    def __init__(self, xp, module, name="gpu", store_dz=False):
        self.xp, self.name, self.module = xp, name, module
        # store_dz: dense_elu_backward also writes dz into dout (one more launch and pass). Off by default: the
        # products form dz from dy and y as they read, and the step never reads dout again (the contract's scratch).
        self.store_dz = store_dz
        self._k = {k: self._launcher(module.get_function(k)) for k in KERNELS}
        self._host = xp is np
        self._recording = None          # while capture() runs on the host: the list the launches go to
        self.launches = 0               # kernel launches so far (a replayed capture counts as none)
        # How often the trainer reads the loss back to check it is finite (fastvae.model): on a device each read
        # waits for the step to finish, so only every 25th step (the progress bar's rate) and each epoch's last.
        self.loss_check_interval = 1 if self._host else 25

    def _launcher(self, kernel):
        def launch(grid, block, args):
            self.launches += 1
            if self._recording is not None:
                self._recording.append((kernel, grid, block, args))
            else:
                kernel(grid, block, args)
        return launch

    def capture(self, fn):
        """Record the launches `fn` makes, without running them, and return a function that replays them.

        On a device this is a CUDA graph: captured in relaxed mode on a stream of its own, launched on the current
        stream so it stays ordered with the work around it. On the host (the emulation) the launches are kept as
        a list of (kernel, grid, block, arguments) and replayed verbatim: the same baked-in arguments a graph has,
        so a step that needs a launch argument to change between steps fails the emulated tests too."""
        before = self.launches
        if self._host:
            launches = self._recording = []
            try:
                fn()
            finally:
                self._recording = None

            def replay():
                for kernel, grid, block, args in launches:
                    kernel(grid, block, args)
            replay.kernels = len(launches)
            return replay
        cuda = self.xp.cuda
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
            if self._recording is not None:
                raise RuntimeError("gpu backend: only uint8 or float32 C-contiguous data can be captured")
            x[...] = data[idx]           # other dtypes and layouts: the array module's gather, then a cast
            return
        _check(data, (data.shape[0], cols), "data", data.dtype)
        kernel = self._k["gather_u8" if data.dtype == np.uint8 else "gather_f32"]
        kernel((_blocks(n * cols),), (THREADS,), (x, data, idx, _i32(n), _i32(cols)))

    def _dense_shapes(self, out, inp, w, b):
        n, K = inp.shape
        N = w.shape[1]
        _check(inp, (n, K), "inp")
        _check(w, (K, N), "w")
        _check(out, (n, N), "out")
        if b is not None:
            _check(b, (N,), "b")
        return n, K, N

    def dense_forward(self, out, inp, w, b):
        n, K, N = self._dense_shapes(out, inp, w, b)
        self._k["dense_forward"]((_tiles(N), _tiles(n)), TILE_BLOCK, (out, inp, w, b, _i32(n), _i32(K), _i32(N)))

    def dense_elu_forward(self, out, inp, w, b):
        n, K, N = self._dense_shapes(out, inp, w, b)
        self._k["dense_elu_forward"]((_tiles(N), _tiles(n)), TILE_BLOCK,
                                     (out, inp, w, b, _i32(n), _i32(K), _i32(N)))

    def _backward_shapes(self, dinp, dw, db, dout, inp, w):
        n, K, N = self._dense_shapes(dout, inp, w, None)
        _check(dw, (K, N), "dw")
        _check(db, (N,), "db")
        if dinp is not None:
            _check(dinp, (n, K), "dinp")
        return n, K, N

    def dense_backward(self, dinp, dw, db, dout, inp, w):
        n, K, N = self._backward_shapes(dinp, dw, db, dout, inp, w)
        dims = (_i32(n), _i32(K), _i32(N))
        self._k["dense_backward_weights"]((_tiles(N), _tiles(K)), TILE_BLOCK, (dw, db, dout, inp, *dims))
        if dinp is not None:
            self._k["dense_backward_input"]((_tiles(K), _tiles(n)), TILE_BLOCK, (dinp, dout, w, *dims))

    def dense_elu_backward(self, dinp, dw, db, dout, inp, w, out):
        """dz = dout * ELU'(out) is formed inside both products (and stored into dout only with store_dz)."""
        n, K, N = self._backward_shapes(dinp, dw, db, dout, inp, w)
        _check(out, (n, N), "out")
        dims = (_i32(n), _i32(K), _i32(N))
        self._k["dense_elu_backward_weights"]((_tiles(N), _tiles(K)), TILE_BLOCK, (dw, db, dout, out, inp, *dims))
        if dinp is not None:
            self._k["dense_elu_backward_input"]((_tiles(K), _tiles(n)), TILE_BLOCK, (dinp, dout, out, w, *dims))
        if self.store_dz:
            self._k["dense_elu_store_dz"]((_blocks(n * N),), (THREADS,), (dout, out, _i64(n * N)))

    def heads_forward(self, z, stats, loss, inp, w, b, counters, stream, kernel="heads_forward"):
        n, L = z.shape
        self._dense_shapes(stats, inp, w, b)
        _check(z, (n, L), "z")
        _check(stats, (n, 2 * L), "stats")
        _check(loss, (2,), "loss", np.float64)
        _check(counters, (2,), "counters", np.int64)
        K = inp.shape[1]
        self._k[kernel]((_tiles(L), _tiles(n)), TILE_BLOCK,
                        (z, stats, loss, inp, w, b, counters, _i32(stream), _i32(n), _i32(K), _i32(L)))

    def heads_sigma_forward(self, z, stats, loss, inp, w, b, counters, stream):
        """The seed's first form: stats = [mu | sigma], z = mu + sigma eps, the KL with log(1e-10 + sigma^2)."""
        self.heads_forward(z, stats, loss, inp, w, b, counters, stream, kernel="heads_sigma_forward")

    def heads_sigma_backward(self, dinp, dw, db, dstats, dz, inp, w, stats, counters, stream):
        n, L = dz.shape
        for a, what in ((dstats, "dstats"), (stats, "stats")):
            _check(a, (n, 2 * L), what)
        _check(dz, (n, L), "dz")
        _check(counters, (2,), "counters", np.int64)
        self._k["heads_sigma_backward_stats"]((_blocks(n * L),), (THREADS,),
                                              (dstats, dz, stats, counters, _i32(stream), _i32(n), _i32(L)))
        self.dense_backward(dinp, dw, db, dstats, inp, w)

    def heads_backward(self, dinp, dw, db, dstats, dz, inp, w, stats, z):
        n, L = z.shape
        for a, what in ((dstats, "dstats"), (stats, "stats")):
            _check(a, (n, 2 * L), what)
        for a, what in ((dz, "dz"), (z, "z")):
            _check(a, (n, L), what)
        self._k["heads_backward_stats"]((_blocks(n * L),), (THREADS,), (dstats, dz, stats, z, _i32(n), _i32(L)))
        self.dense_backward(dinp, dw, db, dstats, inp, w)

    def output_forward(self, dlogits, loss, inp, w, b, x, kernel="output_forward"):
        n, K, N = self._dense_shapes(dlogits, inp, w, b)
        _check(x, (n, N), "x")
        _check(loss, (2,), "loss", np.float64)
        self._k[kernel]((_tiles(N), _tiles(n)), TILE_BLOCK, (dlogits, loss, inp, w, b, x, _i32(n), _i32(K), _i32(N)))

    def output_mse_forward(self, dlogits, loss, inp, w, b, x):
        """The squared-error variant: loss[0] += sum (sigmoid(logits) - x)^2, dlogits its gradient."""
        self.output_forward(dlogits, loss, inp, w, b, x, kernel="output_mse_forward")

    def adam_update(self, params, grads, m, v, counters, lr, beta1, beta2, eps):
        size = params.size
        for a, what in ((params, "params"), (grads, "grads"), (m, "m"), (v, "v")):
            _check(a, (size,), what)
        _check(counters, (2,), "counters", np.int64)
        grid = max(1, min(ADAM_BLOCKS, _blocks(size)))
        self._k["adam_update"]((grid,), (THREADS,), (params, grads, m, v, counters, _f64(lr), _f64(beta1),
                                                     _f64(beta2), _f64(eps), _i64(size)))
        self._k["adam_advance"]((1,), (1,), (counters,))      # after every block has read the old t


def make_backend(xp, module, name="gpu", store_dz=False):
    """The contract's kernels over an array module and a RawModule-like module of the compiled kernels."""
    return Backend(xp, module, name=name, store_dz=store_dz)


_emulated = {}


def emulated(race_check=False):
    """The same backend over numpy and the CPU emulation of the CUDA C (fastvae.cuda.emu): slow, for tests.
    race_check: ThreadSanitizer watches every launch (the process must start with LD_PRELOAD of libtsan)."""
    if race_check not in _emulated:
        from ..cuda import emu, sources
        module = emu.RawModule(sources.module_source(), race_check=race_check)
        _emulated[race_check] = make_backend(np, module, name="gpu-emulated")
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
    """This module as the backend, with the contract bound to CuPy (the kernels compiled once by NVRTC)."""
    global _loaded
    if _loaded is None:
        problem = unavailable_reason()
        if problem is not None:
            raise UserError(f"--backend gpu is not available: {problem}; use --backend cpu")
        from ..cuda import nvrtc, sources
        module = _cupy.RawModule(code=sources.module_source(), options=nvrtc.OPTIONS)
        _loaded = make_backend(_cupy, module)
        here = sys.modules[__name__]
        for attr in CONTRACT + HOOKS + ("loss_check_interval", "store_dz", "capture"):
            setattr(here, attr, getattr(_loaded, attr))
    return sys.modules[__name__]


def __getattr__(attr):
    """The loaded backend's running launch count, read through the module (it changes, so it is not bound)."""
    if attr == "launches" and _loaded is not None:
        return _loaded.launches
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")
