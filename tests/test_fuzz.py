"""Fuzzing the readers with hypothesis: random truncations and byte flips of real IDX, npz and checkpoint files.

Each reader must either return exactly what the damaged file's bytes say (or, where a checksum guards them, the
original data) or raise the project's own UserError; any other exception is a bug."""
import gzip

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastvae import UserError, VAE, checkpoint
from fastvae.data import IMAGES_MAGIC, LABELS_MAGIC, load_mnist, read_idx

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def idx_bytes(arr, magic):
    dims = b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return magic.to_bytes(4, "big") + dims + arr.tobytes()


@st.composite
def damage(draw, data):
    """`data` truncated somewhere and/or with 1-4 bytes changed."""
    out = bytearray(data)
    for _ in range(draw(st.integers(0, 4))):
        out[draw(st.integers(0, len(out) - 1))] ^= draw(st.integers(1, 255))
    if draw(st.booleans()):
        out = out[:draw(st.integers(0, len(out) - 1))]
    return bytes(out)


IMAGES = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
LABELS = np.arange(5, dtype=np.uint8)
RAW_IMAGES = idx_bytes(IMAGES, IMAGES_MAGIC)


def what_the_bytes_say(data, magic):
    """An independent reading of an IDX payload: (header fields, payload) without any checks."""
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)            # raises when the stream is broken: the reader must refuse it
    ndim = magic & 0xFF
    return data[:4 + 4 * ndim], np.frombuffer(data[4 + 4 * ndim:], np.uint8)


@pytest.mark.parametrize("packing", ["raw", "gzip"])
@FUZZ
@given(data=st.data())
def test_idx_reader_returns_the_files_bytes_or_a_user_error(tmp_path, packing, data):
    original = RAW_IMAGES if packing == "raw" else gzip.compress(RAW_IMAGES, mtime=0)
    damaged = data.draw(damage(original))
    path = tmp_path / "images.idx"
    path.write_bytes(damaged)
    try:
        got = read_idx(path, IMAGES_MAGIC)
    except UserError as e:
        assert "\n" not in str(e)
        return
    header, payload = what_the_bytes_say(damaged, IMAGES_MAGIC)
    assert header == RAW_IMAGES[:16], "a damaged header was accepted"
    assert got.dtype == np.uint8 and got.shape == (5, 784)
    np.testing.assert_array_equal(got.reshape(-1), payload)


@pytest.fixture(scope="module")
def npz_bytes(tmp_path_factory):
    path = tmp_path_factory.mktemp("npz") / "mnist.npz"
    np.savez(path, x_train=IMAGES, y_train=LABELS, x_test=IMAGES[:2], y_test=LABELS[:2])
    return path.read_bytes()


@FUZZ
@given(data=st.data())
def test_npz_reader_returns_the_original_or_a_user_error(tmp_path, npz_bytes, data):
    (tmp_path / "mnist.npz").write_bytes(data.draw(damage(npz_bytes)))
    try:
        got = load_mnist(tmp_path)
    except UserError as e:
        assert "\n" not in str(e)
        return
    # zip's CRC-32 guards every member: whatever loads is the original
    np.testing.assert_array_equal(got.train_x, IMAGES.reshape(5, 784))
    np.testing.assert_array_equal(got.test_y, LABELS[:2])


@pytest.fixture(scope="module")
def checkpoint_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("ck") / "ck.npz"
    VAE(hidden=(6,), latent=2, backend="reference").save(path)
    return path.read_bytes(), checkpoint.load(path)


@FUZZ
@given(data=st.data())
def test_checkpoint_reader_returns_the_original_or_a_user_error(tmp_path, checkpoint_file, data):
    original, want = checkpoint_file
    path = tmp_path / "ck.npz"
    path.write_bytes(data.draw(damage(original)))
    try:
        got = checkpoint.load(path)
    except UserError as e:
        assert "\n" not in str(e)
        return
    assert got.config == want.config and (got.steps, got.epoch) == (want.steps, want.epoch)
    for name in ("params", "m", "v", "epoch_loss"):
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name))


def test_the_labels_reader_is_fuzzed_through_the_same_path(tmp_path):
    """Labels use the same reader with the other magic number; one damaged file of each kind is refused."""
    path = tmp_path / "labels.idx"
    raw = idx_bytes(LABELS, LABELS_MAGIC)
    path.write_bytes(raw)
    np.testing.assert_array_equal(read_idx(path, LABELS_MAGIC), LABELS)
    path.write_bytes(raw[:-1])
    with pytest.raises(UserError, match="truncated"):
        read_idx(path, LABELS_MAGIC)
