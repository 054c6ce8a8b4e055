"""MNIST-shaped data: the embedded copy, IDX files or a Keras-style mnist.npz from disk, and user arrays.

Every problem with the user's files or arrays is a one-line UserError that says what was wrong and what to do.
"""
from __future__ import annotations

import functools
import gzip
import hashlib
import math
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike

from .config import N_PIXELS
from .errors import UserError

SIDE = 28  # MNIST images are SIDE x SIDE = N_PIXELS pixels

IMAGES_MAGIC = 0x00000803  # IDX bytes: 0, 0, type 0x08 (unsigned byte), number of dims
LABELS_MAGIC = 0x00000801

# MD5 of each standard MNIST file, uncompressed, keyed by its size (the four sizes differ).
_STANDARD_MD5 = {
    47040016: "6bbc9ace898e44ae57da46a324031adb",  # train-images-idx3-ubyte
    60008: "a25bea736e30d166cdddb491f175f624",     # train-labels-idx1-ubyte
    7840016: "2646ac647ad5339dbf082846283269ea",   # t10k-images-idx3-ubyte
    10008: "27ae3e4e09519cfbb04c329615203637",     # t10k-labels-idx1-ubyte
}

# Dataset field -> (standard IDX file name, its magic number; each file may also be gzipped as name.gz)
_IDX_FILES = {
    "train_x": ("train-images-idx3-ubyte", IMAGES_MAGIC),
    "train_y": ("train-labels-idx1-ubyte", LABELS_MAGIC),
    "test_x": ("t10k-images-idx3-ubyte", IMAGES_MAGIC),
    "test_y": ("t10k-labels-idx1-ubyte", LABELS_MAGIC),
}
_NPZ_KEYS = {"train_x": "x_train", "train_y": "y_train", "test_x": "x_test", "test_y": "y_test"}  # Keras names


@dataclass(frozen=True, eq=False)  # eq=False: arrays have no single truth value, so compare datasets by identity
class Dataset:
    """Training and test sets: uint8 pixels 0..255 as (n, 784) rows, uint8 labels (n,), and where they came from."""
    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    source: str


def embedded_dir():
    """The folder of the MNIST copy shipped inside the package."""
    return Path(__file__).parent / "datasets" / "mnist"


def _one_line(e):
    """An exception as 'Type: message' on one line, to quote inside a UserError."""
    return " ".join(f"{type(e).__name__}: {e}".split())


def _read_bytes(path):
    """The file's bytes, gunzipped when they start with the gzip magic (the content decides, not the name)."""
    try:
        raw = Path(path).read_bytes()
        return gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError; a truncated stream is an EOFError
        raise UserError(f"{path} is not a readable gzip/IDX file ({_one_line(e)}); re-download it") from None


def _check_md5(path, data):
    """A file of a standard MNIST file's size must be that file: a flipped byte would otherwise pass unnoticed."""
    want = _STANDARD_MD5.get(len(data))
    if want is not None and hashlib.md5(data).hexdigest() != want:
        raise UserError(f"{path} has the size of the standard MNIST file ({len(data)} bytes uncompressed) but not "
                        "its checksum: the file is corrupt; re-download it")


def _flat_images(arr, what):
    """(n, 28, 28) or (n, 784) images as (n, 784) rows; any other shape is not MNIST-sized."""
    if arr.shape[1:] not in ((SIDE, SIDE), (N_PIXELS,)):
        raise UserError(f"{what} has shape {arr.shape}; images must be {SIDE}x{SIDE} = {N_PIXELS} pixels, "
                        f"as shape (n, {SIDE}, {SIDE}) or (n, {N_PIXELS})")
    return arr.reshape(len(arr), N_PIXELS)


def read_idx(path, expect_magic):
    """The uint8 contents of an IDX file (raw or gzipped): images as (n, 784), labels as (n,). Read-only."""
    data = _read_bytes(path)
    _check_md5(path, data)
    ndim = expect_magic & 0xFF
    header = 4 * (1 + ndim)  # the magic, then one big-endian int32 per dim
    magic = int.from_bytes(data[:4], "big")
    if magic != expect_magic:
        raise UserError(f"{path} has IDX magic number {magic:#010x}, expected {expect_magic:#010x} "
                        f"({'images' if expect_magic == IMAGES_MAGIC else 'labels'}); check which file this is")
    if len(data) < header:
        raise UserError(f"{path} is too short ({len(data)} bytes) to be an IDX file; re-download it")
    dims = np.frombuffer(data, ">u4", count=ndim, offset=4).tolist()
    size = len(data) - header
    if size != math.prod(dims):  # exact: a short file lost data, a long one is not what its header says
        problem = "is truncated" if size < math.prod(dims) else "has extra bytes at the end"
        raise UserError(f"{path} {problem}: its header says {' x '.join(map(str, dims))} = {math.prod(dims)} "
                        f"bytes of data, the file has {size}; re-download it")
    arr = np.frombuffer(data, np.uint8, offset=header).reshape(dims)  # no copy; read-only, as bytes are
    return _flat_images(arr, str(path)) if expect_magic == IMAGES_MAGIC else arr


def _dataset(arrays, names, source):
    """A Dataset from its four arrays, once each split has one label per image and at least one image."""
    for x, y in (("train_x", "train_y"), ("test_x", "test_y")):
        n, m = len(arrays[x]), len(arrays[y])
        if n != m:
            raise UserError(f"{names[x]} has {n} images but {names[y]} has {m} labels; "
                            "use image and label files of the same data set")
        if n == 0:
            raise UserError(f"{names[x]} holds no images; a data set needs at least one training and one test image")
    return Dataset(**arrays, source=source)


def _load_idx(paths, source):
    """The four IDX files `paths` (Dataset field -> file) as a Dataset."""
    arrays = {field: read_idx(p, _IDX_FILES[field][1]) for field, p in paths.items()}
    return _dataset(arrays, {field: str(p) for field, p in paths.items()}, source)


def _npz_labels(y, what):
    """Labels from an npz: any 1-D integer array with values 0..255, as uint8."""
    if y.ndim != 1 or y.dtype.kind not in "ui" or (y.size and (y.min() < 0 or y.max() > 255)):
        raise UserError(f"{what} has shape {y.shape} and dtype {y.dtype}; labels must be a 1-D array of "
                        "integers 0..255")
    return y.astype(np.uint8, copy=False)


def _npz_images(x, what):
    """Images from an npz: uint8 (n, 28, 28) or (n, 784), as C-contiguous (n, 784) rows."""
    if x.dtype != np.uint8:
        raise UserError(f"{what} has dtype {x.dtype}; images in mnist.npz must be uint8 pixels 0..255")
    return np.ascontiguousarray(_flat_images(x, what))


def _load_npz(path):
    """A Keras-style mnist.npz (x_train, y_train, x_test, y_test) as a Dataset."""
    try:
        with np.load(path, allow_pickle=False) as z:  # never unpickle: a data file must not run code
            raw = {field: z[key] for field, key in _NPZ_KEYS.items() if key in z.files}
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as e:
        raise UserError(f"{path} is not a readable .npz file ({_one_line(e)}); re-download it") from None
    missing = [key for field, key in _NPZ_KEYS.items() if field not in raw]
    if missing:
        raise UserError(f"{path} lacks the arrays {', '.join(missing)}; a Keras-style mnist.npz holds "
                        f"{', '.join(_NPZ_KEYS.values())}")
    names = {field: f"{path}[{key}]" for field, key in _NPZ_KEYS.items()}
    arrays = {field: (_npz_images if field.endswith("_x") else _npz_labels)(a, names[field])
              for field, a in raw.items()}
    return _dataset(arrays, names, str(path))


def _idx_paths(directory):
    """Dataset field -> directory/name or directory/name.gz, whichever exists (raw first), else None."""
    return {field: next((p for p in (directory / name, directory / f"{name}.gz") if p.is_file()), None)
            for field, (name, _) in _IDX_FILES.items()}


@functools.lru_cache(maxsize=1)
def _load_embedded():
    # Cached: decompressing and checking 55 MB takes ~0.3 s. The arrays are read-only, so sharing them is safe.
    return _load_idx(_idx_paths(embedded_dir()), f"embedded MNIST ({embedded_dir()})")


def load_mnist(directory: str | Path | None = None) -> Dataset:
    """MNIST, or a data set in its format: the embedded copy (None), or a directory with the four IDX files
    (each raw or .gz) or a Keras-style mnist.npz (the .npz file itself may also be given). Images are uint8
    (n, 784), labels uint8 (n,). Raises UserError (one line, naming the file) for a missing, corrupt or
    misshapen file."""
    if directory is None:
        return _load_embedded()
    d = Path(directory)
    if d.is_file() and d.suffix == ".npz":
        return _load_npz(d)
    if not d.is_dir():
        problem = "is not a directory" if d.exists() else "does not exist"
        raise UserError(f"data directory {d} {problem}; pass --data DIR with the MNIST IDX files or mnist.npz, "
                        "or omit it to use the embedded copy")
    paths = _idx_paths(d)
    if all(paths.values()):
        return _load_idx(paths, f"MNIST IDX files in {d}")
    if (d / "mnist.npz").is_file():
        return _load_npz(d / "mnist.npz")
    missing = [_IDX_FILES[field][0] for field, p in paths.items() if p is None]
    raise UserError(f"data directory {d} has neither mnist.npz nor all four MNIST IDX files (missing "
                    f"{', '.join(missing)}; each may be raw or .gz); add them, or omit --data to use the embedded copy")


def as_images(X: ArrayLike, what: str = "X") -> np.ndarray:
    """The user's images as a C-contiguous (n, 784) array: uint8 stays uint8 (no copy when possible), other
    numbers become float32 and must be finite and in [0, 1]. Accepts (n, 784) or (n, 28, 28). Raises UserError
    (one line, calling the array `what`) for anything else."""
    try:
        X = np.asarray(X)
    except (ValueError, TypeError) as e:  # e.g. ragged nested lists
        raise UserError(f"{what} is not an array of numbers ({_one_line(e)}); pass an array of shape "
                        f"(n, {N_PIXELS})") from None
    if X.dtype.kind not in "uif":  # bool, complex, strings, objects, dates are not pixels
        raise UserError(f"{what} has dtype {X.dtype}; pass pixels as uint8 0..255 or as floats in [0, 1]")
    if X.size == 0:
        raise UserError(f"{what} is empty (shape {X.shape}); pass at least one image")
    if X.ndim == 1 or X.shape == (SIDE, SIDE):  # one image, not a batch: say so rather than "wrong width"
        raise UserError(f"{what} has shape {X.shape}, not a batch of images; pass a batch of shape "
                        f"(n, {N_PIXELS}), e.g. {what}.reshape(1, {N_PIXELS}) for one image")
    X = _flat_images(X, what)
    if X.dtype == np.uint8:
        return np.ascontiguousarray(X)
    if not np.isfinite(X).all():
        raise UserError(f"{what} has {np.isnan(X).sum()} NaN and {np.isinf(X).sum()} infinite values; "
                        "pass finite pixels in [0, 1]")
    lo, hi = X.min(), X.max()
    if lo < 0 or hi > 1:
        raise UserError(f"{what} has values outside [0, 1] (min {lo:g}, max {hi:g}); scale pixels to [0, 1] "
                        "or pass uint8")
    return np.ascontiguousarray(X, dtype=np.float32)
