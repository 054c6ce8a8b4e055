"""JSON as RFC 8259 defines it, for every file fastvae writes (metrics.json, evaluations, benchmark reports).

Python's json module writes NaN and Infinity, which strict parsers (JavaScript's, jq's, Go's) reject; here a value
that is not a finite number is written as null (undefined: e.g. a standard error over one image), and NumPy values
become the plain ones they hold.
"""
import json
import math
import os
import stat
from pathlib import Path

import numpy as np

from .sigint import held_interrupts
from .tempfiles import new_temporary


def strict(obj):
    """`obj` with every float that is NaN or infinite replaced by None, NumPy scalars and arrays made plain, and
    file names that carry undecodable bytes (surrogate escapes) written as UTF-8 (text_of)."""
    if isinstance(obj, str):
        return text_of(obj)
    if isinstance(obj, dict):
        return {text_of(k) if isinstance(k, str) else k: strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, np.ndarray)):
        return [strict(v) for v in (obj.tolist() if isinstance(obj, np.ndarray) else obj)]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def text_of(name: str) -> str:
    """A path or argument as text JSON can hold: under the C locale Python decodes a file name's bytes as ASCII and
    keeps the others as lone surrogates ('run\\udcc3\\udca9' for runé), which JSON writes as escapes no reader
    can turn back into the name (a fresh user's trial: jq gave two U+FFFD). Its bytes are decoded as UTF-8 instead,
    and bytes that are not UTF-8 written as \\xNN."""
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:
        pass
    try:
        return os.fsencode(name).decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:              # (a surrogate no file name's byte gives: escaped as it stands)
        return name.encode("utf-8", "backslashreplace").decode("utf-8")


def dumps(obj, **kwargs):
    """json.dumps of strict(obj); anything else that is not JSON (NaN included) raises instead of being written."""
    return json.dumps(strict(obj), allow_nan=False, **kwargs)


READ_LIMIT = 64 << 20                   # bytes: a run's metrics.json is kilobytes (50 epochs: ~40 kB)


def read(path, limit=READ_LIMIT):
    """The JSON in the regular file `path`, at most `limit` bytes. Raises OSError for anything else at the name (a
    FIFO hung the tools, a link to /dev/zero filled the memory: a security review) and ValueError for a larger file
    or one that is not JSON."""
    if not stat.S_ISREG(os.stat(path).st_mode):        # (not even opened: opening some devices does something)
        raise OSError(f"{path} is not a regular file")
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))    # (a FIFO's open would wait for a writer)
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise OSError(f"{path} is not a regular file")
        data = f.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"{path} is larger than {limit} bytes")
    return json.loads(data)


def write(path, obj):
    """Write `obj` to `path` as indented strict JSON, atomically and durably: a new temporary file of a random name
    beside it (tempfiles.new_temporary: a fixed name, metrics.json.tmp, was written through a link planted under it,
    a security review), flushed to disk (after a power loss metrics.json could be empty, and --resume refused a run
    whose checkpoint was whole), then renamed over it."""
    path = Path(path)
    text = dumps(obj, indent=2) + "\n"
    with held_interrupts():                 # (a signal handler's exception waits for it: as checkpoint._save_file)
        fd, tmp = new_temporary(path.parent, path.name)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
