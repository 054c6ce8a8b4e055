"""The CUDA C sources in kernels/: where they are (wheel or checkout), and each one with its headers inlined.

Headers are inlined here rather than passed to NVRTC with -I, so a compiled module's cache key (CuPy keys its
cache on the source text) changes whenever a header does.
"""
import re
from pathlib import Path

import fastvae

# Which file defines which kernels, in the order the module concatenates them.
FILES = ("gather.cu", "dense_elu.cu", "heads.cu", "loss.cu", "adam.cu")
_INCLUDE = re.compile(r'^[ \t]*#[ \t]*include[ \t]+"([^"]+)"[ \t]*$', re.M)   # one line, no more
_KERNEL = re.compile(r'extern\s+"C"\s+__global__\s+void\s+(\w+)\s*\(')


def kernel_dir():
    """kernels/ inside the installed package (wheel), else the checkout's top-level kernels/ (editable)."""
    here = Path(fastvae.__file__).resolve().parent
    for candidate in (here / "kernels", here.parent / "kernels"):
        if (candidate / "common.cuh").is_file():
            return candidate
    raise FileNotFoundError(f"fastvae's CUDA sources (kernels/*.cu) are not in {here / 'kernels'} "
                            f"nor in {here.parent / 'kernels'}; reinstall fastvae")


def expand(name, directory=None, _seen=None):
    """The text of kernels/`name` with its #include "..." lines replaced by the files (each once). #line
    directives keep the compiler's messages pointing at the real file and line."""
    directory = Path(directory) if directory is not None else kernel_dir()
    seen = set() if _seen is None else _seen
    text = (directory / name).read_text()

    def inline(match):
        header = match.group(1)
        if header in seen:
            return f"// ({header} already included)"
        seen.add(header)
        resume = text.count("\n", 0, match.start()) + 2    # the number of the line after the #include
        return (f"// ---- {header}\n" + expand(header, directory, seen)
                + f'\n// ---- end of {header}\n#line {resume} "{name}"')

    return f'#line 1 "{name}"\n' + _INCLUDE.sub(inline, text)


def module_source(directory=None):
    """Every kernel file in one translation unit (headers once): what the gpu backend compiles."""
    seen = set()
    return "\n".join(f"// ==== {name}\n" + expand(name, directory, seen) for name in FILES)


def kernel_names(source):
    """The extern "C" __global__ entry points defined in a source text."""
    return _KERNEL.findall(source)
