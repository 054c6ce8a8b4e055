"""A short description of the machine and the software a result came from, recorded beside every measured number
and every trained model (machines differ between runs; the last bits of a product follow the BLAS, its kernels for
the CPU, and its thread count)."""
import os
import platform
import sys
from importlib import metadata

# the CPU features fastvae's kernels choose by (the bf16 engines) and OpenBLAS's kernels follow (AVX-512)
_FEATURES = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")


def cpu_model():
    """The CPU's model name from /proc/cpuinfo (Linux), else what platform reports."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_features():
    """Which of _FEATURES the CPU reports (/proc/cpuinfo's flags; None where there is no such file)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return [name for name in _FEATURES if name in flags]
    except OSError:
        pass
    return None


def _version(package):
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def blas():
    """NumPy's BLAS as threadpoolctl reads it (library, version, the kernels it chose for this CPU), and the path
    fastvae's cpu kernels call it by (fastvae.backends.cpu_blas), where those are loaded; else None. Loads neither
    NumPy nor fastvae's kernels."""
    if "numpy" not in sys.modules:
        return None
    try:
        from threadpoolctl import threadpool_info
        libs = [lib for lib in threadpool_info() if lib.get("user_api") == "blas"]
    except Exception:  # noqa: BLE001  (a description only: never the reason a run fails)
        libs = []
    numpys = [lib for lib in libs if "numpy" in str(lib.get("filepath", ""))] or libs
    # (not its thread count: read here, it is not the count a result was computed at, which the run records)
    out = {k: numpys[0].get(k) for k in ("internal_api", "version", "architecture")} if numpys else {}
    kernels = sys.modules.get("fastvae.backends.cpu_blas")
    if kernels is not None:
        out["fastvae_kernels"] = getattr(kernels, "KIND", None)
    return out or None


def describe():
    """{cpu, cores, cpu_features, python, platform, numpy, numba, llvmlite, blas}: what a result's last bits may
    depend on besides fastvae's own version and settings (recorded beside them)."""
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "cpu_features": cpu_features(),
            "python": platform.python_version(), "platform": platform.platform(),
            "numpy": _version("numpy"), "numba": _version("numba"), "llvmlite": _version("llvmlite"), "blas": blas()}
