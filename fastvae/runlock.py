"""A run holds its folder while it writes to it: an advisory lock (flock, exclusive, non-blocking) on a file inside it.

Two runs started together into one folder both passed the start-up check that the folder holds no run, and the
later one's files silently replaced the other's. The lock closes that: the first run to take it holds the folder, a
second is refused at once (InUse, naming the holder's pid), and the check of what the folder holds is made only
while holding it. The operating system drops a flock when its process ends, SIGKILL and crashes included, so no stale
lock survives a dead run; the file it leaves is harmless (the next run takes its lock) and goes with that run's end.
Where fcntl is missing (Windows) or the file system has no locks, nothing is held: the start-up check alone, as before.
"""
from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

try:
    import fcntl
except ImportError:         # Windows
    fcntl = None  # type: ignore[assignment]  # (checked before each use)

NAME = ".fastvae.lock"      # hidden: `ls` of a folder whose run was killed does not show it
# flock's answers on a file system that cannot lock (NFS without lockd, some FUSE mounts): train unheld, as before
_NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


class InUse(Exception):
    """The folder is held by a live process: its pid (None where it could not be read)."""

    def __init__(self, pid: int | None):
        super().__init__(pid)
        self.pid = pid


class Lock:
    """A held folder; release() gives it back (its file removed first, while still held)."""

    def __init__(self, path: Path, fd: int):
        self.path = path
        self.fd: int | None = fd        # None once released

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            # unlinked before it is unlocked: a run that opens the name from now on makes a new file, and one that
            # opened this one and takes its lock once we close it sees that the name is no longer its file (acquire)
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        finally:
            os.close(self.fd)
            self.fd = None


def acquire(folder: str | Path) -> Lock | None:
    """Hold `folder` (which must exist): a Lock, or None where locks are unavailable. Raises InUse where a live
    process holds it, OSError where the lock file cannot be made (FileNotFoundError: the folder is gone)."""
    if fcntl is None:
        return None
    path = Path(folder) / NAME
    while True:
        # never through a link, and only into a regular file of this user's: a link planted under the name in a
        # folder others can write had the pid written over the file it pointed at, truncated first (a security
        # review; a missing target was created)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)   # (not inherited)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise OSError(e.errno, f"{NAME} in it is a symbolic link, not a lock file of fastvae's") from None
            raise
        st = os.fstat(fd)
        # (and no hard link to another of the user's files, which would be truncated: a re-review's catch)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1 or (hasattr(os, "getuid") and st.st_uid != os.getuid()):
            os.close(fd)
            raise OSError(errno.EPERM, f"{NAME} in it is not a lock file of fastvae's (another user's file, or a link)")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _read_pid(fd)
            os.close(fd)
            raise InUse(pid) from None
        except OSError as e:
            os.close(fd)
            if e.errno not in _NO_LOCKS:
                raise
            _unlink(path)       # (nobody can lock it there: a file left behind would only clutter the folder)
            return None
        # the holder we waited on may have ended between our open and our flock, removing the name (Lock.release):
        # then we hold a file nobody else will open, and must try again with the name's current file
        try:
            ours = os.path.samestat(os.fstat(fd), os.lstat(path))
        except FileNotFoundError:
            ours = False
        if ours:
            os.ftruncate(fd, 0)                 # a killed run's pid may still be in it
            os.write(fd, f"{os.getpid()}\n".encode())
            return Lock(path, fd)
        os.close(fd)


def _read_pid(fd):
    try:
        return int(os.pread(fd, 32, 0).decode().strip())
    except (OSError, ValueError):    # the holder has the lock but has not written its pid yet
        return None


def _unlink(path):
    try:
        os.unlink(path)
    except OSError:
        pass
