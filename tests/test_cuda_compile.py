"""Every CUDA source in kernels/ compiles with NVRTC for the architectures we ship, warnings as errors. No GPU needed:
NVRTC comes from the nvidia-cuda-nvrtc wheel (in the test extra); the module skips itself only where it is missing."""
import re
import shutil
import struct

import pytest

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
    """The check CI relies on: one file of kernels/, headers inlined, compiled with warnings as errors."""
    return nvrtc.compile_cubin(sources.expand(name, directory), arch, name=name,
                               options=nvrtc.OPTIONS + nvrtc.WARNINGS + extra, werror=True)


def entry_points(cubin):
    """The kernels a cubin defines: global functions marked as CUDA entries (STO_CUDA_ENTRY) in its ELF symtab."""
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
            if info == 0x12 and other & 0x10:   # STB_GLOBAL | STT_FUNC, STO_CUDA_ENTRY
                names.add(cubin[strings + name:cubin.index(b"\0", strings + name)].decode())
    return names


@pytest.fixture(scope="module", params=ARCHS)
def module(request):
    """The whole module as the gpu backend compiles it, for one architecture: (arch, cubin, log)."""
    cubin, log = nvrtc.compile_cubin(sources.module_source(), request.param, name="fastvae_kernels.cu",
                                     options=nvrtc.OPTIONS + nvrtc.WARNINGS + nvrtc.VERBOSE, werror=True)
    return request.param, cubin, log


def test_nvrtc_version(record_property):
    major, minor = nvrtc.version()
    record_property("nvrtc", f"{major}.{minor}")
    assert (major, minor) >= (13, 0), "--warning-as-error=all-warnings needs NVRTC 13"


def test_every_kernel_file_is_in_the_module():
    assert set(sources.FILES) == {p.name for p in KERNELS.glob("*.cu")}


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("name", SOURCES)
def test_source_compiles_without_warnings(name, arch):
    cubin, log = check(name, arch)
    assert cubin[:4] == b"\x7fELF" and len(cubin) > 64
    assert entry_points(cubin) == set(sources.kernel_names(sources.expand(name)))


def test_module_defines_every_entry_point(module, record_property):
    arch, cubin, log = module
    expected = [k for name in sources.FILES for k in sources.kernel_names(sources.expand(name))]
    assert expected and len(set(expected)) == len(expected), f"duplicate kernel names: {expected}"
    assert sources.kernel_names(sources.module_source()) == expected
    assert entry_points(cubin) == set(expected)
    # The names the gpu backend shares with the reference contract (the backward passes are split per output).
    assert {"dense_forward", "dense_elu_forward", "heads_forward", "output_forward", "adam_update"} <= set(expected)
    used = nvrtc.resource_usage(log)
    assert set(used) == set(expected)
    spilling = {k: r[3] for k, r in used.items() if r[3]}
    assert not spilling, f"kernels spill registers to local memory on {arch}: {spilling}"
    table = "\n".join(f"{arch} {k:28s} {r:3d} registers {s:5d} B smem {f:3d} B stack {sp:3d} B spills"
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
    cubin, log = nvrtc.compile_cubin(source, "sm_80", name="warns.cu", werror=False)
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
        check("dense_elu.cu", "sm_80", tmp_path)
