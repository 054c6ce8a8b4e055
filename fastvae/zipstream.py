"""One zip archive read from a stream record by record, never past its end: a checkpoint written into a pipe or a
socket is read without waiting for the writer to close it, and the next one written after it is left unread.

Record layouts from PKWARE's APPNOTE.TXT (sections 4.3.7 local file header, 4.3.12 central directory header, 4.3.14
zip64 end of central directory record, 4.3.15 its locator, 4.3.16 end of central directory record, 4.5.3 the zip64
extra field). np.savez writes each array with its sizes in its local header (zip64: in the extra field), which is
what lets a reader skip an entry's data without a central directory.
"""
from __future__ import annotations

from typing import Callable

LOCAL, CENTRAL, END = b"PK\x03\x04", b"PK\x01\x02", b"PK\x05\x06"
END64, LOCATOR64 = b"PK\x06\x06", b"PK\x06\x07"
CHUNK = 1 << 20                     # the most bytes asked of the stream at once
_UNKNOWN_SIZE = 0xFFFFFFFF          # a 32-bit size field that defers to the zip64 extra field
_DATA_DESCRIPTOR = 0x08             # general purpose flag bit 3: the sizes follow the data


class NotBytes(TypeError):
    """The stream's read() returned something other than bytes (a text stream)."""


def _u(b: bytes) -> int:
    return int.from_bytes(b, "little")


def read_one(read: Callable[[int], bytes]) -> tuple[bytes, bool | None]:
    """(the bytes read, whole): one zip archive from `read` (a binary stream's read(n)), from its first local file
    header to the end of its end-of-central-directory record and its comment, reading no byte past it. whole: True
    for a whole archive; False where the stream ended inside one (truncated); None where the bytes stop following
    the layout above (an entry whose sizes follow its data, or no zip record where one belongs): what was read so
    far is returned, for the caller to read on by other means. Raises NotBytes, and what `read` raises."""
    buf = bytearray()

    def take(n: int) -> bytes | None:
        """n more bytes (the stream's read() may answer fewer), or None where the stream ends first. Read at most
        CHUNK bytes a call: a declared size is not trusted with an allocation (a crafted 2**62 made read() raise
        MemoryError, 2**64 - 1 OverflowError: a review's catch); memory grows only as bytes arrive."""
        start = len(buf)
        while len(buf) - start < n:
            chunk = read(min(CHUNK, n - (len(buf) - start)))
            if not isinstance(chunk, (bytes, bytearray)):
                raise NotBytes(type(chunk).__name__)
            if not chunk:
                return None
            buf.extend(chunk)
        return bytes(buf[start:])

    while True:
        signature = take(4)
        if signature is None:
            return bytes(buf), False
        if signature == LOCAL:
            header = take(26)
            if header is None:
                return bytes(buf), False
            flags, size = _u(header[2:4]), _u(header[14:18])
            names = take(_u(header[22:24]) + _u(header[24:26]))
            if names is None:
                return bytes(buf), False
            if flags & _DATA_DESCRIPTOR:
                return bytes(buf), None
            if size == _UNKNOWN_SIZE:
                size64 = _zip64_compressed_size(names[_u(header[22:24]):], _u(header[18:22]) == _UNKNOWN_SIZE)
                if size64 is None:
                    return bytes(buf), None
                size = size64
            if take(size) is None:
                return bytes(buf), False
        elif signature == CENTRAL:
            header = take(42)
            if header is None or take(_u(header[24:26]) + _u(header[26:28]) + _u(header[28:30])) is None:
                return bytes(buf), False
        elif signature == END64:
            length = take(8)
            if length is None or take(_u(length)) is None:
                return bytes(buf), False
        elif signature == LOCATOR64:
            if take(16) is None:
                return bytes(buf), False
        elif signature == END:
            header = take(18)
            if header is None or take(_u(header[16:18])) is None:
                return bytes(buf), False
            return bytes(buf), True
        else:
            return bytes(buf), None


def _zip64_compressed_size(extra: bytes, uncompressed_deferred: bool) -> int | None:
    """The compressed size in a local header's zip64 extra field (id 0x0001: the uncompressed size first where its
    32-bit field defers too, then the compressed size), or None where there is none."""
    at = 0
    while at + 4 <= len(extra):
        kind, length = _u(extra[at:at + 2]), _u(extra[at + 2:at + 4])
        if kind == 1:
            offset = at + 4 + (8 if uncompressed_deferred else 0)
            return _u(extra[offset:offset + 8]) if offset + 8 <= at + 4 + length else None
        at += 4 + length
    return None
