"""Checkpoints: one .npz holding the config (JSON), parameters, Adam's m and v, and where training stands.

Where training stands is (steps, epoch, epoch_step, epoch_loss): shuffles and noise are pure functions of
(seed, epoch) and (seed, step), so these counters are the whole RNG position, and a run resumed from them
continues exactly as the uninterrupted run would have, even from the middle of an epoch.
Written atomically (temporary file in the same folder, fsync, rename), so a crash never leaves half a file under
the real name; a SHA-256 over every field catches corruption; read with allow_pickle=False, so loading never
executes code.
"""
import errno
import hashlib
import io
import json
import os
import tokenize
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import zipstream
from .config import Config
from .errors import UserError, file_error, one_line, unreadable, write_advice
from .sigint import held_interrupts
from .tempfiles import new_temporary
from .params import Layout

FORMAT = "fastvae-checkpoint"
VERSION = 1
_FIELDS = ("config", "params", "m", "v", "steps", "epoch", "epoch_step", "epoch_loss")  # what the checksum covers


@dataclass
class Checkpoint:
    config: Config
    params: np.ndarray
    m: np.ndarray
    v: np.ndarray
    steps: int                     # Adam steps taken (the next step's noise counter)
    epoch: int                     # epochs completed
    epoch_step: int = 0            # batches done in the epoch in progress (0 at an epoch boundary)
    epoch_loss: np.ndarray = field(default_factory=lambda: np.zeros(2))  # its (reconstruction, KL) sums so far


def _digest(arrays):
    h = hashlib.sha256()
    for name in _FIELDS:
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}:{a.dtype.str}:{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def is_file_object(target) -> bool:
    """Whether `target` is an open binary file (io.BytesIO, a file opened "wb"/"rb", a stream of a cloud SDK), not a
    path: save() and load() take either."""
    return not isinstance(target, (str, bytes, os.PathLike)) and (hasattr(target, "write") or hasattr(target, "read"))


def save(path, ck):
    """Write `ck` to `path` atomically; on any failure the previous file at `path` is untouched. `path` may instead be
    an open binary file (is_file_object): the checkpoint is written into it at its position, in one write() (so any
    stream takes it: a pipe, a gzip.GzipFile, a cloud store's; zipfile's own writing seeks back, which those refuse),
    and checkpoints written one after another into one file are read back one after another (load)."""
    arrays = _arrays(ck)
    if is_file_object(path):
        _save_stream(path, arrays)
        return
    path = Path(path)
    _save_file(path, arrays)


def _save_stream(stream, arrays):
    what = type(stream).__name__
    if isinstance(stream, io.TextIOBase):
        raise UserError(f"could not write the checkpoint into the {what} given (a text file); open it in binary mode "
                        "('wb')")
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    try:
        stream.write(buffer.getvalue())
    except OSError as e:                    # the stream's own failure (a full disk, a closed pipe): its kind and errno
        # a stream open for reading (a file: UnsupportedOperation; a gzip.GzipFile: EBADF) said "choose another
        # folder" (an embedder's trial, and a review's)
        if isinstance(e, io.UnsupportedOperation) or e.errno == errno.EBADF:
            raise UserError(f"could not write the checkpoint into the {what} given ({one_line(e)}: it is not open "
                            "for writing); open it with mode 'wb'") from None
        raise file_error(f"could not write the checkpoint into the {what} given ({e.strerror or one_line(e)}); "
                         f"{write_advice(e)}", e) from e
    except (ValueError, TypeError, AttributeError) as e:        # closed, read-only, or a text file
        raise UserError(f"could not write the checkpoint into the {what} given ({one_line(e)}); pass a path or a "
                        "file open for binary writing") from None


def _one_archive(stream, bad):
    """The first checkpoint in `stream` from its position, as a BytesIO, the stream left just after it. np.load on the
    stream itself found the zip archive by its end record, scanning from the end of the file: of checkpoints written
    one after another into one file it loaded the last, whatever the position (a service embedding fastvae got the
    wrong model so, without a word). It is read record by record (fastvae.zipstream), no byte past its end: reading
    to the stream's end waited for a pipe's writer to close it (a socket's never returned), and a second checkpoint
    written into a pipe was refused (an embedder's trial). An archive not laid out as np.savez writes one is read to
    the stream's end and found by its end record, as before."""
    if isinstance(stream, io.TextIOBase):
        raise UserError(f"{bad} (a text file); open it in binary mode ('rb')")
    try:
        start = stream.tell() if stream.seekable() else None
    except (OSError, AttributeError, ValueError):
        start = None
    try:
        data, whole = zipstream.read_one(stream.read)
        if whole is None:
            rest = stream.read()
            if not isinstance(rest, (bytes, bytearray)):
                raise zipstream.NotBytes(type(rest).__name__)
            data += bytes(rest)
    except zipstream.NotBytes as e:
        if str(e) == "NoneType":            # (a non-blocking stream with nothing to read yet)
            raise UserError(f"{bad} (its read() returned None: a non-blocking stream with no data yet); pass a "
                            "blocking stream") from None
        raise UserError(f"{bad} (it reads {e}, not bytes); open it in binary mode ('rb')") from None
    except MemoryError:
        raise UserError(f"{bad} (not enough memory for what it holds); it may be corrupt") from None
    except (OSError, ValueError, AttributeError, TypeError) as e:
        raise UserError(f"{bad} (it cannot be read: {one_line(e)}); pass a file open for binary reading") from None
    if whole is False:
        raise UserError(f"{bad} (no whole checkpoint from its position); it may be truncated or corrupt")
    end = _archive_end(data)
    if end is None:
        raise UserError(f"{bad} (no whole checkpoint from its position); it may be truncated or corrupt")
    if end < len(data):
        if start is None:                   # read past it, and cannot go back: what follows would be lost
            raise UserError(f"{bad}: more follows the checkpoint in a stream that cannot seek; read it into a "
                            "BytesIO first, or write each checkpoint to a stream of its own")
        stream.seek(start + end)
    return io.BytesIO(data[:end])


_END_RECORD = b"PK\x05\x06"                  # a zip archive's end-of-central-directory record (22 bytes + comment)


def _archive_end(data):
    """Where the zip archive that starts at data[0] ends, or None: the first end record whose central directory
    (size and offset read from it) lies just before it, starting with a central directory header."""
    at = data.find(_END_RECORD)
    while at >= 0:
        if at + 22 <= len(data):
            size, offset = int.from_bytes(data[at + 12:at + 16], "little"), int.from_bytes(data[at + 16:at + 20],
                                                                                          "little")
            comment = int.from_bytes(data[at + 20:at + 22], "little")
            if offset + size == at and data[offset:offset + 4] == b"PK\x01\x02" and at + 22 + comment <= len(data):
                return at + 22 + comment
        at = data.find(_END_RECORD, at + 1)
    return None


def _arrays(ck):
    arrays = {
        "config": np.array(json.dumps(ck.config.to_dict())),
        "params": np.asarray(ck.params, dtype=np.float32), "m": np.asarray(ck.m, dtype=np.float32),
        "v": np.asarray(ck.v, dtype=np.float32),
        "steps": np.array(ck.steps, dtype=np.int64), "epoch": np.array(ck.epoch, dtype=np.int64),
        "epoch_step": np.array(ck.epoch_step, dtype=np.int64),
        "epoch_loss": np.asarray(ck.epoch_loss, dtype=np.float64).reshape(2),
    }
    arrays.update(format=np.array(FORMAT), version=np.array(VERSION, dtype=np.int64), sha256=np.array(_digest(arrays)))
    return arrays


def _save_file(path, arrays):
    # Ctrl-C and a program's signal handlers (a timeout's) wait for the file to be written and in place: one raising
    # inside np.savez came out as zipfile's ValueError ("Can't close the ZIP file while there is an open writing
    # handle"), not as itself, and one between the temporary file's making and its try left it behind (a storm's
    # catch, 2026-12-07: 2 files in 300 calls)
    with held_interrupts():
        folder = path.parent if str(path.parent) else Path(".")
        try:
            fd, tmp = new_temporary(folder, path.name)
        except OSError as e:
            raise file_error(f"cannot write a checkpoint in {folder} ({e.strerror}); {write_advice(e)}", e,
                             path) from e
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **arrays)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException as e:
            Path(tmp).unlink(missing_ok=True)
            if isinstance(e, OSError):
                raise file_error(f"could not write checkpoint {path} ({e.strerror or e}); nothing was overwritten; "
                                 f"{write_advice(e)}", e, path) from e
            raise


def _refuse_a_single_array(path, bad):
    """A NumPy .npy file (one array, np.save's) is said as such: np.load returned the array itself, and the message
    was its TypeError ("does not support the context manager protocol") and "truncated or corrupt" (an API trial)."""
    try:
        with open(path, "rb") as f:
            magic = f.read(6)
    except OSError:
        return                                  # (load's own handling says what is wrong)
    if magic == b"\x93NUMPY":
        raise UserError(f"{bad}: it holds one NumPy array (a .npy file, np.save's); pass the checkpoint.npz a "
                        "training run or VAE.save wrote")


def load(path):
    """The Checkpoint in `path` (a file, or an open binary file: is_file_object). Raises UserError (one line) for a
    missing, unreadable, corrupt or foreign one."""
    if is_file_object(path):
        bad = f"the {type(path).__name__} given is not a readable fastvae checkpoint"
        path = _one_archive(path, bad)
    else:
        path = Path(path)
        if not path.is_file():
            raise file_error(f"checkpoint {path} does not exist; pass a training run's folder or its checkpoint.npz",
                             FileNotFoundError, path)
        bad = f"{path} is not a readable fastvae checkpoint"
        _refuse_a_single_array(path, bad)
    try:
        with np.load(path, allow_pickle=False) as f:
            if "format" not in f.files or str(f["format"]) != FORMAT:
                raise UserError(f"{bad} (no fastvae format marker); pass a checkpoint.npz written by fastvae")
            if int(f["version"]) != VERSION:
                raise UserError(f"{bad}: version {int(f['version'])}, this fastvae reads version {VERSION}")
            arrays = {name: f[name] for name in _FIELDS}
            if str(f["sha256"]) != _digest(arrays):
                raise UserError(f"{bad}: its checksum does not match (the file is corrupt); use an older copy")
    except UserError:
        raise
    except PermissionError as e:                # not corrupt: unreadable to this user
        raise unreadable(path, e, "checkpoint ") from e
    # a corrupt array header makes NumPy's header parser raise SyntaxError or tokenize.TokenError (the fuzz test)
    # and a crafted header declaring a huge array, NumPy's MemoryError (a traceback: a security review)
    except (OSError, ValueError, KeyError, IndexError, TypeError, zipfile.BadZipFile, EOFError, SyntaxError,
            tokenize.TokenError, MemoryError) as e:
        reason = one_line(e)[:200]
        raise UserError(f"{bad} ({reason}); it may be truncated or corrupt") from None
    try:
        config = Config.from_dict(json.loads(str(arrays["config"])))
    except (ValueError, TypeError, AttributeError) as e:
        raise UserError(f"{bad}: its config is invalid ({' '.join(str(e).split())})") from None
    ck = Checkpoint(config, arrays["params"], arrays["m"], arrays["v"], int(arrays["steps"]), int(arrays["epoch"]),
                    int(arrays["epoch_step"]), arrays["epoch_loss"])
    size = Layout(config).size
    for name in ("params", "m", "v"):
        a = getattr(ck, name)
        if a.dtype != np.float32 or a.shape != (size,):
            # (the dtype named too: float64 params of the right shape read "has shape (4420,), needs (4420,)")
            raise UserError(f"{bad}: {name} is {a.dtype} of shape {a.shape}, the architecture in it needs float32 of "
                            f"shape ({size},)")
        if not np.isfinite(a).all():
            # save() refuses a diverged model, so only a file made otherwise holds these; its outputs were NaN
            # without a word (an API trial)
            raise UserError(f"{bad}: {name} holds NaN or Inf values (fastvae never saves those); use another copy")
    if min(ck.steps, ck.epoch, ck.epoch_step) < 0 or ck.epoch_loss.shape != (2,):
        raise UserError(f"{bad}: negative counters or a malformed epoch loss")
    return ck
