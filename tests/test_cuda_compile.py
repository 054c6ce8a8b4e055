"""Every CUDA source in kernels/ compiles with NVRTC for the architectures we ship, warnings as errors, every template
instance included, and takes the values it shares with Python from the generated #defines only. No GPU needed:
NVRTC comes from the nvidia-cuda-nvrtc wheel (in the test extra); the module skips itself only where it is missing."""
import re
import shutil
import struct

import pytest

from fastvae import constants, rng
from fastvae.backends.contract import SETTINGS
from fastvae.cuda import nvrtc, sources

try:
    nvrtc.library()
except OSError as exc:
    pytest.skip(f"NVRTC is not installed, so the CUDA sources cannot be compiled here: {exc}",
                allow_module_level=True)

ARCHS = ("sm_80", "sm_90")                      # A100 and H100: the architectures the gpu backend ships for
KERNELS = sources.kernel_dir()
SOURCES = sorted(p.name for p in KERNELS.glob("*.cu")) + sorted(p.name for p in KERNELS.glob("*.cuh"))


def check(name, arch, directory=None, extra=()):
    """The check CI relies on: one file of kernels/ (the #defines, the file, its headers inlined) with every template
    instance, compiled with warnings as errors."""
    source = sources.file_source(name, directory)
    return nvrtc.compile_cubin(source, arch, name=name, options=nvrtc.OPTIONS + nvrtc.WARNINGS + extra, werror=True,
                               name_expressions=sources.name_expressions(source))


def compiled_names(compiled, source):
    """The extern "C" kernels of `source` and the mangled names of its template instances: what the cubin holds."""
    return set(sources.kernel_names(source)) | set(compiled.lowered.values())


def entry_points(cubin):
    """The kernels a cubin defines: global or weak functions marked as CUDA entries (STO_CUDA_ENTRY) in its ELF
    symtab."""
    assert cubin[:5] == b"\x7fELF\x02", "not a 64-bit ELF cubin"
    shoff, = struct.unpack_from("<Q", cubin, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", cubin, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", cubin, shoff + i * shentsize) for i in range(shnum)]
    names = set()
    for _, kind, _, _, offset, size, link, _, _, _ in sections:
        if kind != 2:                           # SHT_SYMTAB
            continue
        strings = sections[link][4]
        for sym in range(offset, offset + size, 24):
            name, info, other = struct.unpack_from("<IBB", cubin, sym)
            # STT_FUNC, STB_GLOBAL (extern "C") or STB_WEAK (a template instance), STO_CUDA_ENTRY
            if info & 0xF == 2 and info >> 4 in (1, 2) and other & 0x10:
                names.add(cubin[strings + name:cubin.index(b"\0", strings + name)].decode())
    return names


@pytest.fixture(scope="module", params=ARCHS)
def module(request):
    """The whole module as the gpu backend compiles it, for one architecture: (arch, Compiled)."""
    source = sources.module_source()
    return request.param, nvrtc.compile_cubin(source, request.param, name="fastvae_kernels.cu",
                                              options=nvrtc.OPTIONS + nvrtc.WARNINGS + nvrtc.VERBOSE, werror=True,
                                              name_expressions=sources.name_expressions(source))


def test_nvrtc_version(record_property):
    major, minor = nvrtc.version()
    record_property("nvrtc", f"{major}.{minor}")
    assert (major, minor) >= (13, 0), "--warning-as-error=all-warnings needs NVRTC 13"


def test_every_kernel_file_is_in_the_module():
    assert set(sources.FILES) == {p.name for p in KERNELS.glob("*.cu")}


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("name", SOURCES)
def test_source_compiles_without_warnings(name, arch):
    compiled = check(name, arch)
    assert compiled.cubin[:4] == b"\x7fELF" and len(compiled.cubin) > 64
    assert entry_points(compiled.cubin) == compiled_names(compiled, sources.file_source(name))


def test_module_defines_every_entry_point(module, record_property):
    arch, compiled = module
    expected = [k for name in sources.FILES for k in sources.entry_points(sources.file_source(name))]
    assert expected and len(set(expected)) == len(expected), f"duplicate kernel names: {expected}"
    assert set(sources.entry_points(sources.module_source())) == set(expected)
    assert entry_points(compiled.cubin) == compiled_names(compiled, sources.module_source())
    # Every layer kernel for every value of its setting, named for the layer, not the setting.
    for kernel, setting in [("dense_forward", "activation"), ("dense_backward_weights", "activation"),
                            ("dense_backward_input", "activation"), ("heads_forward", "encoder"),
                            ("heads_backward_mu_logvar", "encoder"), ("output_forward", "reconstruction")]:
        for value in SETTINGS[setting]:
            assert sources.instance(kernel, setting, value) in expected
    assert {"gather_u8", "gather_f32", "adam_begin", "adam_update"} <= set(expected)
    used = nvrtc.resource_usage(compiled.log, compiled.lowered)
    assert set(used) == set(expected)
    spilling = {k: r[3] for k, r in used.items() if r[3]}
    assert not spilling, f"kernels spill registers to local memory on {arch}: {spilling}"
    table = "\n".join(f"{arch} {k:46s} {r:3d} registers {s:5d} B smem {f:3d} B stack {sp:3d} B spills"
                      for k, (r, s, f, sp) in sorted(used.items()))
    record_property(f"resources_{arch}", table)
    print(table)


def test_syntax_error_fails():
    source = 'extern "C" __global__ void k(float* x) { x[0] = 1.0f }\n'
    with pytest.raises(nvrtc.CompileError, match=r'broken\.cu\(1\): error: expected a ";"'):
        nvrtc.compile_cubin(source, "sm_80", name="broken.cu", werror=False)


@pytest.mark.parametrize("body, text", [
    ("#warning deliberately\n", "#warning directive: deliberately"),
    ("__device__ void f() { int unused = 1; }\n", 'variable "unused" was declared but never referenced'),
    ("__device__ float f(double d) { return d; }\n", "conversion may change the value"),   # from --Wconversion
])
def test_warning_fails_only_with_werror(body, text):
    source = body + 'extern "C" __global__ void k(float* x) { x[0] = 1.0f; }\n'
    cubin, log, _ = nvrtc.compile_cubin(source, "sm_80", name="warns.cu", werror=False)
    assert cubin and text in log
    with pytest.raises(nvrtc.CompileError, match=re.escape(text)):
        nvrtc.compile_cubin(source, "sm_80", name="warns.cu", werror=True)


def test_ptxas_warning_fails_with_werror():
    # NVRTC's --warning-as-error covers its front end only; a warning ptxas prints must fail the check too.
    source = 'extern "C" __global__ void k(float* x) { x[0] = 1.0f; }\n'
    with pytest.raises(nvrtc.CompileError, match="ptxas warning"):
        nvrtc.compile_cubin(source, "sm_90", options=nvrtc.OPTIONS + ("--maxrregcount=16",), werror=True)


def test_broken_kernel_file_fails_the_check(tmp_path):
    # The same check as above over a copy of kernels/ with a syntax error in a header: it fails, and the
    # message names the header's own line (sources.expand keeps #line directives).
    shutil.copytree(KERNELS, tmp_path, dirs_exist_ok=True)
    header = tmp_path / "tile.cuh"
    lines = header.read_text().splitlines() + ["this is not C++"]
    header.write_text("\n".join(lines) + "\n")
    with pytest.raises(nvrtc.CompileError, match=rf"tile\.cuh\({len(lines)}\): error"):
        check("dense.cu", "sm_80", tmp_path)


def test_the_kernels_restate_no_value_defined_in_python():
    """Tile sizes, THREADS, the Philox words, the smoothing term, the loss and counter indices and the settings'
    codes reach the CUDA C only as the generated #defines: no file of kernels/ defines or spells them."""
    generated = dict(line.split()[1:3] for line in sources.defines().splitlines() if line.startswith("#define"))
    assert {"TILE_T", "THREADS", "SIGMA_SMOOTHING", "PHILOX_M0", "LOSS_KL", "COUNTER_STEP", "COUNTER_ROW",
            "ACTIVATION_ELU", "ENCODER_SIGMA", "RECONSTRUCTION_MSE"} <= set(generated)
    literals = [f"{getattr(rng, k):X}" for k in ("PHILOX_M0", "PHILOX_M1", "PHILOX_W0", "PHILOX_W1")]
    literals += [repr(constants.SIGMA_SMOOTHING)]
    for path in sorted(KERNELS.glob("*.cu")) + sorted(KERNELS.glob("*.cuh")):
        text = path.read_text()
        for key in generated:
            assert not re.search(rf"#\s*define\s+{key}\b", text), f"{path.name} defines {key} again"
        for literal in literals:
            assert literal.lower() not in text.lower(), f"{path.name} spells {literal} instead of using its #define"


def test_the_definitions_are_part_of_the_source(monkeypatch):
    """CuPy and the emulator key their caches on the source text: a changed constant is a new module."""
    before = sources.module_source()
    assert "#define SIGMA_SMOOTHING 1e-10\n" in before and before.startswith(sources.defines())
    monkeypatch.setattr(constants, "SIGMA_SMOOTHING", 1e-9)
    assert "#define SIGMA_SMOOTHING 1e-09\n" in sources.module_source()


def test_a_file_without_the_definitions_says_how_to_compile_it():
    with pytest.raises(nvrtc.CompileError, match="compile the kernels through fastvae.cuda.sources"):
        nvrtc.compile_cubin(sources.expand("adam.cu"), "sm_80", name="adam.cu", werror=False)


@pytest.mark.parametrize("name, value, text", [("THREADS", 128, "THREADS must be a power of two"),
                                               ("TILE_T", 12, "THREADS must be a power of two"),
                                               ("TILE_MN", 48, "a product block's tile is TILE_T threads")])
def test_a_launch_geometry_the_kernels_cannot_take_does_not_compile(monkeypatch, name, value, text):
    """block_sum_add reduces THREADS partial sums over a product block of TILE_T x TILE_T threads: a THREADS that is
    not that, or not a power of two, dropped sums without a word (a review of the gpu path); it fails to compile."""
    from fastvae.cuda import launch
    monkeypatch.setattr(launch, name, value)
    with pytest.raises(nvrtc.CompileError, match=text):
        nvrtc.compile_cubin(sources.module_source(), "sm_80", name="module.cu", werror=False)


def test_a_template_kernel_is_instantiated_for_every_value_of_its_setting():
    source = "template <int ENCODER> __global__ void k(float* x) {}\n"
    assert sources.name_expressions(source) == [f"k<ENCODER_{e.upper()}>" for e in constants.ENCODERS]
    assert sources.instance("dense_forward", "activation", "tanh") == "dense_forward<ACTIVATION_TANH>"
    with pytest.raises(ValueError, match="template parameter WIDTH is not a setting"):
        sources.name_expressions("template <int WIDTH> __global__ void k(float* x) {}\n")
    with pytest.raises(ValueError, match="no activation 'gelu'"):
        sources.instance("dense_forward", "activation", "gelu")
