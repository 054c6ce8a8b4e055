"""SIGINT (and SIGTERM where asked) handled by an object while a block runs (training.StopOnCtrlC, CtrlCNoted for
the tools' figures): one place for taking the handlers and giving the previous ones back."""
import _signal
import functools
import signal
import sys
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
            # the program's other handlers held meanwhile, and the swaps undone where one raised at the end: a
            # timeout's handler raising between a swap and its note left fit's handler on Ctrl-C after the fit
            try:
                with held_signals(leave=self._signals):
                    for signum in self._signals:
                        default = signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL
                        if signal.getsignal(signum) is default:
                            self._previous[signum] = default
                            signal.signal(signum, self._handle)
            except BaseException:
                self.__exit__()
                raise
        return self

    def __exit__(self, *exc):
        """The handlers back; idempotent, so a caller may call it again where a second handler's exception cut the with
        statement's own call short (training.run_epochs does: fit's handler was left on Ctrl-C, a review's storm)."""
        if not self._previous:
            return False
        with held_signals(leave=self._signals):
            previous, self._previous = self._previous, {}
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        return False


class _Unraisable:
    """sys.unraisablehook filtered while a block runs on the main thread: what Python drops (inside a weakref callback
    or a __del__: 'Exception ignored in ...') goes to swallow(unraisable), and on to the hook found unless that
    returns True. Only while the block runs: a hook a program "put back" after it (pytest's monkeypatch does) passes
    everything on. The hook found is put back on exit where it is still this one (one a program set meanwhile
    stays); exit is idempotent."""

    def __init__(self, swallow):
        self._swallow = swallow
        self._hook = self._ours = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread() and self._hook is None:
            previous = self._hook = sys.unraisablehook

            def hook(unraisable):
                if not (self._hook is not None and self._swallow(unraisable)):
                    previous(unraisable)
            self._ours = sys.unraisablehook = hook
        return self

    def __exit__(self, *exc):
        if self._hook is not None:
            if sys.unraisablehook is self._ours:
                sys.unraisablehook = self._hook
            self._hook = self._ours = None
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
        # Python prints what it drops: a noted Ctrl-C it dropped printed 9 lines of traceback ("Exception ignored in:
        # <function WeakKeyDictionary...>") above the tool's own line (a fresh user's trial: 4 of 14 Ctrl-Cs during
        # train's final figures); check() raises it, so that one is quiet
        self._quiet = _Unraisable(lambda u: self.seen is not None and isinstance(
            u.exc_value, (KeyboardInterrupt, StoppedBySignal)))

    def __enter__(self):
        super().__enter__()
        if self._previous:                  # (the signals taken: the interrupts are this block's)
            self._quiet.__enter__()
        return self

    def __exit__(self, *exc):
        self._quiet.__exit__()
        return super().__exit__(*exc)

    def _handle(self, signum, frame):
        self.seen = signum
        self.check()

    def check(self):
        if self.seen == signal.SIGINT:
            raise KeyboardInterrupt
        if self.seen is not None:
            raise StoppedBySignal("", self.seen)


class KeptHandlerErrors:
    """While active on the main thread, an exception that a signal handler raised where Python cannot pass it on is
    kept, and raise_kept() raises it. Python runs a handler at the next point it checks, which may be inside a
    weakref callback or a __del__ that the garbage collector ran; an exception there is dropped after 'Exception ignored
    in ...' is printed: a timeout's TimeoutError raised inside a WeakSet's callback let the fit run on to its end (a
    CI run, tests/test_served_calls.py). Kept: an exception whose traceback runs through the code of a Python handler
    (a function, method, functools.partial or callable object) in place for a signal as the block began or as it is
    dropped (a one-shot handler puts the previous one back before it raises), and a KeyboardInterrupt (Python's
    default Ctrl-C handler's). Others go to the hook in place, as does everything once the block has ended (a program
    that set its own hook during the block and put "back" this one after it: a review). The same function serving as
    a handler and as a weakref callback that raises is taken for a handler's. Exits are idempotent (run_epochs calls
    them again)."""

    def __init__(self):
        self.error = None
        self._codes = frozenset()
        self._filter = _Unraisable(self._keep)

    def _keep(self, unraisable):
        if self.error is None and _from_a_handler(unraisable.exc_value, unraisable.exc_traceback, self._codes):
            self.error = unraisable.exc_value
            return True
        return False

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._codes = _handler_codes()
        self._filter.__enter__()
        return self

    def raise_kept(self):
        error, self.error = self.error, None
        if error is not None:
            raise error

    def __exit__(self, *exc):
        return self._filter.__exit__()


# the signal numbers as ints, found once: signal.valid_signals() builds an enum of each, 66 us a call on the EPYC
_SIGNALS = tuple(int(s) for s in signal.valid_signals())
_SIGINT = int(signal.SIGINT)
_OTHER_SIGNALS = tuple(s for s in _SIGNALS if s != _SIGINT)


def _handler_codes():
    """The code objects of the Python signal handlers in place (through functools.partial, bound methods and
    callable objects)."""
    codes = set()
    for signum in _SIGNALS:
        handler = _signal.getsignal(signum)
        if handler is None or handler.__class__ is int:        # (SIG_DFL, SIG_IGN, or C's own: no code)
            continue
        for _ in range(8):                              # (a partial of a partial ...)
            if isinstance(handler, functools.partial):
                handler = handler.func
            else:
                break
        handler = getattr(handler, "__func__", handler)
        code = getattr(handler, "__code__", None)
        if code is None and callable(handler):          # a callable object: its class's __call__
            call = getattr(type(handler), "__call__", None)
            code = getattr(getattr(call, "__func__", call), "__code__", None)
        if code is not None:
            codes.add(code)
    return frozenset(codes)


def _from_a_handler(error, tb, codes):
    """Whether `error`, dropped with traceback `tb`, was raised by a signal handler (see KeptHandlerErrors): `codes`
    those in place as the block began, with those in place now."""
    if isinstance(error, KeyboardInterrupt):
        return True
    codes = codes | _handler_codes()
    while tb is not None:
        if tb.tb_frame.f_code in codes:
            return True
        tb = tb.tb_next
    return False


class _Held:
    """Signals held back inside a block and handled when it ends, each by the handler in place then (on the main
    thread, where Python runs handlers; elsewhere nothing is held): SIGINT where `sigint` (whatever its handler: the
    default one raises KeyboardInterrupt at the block's end, SIG_DFL's action is taken there), and every other signal
    whose handler is a Python function. A handler may raise anywhere (a SIGALRM timeout's): so each handler is read
    and noted before it is swapped, and an exception while they are taken or given back leaves none taken.

    Swapped through _signal, the C module behind `signal`, whose wrappers convert every number to an enum and back:
    measured on the project's Xeon, one held SIGINT 9.8 us that way against about 1 us; a held block looking at
    every signal, 4.3 us on the EPYC (2026-12-07), twice per job of the worker pool."""

    __slots__ = ("caught", "previous", "leave")
    sigint = True

    def __init__(self, leave=()):
        self.leave = leave              # signals not held: the block sets their handlers (the end would undo that)

    def __enter__(self):
        self.previous = {}
        if threading.current_thread() is not threading.main_thread():
            return self
        caught = self.caught = []

        def hold(signum, frame):
            caught.append((signum, frame))
        try:
            if self.sigint and _SIGINT not in self.leave and _signal.getsignal(_SIGINT) is not None:
                # (None: a handler installed by C code, which Python could not put back)
                self._take(_SIGINT, hold)
            for signum in _OTHER_SIGNALS:
                if signum not in self.leave and callable(_signal.getsignal(signum)):
                    self._take(signum, hold)
        except BaseException:
            self._put_back()            # (a handler raising while they were taken: none left taken)
            raise
        return self

    def _take(self, signum, hold):
        # noted before the swap: a handler's exception between the two leaves nothing unknown swapped
        self.previous[signum] = _signal.getsignal(signum)
        _signal.signal(signum, hold)

    def _put_back(self):
        error = None
        previous, self.previous = self.previous, {}
        for signum, handler in previous.items():
            try:
                _signal.signal(signum, handler)
            except BaseException as e:  # noqa: BLE001 (every one put back, then the first error raised)
                error = error or e
        if error is not None:
            raise error
        return previous

    def __exit__(self, *exc):
        if not self.previous:
            return False
        previous = self._put_back()
        # each one held, to the handler in place as it comes: a second Ctrl-C during the same chunk was lost (fit's
        # first-Ctrl-C handler heard one, and stopped cleanly instead of at once: a fresh user's trial)
        for signum, frame in self.caught:
            handler = _signal.getsignal(signum)
            if callable(handler):
                handler(signum, frame)
            elif signum == _SIGINT and previous[signum] == signal.SIG_DFL:
                signal.raise_signal(signal.SIGINT)
        return False


class held_interrupts(_Held):
    """Ctrl-C (SIGINT), and every signal with a Python handler, held back inside the block and handled when it ends:
    around fastvae's bookkeeping (a worker pool's hand-off, a lock taken), where an exception would leave it half
    done. A timeout's SIGALRM handler raising there left the pool taken for good (every later job on one thread),
    or a part's permit behind, which ended a later job's wait while its part still ran (a storm's catch, 2026-12-07)."""

    __slots__ = ()


class held_signals(_Held):
    """Every signal but SIGINT whose handler is a Python function, held back inside the block and handled when it
    ends. Around a fit's steps (a timeout's exception inside one left the model half updated, and refused for good)
    and around another thread's call that a fit in the main thread runs for it (fastvae.turns.serve: a handler's
    exception meant for the fit came out of that call instead, went to the other thread as its error, and the fit
    ran on: a review's catch). SIGINT is the fit's own (its first Ctrl-C asks, its second stops at once)."""

    __slots__ = ()
    sigint = False
