"""Registers, shared memory, stack and spills of every CUDA kernel, from ptxas -v through NVRTC (no GPU needed).

    python bench/kernel_resources.py > bench/results/DATE-kernel-resources.md
"""
import datetime
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fastvae.cuda import nvrtc, sources  # noqa: E402

ARCHS = ("sm_80", "sm_90")


def main():
    major, minor = nvrtc.version()
    usage = {}
    source = sources.module_source()
    for arch in ARCHS:
        compiled = nvrtc.compile_cubin(source, arch, name="fastvae_kernels.cu",
                                       options=nvrtc.OPTIONS + nvrtc.WARNINGS + nvrtc.VERBOSE,
                                       name_expressions=sources.name_expressions(source))
        usage[arch] = nvrtc.resource_usage(compiled.log, compiled.lowered)
    # every entry point (extern "C" kernels, template instances by name expression) and the file defining it
    files = {k: name for name in sources.FILES for k in sources.entry_points(sources.file_source(name))}
    print(f"# Kernel resources ({datetime.date.today()}, NVRTC {major}.{minor}, options {' '.join(nvrtc.OPTIONS)})\n")
    print("Produced by `python bench/kernel_resources.py` (ptxas -v through NVRTC; no GPU involved). Registers are "
          "per thread, shared memory per block (static), stack and spills in bytes per thread.\n")
    print("| kernel | file | " + " | ".join(f"{a} regs | {a} smem B | {a} stack/spill B" for a in ARCHS) + " |")
    print("|---|---|" + "---:|---:|---:|" * len(ARCHS))
    for k in sorted(files, key=lambda k: (sources.FILES.index(files[k]), k)):
        cells = []
        for arch in ARCHS:
            regs, smem, stack, spill = usage[arch][k]
            cells += [str(regs), str(smem), f"{stack}/{spill}"]
        print(f"| `{k}` | {files[k]} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
