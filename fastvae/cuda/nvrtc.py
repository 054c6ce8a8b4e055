"""Compile CUDA C with NVRTC through ctypes: no GPU, no CUDA toolkit, only the nvidia-cuda-nvrtc wheel.

The gpu backend compiles through CuPy; this module exists so that CI can prove every source compiles for the
architectures we ship (sm_80, sm_90) with warnings treated as errors, on a machine without a GPU.
"""
import ctypes
import glob
import os
import re
from typing import NamedTuple

# Compiler options shared with the gpu backend's RawModule. No fast-math and no --fmad=false: the Box-Muller
# normals avoid FMA contraction with the __dmul_rn/__dadd_rn intrinsics, so the matrix products keep their FMAs.
OPTIONS = ("--std=c++17",)
# Extra diagnostics for the compile check: implicit narrowing (double -> float, float -> int) is how a kernel
# would silently drift from the float64 reference, so every such conversion must be written as a cast.
WARNINGS = ("--Wconversion",)
# NVRTC's own -Werror (13.x): front-end warnings become errors. The log is checked as well (ptxas, driver).
WERROR = ("--warning-as-error=all-warnings",)
# ptxas's resource report (registers, shared memory, stack, spills) in the log: read by resource_usage().
VERBOSE = ("--ptxas-options=-v",)
_WARNING = re.compile(r"\bwarning\b", re.I)


class CompileError(RuntimeError):
    pass


class Compiled(NamedTuple):
    cubin: bytes
    log: str
    lowered: dict       # name expression (e.g. "dense_forward<ACTIVATION_ELU>") -> the kernel's mangled name


def find_library():
    """libnvrtc from the nvidia-cuda-nvrtc wheel (13.x: nvidia/cu13/lib/libnvrtc.so.13; 12.x wheels used
    nvidia/cuda_nvrtc/lib), else None. The wheel's libnvrtc has RPATH $ORIGIN, so it loads the
    libnvrtc-builtins.so.* beside it by itself."""
    try:
        import nvidia
    except ImportError:
        return None
    for root in sorted(nvidia.__path__):
        hits = sorted(p for p in glob.glob(os.path.join(root, "*", "lib", "libnvrtc.so*")) if ".alt." not in p)
        if hits:
            return hits[0]
    return None


_lib = None


def library():
    """The loaded libnvrtc ($FASTVAE_NVRTC, else the wheel's, else the system's); OSError if there is none."""
    global _lib
    if _lib is None:
        path = os.environ.get("FASTVAE_NVRTC") or find_library() or "libnvrtc.so"
        try:
            lib = ctypes.CDLL(path)
        except OSError as exc:
            raise OSError(f"cannot load NVRTC ({exc}); install it with: pip install nvidia-cuda-nvrtc") from exc
        P = ctypes.c_void_p
        lib.nvrtcCreateProgram.argtypes = [ctypes.POINTER(P), ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int,
                                           ctypes.c_void_p, ctypes.c_void_p]
        lib.nvrtcCompileProgram.argtypes = [P, ctypes.c_int, ctypes.POINTER(ctypes.c_char_p)]
        lib.nvrtcGetProgramLogSize.argtypes = [P, ctypes.POINTER(ctypes.c_size_t)]
        lib.nvrtcGetProgramLog.argtypes = [P, ctypes.c_char_p]
        lib.nvrtcGetCUBINSize.argtypes = [P, ctypes.POINTER(ctypes.c_size_t)]
        lib.nvrtcGetCUBIN.argtypes = [P, ctypes.c_char_p]
        lib.nvrtcDestroyProgram.argtypes = [ctypes.POINTER(P)]
        lib.nvrtcAddNameExpression.argtypes = [P, ctypes.c_char_p]
        lib.nvrtcGetLoweredName.argtypes = [P, ctypes.c_char_p, ctypes.POINTER(ctypes.c_char_p)]
        lib.nvrtcGetErrorString.argtypes = [ctypes.c_int]
        lib.nvrtcGetErrorString.restype = ctypes.c_char_p
        lib.nvrtcVersion.argtypes = [ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_int)]
        _lib = lib
    return _lib


def version():
    lib, major, minor = library(), ctypes.c_int(), ctypes.c_int()
    _check(lib, lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor)))
    return major.value, minor.value


def compile_cubin(source, arch, name="fastvae.cu", options=OPTIONS + WARNINGS, werror=True, name_expressions=()):
    """Compile `source` for `arch` (e.g. "sm_90"); returns Compiled(cubin, log, lowered). `name_expressions` are
    instantiated (template kernels, as CuPy's RawModule does) and `lowered` maps each to its mangled name. Raises
    CompileError on an error, and, with werror, on any warning (NVRTC's --warning-as-error, and any "warning" left
    in the log)."""
    lib = library()
    prog = ctypes.c_void_p()
    _check(lib, lib.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), name.encode(), 0, None, None))
    try:
        for expression in name_expressions:
            _check(lib, lib.nvrtcAddNameExpression(prog, expression.encode()))
        opts = [f"--gpu-architecture={arch}", *options, *(WERROR if werror else ())]
        argv = (ctypes.c_char_p * len(opts))(*[o.encode() for o in opts])
        status = lib.nvrtcCompileProgram(prog, len(opts), argv)
        size = ctypes.c_size_t()
        _check(lib, lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size)))
        buf = ctypes.create_string_buffer(size.value)
        _check(lib, lib.nvrtcGetProgramLog(prog, buf))
        log = buf.value.decode(errors="replace").strip()
        if status != 0:
            raise CompileError(f"{name} ({arch}, {' '.join(opts[1:])}): {_error(lib, status)}\n{log}")
        if werror and _WARNING.search(log):
            raise CompileError(f"{name} ({arch}): warnings are errors here\n{log}")
        _check(lib, lib.nvrtcGetCUBINSize(prog, ctypes.byref(size)))
        cubin = ctypes.create_string_buffer(size.value)
        _check(lib, lib.nvrtcGetCUBIN(prog, cubin))
        lowered = {}
        for expression in name_expressions:
            mangled = ctypes.c_char_p()
            _check(lib, lib.nvrtcGetLoweredName(prog, expression.encode(), ctypes.byref(mangled)))
            lowered[expression] = mangled.value.decode()
        return Compiled(cubin.raw, log, lowered)
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))


def _error(lib, status):
    return lib.nvrtcGetErrorString(status).decode()


def _check(lib, status):
    if status != 0:
        raise CompileError(_error(lib, status))


def resource_usage(log, lowered=None):
    """{kernel: (registers, shared memory bytes, stack frame bytes, spill stores + loads bytes)} from ptxas -v;
    a template instance is named by its name expression when `lowered` (Compiled.lowered) is given."""
    named = {mangled: expression for expression, mangled in (lowered or {}).items()}
    out, kernel, frame = {}, None, (0, 0)
    for line in log.splitlines():
        if m := re.search(r"Compiling entry function '(\w+)'", line):
            kernel = m[1]
        elif kernel and (m := re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill", line)):
            frame = (int(m[1]), int(m[2]) + int(m[3]))
        elif kernel and (m := re.search(r"Used (\d+) registers", line)):
            smem = re.search(r"(\d+) bytes smem", line)
            out[named.get(kernel, kernel)] = (int(m[1]), int(smem[1]) if smem else 0, *frame)
            kernel, frame = None, (0, 0)
    return out
