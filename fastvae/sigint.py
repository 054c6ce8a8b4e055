"""SIGINT handled by an object while a block runs (training.StopOnCtrlC, train._CtrlCNoted): one place for
taking the handler and giving the previous one back."""
import signal
import threading


class CtrlCHandled:
    """While active, SIGINT calls self._handle(signum, frame) (a subclass's), the previous handler back on exit.
    Only the main thread can own SIGINT, so elsewhere this does nothing; nor where SIGINT is ignored (a process
    started in the background by a shell, `cmd &`, ignores it: a Ctrl-C meant for the shell's script is not ours)."""

    _previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread() and \
                signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        return False
