"""Data sets: the embedded MNIST, IDX files of any image size (MNIST, Fashion-MNIST, KMNIST, EMNIST, ...), Keras-style
.npz files, a single .npy/.npz array of images or feature rows, and the user's own arrays.

Every problem with the user's files or arrays is a one-line UserError that says what was wrong and what to do.
Images are kept as flat rows (n, d), d = h * w, with the image shape (h, w) beside them (None for feature rows).
"""
from __future__ import annotations

import functools
import gzip
import io
import hashlib
import math
import numbers
import os
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike

from .config import N_PIXELS, integer, seed_value
from .errors import UserError, file_error, one_line as _one_line, unreadable

SIDE = 28  # MNIST images are SIDE x SIDE = N_PIXELS pixels: the embedded set, and the default image shape

IMAGES_MAGIC = 0x00000803  # IDX bytes: 0, 0, type 0x08 (unsigned byte), number of dims
LABELS_MAGIC = 0x00000801

# Published MD5s of MNIST-format files, to name the set a file belongs to (never to refuse one: Fashion-MNIST, KMNIST
# and others are published with MNIST's exact sizes on purpose). MNIST: of the uncompressed files (LeCun's page) and
# of the .gz files (torchvision's resource list); Fashion-MNIST: of the .gz files (its repository's README, and
# torchvision's). A file is looked up by the MD5 of its bytes as stored and of its uncompressed contents.
PUBLISHED_MD5 = {
    "6bbc9ace898e44ae57da46a324031adb": ("MNIST", "train-images"),
    "a25bea736e30d166cdddb491f175f624": ("MNIST", "train-labels"),
    "2646ac647ad5339dbf082846283269ea": ("MNIST", "t10k-images"),
    "27ae3e4e09519cfbb04c329615203637": ("MNIST", "t10k-labels"),
    "f68b3c2dcbeaaa9fbdd348bbdeb94873": ("MNIST", "train-images"),
    "d53e105ee54ea40749a09fcbcd1e9432": ("MNIST", "train-labels"),
    "9fb629c4189551a2d022fa330f9573f3": ("MNIST", "t10k-images"),
    "ec29112dd5afa0611ce80d1b7f02629c": ("MNIST", "t10k-labels"),
    "8d4fb7e6c68d591d4c3dfef9ec88bf0d": ("Fashion-MNIST", "train-images"),
    "25c81989df183df01b3e8a0aad5dffbe": ("Fashion-MNIST", "train-labels"),
    "bef4ecab320f06d8554ea6380940ec79": ("Fashion-MNIST", "t10k-images"),
    "bb300cfdad3c16e7a12a480ee83cd310": ("Fashion-MNIST", "t10k-labels"),
}
# Uncompressed sizes of MNIST's four files, which the MNIST-format sets share.
_PUBLISHED_SIZES = (47040016, 60008, 7840016, 10008)

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
    """Training and test sets: rows (n, d) of uint8 pixels 0..255 (or float32 in [0, 1]), labels (n,) of integers as
    stored (uint8 in IDX files; an .npz's own integer dtype, which its two splits need not share) or None,
    the image shape (h, w) with h * w = d (None for feature rows), where they came from, the published set they
    were recognised as (or None), and one-line notices for the user (e.g. a checksum that matched no published set)."""
    train_x: np.ndarray
    train_y: np.ndarray | None
    test_x: np.ndarray
    test_y: np.ndarray | None
    source: str
    image_shape: tuple[int, int] | None = (SIDE, SIDE)
    name: str | None = None
    notices: tuple[str, ...] = ()
    # the fraction split off one array as the test set (split_indices); None where the data set has its own
    test_fraction: float | None = None

    @property
    def width(self) -> int:
        """d, the number of inputs per row."""
        return self.train_x.shape[1]


def embedded_dir():
    """The folder of the MNIST copy shipped inside the package."""
    return Path(__file__).parent / "datasets" / "mnist"


def _read_bytes(path):
    """(the file's bytes as stored, its contents): gunzipped when they start with the gzip magic (the content
    decides, not the name)."""
    try:
        raw = Path(path).read_bytes()
        return raw, (_gunzip_idx(raw) if raw[:2] == b"\x1f\x8b" else raw)
    except PermissionError as e:
        raise unreadable(path, e) from e
    except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError; a truncated stream is an EOFError
        raise UserError(f"{path} is not a readable gzip/IDX file ({_one_line(e)}); re-download it") from None


def _gunzip_idx(raw):
    """A gzipped IDX file's contents, no more than its header declares (and one byte, for the check that says there
    is more): a 2.9 MB file whose header said 784 bytes was decompressed whole, 6 GB, before it was refused (a
    security review). Also no more than gzip can give for its size (DEFLATE's ratio is at most 1032 to 1)."""
    with gzip.GzipFile(fileobj=io.BytesIO(raw)) as g:
        head = g.read(4)
        dims = g.read(4 * head[3]) if len(head) == 4 else b""
        declared = math.prod(int.from_bytes(dims[i:i + 4], "big") for i in range(0, len(dims) - 3, 4))
        return head + dims + g.read(min(declared + 1, 1100 * len(raw)))


def identify(path, stored, contents):
    """(set name, file role) of a published MNIST-format file these bytes are, or None; plus a notice (or None) when
    the file has the size of a published file but none of the published checksums fastvae knows."""
    for data in (contents, stored):
        known = PUBLISHED_MD5.get(hashlib.md5(data).hexdigest())
        if known is not None:
            return known, None
    if len(contents) in _PUBLISHED_SIZES:
        return None, _unknown_checksums([str(path)])
    return None, None


def _unknown_checksums(names):
    """The one line on files of a published file's size whose checksum fastvae does not know."""
    known = ", ".join(sorted({n for n, _ in PUBLISHED_MD5.values()}))
    if len(names) == 1:
        return (f"{names[0]} has the size of a published MNIST-format file but matches none of the checksums "
                f"fastvae knows ({known}); training on it as it is (re-download it if it should be one of those)")
    return (f"{', '.join(names)} have the sizes of published MNIST-format files but match none of the checksums "
            f"fastvae knows ({known}); training on them as they are (re-download them if they should be those)")


def _idx_array(path, expect_magic, data):
    """The uint8 array of an IDX file's contents `data`, in the shape its header gives. Read-only."""
    ndim = expect_magic & 0xFF
    magic = int.from_bytes(data[:4], "big")
    if len(data) >= 4 and magic & 0xFFFFFF00 == IMAGES_MAGIC & 0xFFFFFF00 and expect_magic == IMAGES_MAGIC \
            and (magic & 0xFF) in (2, 3):
        ndim = magic & 0xFF        # images may also be stored as rows (n, d): 2 dims
        expect_magic = magic
    header = 4 * (1 + ndim)  # the magic, then one big-endian int32 per dim
    if magic != expect_magic:
        raise UserError(f"{path} has IDX magic number {magic:#010x}, expected {expect_magic:#010x} "
                        f"({'images' if expect_magic & 0xFF >= 2 else 'labels'}); check which file this is")
    if len(data) < header:
        raise UserError(f"{path} is too short ({len(data)} bytes) to be an IDX file; re-download it")
    dims = np.frombuffer(data, ">u4", count=ndim, offset=4).tolist()
    size = len(data) - header
    if size != math.prod(dims):  # exact: a short file lost data, a long one is not what its header says
        problem = "is truncated" if size < math.prod(dims) else "has extra bytes at the end"
        raise UserError(f"{path} {problem}: its header says {' x '.join(map(str, dims))} = {math.prod(dims)} "
                        f"bytes of data, the file has {size}; re-download it")
    return np.frombuffer(data, np.uint8, offset=header).reshape(dims)  # no copy; read-only, as bytes are


def read_idx(path, expect_magic):
    """The uint8 contents of an IDX file (raw or gzipped): images as rows (n, h * w), labels as (n,). Read-only.
    Raises UserError (one line) for a file that is not what its header says."""
    arr = _idx_array(path, expect_magic, _read_bytes(path)[1])
    return _flat(arr) if expect_magic == IMAGES_MAGIC else arr


def _flat(arr):
    """(n, ...) as rows (n, d); also for n = 0, where reshape(n, -1) cannot infer d."""
    return arr.reshape(len(arr), math.prod(arr.shape[1:]))


def _read_set_file(path, field):
    """(array, image shape or None, identification, notice) of one IDX file of a data set."""
    stored, contents = _read_bytes(path)
    known, notice = identify(path, stored, contents)
    arr = _idx_array(path, _IDX_FILES[field][1], contents)
    if field.endswith("_x"):
        shape = tuple(arr.shape[1:]) if arr.ndim == 3 else None
        return _flat(arr), shape, known, notice
    return arr, None, known, notice


def _dataset(arrays, names, source, image_shape, name=None, notices=(), shapes=None):
    """A Dataset from its arrays, once each split has one label per image (where it has labels), at least one
    image, and both splits have the same width; `shapes`: each split's image shape (h, w) or None (rows), named in
    the message where they differ (it said "rows of 784 values but ... of 576" of 28 x 28 and 24 x 24 images)."""
    if shapes is not None and None not in shapes.values() and shapes["train_x"] != shapes["test_x"]:
        (h, w), (th, tw) = shapes["train_x"], shapes["test_x"]
        raise UserError(f"{names['train_x']} holds images of {h} x {w} but {names['test_x']} of {th} x {tw}; use a "
                        "training and a test set of the same image size")
    for x, y in (("train_x", "train_y"), ("test_x", "test_y")):
        n = len(arrays[x])
        if arrays.get(y) is not None and len(arrays[y]) != n:
            raise UserError(f"{names[x]} has {n} images but {names[y]} has {len(arrays[y])} labels; "
                            "use image and label files of the same data set")
        if n == 0:
            raise UserError(f"{names[x]} holds no images; a data set needs at least one training and one test image")
    if arrays["train_x"].shape[1] != arrays["test_x"].shape[1]:
        raise UserError(f"{names['train_x']} has rows of {arrays['train_x'].shape[1]} values but {names['test_x']} "
                        f"of {arrays['test_x'].shape[1]}; use a training and a test set of the same kind")
    if arrays["train_x"].shape[1] == 0:
        raise UserError(f"{names['train_x']} has rows of no values; a data set needs at least one value per row")
    arrays = {k: arrays.get(k) for k in _IDX_FILES}
    return Dataset(**arrays, source=source, image_shape=image_shape, name=name, notices=tuple(notices))


def _load_idx(paths, source):
    """The four IDX files `paths` (Dataset field -> file) as a Dataset, named when all four are one published set."""
    read = {field: _read_set_file(p, field) for field, p in paths.items()}
    shapes = {read[f][1] for f in ("train_x", "test_x")}
    sets = {read[f][2][0] if read[f][2] else None for f in read}
    name = sets.pop() if len(sets) == 1 else None
    unknown = [str(paths[f]) for f, r in read.items() if r[3]]     # (one line for all: it was one a file)
    notices = [_unknown_checksums(unknown)] if unknown else []
    # (by name, unless the checksums say which set it is: MNIST's files under EMNIST's names were said mirrored)
    if name is None and any("emnist" in p.name.lower() for p in paths.values()):
        notices.append("EMNIST stores its images transposed (column by column): training is unaffected, but the "
                       "figures show each image mirrored along its diagonal")
    names = {field: str(p) for field, p in paths.items()}
    return _dataset({f: r[0] for f, r in read.items()}, names, source + (f" ({name})" if name else ""),
                    shapes.pop() if len(shapes) == 1 else None, name, notices,
                    shapes={f: read[f][1] for f in ("train_x", "test_x")})


def _npz_labels(y, what):
    """Labels from an npz: any 1-D integer array, as uint8 where its values are 0..255 (MNIST's kind), else int64
    (labels such as 300 or -1 were refused: a fresh user's trial)."""
    if y.ndim != 1 or y.dtype.kind not in "ui":
        raise UserError(f"{what} has shape {y.shape} and dtype {y.dtype}; labels must be a 1-D array of integers")
    if y.size and (y.min() < 0 or y.max() > 255):
        return y.astype(np.int64, copy=False)
    return y.astype(np.uint8, copy=False)


def _npz_images(x, what):
    """(rows, image shape) from an npz array: uint8 pixels, or floats in [0, 1], of shape (n, h, w) or (n, d)."""
    return as_rows(x, what)


def _open_npz(path):
    """{name: array} of an .npz file, never unpickling (a data file must not run code)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return {key: z[key] for key in z.files}
    except PermissionError as e:
        raise unreadable(path, e) from e
    except (OSError, EOFError, ValueError, zipfile.BadZipFile, MemoryError) as e:   # (a crafted shape: MemoryError)
        raise UserError(f"{path} is not a readable .npz file ({_one_line(e)}); write it with numpy.savez (or "
                        "download it again)") from None


def _load_npz(path, test_fraction, split_seed):
    """A Keras-style .npz (x_train, x_test, optional y_train, y_test) as a Dataset; an .npz holding a single array
    is split like a .npy file (_split_array)."""
    arrays = _open_npz(path)
    if len(arrays) == 1:
        (key, x), = arrays.items()
        return _split_array(x, f"{path}[{key}]", test_fraction, split_seed)
    missing = [key for key in ("x_train", "x_test") if key not in arrays]
    if missing:
        raise UserError(f"{path} lacks the arrays {', '.join(missing)}; a Keras-style .npz holds x_train and x_test "
                        f"(and optionally y_train, y_test), or pass an .npz or .npy of one array (split by "
                        "--test-fraction)")
    names = {field: f"{path}[{key}]" for field, key in _NPZ_KEYS.items()}
    (train_x, train_shape), (test_x, test_shape) = (_npz_images(arrays[k], names[f])
                                                    for f, k in (("train_x", "x_train"), ("test_x", "x_test")))
    labels = {f: _npz_labels(arrays[k], names[f]) if k in arrays else None
              for f, k in (("train_y", "y_train"), ("test_y", "y_test"))}
    # one split's images (h, w) beside the other's rows of h * w values are those images flattened: drawn as images
    # (they were taken as rows without a word, a researcher's trial; _dataset refuses other widths)
    shape = train_shape if test_shape is None else test_shape if train_shape is None or train_shape == test_shape \
        else None
    return _dataset({"train_x": train_x, "test_x": test_x, **labels}, names, str(path), shape,
                    shapes={"train_x": train_shape, "test_x": test_shape})


def _check_fraction(value):
    if not (isinstance(value, numbers.Real) and not isinstance(value, bool) and 0 < value < 1):
        raise UserError(f"the test fraction must be between 0 and 1 (exclusive), got {value!r}; "
                        "e.g. 0.142857 (1/7, MNIST's 10000 of 70000)")


def split_indices(n, test_fraction, split_seed=0):
    """(train rows, test rows) of an array of n rows: the test set is round(n * test_fraction) rows (at least one,
    leaving at least one to train on) chosen by np.random.default_rng(split_seed).permutation(n), both kept in
    their original order. The same (n, fraction, seed) always gives the same split."""
    n = integer(n, "the number of rows", low=0, what="a whole number >= 0")
    split_seed = seed_value(split_seed, "split_seed")
    _check_fraction(test_fraction)
    if n < 2:
        raise UserError(f"an array of {n} row(s) cannot be split into a training and a test set; pass at least 2")
    n_test = min(max(1, round(n * test_fraction)), n - 1)
    order = np.random.default_rng(split_seed).permutation(n)
    return np.sort(order[n_test:]), np.sort(order[:n_test])


def _split_array(x, what, test_fraction, split_seed):
    """One array of images (n, h, w) or rows (n, d), split into training and test sets (split_indices)."""
    rows, shape = as_rows(x, what)
    train, test = split_indices(len(rows), test_fraction, split_seed)
    note = f"{len(test)} of {len(rows)} rows held out as the test set (fraction {test_fraction:g}, seed {split_seed})"
    data = _dataset({"train_x": rows[train], "test_x": rows[test]}, {"train_x": what, "test_x": what},
                    f"{what}; {note}", shape)
    return replace(data, test_fraction=test_fraction)


def _idx_paths(directory):
    """Dataset field -> its IDX file in `directory`, or None. A standard name (raw or .gz) first; else the one file
    whose name contains the standard name (EMNIST's emnist-letters-train-images-idx3-ubyte.gz) or, for the test
    files, that with 'test' for 't10k'. More than one candidate is an error naming them."""
    found = {}
    for field, (name, _) in _IDX_FILES.items():
        exact = [p for p in (directory / name, directory / f"{name}.gz") if p.is_file()]
        if exact:
            found[field] = exact[0]
            continue
        stems = {name, name.replace("t10k", "test")}
        matches = sorted(p for p in directory.iterdir() if p.is_file() and any(st in p.name for st in stems))
        if len(matches) > 1:
            raise UserError(f"data directory {directory} has several files for {name}: "
                            f"{', '.join(p.name for p in matches)}; keep one set per directory")
        found[field] = matches[0] if matches else None
    return found


@functools.lru_cache(maxsize=1)
def _load_embedded():
    # Cached: decompressing and checking 55 MB takes ~0.3 s. The arrays are read-only, so sharing them is safe.
    # named (MNIST) from its files: "the embedded copy in /.../mnist (MNIST)"
    return _load_idx(_idx_paths(embedded_dir()), f"the embedded copy in {embedded_dir()}")


class OwnTestSet(UserError):
    """A test fraction given for a data set that has its own test set (it would change nothing); .source names it."""

    def __init__(self, message: str, source: str):
        super().__init__(message)
        self.source = source

    def __reduce__(self):           # (pickled with both arguments: a Pool's worker raising it broke the pool)
        return type(self), (str(self), self.source)


def load_data(path: str | Path | None = None, test_fraction: float | None = None, split_seed: int = 0) -> Dataset:
    """A data set: the embedded MNIST (None); a directory with four IDX files of any image size (MNIST, Fashion-MNIST,
    KMNIST, EMNIST: standard names, raw or .gz, or names containing them) or a Keras-style mnist.npz; a Keras-style
    .npz file (x_train, x_test, optional y_train, y_test); or a .npy/.npz file of one array of images (n, h, w) or
    feature rows (n, d), uint8 or floats in [0, 1], whose test set is split off by split_indices(n, test_fraction
    (None: 1/7, MNIST's 10000 of 70000), split_seed). Raises UserError (one line, naming the file) for a missing,
    unreadable or misshapen file, a path that is no str or os.PathLike, a bad fraction or seed, and (OwnTestSet) a
    test_fraction given for a data set with its own test set (it was ignored without a word: an API review's trial)."""
    split_seed = seed_value(split_seed, "split_seed")      # (checked for every data set, not where one is split)
    if test_fraction is not None:
        _check_fraction(test_fraction)
    data = _load_data(path, 1 / 7 if test_fraction is None else test_fraction, split_seed)
    if test_fraction is not None and data.test_fraction is None:
        raise OwnTestSet(f"test_fraction {test_fraction!r} splits a data set of one array, but the one of "
                         f"{data.source} has its own test set; leave test_fraction out", data.source)
    return data


def _load_data(path, test_fraction, split_seed):
    if path is None:
        return _load_embedded()
    if not isinstance(path, (str, os.PathLike)):
        raise UserError(f"the data path must be a str or os.PathLike, not {type(path).__name__}")
    if not os.fspath(path):             # ("" was read as the current folder: a new user's trial)
        raise UserError("the data path is empty; name a data set's file or folder, or pass None for the embedded "
                        "MNIST")
    d = Path(path).expanduser()
    if d.is_file() and d.suffix.lower() == ".npz":       # (DIGITS.NPZ, copied from elsewhere, was refused)
        return _load_npz(d, test_fraction, split_seed)
    if d.is_file() and d.suffix.lower() == ".npy":
        try:
            x = np.load(d, allow_pickle=False)
        except PermissionError as e:
            raise unreadable(d, e) from e
        except (OSError, EOFError, ValueError, MemoryError) as e:
            raise UserError(f"{d} is not a readable .npy file ({_one_line(e)}); save it with numpy.save") from None
        return _split_array(x, str(d), test_fraction, split_seed)
    if not d.is_dir():
        problem = "is not a directory, .npz or .npy file" if d.exists() else "does not exist"
        message = (f"data path {d} {problem}; pass a folder of IDX files (or mnist.npz), an .npz or an .npy file "
                   "(--data on the command line), or none for the embedded MNIST")
        raise UserError(message) if d.exists() else file_error(message, FileNotFoundError, d)
    paths = _idx_paths(d)
    if all(paths.values()):
        return _load_idx(paths, f"IDX files in {d}")
    if (d / "mnist.npz").is_file():
        return _load_npz(d / "mnist.npz", test_fraction, split_seed)
    missing = [_IDX_FILES[field][0] for field, p in paths.items() if p is None]
    raise UserError(f"data directory {d} has neither mnist.npz nor all four IDX files (missing "
                    f"{', '.join(missing)}; each may be raw or .gz); add them, or pass none (no --data) for the "
                    "embedded copy")


def load_mnist(directory: str | Path | None = None) -> Dataset:
    """MNIST: the embedded copy (directory None: train_x uint8 (60000, 784), test_x (10000, 784), labels uint8), or
    the data set in `directory` in its format (load_data). Raises UserError (one line) for a missing or bad file."""
    return load_data(directory)


def as_rows(X: ArrayLike, what: str = "X", empty: bool = False) -> tuple[np.ndarray, tuple[int, int] | None]:
    """The user's images (n, h, w) or feature rows (n, d) as (C-contiguous rows (n, d), image shape (h, w) or None):
    uint8 stays uint8 (no copy when possible) and is read as 0..255 (so one whose largest value is 1, binarized
    images, is refused), as are integers of any other dtype whose values are 0..255; bool becomes 0.0 and 1.0;
    other numbers become float32 and must be finite and in [0, 1]. empty: n = 0 is taken (the
    answer is then empty too: encode, reconstruct), else refused. Raises UserError (one line, calling the array
    `what`) for anything else."""
    if isinstance(X, Dataset):            # (np.asarray made it an object array: "X has dtype object")
        raise UserError(f"{what} is a whole data set ({X.source}); pass its images, e.g. {what}.train_x"
                        if what.isidentifier() else f"{what} is a whole data set; pass its images (.train_x)")
    if isinstance(X, np.ma.MaskedArray) and np.ma.getmaskarray(X).any():    # asarray would drop the mask silently
        raise UserError(f"{what} is a masked array with masked entries; fill them first, e.g. {what}.filled(0)"
                        if what.isidentifier() else f"{what} is a masked array with masked entries; fill them first")
    if isinstance(X, Iterator):          # (np.asarray made it an object array: "X has dtype object", an API trial)
        raise UserError(f"{what} is an iterator ({type(X).__name__}), read only once; pass an array"
                        + (f", e.g. np.stack(list({what}))" if what.isidentifier() else ""))
    try:
        a = np.asarray(X)
    except (ValueError, TypeError) as e:  # e.g. ragged nested lists
        raise UserError(f"{what} is not an array of numbers ({_one_line(e)}); pass an array of shape "
                        "(n, d) or (n, h, w)") from None
    # None, a dict, a model...: "has dtype object" said nothing of that (a review)
    if a.dtype == object and a.ndim == 0:
        raise UserError(f"{what} is {'None' if X is None else 'a ' + type(X).__name__}, not images; pass an array of "
                        "shape (n, d) or (n, h, w)")
    if a.dtype.kind not in "uifb":  # complex, strings, objects, dates are not pixels
        raise UserError(f"{what} has dtype {a.dtype}; pass pixels as uint8 0..255 or as floats in [0, 1]")
    if a.size == 0 and empty and a.ndim in (2, 3) and len(a) == 0 and all(a.shape[1:]):
        # no rows, of a width that can be checked: batched code need not treat its last, empty batch apart
        rows = np.zeros((0, int(np.prod(a.shape[1:]))), np.uint8 if a.dtype == np.uint8 else np.float32)
        return rows, ((int(a.shape[1]), int(a.shape[2])) if a.ndim == 3 else None)
    if a.size == 0:
        raise UserError(f"{what} is empty (shape {a.shape}); pass at least one image")
    if a.ndim == 0:  # a number (np.float32(3), 0.5): no rows at all
        raise UserError(f"{what} is a single number, not images; pass a batch of shape (n, d) or (n, h, w)")
    if a.ndim == 1:  # one image, not a batch: say so rather than "wrong width"
        raise UserError(f"{what} has shape {a.shape}, not a batch; pass a batch of shape (n, d) or (n, h, w), "
                        + (f"e.g. {what}.reshape(1, -1) for one row" if what.isidentifier() else "one row per image"))
    if a.ndim > 3:
        raise UserError(f"{what} has shape {a.shape}; pass images (n, h, w) or rows (n, d) (flatten colour "
                        + (f"channels: {what}.reshape(len({what}), -1))" if what.isidentifier() else
                           "channels into rows of h * w * c values)"))
    shape = (int(a.shape[1]), int(a.shape[2])) if a.ndim == 3 else None
    a = _flat(a)
    if a.dtype == np.bool_:             # binarized images: 0 and 1, as floats (bool was refused: a fresh user's trial)
        a = a.astype(np.float32)
    integers = a.dtype.kind in "iu" and a.dtype.name
    if integers and a.dtype != np.uint8 and a.size and a.min() >= 0 and a.max() <= 255:
        # integer pixels 0..255 of another dtype (int64 from arithmetic): as uint8, whatever the largest value (one of
        # 1 was read as floats 0 and 1: a row's result then hung on the other rows of its call, an API review's trial)
        a = a.astype(np.uint8)
    if a.dtype == np.uint8:
        if a.max() == 1:    # binarized images, read as 0..255: all but black, a model would learn next to nothing
            raise UserError(f"{what} is {integers} with no value above 1, but integer pixels are read as 0..255; for "
                            "images of 0 and 1, multiply them by 255 or pass them as floats in [0, 1] (or bool)")
        return np.ascontiguousarray(a), shape
    if not np.isfinite(a).all():
        raise UserError(f"{what} has {np.isnan(a).sum()} NaN and {np.isinf(a).sum()} infinite values; "
                        "pass finite pixels in [0, 1]")
    lo, hi = a.min(), a.max()
    if lo < 0 or hi > 1:
        if a.dtype.kind in "iu":            # (integers are read as pixels 0..255: say that range, not [0, 1])
            raise UserError(f"{what} holds integers from {lo} to {hi}; integer pixels must be 0..255 (or pass "
                            "floats in [0, 1])")
        # (each value as short as names it exactly: 1 + 1e-12 was "max 1", an adversarial user's trial)
        raise UserError(f"{what} has values outside [0, 1] (min {lo!s}, max {hi!s}); scale them to "
                        "[0, 1] or pass uint8")
    return np.ascontiguousarray(a, dtype=np.float32), shape


def check_width(rows: np.ndarray, shape: tuple[int, int] | None, given: tuple, what: str, width: int | None,
                image_shape: tuple[int, int] | None, unfitted: bool = False) -> None:
    """UserError (one line) unless rows (n, d) of an array of shape `given` (as the user passed it, images (h, w)
    = `shape`) fit a model's input `width` (None: any) and its `image_shape` (checked for images only); `unfitted`:
    the model has not been fitted yet, and the message says where its width comes from."""
    if width is not None and rows.shape[1] != width:
        fitted = f" ({image_shape[0]}x{image_shape[1]} images)" if image_shape else ""
        one = ""                            # one image (h, w) without its batch axis: read as h rows of w values
        if image_shape and tuple(given) == tuple(image_shape):
            one = f" (for one image, {what}[None])" if what.isidentifier() else " (one image: add a batch axis)"
        raise UserError(f"{what} has rows of {rows.shape[1]} values (shape {given}) but the model takes "
                        f"{width}{fitted}; pass arrays of shape (n, {width})"
                        + (f" or (n, {image_shape[0]}, {image_shape[1]})" if image_shape else "") + one
                        + (_UNFITTED if unfitted else ""))
    if shape is not None and image_shape is not None and shape != tuple(image_shape):
        raise UserError(f"{what} has images of {shape[0]}x{shape[1]} but the model's are "
                        f"{image_shape[0]}x{image_shape[1]}; pass images of that size"
                        + (_UNFITTED if unfitted else ""))


# (an unfitted model's encode of 8 x 8 images was told to pass 784-wide rows, when fitting first is the fix: a trial)
_UNFITTED = ("; this model has not been fitted: fit it on such data first (a new model takes its width and image "
             "shape from its first fit), or make it with VAE(input_width=..., image_shape=...)")


def as_images(X: ArrayLike, what: str = "X", width: int | None = N_PIXELS,
              image_shape: tuple[int, int] | None = None, empty: bool = False, unfitted: bool = False) -> np.ndarray:
    """as_rows(X, what, empty)'s rows, checked against a model's input `width` (None: any) and, for images given as
    (n, h, w), its `image_shape` when it has one (check_width; `unfitted`: of a model not fitted yet). Raises
    UserError (one line) naming what does not match."""
    rows, shape = as_rows(X, what, empty)
    check_width(rows, shape, np.shape(X), what, width, image_shape, unfitted)
    return rows
