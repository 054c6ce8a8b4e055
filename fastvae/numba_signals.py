"""Python's signal handlers held back while Numba compiles (or loads from its cache) inside a fastvae call on the main
thread, and run when Numba's compiler lock is released.

Why: Numba takes its compiler lock and llvmlite's lock by a Python call (`_CompilerLock.acquire`, `_LLVMLock.__enter__`)
and releases them in a `with` block's exit. A signal handler raising between an acquire and its `with` (a timeout's
SIGALRM handler, or Ctrl-C's KeyboardInterrupt: Python runs a handler right after a C call returns) leaves the lock
taken by the main thread for good: it goes on (the locks are reentrant), but any later compile on another thread (the
worker pool's first call of a kernel) waits for it for ever (a storm's catch, 2026-12-07: an IWAE bound's first
chunk on the pool hung after a timeout during the main thread's compile of it). Numba announces each take of its
compiler lock before it takes it, and its release after, as events (numba.core.event, "numba:compiler_lock"): a
listener holds the handlers from the first to the last, so an exception from them comes once the lock is free.

Only inside fastvae's own calls (a model's method, fastvae.evaluate's functions, get_backend): another program's
compiles keep their signals as they were. Numba takes the lock only when it compiles or loads a kernel, so calls whose
kernels are ready pay nothing (5 events in a warm fit, evaluation and IWAE bound on the EPYC); a compile pays about
10 us per take of the lock, and a Ctrl-C is handled once the kernel being compiled is ready (seconds at most, cold).
"""
import threading

from .sigint import held_interrupts

_here = threading.local()          # per thread: fastvae calls entered (`within`), the holds open (a stack)


class within:
    """Marks the block as fastvae's own work for the listener (VAE.__init__ and load's backend, get_backend; a model's
    calls are known from fastvae.turns)."""

    __slots__ = ()

    def __enter__(self):
        _here.depth = getattr(_here, "depth", 0) + 1

    def __exit__(self, *exc):
        _here.depth -= 1
        return False


def _ours():
    from .turns import _calls
    return getattr(_here, "depth", 0) > 0 or getattr(_calls, "depth", 0) > 0


def _make_listener():
    from numba.core import event

    class CompilesHoldSignals(event.Listener):
        def on_start(self, ev):
            holds = getattr(_here, "holds", None)
            if holds is None:
                holds = _here.holds = []
            # (nested takes of the reentrant lock nest their holds: only the outermost one's end runs the handlers)
            if holds or (threading.current_thread() is threading.main_thread() and _ours()):
                held = held_interrupts()
                held.__enter__()
                holds.append(held)

        def on_end(self, ev):
            holds = getattr(_here, "holds", None)
            if holds:
                holds.pop().__exit__(None, None, None)
    return CompilesHoldSignals()


_installed: list = []


def install():
    """Registers the listener once per process (fastvae.backends and fastvae.numba_cache's users call it)."""
    if not _installed:
        from numba.core import event
        _installed.append(_make_listener())
        event.register("numba:compiler_lock", _installed[0])
