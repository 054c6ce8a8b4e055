"""Loading MNIST (embedded, IDX directories, mnist.npz, custom IDX sets), its error messages, and as_images."""
import gzip
from pathlib import Path

import numpy as np
import pytest

from fastvae.data import (IMAGES_MAGIC, LABELS_MAGIC, as_images, as_rows, embedded_dir, load_data, load_mnist, read_idx,
                          split_indices)
from fastvae.errors import UserError

NAMES = {"train_x": "train-images-idx3-ubyte", "train_y": "train-labels-idx1-ubyte",
         "test_x": "t10k-images-idx3-ubyte", "test_y": "t10k-labels-idx1-ubyte"}
FIELDS = ("train_x", "train_y", "test_x", "test_y")
TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def idx_bytes(arr, magic=None):
    """An IDX file's bytes for a uint8 array: magic (default 0x08 type, arr.ndim dims), dims, data."""
    arr = np.asarray(arr, dtype=np.uint8)
    magic = 0x0800 + arr.ndim if magic is None else magic
    return np.array([magic, *arr.shape], dtype=">u4").tobytes() + arr.tobytes()


def write_set(directory, n_train=5, n_test=3, side=28, n_train_labels=None):
    """A small custom IDX data set; returns its arrays. Train images are gzipped under the raw name and test
    labels are raw under the .gz name, since the loader must go by content, not by name."""
    rand = np.random.default_rng(0)
    arrays = {"train_x": rand.integers(0, 256, (n_train, side, side)),
              "train_y": rand.integers(0, 10, n_train if n_train_labels is None else n_train_labels),
              "test_x": rand.integers(0, 256, (n_test, side, side)), "test_y": rand.integers(0, 10, n_test)}
    directory.mkdir(exist_ok=True)
    (directory / NAMES["train_x"]).write_bytes(gzip.compress(idx_bytes(arrays["train_x"])))
    (directory / f"{NAMES['train_y']}.gz").write_bytes(gzip.compress(idx_bytes(arrays["train_y"])))
    (directory / NAMES["test_x"]).write_bytes(idx_bytes(arrays["test_x"]))
    (directory / f"{NAMES['test_y']}.gz").write_bytes(idx_bytes(arrays["test_y"]))
    return arrays


def user_error(fn, *args, phrase):
    """fn(*args) raises a one-line UserError containing `phrase`; returns the message."""
    with pytest.raises(UserError) as info:
        fn(*args)
    msg = str(info.value)
    assert phrase in msg, msg
    assert "\n" not in msg, msg
    return msg


def assert_same(a, b):
    for field in FIELDS:
        x, y = getattr(a, field), getattr(b, field)
        assert x.dtype == y.dtype == np.uint8 and x.flags.c_contiguous and np.array_equal(x, y), field


@pytest.fixture(scope="module")
def embedded():
    return load_mnist()


@pytest.fixture(scope="module")
def raw_dir(tmp_path_factory):
    """The four embedded files, decompressed (the one extra decompression of the 47 MB train images)."""
    d = tmp_path_factory.mktemp("raw")
    for name in NAMES.values():
        (d / name).write_bytes(gzip.decompress((embedded_dir() / f"{name}.gz").read_bytes()))
    return d


# ---------------------------------------------------------------- loading

def test_embedded_mnist_has_the_standard_shapes_and_labels(embedded):
    assert embedded.train_x.shape == (60000, 784) and embedded.test_x.shape == (10000, 784)
    assert embedded.train_y.shape == (60000,) and embedded.test_y.shape == (10000,)
    for field in FIELDS:
        assert getattr(embedded, field).dtype == np.uint8
        assert getattr(embedded, field).flags.c_contiguous
    assert np.bincount(embedded.train_y, minlength=10).tolist() == TRAIN_COUNTS
    assert np.bincount(embedded.test_y, minlength=10).tolist() == TEST_COUNTS
    assert embedded.train_x.max() == 255 and embedded.train_x.min() == 0
    assert "embedded" in embedded.source


def test_embedded_load_is_cached_and_read_only(embedded):
    assert load_mnist() is embedded
    assert not embedded.train_x.flags.writeable  # a caller cannot change the shared copy


def test_raw_idx_directory_loads_like_the_embedded_copy(embedded, raw_dir):
    data = load_mnist(raw_dir)
    assert_same(data, embedded)
    assert str(raw_dir) in data.source


def test_keras_npz_loads_like_the_embedded_copy(embedded, tmp_path):
    np.savez(tmp_path / "mnist.npz", x_train=embedded.train_x.reshape(-1, 28, 28), y_train=embedded.train_y,
             x_test=embedded.test_x, y_test=embedded.test_y.astype(np.int64))  # both image layouts, int labels
    assert_same(load_mnist(tmp_path), embedded)
    assert_same(load_mnist(tmp_path / "mnist.npz"), embedded)


def test_small_custom_idx_set_loads_without_checksum(tmp_path):
    arrays = write_set(tmp_path)
    data = load_mnist(tmp_path)
    assert data.train_x.shape == (5, 784) and data.test_x.shape == (3, 784)
    assert np.array_equal(data.train_x, arrays["train_x"].reshape(5, 784))
    assert np.array_equal(data.test_x, arrays["test_x"].reshape(3, 784))
    assert np.array_equal(data.train_y, arrays["train_y"]) and np.array_equal(data.test_y, arrays["test_y"])


# ---------------------------------------------------------------- loading errors

def test_missing_directory(tmp_path):
    user_error(load_mnist, tmp_path / "nowhere", phrase="does not exist; pass a folder of IDX files")


def test_empty_directory_lists_the_expected_files(tmp_path):
    msg = user_error(load_mnist, tmp_path, phrase="mnist.npz")
    assert all(name in msg for name in NAMES.values())


def test_truncated_gzip(tmp_path):
    gz = (embedded_dir() / f"{NAMES['test_y']}.gz").read_bytes()
    (tmp_path / "labels.gz").write_bytes(gz[: len(gz) // 2])
    user_error(read_idx, tmp_path / "labels.gz", LABELS_MAGIC, phrase="is not a readable gzip/IDX file")


def test_truncated_raw_idx(tmp_path):
    (tmp_path / "images").write_bytes(idx_bytes(np.zeros((5, 28, 28)))[:-10])
    user_error(read_idx, tmp_path / "images", IMAGES_MAGIC, phrase="is truncated")


def test_trailing_data_in_idx(tmp_path):
    (tmp_path / "labels").write_bytes(idx_bytes(np.zeros(5)) + b"\0")
    user_error(read_idx, tmp_path / "labels", LABELS_MAGIC, phrase="extra bytes")


def test_wrong_magic_number(tmp_path):
    (tmp_path / "labels").write_bytes(idx_bytes(np.zeros(5)))
    user_error(read_idx, tmp_path / "labels", IMAGES_MAGIC, phrase="magic number 0x00000801")


def test_published_files_are_named_and_other_files_of_their_size_get_a_notice():
    """A file is named by its checksum; one of a published file's size that matches no published checksum is
    another set in MNIST's format (Fashion-MNIST, KMNIST, ...) or a damaged copy: a notice, never a refusal."""
    from fastvae.data import identify
    stored = (embedded_dir() / f"{NAMES['train_y']}.gz").read_bytes()
    labels = gzip.decompress(stored)
    assert identify("labels", stored, labels) == (("MNIST", "train-labels"), None)
    other = bytearray(labels)
    other[1000] ^= 1  # a label byte: the header stays valid, only the checksum can tell
    known, notice = identify("labels", bytes(other), bytes(other))
    assert known is None and "matches none of the checksums fastvae knows" in notice and "\n" not in notice
    assert identify("small", b"abc", b"abc") == (None, None)


def test_a_set_in_mnists_format_with_other_pixels_loads_with_a_notice(tmp_path):
    """The issue's reproduction: MNIST's exact sizes and valid headers, other pixels (as Fashion-MNIST has)."""
    rand = np.random.default_rng(1)
    for field, n in (("train_x", 60000), ("test_x", 10000)):
        (tmp_path / NAMES[field]).write_bytes(idx_bytes(rand.integers(0, 256, (n, 28, 28))))
        (tmp_path / NAMES[field.replace("_x", "_y")]).write_bytes(idx_bytes(rand.integers(0, 10, n)))
    data = load_mnist(tmp_path)
    assert data.train_x.shape == (60000, 784) and data.image_shape == (28, 28) and data.name is None
    # one line for the four files (it was a line each: the README promises one, a researcher's trial)
    assert len(data.notices) == 1 and "match none of the checksums fastvae knows" in data.notices[0]
    assert all(str(tmp_path / NAMES[f]) in data.notices[0] for f in ("train_x", "train_y", "test_x", "test_y"))


def test_the_embedded_set_is_named_mnist(embedded):
    assert embedded.name == "MNIST" and embedded.notices == () and "(MNIST)" in embedded.source


def test_idx_images_of_any_size_keep_their_shape(tmp_path):
    arrays = write_set(tmp_path, side=20)
    data = load_mnist(tmp_path)
    assert data.image_shape == (20, 20) and data.width == 400
    np.testing.assert_array_equal(data.train_x, arrays["train_x"].reshape(5, 400))


def test_label_count_must_match_image_count(tmp_path):
    write_set(tmp_path, n_train=5, n_train_labels=4)
    user_error(load_mnist, tmp_path, phrase="has 5 images but")


def test_empty_set(tmp_path):
    write_set(tmp_path, n_test=0)
    user_error(load_mnist, tmp_path, phrase="holds no images")


def test_npz_missing_arrays_and_bad_dtype(tmp_path):
    np.savez(tmp_path / "mnist.npz", x_train=np.zeros((2, 784), np.uint8), y_train=np.zeros(2, np.uint8))
    user_error(load_mnist, tmp_path, phrase="lacks the arrays x_test")
    np.savez(tmp_path / "mnist.npz", x_train=np.full((2, 784), 2.0), y_train=np.zeros(2, np.uint8),
             x_test=np.zeros((1, 784), np.uint8), y_test=np.zeros(1, np.uint8))
    user_error(load_mnist, tmp_path, phrase="outside [0, 1]")


# ---------------------------------------------------------------- as_images

def test_as_images_keeps_contiguous_uint8_without_copying():
    X = np.arange(3 * 784).astype(np.uint8).reshape(3, 784)
    out = as_images(X)
    assert out.dtype == np.uint8 and out.shape == (3, 784) and np.shares_memory(out, X)


def test_as_images_makes_strided_uint8_contiguous():
    X = np.zeros((6, 784), np.uint8)[::2]
    out = as_images(X)
    assert out.flags.c_contiguous and out.shape == (3, 784)


def test_as_images_flattens_float_images_to_float32():
    X = np.linspace(0, 1, 2 * 28 * 28).reshape(2, 28, 28)
    out = as_images(X)
    assert out.dtype == np.float32 and out.shape == (2, 784) and out.flags.c_contiguous
    np.testing.assert_array_equal(out, X.reshape(2, 784).astype(np.float32))


@pytest.mark.parametrize("X,phrase", [
    (np.full((2, 784), np.nan), "1568 NaN"),
    (np.full((2, 784), np.inf), "1568 infinite"),
    (np.array([[-0.2] * 783 + [1.3]]), "outside [0, 1] (min -0.2, max 1.3); scale them"),
    # (each value exactly: it said "min 1, max 1", an adversarial user's trial)
    (np.full((1, 784), 1 + 1e-12), "outside [0, 1] (min 1.000000000001, max 1.000000000001)"),
    (np.full((1, 784), 1.0000001, np.float32), "outside [0, 1] (min 1.0000001, max 1.0000001)"),
    (np.full((2, 784), 256, np.int64), "holds integers from 256 to 256; integer pixels must be 0..255"),
    (np.zeros(784), "not a batch; pass a batch of shape (n, d) or (n, h, w)"),
    (np.zeros((28, 28)), "has rows of 28 values (shape (28, 28)) but the model takes 784"),
    (np.zeros((2, 100)), "has rows of 100 values"),
    (np.zeros((0, 784)), "images is empty"),
    (np.full((2, 784), "a"), "has dtype <U1"),
    (np.zeros((2, 784), complex), "has dtype complex128"),
    ([[0.0] * 784, [0.0]], "is not an array of numbers"),
    # (each was "has dtype object", which said nothing of what was passed: a review)
    (None, "is None, not images; pass an array of shape (n, d) or (n, h, w)"),
    ({"x": 1}, "is a dict, not images"),
])
def test_as_images_rejects_with_one_line(X, phrase):
    msg = user_error(as_images, X, "images", phrase=phrase)
    assert msg.startswith("images ")


def test_integer_pixels_of_any_dtype_and_bool_images_are_taken():
    """int64 pixels 0..255 (from arithmetic) and bool images were refused (a fresh user's trial): integers of any
    dtype are read as uint8 0..255, bool as 0.0/1.0; above 255 or negative still refused, and so are integers of 0 and
    1 alone, as uint8's are (they were read as 0.0/1.0, so a row's pixels hung on the other rows of its call: an API
    review's trial)."""
    pixels = np.random.default_rng(3).integers(0, 256, (3, 784))
    for dtype in (np.int64, np.int32, np.uint16):
        rows = as_images(pixels.astype(dtype), "images")
        assert rows.dtype == np.uint8 and np.array_equal(rows, pixels)
    binary = pixels > 128
    rows = as_images(binary, "images")
    assert rows.dtype == np.float32 and np.array_equal(rows, binary)
    user_error(as_images, binary.astype(np.int64), "images", phrase="int64 with no value above 1")
    user_error(as_images, -pixels - 1, "images", phrase="integer pixels must be 0..255")


# ---------------------------------------------------------------- other data sets (issue 15)

def test_keras_npz_of_any_shape_with_or_without_labels(tmp_path):
    rand = np.random.default_rng(2)
    x_train, x_test = rand.uniform(0, 1, (6, 32, 24)), rand.uniform(0, 1, (3, 32, 24))
    np.savez(tmp_path / "set.npz", x_train=x_train, x_test=x_test)
    data = load_data(tmp_path / "set.npz")
    assert data.image_shape == (32, 24) and data.train_x.dtype == np.float32 and data.train_y is None
    np.testing.assert_allclose(data.test_x, x_test.reshape(3, -1).astype(np.float32))
    np.savez(tmp_path / "set.npz", x_train=x_train, x_test=x_test, y_train=np.arange(5), y_test=np.arange(3))
    user_error(load_data, tmp_path / "set.npz", phrase="has 6 images but")


@pytest.mark.parametrize("suffix", [".npy", ".npz"])
def test_a_single_array_is_split_by_the_documented_seeded_rule(tmp_path, suffix):
    rows = np.random.default_rng(3).integers(0, 256, (70, 64)).astype(np.uint8)
    path = tmp_path / f"rows{suffix}"
    np.save(path, rows) if suffix == ".npy" else np.savez(path, anything=rows)
    data = load_data(path, test_fraction=1 / 7, split_seed=5)
    train, test = split_indices(70, 1 / 7, 5)
    assert len(test) == 10 and len(train) == 60 and not set(train) & set(test)
    np.testing.assert_array_equal(data.test_x, rows[test])
    np.testing.assert_array_equal(data.train_x, rows[train])
    assert data.image_shape is None and data.train_y is None and "10 of 70 rows held out" in data.source
    assert not np.array_equal(split_indices(70, 1 / 7, 6)[1], test), "the seed decides the split"
    # the suffix in capitals (a file copied from a system that writes them: "is not a directory, .npz or .npy file",
    # a fresh user's trial) is the same file
    upper = path.rename(tmp_path / f"ROWS{suffix.upper()}")
    np.testing.assert_array_equal(load_data(upper, test_fraction=1 / 7, split_seed=5).test_x, rows[test])


@pytest.mark.parametrize("fraction,n,phrase", [(0.0, 10, "between 0 and 1"), (1.0, 10, "between 0 and 1"),
                                               (1.5, 10, "between 0 and 1"), (0.5, 1, "cannot be split")])
def test_bad_splits_are_one_line(tmp_path, fraction, n, phrase):
    np.save(tmp_path / "x.npy", np.zeros((n, 4), np.uint8))
    user_error(load_data, tmp_path / "x.npy", fraction, phrase=phrase)


def test_emnist_style_names_are_found_and_the_transpose_is_said(tmp_path):
    arrays = write_set(tmp_path / "plain")
    d = tmp_path / "emnist"
    d.mkdir()
    for field, name in NAMES.items():
        src = next(p for p in (tmp_path / "plain").iterdir() if p.name.startswith(name))
        (d / f"emnist-letters-{name.replace('t10k', 'test')}.gz").write_bytes(src.read_bytes())
    data = load_data(d)
    np.testing.assert_array_equal(data.test_y, arrays["test_y"])
    assert any("transposed" in n for n in data.notices)
    (d / "emnist-digits-train-images-idx3-ubyte.gz").write_bytes(b"")
    user_error(load_data, d, phrase="has several files for train-images-idx3-ubyte")


def test_a_set_the_checksums_name_is_not_said_transposed_for_its_file_names(tmp_path):
    """MNIST's own files under EMNIST's names were said transposed, their figures mirrored (a docs trial): the
    notice follows the names only where the checksums name no set."""
    import fastvae
    embedded = Path(fastvae.__file__).parent / "datasets" / "mnist"
    for src in embedded.glob("*-ubyte.gz"):
        (tmp_path / f"emnist-letters-{src.name.replace('t10k', 'test')}").write_bytes(src.read_bytes())
    data = load_data(tmp_path)
    assert data.name == "MNIST" and not any("transposed" in n for n in data.notices), data.notices


def test_as_rows_keeps_the_image_shape_and_as_images_checks_the_models():
    rows, shape = as_rows(np.zeros((3, 32, 32), np.uint8))
    assert rows.shape == (3, 1024) and shape == (32, 32)
    assert as_rows(np.zeros((3, 64)))[1] is None
    user_error(as_rows, np.zeros((2, 3, 4, 5)), phrase="flatten colour channels")
    user_error(as_images, np.zeros((2, 16, 64)), "X", 1024, (32, 32),
               phrase="images of 16x64 but the model's are 32x32")
    assert as_images(np.zeros((2, 1024)), "X", 1024, (32, 32)).shape == (2, 1024)


def test_a_whole_data_set_or_a_masked_array_is_named_as_one():
    """fit(load_mnist()) said "X has dtype object"; a masked array's mask was dropped without a word (a fresh user's
    trial). A masked array with nothing masked is plain data."""
    user_error(as_rows, load_mnist(), "X", phrase="X is a whole data set (the embedded copy")
    assert "pass its images, e.g. X.train_x" in user_error(as_rows, load_mnist(), "X", phrase="whole data set")
    x = np.ma.masked_array(np.full((3, 4), 0.5), mask=np.eye(3, 4, dtype=bool))
    user_error(as_rows, x, "X", phrase="masked array with masked entries; fill them first, e.g. X.filled(0)")
    rows, _ = as_rows(np.ma.masked_array(np.full((3, 4), 0.5)), "X")
    assert rows.shape == (3, 4) and type(rows) is np.ndarray


@pytest.mark.parametrize("name", ["notes.npz", "notes.npy"])
def test_a_file_that_is_not_numpy_says_so_not_allow_pickle(tmp_path, name):
    """NumPy answers a file that is neither .npy nor .npz with 'contains pickled (object) data ... allow_pickle=':
    the line says what the file is not, and never points at unpickling (a data file must not run code)."""
    from fastvae import VAE
    path = tmp_path / name
    path.write_text("hello\n")
    for load in (lambda: load_data(path), lambda: VAE.load(path)):
        with pytest.raises(UserError) as e:
            load()
        msg = str(e.value)
        assert "not a NumPy .npy or .npz file" in msg and "allow_pickle" not in msg and "\n" not in msg


def test_a_shape_hint_is_python_for_an_array_and_words_for_a_file(tmp_path):
    """as_rows' hints quote a Python expression for a named array (X.reshape(...)), not for a file path (a
    fresh user got '/tmp/x.npy.reshape(len(/tmp/x.npy), -1)')."""
    x = np.zeros((5, 8, 8, 1), np.float32)
    with pytest.raises(UserError, match=r"X\.reshape\(len\(X\), -1\)"):
        as_rows(x, "X")
    np.save(tmp_path / "x.npy", x)
    with pytest.raises(UserError) as e:
        load_data(tmp_path / "x.npy")
    assert ".reshape(" not in str(e.value) and "rows of h * w * c values" in str(e.value)
    np.save(tmp_path / "one.npy", np.zeros(64, np.float32))
    with pytest.raises(UserError) as e:
        load_data(tmp_path / "one.npy")
    assert ".reshape(" not in str(e.value)


def test_a_single_number_is_one_line_and_any_integer_labels_load(tmp_path):
    """A 0-D array (np.save of a scalar, or fit(0.5)) was a TypeError traceback; labels out of 0..255 (300, -1) were
    refused (fresh users' trials): they load as int64, those in 0..255 as uint8."""
    from fastvae import VAE
    for x in (np.float32(3), 0.5):
        with pytest.raises(UserError, match="a single number, not images"):
            as_rows(x, "X")
    with pytest.raises(UserError, match="a single number, not images"):
        VAE(hidden=(8,), latent=2, backend="cpu").fit(np.float32(0.5))
    np.save(tmp_path / "scalar.npy", np.float32(3))
    with pytest.raises(UserError, match="a single number"):
        load_data(tmp_path / "scalar.npy")
    x = np.zeros((20, 8, 8), np.uint8)
    np.savez(tmp_path / "bad.npz", x_train=x, y_train=np.arange(300, 320), x_test=x, y_test=np.zeros(20, int))
    data = load_data(tmp_path / "bad.npz")
    assert data.train_y.dtype == np.int64 and list(data.train_y) == list(range(300, 320))
    assert data.test_y.dtype == np.uint8
    np.savez(tmp_path / "strings.npz", x_train=x, y_train=np.array(["a"] * 20), x_test=x)
    with pytest.raises(UserError, match="labels must be a 1-D array of integers"):
        load_data(tmp_path / "strings.npz")


def test_training_and_test_images_of_other_sizes_are_named_by_their_sizes(tmp_path):
    """28 x 28 against 24 x 24 was said as "rows of 784 values but ... of 576" (a fresh user's trial), and 20 x 24
    against 24 x 20 (the same width) loaded as feature rows without a word: both refused, naming the sizes."""
    for train, test in (((28, 28), (24, 24)), ((20, 24), (24, 20))):
        np.savez(tmp_path / "mixed.npz", x_train=np.zeros((4, *train), np.uint8) + 9,
                 x_test=np.zeros((2, *test), np.uint8) + 9)
        msg = user_error(load_data, tmp_path / "mixed.npz",
                         phrase=f"holds images of {train[0]} x {train[1]} but")
        assert f"of {test[0]} x {test[1]}; use a training and a test set of the same image size" in msg


def test_the_loaders_arguments_are_checked_in_one_line(tmp_path):
    """load_data and split_indices on arguments of the wrong kind: one-line UserErrors (they were NumPy's and
    pathlib's raw TypeError, ValueError and AxisError), and a test fraction for a data set with its own test set is
    refused rather than ignored (an API review's trial)."""
    rows = tmp_path / "rows.npy"
    np.save(rows, np.random.default_rng(0).random((20, 5)).astype(np.float32))
    np.savez(tmp_path / "keras.npz", x_train=np.zeros((4, 3, 3)), x_test=np.zeros((2, 3, 3)))
    user_error(load_data, rows, 1 / 7, -1, phrase="split_seed must be an integer in [0, 2**63), got -1")
    user_error(load_data, rows, 1 / 7, 1.5, phrase="split_seed must be")
    user_error(load_data, rows, "0.5", phrase="the test fraction must be between 0 and 1")
    user_error(load_data, 3, phrase="the data path must be a str or os.PathLike, not int")
    user_error(load_data, "", phrase="the data path is empty")          # (it was the current folder)
    user_error(split_indices, 10.5, 0.2, phrase="the number of rows must be a whole number")
    user_error(load_data, tmp_path / "keras.npz", 0.5, phrase="has its own test set; leave test_fraction out")
    user_error(load_data, None, 0.5, phrase="the embedded copy")
    user_error(load_data, None, 5, phrase="the test fraction must be between 0 and 1")     # (not "splits ...")
    user_error(load_data, None, None, -1, phrase="split_seed must be")      # checked for every data set
    import pickle                                   # (a Pool's worker raising it: the pool broke on unpickling)
    try:
        load_data(tmp_path / "keras.npz", 0.5)
    except UserError as e:
        again = pickle.loads(pickle.dumps(e))
        assert type(again) is type(e) and str(again) == str(e) and again.source == e.source
    train, test = split_indices(10, 0.2, 2.0)            # integral floats, as everywhere else
    assert len(test) == 2 and sorted([*train, *test]) == list(range(10))
    assert load_data(tmp_path / "keras.npz").test_fraction is None and len(load_data(rows, 0.25).test_x) == 5


def test_a_keras_npz_with_images_in_one_split_and_their_rows_in_the_other_is_images(tmp_path):
    """x_train (n, 6, 5) beside x_test (m, 30): the rows are those images flattened (they were all taken as rows
    without a word: a researcher's trial); either way round."""
    x = np.random.default_rng(2).random((60, 6, 5)).astype(np.float32)
    for train, test in ((x[:50], x[50:].reshape(10, 30)), (x[:50].reshape(50, 30), x[50:])):
        np.savez(tmp_path / "mixed.npz", x_train=train, x_test=test)
        data = load_data(tmp_path / "mixed.npz")
        assert data.image_shape == (6, 5) and data.train_x.shape == (50, 30) and data.test_x.shape == (10, 30)
    np.savez(tmp_path / "wide.npz", x_train=x[:50], x_test=x[50:].reshape(10, 30)[:, :29])
    user_error(load_data, tmp_path / "wide.npz", phrase="29")             # another width: refused as before


def test_a_gzipped_file_is_decompressed_no_further_than_its_header_declares(tmp_path):
    """A small .gz whose header declares one 28 x 28 image and whose stream then holds 200 MB of zeros was
    decompressed whole before the check that refused it (6 GB for a 2.9 MB file: a security review). It is refused
    the same way, having read no more than the header declares and one byte."""
    from fastvae.data import _read_bytes
    write_set(tmp_path)
    bomb = gzip.compress(idx_bytes(np.zeros((1, 28, 28))) + bytes(200 << 20), compresslevel=1)
    (tmp_path / NAMES["train_x"]).write_bytes(bomb)
    user_error(load_data, tmp_path, phrase="extra bytes")
    stored, contents = _read_bytes(tmp_path / NAMES["train_x"])
    assert stored == bomb and len(contents) == 16 + 784 + 1


def test_a_crafted_array_header_declaring_terabytes_is_one_line(tmp_path):
    """An .npy or .npz whose header declares shape (2**40,): NumPy's MemoryError was a traceback (a security
    review); now the one line of a file that cannot be read, naming what it asked for."""
    import io
    import zipfile as zf
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": "<f8", "fortran_order": False, "shape": (2**40,)})
    np_file = tmp_path / "big.npy"
    np_file.write_bytes(buffer.getvalue() + bytes(24))
    with zf.ZipFile(tmp_path / "big.npz", "w") as z:
        z.writestr("x.npy", np_file.read_bytes())
    for path in (np_file, tmp_path / "big.npz"):
        user_error(load_data, path, phrase="is not a readable .np")
    # a checkpoint whose params declare terabytes (NumPy's MemoryError was a traceback there too)
    from fastvae import VAE
    real = tmp_path / "real.npz"
    VAE(hidden=(8,), latent=2, backend="cpu").save(real)
    with zf.ZipFile(real) as src, zf.ZipFile(tmp_path / "crafted.npz", "w") as dst:
        for name in src.namelist():
            dst.writestr(name, np_file.read_bytes() if name == "params.npy" else src.read(name))
    with pytest.raises(UserError, match="is not a readable fastvae checkpoint .*Unable to allocate"):
        VAE.load(tmp_path / "crafted.npz", backend="cpu")
