"""SIGINT (and SIGTERM where asked) handled by an object while a block runs (training.StopOnCtrlC, CtrlCNoted for
the tools' figures): one place for taking the handlers and giving the previous ones back."""
import _signal
import signal
import threading

from .errors import StoppedBySignal


class CtrlCHandled:
    """While active, SIGINT, and each signal of `also` (e.g. SIGTERM), calls self._handle(signum, frame) (a
    subclass's), the previous handlers back on exit. Only the main thread can own a signal, so elsewhere this does
    nothing; and only a signal whose handler is Python's default is taken: one that is ignored (a process started
    in the background by a shell, `cmd &`, ignores SIGINT: a Ctrl-C meant for the shell's script is not ours), or
    one the program set a handler of its own for (a program embedding fastvae keeps its Ctrl-C: its handler can
    set the event given as fit's `stop`; fit took the signal from it, a fresh user's trial), is left as it is."""

    def __init__(self, also=()):
        self._signals = (signal.SIGINT, *also)
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for signum in self._signals:
                default = signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL
                if signal.getsignal(signum) is default:
                    self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc):
        previous, self._previous = self._previous, {}
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        return False


class CtrlCNoted(CtrlCHandled):
    """Ctrl-C (and SIGTERM: it killed a run there without a word, figures half drawn) raises KeyboardInterrupt
    (StoppedBySignal for SIGTERM) while active, and is noted: Python drops one raised inside a callback it cannot
    propagate from (a weakref's or the garbage collector's: 'Exception ignored in ...'), and matplotlib's figures run
    such callbacks (fresh users' trials: 2 of 22 Ctrl-Cs during train's final figures, and 2 of 14 during
    fastvae-plot, ended in 'done' and exit status 0), so check() raises it again after the work."""

    def __init__(self):
        super().__init__(also=(signal.SIGTERM,))
        self.seen = None

    def _handle(self, signum, frame):
        self.seen = signum
        self.check()

    def check(self):
        if self.seen == signal.SIGINT:
            raise KeyboardInterrupt
        if self.seen is not None:
            raise StoppedBySignal("", self.seen)


_SIGINT = int(signal.SIGINT)


class held_interrupts:
    """Ctrl-C (SIGINT) held back inside the block and handled, by whatever handler was installed, when it ends (the
    default one raises KeyboardInterrupt there). Python runs signal handlers on the main thread only, whichever
    thread the OS delivered the signal to, so swapping the handler there is enough; elsewhere nothing is held.

    Swapped through _signal, the C module behind `signal`, whose wrappers convert every number to an enum and back:
    measured on the project's Xeon, one held block 9.8 us that way against about 1 us, twice per step."""

    __slots__ = ("caught", "previous")

    def __enter__(self):
        self.previous = None
        if threading.current_thread() is not threading.main_thread() or _signal.getsignal(_SIGINT) is None:
            return self                 # (None: a handler installed by C code, which Python could not put back)
        caught = self.caught = []
        self.previous = _signal.signal(_SIGINT, lambda signum, frame: caught.append(frame))
        return self

    def __exit__(self, *exc):
        previous = self.previous
        if previous is None:
            return False
        _signal.signal(_SIGINT, previous)
        if self.caught:
            if callable(previous):
                # each one held, to the handler in place as it comes: a second Ctrl-C during the same chunk was lost
                # (fit's first-Ctrl-C handler heard one, and stopped cleanly instead of at once: a fresh user's trial)
                for frame in self.caught:
                    handler = _signal.getsignal(_SIGINT)
                    (handler if callable(handler) else previous)(_SIGINT, frame)
            elif previous == signal.SIG_DFL:
                signal.raise_signal(signal.SIGINT)
        return False


_OTHER_SIGNALS = tuple(int(s) for s in signal.valid_signals() if s != signal.SIGINT)


class held_signals:
    """Every signal but SIGINT whose handler is a Python function, held back inside the block and handled by the
    handler in place when it ends (on the main thread, where Python runs them; elsewhere nothing is held). Around
    another thread's call that a fit in the main thread runs for it (fastvae.turns.serve): a handler's exception
    meant for the fit (a SIGALRM timeout's) came out of that call instead, went to the other thread as its error,
    and the fit ran on (a review's catch). SIGINT is the fit's own (its first Ctrl-C asks, its second stops at once)."""

    __slots__ = ("caught", "previous")

    def __enter__(self):
        self.previous = {}
        if threading.current_thread() is not threading.main_thread():
            return self
        caught = self.caught = []
        try:
            for signum in _OTHER_SIGNALS:
                if callable(_signal.getsignal(signum)):
                    self.previous[signum] = _signal.signal(signum, lambda n, frame: caught.append((n, frame)))
        except BaseException:
            self._put_back()            # (a handler raising while they were taken: none left taken)
            raise
        return self

    def _put_back(self):
        error = None
        for signum, handler in self.previous.items():
            try:
                _signal.signal(signum, handler)
            except BaseException as e:  # noqa: BLE001 (every one put back, then the first error raised)
                error = error or e
        self.previous = {}
        if error is not None:
            raise error

    def __exit__(self, *exc):
        if not self.previous:
            return False
        self._put_back()
        for signum, frame in self.caught:
            handler = _signal.getsignal(signum)
            if callable(handler):
                handler(signum, frame)
        return False
