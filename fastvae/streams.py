"""The command-line tools' stdout and stderr: a character the stream cannot encode is escaped, and a write that fails
(a full disk under `> train.log`, /dev/full, an I/O error) loses that output, not the run.

A fresh user's trial: `PYTHONIOENCODING=ascii fastvae-evaluate ...` stopped with UnicodeEncodeError on the table's
'±' (the --json file not written), a run whose --out held an 'é' on its first line; `fastvae-train ... > /dev/full`
stopped with a traceback at its first line and wrote no run, `2> /dev/full` at the first notice. Now the run goes on
and saves as it would; a tool whose stdout lost anything ends with status 74 (EX_IOERR) and one line on stderr, as
its output is what the user asked for (evaluate's table, train's log); so does one started with stdout closed (`>&-`)
that prints there. A lost stderr only loses its notes. A closed reader (`| head`) is still the runner's
BrokenPipeError (status 141).
"""
from __future__ import annotations

import contextlib
import errno
import os
import sys
from typing import Iterator

LOST_OUTPUT = 74                        # sysexits.h EX_IOERR


def to_devnull(stream) -> None:
    """Points `stream`'s file descriptor at /dev/null: what it still holds, and Python's own flush at exit, then
    succeed instead of failing again (a full disk; a reader gone: cli.run_main's closed pipe)."""
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, stream.fileno())
    finally:
        os.close(null)


class Kept:
    """A text stream that escapes what it cannot encode and, once a write or flush fails with an OSError other than
    a broken pipe, points its file descriptor at /dev/null (so Python's own flush at exit does not fail again) and
    drops every later write; `failed` holds the error."""

    def __init__(self, stream):
        self._stream = stream
        self.failed: OSError | None = None

    def write(self, text: str) -> int:
        if self.failed is None:
            try:
                try:
                    self._stream.write(text)
                except UnicodeEncodeError:
                    encoding = getattr(self._stream, "encoding", None) or "ascii"
                    self._stream.write(text.encode(encoding, "backslashreplace").decode(encoding))
            except BrokenPipeError:
                raise
            except OSError as e:
                self._lost(e)
        return len(text)

    def flush(self) -> None:
        if self.failed is None:
            try:
                self._stream.flush()
            except BrokenPipeError:
                raise
            except OSError as e:
                self._lost(e)

    def _lost(self, e: OSError) -> None:
        self.failed = e
        with contextlib.suppress(OSError, ValueError, AttributeError):
            to_devnull(self._stream)
            self._stream.flush()            # (what its buffer still holds goes to /dev/null now)

    def __getattr__(self, name):            # isatty, fileno, encoding, ...: the stream's own
        return getattr(self._stream, name)


class _Closed:
    """A stream the tool was started with closed (`>&-`: Python's sys.stdout or sys.stderr is None). Stdout's writes
    fail (`lost`), so Kept notes the loss and the tool ends with status 74: print() dropped every line without a word,
    evaluate's table lost with status 0 (a fresh user's trial). Stderr's are dropped, its notes being all it loses:
    print(..., file=None) wrote them to stdout, into --json -'s JSON (a review)."""

    encoding = "utf-8"

    def __init__(self, lost: bool):
        self.lost = lost

    def write(self, text: str) -> int:
        if self.lost:
            raise OSError(errno.EBADF, "it is closed")
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


def _fill_closed_descriptors() -> None:
    """A closed descriptor 1 or 2 pointed at /dev/null: the next file the tool opened took its number (the lowest free
    one), and any C library's write to stdout or stderr would have landed in it (a checkpoint, say)."""
    for fd in (1, 2):
        try:
            os.fstat(fd)
        except OSError:
            with contextlib.suppress(OSError):
                null = os.open(os.devnull, os.O_WRONLY)
                if null != fd:
                    os.dup2(null, fd)
                    os.close(null)


class Outcome:
    """What tool_streams yields: status(code) is the tool's exit status, LOST_OUTPUT (with one line on stderr) where
    it succeeded but its stdout lost output."""

    def __init__(self, stdout: Kept):
        self.stdout = stdout

    def lost(self) -> OSError | None:
        return self.stdout.failed

    def status(self, code: int | None) -> int:
        self.stdout.flush()                 # (a failure may wait in its buffer)
        error = self.lost()
        if error is None or code not in (0, None):
            return 0 if code is None else code
        print(f"fastvae: error: standard output could not be written ({error.strerror or error}); what the tool "
              "printed there is lost", file=sys.stderr)
        return LOST_OUTPUT


@contextlib.contextmanager
def tool_streams() -> Iterator[Outcome]:
    """sys.stdout and sys.stderr as Kept streams for the body (put back after it); argparse's exit (--help, --version)
    takes its status from Outcome.status too."""
    saved = sys.stdout, sys.stderr
    if sys.stdout is None or sys.stderr is None:
        _fill_closed_descriptors()
    out = Kept(_Closed(lost=True) if sys.stdout is None else sys.stdout)
    err = Kept(_Closed(lost=False) if sys.stderr is None else sys.stderr)
    sys.stdout, sys.stderr = out, err
    outcome = Outcome(out)
    try:
        yield outcome
    except SystemExit as e:
        if isinstance(e.code, int | None):
            raise SystemExit(outcome.status(e.code)) from None
        raise
    finally:
        with contextlib.suppress(OSError, ValueError):
            for stream in (out, err):
                stream.flush()
        sys.stdout, sys.stderr = saved
