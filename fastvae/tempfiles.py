"""New files beside a file fastvae replaces: made with O_EXCL under a random name, so that nothing already at that
name (a link another user planted in a shared folder, a leftover) is ever opened, followed or truncated."""
import os
import secrets
from pathlib import Path


def new_temporary(folder, name):
    """(descriptor, path) of a new file `.name.<random>.tmp` in `folder`, opened for writing, made with the mode the
    user's umask gives new files (tempfile.mkstemp makes them 0600: every checkpoint was unreadable to the user's
    group and others, whatever the umask, unlike the run's other files; a fresh user's trial). A fixed temporary
    name (metrics.json.tmp) was written through a link planted under it: the file it pointed at was replaced (a
    security review). Raises OSError where the folder takes no new file."""
    for _ in range(100):
        tmp = Path(folder) / f".{name}.{secrets.token_hex(4)}.tmp"
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name for {name} in {folder}")


def probe(folder):
    """Raises OSError unless `folder` takes a new file (one made and removed, never through an existing name: a
    fixed probe name, .write-test, truncated the file a link planted under it pointed at, a security review)."""
    fd, tmp = new_temporary(folder, "write-test")
    os.close(fd)
    os.unlink(tmp)
