"""The gpu backend against the real CuPy package, on a machine without a GPU (the `test` extra installs
cupy-cuda13x): availability, the fallback of `auto`, every way load() can fail, and CuPy's own compile path.

Only what a machine without a GPU cannot answer is patched: the device count and the driver version (and, for the
compile path, which device is current). Exceptions are instances of the real CuPy classes; the stand-in CuPy of
tests/stand_in is checked here to offer nothing the real one lacks.
"""
import importlib.util
import inspect
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fastvae.backends import get_backend, gpu

cupy = pytest.importorskip("cupy", reason="the real CuPy is not installed (pip install -e .[test])")
if getattr(cupy, "__version__", "").endswith("stand-in"):
    pytest.skip("`cupy` is the stand-in here, not the real package", allow_module_level=True)
from cupy.cuda import compiler, driver, memory, runtime  # noqa: E402

STAND_IN = Path(__file__).resolve().parent / "stand_in" / "cupy" / "__init__.py"


@pytest.fixture
def real(monkeypatch):
    """The gpu module over the real CuPy, nothing loaded yet (restored after the test)."""
    for attr in ("_cupy", "_cupy_error", "_loaded"):
        monkeypatch.setattr(gpu, attr, None)
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    return cupy


@pytest.fixture
def one_gpu(real, monkeypatch):
    """A driver of CUDA 13.0 with one device: what a machine with a GPU would answer (CuPy was built with 13.2)."""
    monkeypatch.setattr(runtime, "getDeviceCount", lambda: 1)
    monkeypatch.setattr(runtime, "driverGetVersion", lambda: 13000)
    return real


def test_cupy_reports_the_version_it_was_built_with():
    assert runtime.runtimeGetVersion() // 1000 == 13          # cupy-cuda13x, beside the NVRTC 13 wheel


def test_a_driver_of_the_same_major_version_below_cupys_build_is_accepted(one_gpu):
    assert runtime.runtimeGetVersion() > runtime.driverGetVersion()
    assert gpu.unavailable_reason() is None


def test_without_a_driver_the_reason_says_so(real):
    """Unpatched: the real runtime raises cudaErrorInsufficientDriver with no libcuda at all."""
    with pytest.raises(runtime.CUDARuntimeError, match="cudaErrorInsufficientDriver"):
        runtime.getDeviceCount()
    assert gpu.unavailable_reason() == "no NVIDIA driver is installed (libcuda.so.1 was not found)"


def test_a_driver_of_an_older_major_version_names_the_cupy_to_install(real, monkeypatch):
    def insufficient():
        raise runtime.CUDARuntimeError(35)          # what getDeviceCount raises under a CUDA 12 driver
    monkeypatch.setattr(runtime, "getDeviceCount", insufficient)
    monkeypatch.setattr(runtime, "driverGetVersion", lambda: 12040)
    assert gpu.unavailable_reason() == (
        "the NVIDIA driver supports CUDA 12.4, older than the CUDA 13 this CuPy (cupy-cuda13x) is built for: update "
        'the driver or install the CuPy for CUDA 12: pip install "cupy-cuda12x>=14,<15" "nvidia-cuda-nvrtc-cu12>=12,<13" '
        '"nvidia-cuda-runtime-cu12>=12,<13"')


def test_no_device_and_no_cupy(real, monkeypatch):
    monkeypatch.setattr(runtime, "getDeviceCount", lambda: 0)
    assert gpu.unavailable_reason() == "no CUDA device is visible"
    monkeypatch.setitem(sys.modules, "cupy", None)              # import cupy raises ModuleNotFoundError
    monkeypatch.setattr(gpu, "_cupy", None)
    monkeypatch.setattr(gpu, "driver_present", lambda: True)    # a GPU machine without CuPy: how to install it
    assert gpu.unavailable_reason() == (
        'CuPy is not installed: pip install "cupy-cuda13x>=14,<15" "nvidia-cuda-nvrtc>=13,<14" "nvidia-cuda-runtime>=13,'
        '<14" for a CUDA 13 driver, pip install "cupy-cuda12x>=14,<15" "nvidia-cuda-nvrtc-cu12>=12,<13" '
        '"nvidia-cuda-runtime-cu12>=12,<13" for CUDA 12 (nvidia-smi shows the driver\'s CUDA version)')


def test_a_machine_without_a_driver_or_cupy_is_not_told_to_install_cupy(monkeypatch):
    """No NVIDIA driver and no CuPy (a fresh user's CPU-only machine: every `--backend auto` run suggested a CuPy
    install that could not help): the reason says there is no driver, and auto's notice carries it."""
    monkeypatch.setitem(sys.modules, "cupy", None)
    monkeypatch.setattr(gpu, "_cupy", None)
    monkeypatch.setattr(gpu, "_cupy_error", None)
    if gpu.driver_present():
        pytest.skip("this machine has an NVIDIA driver (libcuda loads)")
    assert gpu.unavailable_reason() == "no NVIDIA driver is installed (libcuda.so.1 was not found), nor CuPy"
    notes = []
    assert get_backend("auto", notify=notes.append).name == "cpu"
    assert notes == ["fastvae: using the CPU (no NVIDIA driver is installed (libcuda.so.1 was not found), "
                     "nor CuPy)"]


def _one_line(exc):
    text = str(exc)
    assert "\n" not in text and text.startswith("the gpu backend is not available: ")
    assert text.endswith('; use the cpu backend (backend="cpu", --backend cpu)')
    return text


def test_load_on_the_real_cupy_fails_as_one_line_and_auto_falls_back(one_gpu):
    """Past the availability check the real CuPy needs the device (to allocate, to pick the architecture): its
    real CUDARuntimeError reaches `--backend gpu` as one line and `auto` as a notice, then the cpu backend."""
    from fastvae.backends import get_backend
    with pytest.raises(gpu.Unavailable) as caught:
        gpu.load()
    assert "the CUDA runtime failed (cudaErrorInsufficientDriver" in _one_line(caught.value)
    assert isinstance(caught.value.__cause__, runtime.CUDARuntimeError)
    notices = []
    assert get_backend("auto", notify=notices.append).name == "cpu"
    assert notices == [f"fastvae: using the CPU ({caught.value.reason})"]


def without_a_current_device(monkeypatch):
    """CuPy's own choice of -arch, unmemoized: its memo is keyed on the current device, which needs a driver."""
    unmemoized = compiler._get_arch_for_options_for_nvrtc.__wrapped__
    monkeypatch.setattr(compiler, "_get_arch_for_options_for_nvrtc", unmemoized)


def _compile_exception():
    """A real CompileException from CuPy's NVRTC: an architecture NVRTC 13 no longer compiles for."""
    with pytest.MonkeyPatch.context() as monkeypatch, pytest.raises(compiler.CompileException) as caught:
        without_a_current_device(monkeypatch)
        compiler.compile_using_nvrtc('extern "C" __global__ void k() {}', arch="50")
    return caught.value


def _driver_error(name):
    """A real CUDADriverError (its constructor asks libcuda for the message, so the message is set as it would be)."""
    exc = driver.CUDADriverError.__new__(driver.CUDADriverError)
    RuntimeError.__init__(exc, name)
    return exc


def _headers_error():
    """The real RuntimeError of CuPy's compile path on a machine without CUDA headers, from a fresh process (CuPy
    remembers where the headers are) where CUDA's header finder finds none."""
    code = textwrap.dedent("""
        import cuda.pathfinder, cupy._core.core as core
        cuda.pathfinder.find_nvidia_header_directory = lambda name: None
        try:
            core.compile_with_cache('extern "C" __global__ void k() {}', arch="90")
        except RuntimeError as exc:
            print(exc)
    """)
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_PATH", "CUDA_HOME")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert "Failed to find CUDA headers" in out.stdout, out.stdout + out.stderr
    return RuntimeError(out.stdout.strip())


FAILURES = {
    "no CUDA headers": (_headers_error, 'cannot find the CUDA headers (Failed to find CUDA headers. Please install '
                        'CUDA toolkit headers (e.g., pip install cupy-cuda12x[ctk]) or specify CUDA_PATH environment '
                        'variable.): pip install "cupy-cuda13x>=14,<15" "nvidia-cuda-nvrtc>=13,<14" '
                        '"nvidia-cuda-runtime>=13,<14" (they bring them), or set CUDA_PATH'),
    # the message CuPy's SoftLink gives when a library does not load (seen above for libcuda.so.1)
    "no NVRTC": (lambda: RuntimeError("CuPy failed to load libnvrtc.so.13: OSError: libnvrtc.so.13: cannot open "
                                      "shared object file: No such file or directory"),
                 'cannot load NVRTC, the CUDA compiler (CuPy failed to load libnvrtc.so.13'),
    "compile error": (_compile_exception, "fastvae's CUDA kernels do not compile for this GPU (nvrtc: error: invalid "
                      "value for --gpu-architecture (-arch)); with CUDA 13 they need compute capability 7.5 or newer: "
                      'for a GPU of 6.0-7.2 (P100, V100) install the CuPy for CUDA 12, '
                      'which a CUDA 13 driver runs too: pip install "cupy-cuda12x>=14,<15"'),
    "GPU newer than NVRTC": (lambda: _driver_error("CUDA_ERROR_NO_BINARY_FOR_GPU: no kernel image is available"),
                             "cannot load the kernels NVRTC compiled (CUDA_ERROR_NO_BINARY_FOR_GPU"),
    "PTX too new": (lambda: _driver_error("CUDA_ERROR_UNSUPPORTED_PTX_VERSION: the provided PTX was compiled with "
                                          "an unsupported toolchain."), 'pip install -U "cupy-cuda13x>=14,<15"'),
    "busy device": (lambda: runtime.CUDARuntimeError(46), "the GPU is busy (cudaErrorDevicesUnavailable"),
    "out of memory": (lambda: memory.OutOfMemoryError(1 << 30, 0, 0), "the GPU is out of memory (Out of memory "
                      "allocating 1,073,741,824 bytes"),
    "no memory for a context": (lambda: runtime.CUDARuntimeError(2), "the GPU is out of memory (cudaErrorMemoryAll"),
}


@pytest.mark.parametrize("what", FAILURES)
def test_each_failure_of_load_is_one_line_with_its_fix_and_auto_falls_back(one_gpu, monkeypatch, what):
    from fastvae.backends import get_backend
    make, expected = FAILURES[what]
    exc = make()
    assert type(exc).__module__.startswith(("cupy", "builtins")), type(exc)

    def raw_module(**kwargs):           # where a device raises these: compiling and loading the module
        raise exc
    monkeypatch.setattr(one_gpu, "RawModule", raw_module)
    with pytest.raises(gpu.Unavailable) as caught:
        get_backend("gpu")
    assert expected in _one_line(caught.value) and caught.value.__cause__ is exc
    notices = []
    assert get_backend("auto", notify=notices.append).name == "cpu" and len(notices) == 1
    assert expected in notices[0]


def test_a_bug_is_not_taken_for_an_unusable_gpu(one_gpu, monkeypatch):
    def raw_module(**kwargs):
        raise TypeError("a bug of ours")
    monkeypatch.setattr(one_gpu, "RawModule", raw_module)
    with pytest.raises(TypeError, match="a bug of ours"):
        gpu.load()


# ---------------------------------------------------------------- CuPy's own compile path

def test_the_module_compiles_through_cupys_own_compile_path(monkeypatch):
    """What RawModule does on a device, run here: cupy._core.core.compile_with_cache with CuPy's own options,
    include paths and name expressions, up to its kernel cache (kept in memory here). Only the choice of the current
    device is skipped: CuPy's own architecture logic runs unmemoized (its memo is keyed per device), for sm_90.
    Loading the cubin needs the driver and fails; what CuPy cached just before holds every kernel the backend
    launches."""
    from fastvae.cuda import nvrtc, sources
    from test_cuda_compile import entry_points
    import cupy._core.core as core
    saved = {}                  # CuPy's kernel cache: nothing found, what it saves kept here
    monkeypatch.setattr(compiler._kernel_cache_backend, "load", lambda name: None)
    monkeypatch.setattr(compiler._kernel_cache_backend, "save",
                        lambda name, payload, source: saved.update({name: payload}))
    without_a_current_device(monkeypatch)
    seen = []
    real_compile = compiler._NVRTCProgram.compile
    monkeypatch.setattr(compiler._NVRTCProgram, "compile",
                        lambda self, options=(), log_stream=None: seen.append(options) or real_compile(self, options,
                                                                                                        log_stream))
    code = sources.module_source()
    names = sources.name_expressions(code)
    with pytest.raises(runtime.CUDARuntimeError, match="cudaErrorInsufficientDriver"):    # Module.load: no driver
        core.compile_with_cache(code, nvrtc.OPTIONS, arch="90", prepend_cupy_headers=False, name_expressions=names)
    options = next(o for o in seen if "-arch=sm_90" in o)      # the module's compile (not CuPy's empty probe)
    for option in ("-arch=sm_90", "-ftz=true", "--device-as-default-execution-space", *nvrtc.OPTIONS):
        assert option in options, options
    (name, payload), = saved.items()
    assert name.endswith(".cubin")
    mangled, cubin = compiler._decode_cache_payload(payload, len(names))
    assert entry_points(cubin) == set(sources.kernel_names(code)) | set(mangled)


# ---------------------------------------------------------------- the stand-in offers only what CuPy has

def _stand_in():
    spec = importlib.util.spec_from_file_location("stand_in_cupy", STAND_IN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# Every name the stand-in offers, as CuPy spells it (the stand-in's own bookkeeping starts with "_" or is
# a stream's .capturing / .waited, which CuPy does not have and fastvae never reads).
OFFERED = ("empty", "zeros", "array", "asnumpy", "asarray", "ascontiguousarray", "ndarray", "RawModule",
           "RawModule.get_function",
           "cuda.runtime.getDeviceCount", "cuda.runtime.driverGetVersion", "cuda.runtime.runtimeGetVersion",
           "cuda.runtime.CUDARuntimeError", "cuda.memory.OutOfMemoryError", "cuda.compiler.CompileException",
           "cuda.driver.CUDADriverError", "cuda.get_current_stream", "cuda.Stream", "cuda.Stream.synchronize",
           "cuda.Stream.record", "cuda.Stream.wait_event", "cuda.Stream.use", "cuda.Stream.__enter__",
           "cuda.Stream.__exit__", "cuda.Stream.begin_capture", "cuda.Stream.end_capture")


def _get(root, dotted):
    for part in dotted.split("."):
        root = getattr(root, part)
    return root


def _parameters(obj):
    try:
        params = inspect.signature(obj).parameters
    except (TypeError, ValueError):         # a Cython function without an introspectable signature
        return None
    if any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params.values()):
        return None                         # (*args, **kwargs): a Cython class's __init__ says nothing
    return list(params)


def test_the_stand_in_offers_only_what_the_real_cupy_has():
    fake = _stand_in()
    spaces = {"cuda": fake.cuda, "cuda.runtime": fake.cuda.runtime, "cuda.memory": fake.cuda.memory,
              "cuda.compiler": fake.cuda.compiler, "cuda.driver": fake.cuda.driver}
    reachable = {id(v) for space in spaces.values() for v in vars(space).values()}
    public = {n for n, v in vars(fake).items() if not n.startswith("_") and id(v) not in reachable
              and not inspect.ismodule(v)} - {"cuda"}
    public |= {f"{prefix}.{n}" for prefix, space in spaces.items() for n in vars(space)}
    public |= {f"cuda.Stream.{n}" for n, v in vars(fake.Stream).items()
               if callable(v) and (not n.startswith("_") or n in ("__enter__", "__exit__", "__init__"))}
    public -= {"cuda.Stream.__init__", "cuda.memory", "cuda.compiler", "cuda.driver", "cuda.runtime"}
    assert public <= set(OFFERED), f"the stand-in offers names this test does not check: {public - set(OFFERED)}"
    checked = 0
    for name in OFFERED:
        theirs, ours = _get(cupy, name), _get(fake, name)
        if isinstance(ours, type) and issubclass(ours, BaseException):
            assert issubclass(theirs, BaseException) and theirs.__name__ == ours.__name__, name
            builtin = [c for c in ours.__mro__ if c.__module__ == "builtins"]
            assert builtin == [c for c in theirs.__mro__ if c.__module__ == "builtins"], name
        real_params = _parameters(theirs.__init__ if isinstance(theirs, type) else theirs)
        if real_params is not None and not (isinstance(theirs, type) and theirs.__init__ is object.__init__):
            offered = list(inspect.signature(ours.__init__ if isinstance(ours, type) else ours).parameters)
            assert offered[:len(real_params)] == real_params, (name, offered, real_params)    # same calls work
            checked += 1
    assert checked >= 8, "too few signatures could be compared"
    # the exception classes the stand-in builds take the real constructors' arguments
    assert str(fake.CUDARuntimeError(46)) == str(runtime.CUDARuntimeError(46))
    assert str(fake.CUDARuntimeError(35)) == str(runtime.CUDARuntimeError(35))
    assert str(fake.OutOfMemoryError(1 << 30, 0, 0)).split(" (")[0] == str(memory.OutOfMemoryError(1 << 30, 0, 0)
                                                                             ).split(" (")[0]


def test_the_extras_are_one_cuda_major_each():
    """CuPy, NVRTC and the headers of one CUDA major per extra; the test extra is the CUDA 13 set (CuPy 14 looks for
    NVRTC 13 first: a CUDA 12 CuPy beside the NVRTC 13 wheel could load the wrong one)."""
    import re
    import tomllib
    extras = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]

    def majors(requirements):
        found = set()
        for r in requirements:
            if m := re.match(r"cupy-cuda(\d+)x", r):
                found.add(int(m[1]))
            elif r.startswith("nvidia-cuda-"):
                m = re.search(r"-cu(\d+)\b", r.split(">")[0]) or re.search(r">=(\d+)", r)
                found.add(int(m[1]))
        return found
    for major in (12, 13):
        assert majors(extras[f"gpu-cuda{major}"]) == {major}
        assert {r.split(">")[0].split("[")[0] for r in extras[f"gpu-cuda{major}"]} >= {f"cupy-cuda{major}x"}
    assert extras["gpu"] == ["fastvae[gpu-cuda13]"]
    # the install hints name these packages (not fastvae[...]: the package index's fastvae is another project)
    assert {major: tuple(extras[f"gpu-cuda{major}"]) for major in (12, 13)} == gpu.EXTRAS
    assert majors(r for r in extras["test"] if r.startswith(("cupy", "nvidia"))) == {13}
    assert any(r.startswith("cupy-cuda13x") for r in extras["test"])
