"""fastvae.zipstream: one zip archive read from a stream, exactly its bytes, on real archives (np.savez's, with
zip64 extra fields; zipfile's plain ones; one written to a stream that cannot seek, whose sizes follow the data)."""
import io
import zipfile

import numpy as np
import pytest

from fastvae import zipstream


def _savez(**arrays):
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def test_an_archive_is_read_to_its_end_and_not_a_byte_further():
    rng = np.random.default_rng(0)
    archive = _savez(a=rng.random((37, 5)), b=np.arange(3), c=np.array("text"))
    stream = io.BytesIO(archive + _savez(d=np.zeros(2)) + b"tail")
    data, whole = zipstream.read_one(stream.read)
    assert whole is True and data == archive and stream.tell() == len(archive)
    data, whole = zipstream.read_one(stream.read)
    assert whole is True and set(np.load(io.BytesIO(data)).files) == {"d"} and stream.read() == b"tail"


def test_a_plain_zip_with_a_comment_is_read_whole():
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        z.writestr("x.txt", "hello")
        z.comment = b"a comment"
    stream = io.BytesIO(buffer.getvalue() + b"more")
    data, whole = zipstream.read_one(stream.read)
    assert whole is True and data == buffer.getvalue()


def test_every_truncation_is_said_and_nothing_is_invented():
    archive = _savez(a=np.arange(50.0), b=np.ones((4, 4), np.float32))
    for cut in [*range(0, 80), *range(80, len(archive), 7), len(archive) - 1]:
        data, whole = zipstream.read_one(io.BytesIO(archive[:cut]).read)
        assert whole is False and data == archive[:cut], cut


class _Unseekable(io.RawIOBase):
    """A write-only stream that cannot seek: zipfile then writes each entry's sizes after its data."""

    def __init__(self):
        self.buffer = bytearray()

    def writable(self):
        return True

    def write(self, b):
        self.buffer.extend(b)
        return len(b)


def test_sizes_after_the_data_and_foreign_bytes_are_left_to_the_caller():
    sink = _Unseekable()
    with zipfile.ZipFile(sink, "w") as z:
        z.writestr("x.txt", "hello")
    data, whole = zipstream.read_one(io.BytesIO(bytes(sink.buffer)).read)
    assert whole is None and bytes(sink.buffer).startswith(data)
    data, whole = zipstream.read_one(io.BytesIO(b"not a zip archive").read)
    assert whole is None and data == b"not "


def test_a_stream_of_text_is_refused():
    with pytest.raises(zipstream.NotBytes, match="^str$"):
        zipstream.read_one(io.StringIO("PK").read)


def test_a_crafted_size_is_not_trusted_with_an_allocation():
    """An entry whose zip64 extra field claims 2**62 (or 2**64 - 1) bytes: read() was asked for that many at once,
    a MemoryError or OverflowError (a review's catch). Read a chunk at a time, the stream ends first: truncated."""
    archive = bytearray(_savez(a=np.arange(4.0)))
    at = archive.find(b"\x01\x00", 30)                # the local header's zip64 extra field (id 1, after the name)
    assert archive[:4] == zipstream.LOCAL and at > 0
    for claimed in (2**62, 2**64 - 1):
        crafted = bytes(archive[:at + 4]) + archive[at + 4:at + 12] + claimed.to_bytes(8, "little") + \
            bytes(archive[at + 20:])
        data, whole = zipstream.read_one(io.BytesIO(crafted).read)
        assert whole is False and data == crafted
