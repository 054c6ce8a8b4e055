"""A real Ctrl-C sent to the test process from a timer (tests of fit's and the workers' stops)."""
import contextlib
import os
import signal
import threading


@contextlib.contextmanager
def sigint_after(seconds, handler=signal.default_int_handler):
    """SIGINT sent to this process `seconds` into the block, with `handler` as SIGINT's handler meanwhile (Python's
    own by default, which raises KeyboardInterrupt in the main thread; None: the one in place). No signal once the
    block has ended: a block that failed at once must not leave one to stop the test session."""
    previous = signal.getsignal(signal.SIGINT) if handler is None else signal.signal(signal.SIGINT, handler)
    timer = threading.Timer(seconds, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        timer.join()
        signal.signal(signal.SIGINT, previous)


def a_dropped_interrupt(*args, **kw):
    """A Ctrl-C whose KeyboardInterrupt Python drops ('Exception ignored in ...', sys.unraisablehook), as one raised
    inside matplotlib's weakref callbacks is: the signal sent from a real weakref.finalize callback, run at once.
    Takes any arguments, to stand where write_figures is called."""
    import time
    import weakref

    class Held:
        pass
    held = Held()
    weakref.finalize(held, lambda: (os.kill(os.getpid(), signal.SIGINT), time.sleep(0.5)))
    del held                                                    # the callback runs here; its interrupt is dropped


@contextlib.contextmanager
def alarm(handler):
    """SIGALRM handled by `handler` in the block (sent by the block's own setitimer), no alarm left after it and the
    previous handler back."""
    previous = signal.signal(signal.SIGALRM, handler)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
