"""The project's own error type: a user's mistake, reported as one line that says what to do."""
import errno
import os
import signal
from typing import cast


class UserError(ValueError):
    """Bad input from the user (arguments, arrays, files). The CLI prints it as one line and exits with status 2."""


_KINDS: dict = {}


def _message(e):
    return str(e.args[0]) if e.args else ""


def _reduce(e):
    return _remade, (_message(e), type(e).kind, getattr(e, "errno", None), getattr(e, "strerror", None),
                     getattr(e, "filename", None))


def _remade(message, kind, number, strerror, filename):
    e = also(kind, message)
    if isinstance(e, OSError):
        e.errno, e.strerror, e.filename = number, strerror, filename
    return e


def also(kind: type, message: str) -> UserError:
    """A UserError (one line: `message`) that is also a `kind` of Python's own (TypeError for an unknown keyword,
    AttributeError for an attribute a model does not have, FileNotFoundError, PermissionError, ...), so that a
    program embedding fastvae catches it as it catches the same mistake anywhere (each was a plain ValueError: a
    fresh user's trial). Its str() is the message, its type's name the kind's; it pickles (a Pool's worker)."""
    if kind not in _KINDS:
        _KINDS[kind] = type(kind.__name__, (UserError, kind), {
            "kind": kind, "__module__": __name__,
            "__doc__": f"A UserError that is a {kind.__name__} too (fastvae.errors.also).",
            "__str__": _message,           # the one line, not OSError's "[Errno 2] No such file or directory: 'x'"
            "__reduce__": _reduce})        # (a class made here: pickled by how to make it)
    return _KINDS[kind](message)


def file_error(message: str, cause: OSError | type = FileNotFoundError, filename=None) -> UserError:
    """also(the OSError `cause` was or names, message), with its errno, strerror and filename: a program tells a
    missing checkpoint from a full disk by `except FileNotFoundError` or `e.errno`, not by reading the message.
    Raise it `from` the OSError where there is one."""
    made = also(type(cause) if isinstance(cause, OSError) else cause, message)
    e = cast(OSError, made)                 # (also() of an OSError kind is one)
    if isinstance(cause, OSError):
        e.errno, e.strerror, e.filename = cause.errno, cause.strerror, cause.filename
    else:
        known: dict[type, int] = {FileNotFoundError: errno.ENOENT, IsADirectoryError: errno.EISDIR}
        e.errno = known.get(cause)
        e.strerror = None if e.errno is None else os.strerror(e.errno)
    if filename is not None:
        e.filename = os.fspath(filename)
    return made


def unreadable(path, e: OSError, what: str = "") -> UserError:
    """file_error for a file that exists but cannot be read (PermissionError): not corrupt, unreadable to this user
    (it was called unreadable or corrupt: a fresh user's trial)."""
    return file_error(f"cannot read {what}{path} ({e.strerror}); check its permissions", e, path)


def write_advice(e: OSError) -> str:
    """What to do about a failed write, by its errno: "free some space" only where space ran out (it was said for
    an immutable file, EPERM, too: a fresh user's trial)."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return "free some space or choose another folder"
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "check the permissions of the file and its folder, or choose another folder"
    return "choose another folder"


class TrainingDiverged(UserError):
    """The loss or the parameters became NaN or Inf. Nothing non-finite is ever saved; the CLI exits with status 3.
    `what`: where and how it diverged (without the advice), `lr`: the learning rate it trained at, `step`: the
    training step (1-based, Adam's t) and `epoch` (1-based) it diverged in (None: unknown)."""

    def __init__(self, message: str, what: str | None = None, lr: float | None = None, step: int | None = None,
                 epoch: int | None = None):
        super().__init__(message)
        self.what = message if what is None else what
        self.lr, self.step, self.epoch = lr, step, epoch


class StoppedBySignal(KeyboardInterrupt):
    """A signal stopped the work: `signum` (SIGINT, Ctrl-C, or on the command line SIGTERM), `how` it is named in
    the line the command line prints ("Ctrl-C", "SIGTERM"), and `status`, the exit status it gives, 128 + signum
    (130, 143)."""

    def __init__(self, message: str = "", signum: int = signal.SIGINT):
        super().__init__(message)
        self.signum = int(signum)

    @property
    def status(self) -> int:
        """The exit status this stop gives: 128 + signum (130 for Ctrl-C, 143 for SIGTERM)."""
        return 128 + self.signum

    @property
    def how(self) -> str:
        """The signal as the stop line names it: "Ctrl-C" for SIGINT, else its name ("SIGTERM")."""
        return signal_name(self.signum)


def signal_name(signum: int) -> str:
    """How a stop line names a signal: "Ctrl-C" for SIGINT, else its name ("SIGTERM")."""
    if signum == signal.SIGINT:
        return "Ctrl-C"
    try:
        return signal.Signals(signum).name
    except ValueError:          # (a number no signal of this system has)
        return f"signal {signum}"


class TrainingInterrupted(StoppedBySignal):
    """Ctrl-C (or the command line's SIGTERM) arrived and training stopped cleanly after the step in progress: the
    model is consistent and can be saved and resumed (a second Ctrl-C interrupts at once, and then it may not be)."""


def one_line(e: BaseException) -> str:
    """An exception as 'Type: message' on one line, to quote inside a UserError. NumPy's answer to a file that is
    neither a .npy nor a .npz ("contains pickled (object) data ... allow_pickle=") says what it is not, instead of
    sending the reader to unpickling it (a data file must not run code)."""
    if isinstance(e, ValueError) and "allow_pickle" in str(e):
        return "not a NumPy .npy or .npz file, or one holding Python objects, which fastvae never unpickles"
    return " ".join(f"{type(e).__name__}: {e}".split())
