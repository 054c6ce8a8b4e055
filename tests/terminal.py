"""A real terminal (a pseudo-terminal) for a process's stderr: fastvae draws its progress bar only on a terminal
(in a file or a pipe it writes a line per epoch), so the tests that watch the bar give it one."""
import fcntl
import os
import pty
import struct
import termios


class Terminal:
    """The reading end of a pseudo-terminal whose other end, `.slave` (a descriptor), is given to a child as its
    stderr (close_slave() in the parent once the child has it) or opened as a file (`open_slave`)."""

    def __init__(self, rows=24, columns=120):
        self.fd, self.slave = pty.openpty()
        # a new pseudo-terminal is 0 x 0, where tqdm (dynamic_ncols) draws nothing: give it a terminal's size
        fcntl.ioctl(self.slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))

    def fileno(self):
        return self.fd

    def open_slave(self):
        """The slave end as a text file (an in-process sys.stderr that is a terminal)."""
        return os.fdopen(self.slave, "w", buffering=1, closefd=False)

    def close_slave(self):
        os.close(self.slave)

    def read_chunk(self):
        """What the terminal has now (blocks until something comes); b"" once every writer has closed it (Linux
        answers EIO then)."""
        try:
            return os.read(self.fd, 4096)
        except OSError:
            return b""

    def read(self):
        """Everything until every writer has closed it."""
        out = b""
        while chunk := self.read_chunk():
            out += chunk
        return out

    def close(self):
        os.close(self.fd)
