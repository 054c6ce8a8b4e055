"""SIGINT (and SIGTERM where asked) handled by an object while a block runs (training.StopOnCtrlC,
train._CtrlCNoted): one place for taking the handlers and giving the previous ones back."""
import signal
import threading


class CtrlCHandled:
    """While active, SIGINT, and each signal of `also` (e.g. SIGTERM), calls self._handle(signum, frame) (a
    subclass's), the previous handlers back on exit. Only the main thread can own a signal, so elsewhere this does
    nothing; nor for a signal that is ignored (a process started in the background by a shell, `cmd &`, ignores
    SIGINT: a Ctrl-C meant for the shell's script is not ours)."""

    def __init__(self, also=()):
        self._signals = (signal.SIGINT, *also)
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for signum in self._signals:
                if signal.getsignal(signum) is not signal.SIG_IGN:
                    self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc):
        previous, self._previous = self._previous, {}
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        return False
