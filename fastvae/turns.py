"""One call at a time per model: the lock that fit, evaluate, encode, decode, ... and fastvae.evaluate's bounds take
(they share the model's buffers and weights), the calls a fit serves for other threads between its steps, the
one-line MemoryError of the call the user made, and a forked child's models that a thread of its parent held.

Why a fit serves: it holds the model for all its epochs, so an `encode` from another thread (a notebook looking at
a model trained in a background thread) waited for the whole fit. Handing the model's lock to the waiting threads at
each epoch's end was tried (2026-12-07) and taken out: a lock managed by hand broke under Ctrl-C and signal handlers
in seven ways a review found. Here no lock changes hands: a call from another thread during a fit is queued, and
the fit's own thread, which holds the lock, runs it between two chunks of steps (serve()), as it runs its callback,
and hands back the answer or the exception. The waiting thread holds nothing, so a Ctrl-C there only cancels its
call; the fit never waits for a waiting thread; and every wait gives up on a fit that has ended, whatever stopped it.
"""
from __future__ import annotations

import contextlib
import functools
import inspect
import os
import _thread
import threading
import time
import weakref
from typing import Any, Callable, Iterator, ParamSpec, TypeVar

from .errors import UserError, also, one_line
from .sigint import held_interrupts, held_signals

_P = ParamSpec("_P")
_R = TypeVar("_R")

_calls = threading.local()      # how deep this thread is in the model's calls that take turns
_RLOCK = type(threading.RLock())    # a model's lock (VAE._set_up)

# A waiting call looks again this often for a fit that started (it queues its call then) or a lock that came free;
# it holds Ctrl-C back only inside each look (lock.acquire with a timeout, under held_interrupts)
POLL_SECONDS = 0.05
# ... and a queued call checks this often that the fit serving it still runs (a fit ends by answering every call it
# did not run with "take your turn": this only guards against an interrupt landing inside that bookkeeping)
STALE_SECONDS = 0.5
# ... or this often where its thread's own fit waits in its callback, serving its own queue meanwhile (resting)
REST_POLL_SECONDS = 0.005

INTERRUPTED = ("this call was interrupted before it ended: it ran on the thread fitting this model, between the "
               "fit's steps, and a Ctrl-C there stopped that thread at once; call it again")


def taking_turns(hint: str, served: bool = True) -> Callable[[Callable[_P, _R]], Callable[_P, _R]]:
    """A decorator for a call whose first argument is a model (a method's self, or iwae_bound's model, by position or by
    name): the model's lock is held for the whole call, a call from another thread waiting for the one in progress
    (they share the buffers: two evaluations at once gave wrong numbers; a fit between iwae_bound's encode and its
    decodes gave a bound of neither model). Separate models run at once. A `served` call (all but fit) made while
    another thread fits the model is run by that fit between two of its chunks of steps (begin_serving, serve), its
    answer or exception handed back here. A first argument without the lock (not a model) is passed through, for the
    call's own check to refuse. A MemoryError is named once, by the outermost call, with `hint` (what to ask for
    instead); a call that does not fit the signature is a UserError too. Typed (ParamSpec), so that a type checker
    still sees each call's signature."""
    def decorator(method: Callable[_P, _R]) -> Callable[_P, _R]:
        signature = inspect.signature(method)
        name = method.__qualname__
        first = next(iter(signature.parameters))

        def call(args, kw, depth):
            """The method, the model's lock held by this thread."""
            _calls.depth = depth + 1
            try:
                return method(*args, **kw)
            except TypeError:
                # a call that does not fit the method (fit(X, y=...): an unknown keyword) is also a UserError,
                # as VAE(foo=1) is (a program catching UserError missed it: a service's trial); checked only on
                # failure
                try:
                    signature.bind(*args, **kw)
                except TypeError as e:
                    params = list(signature.parameters.values())
                    takes = ", ".join(p.name if p.default is p.empty else f"{p.name}={p.default!r}"
                                      for p in (params[1:] if params[0].name == "self" else params))
                    raise also(TypeError, f"{name}(): {e}; it takes ({takes})") from None
                raise
            except MemoryError as e:    # (sample(10**12) was NumPy's raw MemoryError: an API review's trial)
                if depth or isinstance(e, UserError):   # named once, by the call the user made
                    raise
                why = one_line(e) or "an allocation failed"
                raise also(MemoryError, f"{name}(): not enough memory ({why}); {hint}") from None
            finally:
                _calls.depth = depth

        @functools.wraps(method)
        def locked(*args: _P.args, **kw: _P.kwargs) -> _R:
            # the model by position or by name (iwae_bound(model=m, ...) ran without it held: a review's catch)
            model = args[0] if args else kw.get(first)
            lock = getattr(model, "_lock", None)
            if lock is None:
                return method(*args, **kw)
            if getattr(model, "_forked_busy", False):
                raise UserError(FORKED_BUSY)
            depth = getattr(_calls, "depth", 0)
            # (a call inside this thread's own: the lock is its already; an object not made by VAE: as before)
            if not served or not isinstance(lock, _RLOCK) or lock._is_owned():  # type: ignore[attr-defined]
                with lock:
                    return call(args, kw, depth)
            held = None
            try:
                while True:
                    queued = _served_by_fit(model, lambda: locked(*args, **kw))
                    if queued is not None:
                        return queued.answer()
                    # looked up again: a child forked meanwhile (a signal handler's fork) has a lock of its own
                    lock = getattr(model, "_lock")
                    if model.__dict__.get("_forked_busy"):
                        raise UserError(FORKED_BUSY)
                    # a timeout, to see a fit that starts meanwhile (this call then queues for it); Ctrl-C held back
                    # inside, and another signal's handler raising right after the acquire undone, so the lock is
                    # never left taken without `held` saying so (an interrupt after a bare acquire leaked it)
                    try:
                        with held_interrupts():
                            if lock.acquire(timeout=POLL_SECONDS):
                                held = lock
                    except BaseException:
                        if held is None and lock._is_owned():
                            lock.release()
                        raise
                    if held is not None:
                        return call(args, kw, depth)
                    rest = getattr(_calls, "resting", None)
                    if rest is not None:        # (a fit's callback waiting: see _served_by_fit)
                        rest()
            finally:
                if held is not None:
                    held.release()
        return locked
    return decorator


# ---------------------------------------------------------------- calls a fit serves for other threads
#
# No lock guards the queue: a signal handler of the program's own (a SIGTERM's that saves the model, say) may call
# the model at any instruction of any thread's bookkeeping, and one that took a lock held by its own thread waited
# for itself (a review's catch, with the plain lock this had first). A list's append, pop and remove are atomic
# under the GIL, so whoever takes a call out of its fit's list owns it: the fit to run it (serve) or to send it back
# (end_serving), or its caller to withdraw it (a Ctrl-C, or a fit that ended without looking).

DONE, RETRY = "done", "retry"


class _Fit:
    """A fit in progress on `thread`: the calls other threads queued for it, oldest first."""
    __slots__ = ("thread", "waiting")

    def __init__(self, thread: threading.Thread):
        self.thread = thread
        self.waiting: list[_Queued] = []


class _Queued:
    """A call queued for a fit: `run()` on the fit's thread; `state` DONE (value or error set) or RETRY (the fit
    ended first: take the lock as usual), then `finished` released, by whoever took it out of the list. `finished`
    is a bare lock, taken from the start, which the caller waits to take: a threading.Event's set() waits for the
    Condition lock that its wait() holds around each look, and where a signal handler ran a second call inside that
    look (a review's SIGALRM handler calling encode) the fit, answering the first, waited for the handler's thread,
    which waited for the fit."""
    __slots__ = ("run", "state", "value", "error", "finished")

    def __init__(self, run: Callable[[], Any]):
        self.run = run
        self.state: str | None = None
        self.value: Any = None
        self.error: BaseException | None = None
        self.finished = _thread.allocate_lock()
        self.finished.acquire()

    def answer(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.value

    def finish(self, state: str, value: Any = None, error: BaseException | None = None) -> None:
        """(by the one that took it out of the list, once)"""
        self.value, self.error, self.state = value, error, state
        self.finished.release()


def _withdrawn(fit: _Fit, queued: _Queued) -> bool:
    """Takes `queued` back out of the fit's list: True where no one had taken it (it will not run)."""
    try:
        fit.waiting.remove(queued)
    except ValueError:
        return False
    return True


def _served_by_fit(model: Any, run: Callable[[], Any]) -> _Queued | None:
    """Where another thread is fitting `model`: `run` queued for that fit, waited for and returned, DONE. None where
    no fit of another thread holds the model, or the fit ended before running it: take the lock as usual."""
    fit = model.__dict__.get("_fit")
    if fit is None or fit.thread is threading.current_thread():
        return None
    queued = _Queued(run)
    # this thread's own fit, if it waits in that fit's callback: it serves its own queue meanwhile (two fits whose
    # callbacks called each other's model waited for each other for good: a review's catch)
    rest = getattr(_calls, "resting", None)
    try:
        fit.waiting.append(queued)
        ended = None
        while not queued.finished.acquire(timeout=STALE_SECONDS if rest is None else REST_POLL_SECONDS):
            if rest is not None:
                rest()
            if model.__dict__.get("_fit") is fit:
                continue
            # the fit ended without sending it back (an interrupt cut its end short): withdrawn, it takes its turn;
            # taken out already and still unanswered a while later, it had begun on a thread that no longer runs it
            if _withdrawn(fit, queued):
                return None
            if ended is None:
                ended = time.monotonic()
            elif time.monotonic() - ended > STALE_SECONDS:
                raise also(InterruptedError, INTERRUPTED)
    except BaseException:
        _withdrawn(fit, queued)             # a Ctrl-C while waiting: not run, or its answer dropped
        raise
    return queued if queued.state == DONE else None


@contextlib.contextmanager
def resting(serve_here: Callable[[], Any]) -> Iterator[None]:
    """Around a fit's callback, on its thread: a call it makes on a model that another thread fits calls
    `serve_here()` (the fit's own serve) while it waits, so that two fits' callbacks calling each other's model
    answer each other."""
    before = getattr(_calls, "resting", None)
    _calls.resting = serve_here
    try:
        yield
    finally:
        _calls.resting = before


def begin_serving(model: Any) -> None:
    """At the start of a fit of `model` (on this thread, which holds its lock): other threads' served calls queue for
    serve() instead of waiting for the lock. VAE.fit ends it with end_serving, the marker cleared first."""
    model.__dict__["_fit"] = _Fit(threading.current_thread())


def end_serving(fit: _Fit | None) -> None:
    """After a fit whose marker was cleared: every call it did not run is told to take its turn (RETRY)."""
    while fit is not None:
        try:
            queued = fit.waiting.pop(0)
        except IndexError:
            return
        queued.finish(RETRY)


def waiting(model: Any) -> bool:
    """Whether calls of other threads wait to be served (a plain read: the fit asks between every chunk)."""
    fit = model.__dict__.get("_fit")
    return fit is not None and bool(fit.waiting)


def serve(model: Any) -> int:
    """On the fit's thread, between two steps: run the calls queued so far, oldest first, each handing its answer or
    exception back to its thread; those queued meanwhile wait for the next serve (a thread calling in a loop cannot
    hold the fit up). A Ctrl-C that stops this thread inside a call (a second one: KeyboardInterrupt) fails that call
    for its caller (InterruptedError) and goes on up the fit. Returns how many ran."""
    fit = model.__dict__.get("_fit")
    ran = 0
    for _ in range(len(fit.waiting) if fit is not None else 0):
        try:
            queued = fit.waiting.pop(0)
        except IndexError:                  # (withdrawn meanwhile by their callers)
            break
        outcome: tuple[Any, BaseException | None] | None = None     # (None: cut short, below)
        try:
            depth = getattr(_calls, "depth", 0)
            _calls.depth = 0                    # (the served call is its caller's outermost: see taking_turns)
            try:
                # the fit's own signals (but Ctrl-C) held back until the call's answer is in: a handler's exception
                # (a timeout's) is then the fit's, raised here after it, not the call's
                with held_signals():
                    try:
                        outcome = (queued.run(), None)
                    except Exception as e:  # noqa: BLE001 (handed to the caller: its mistake, not the fit's)
                        outcome = (None, e)
            finally:
                _calls.depth = depth
            ran += 1
        finally:
            queued.finish(DONE, *(outcome or (None, also(InterruptedError, INTERRUPTED))))
    return ran


# ---------------------------------------------------------------- fork

FORKED_BUSY = ("this model was in use by another thread of the parent process when this process was forked from it "
               "(a fit or an evaluation in progress), so its buffers here may be half-written; load a checkpoint in "
               "this process, fork before or after such calls, or start processes with 'spawn' or 'forkserver'")

_MODELS: weakref.WeakSet = weakref.WeakSet()     # every model whose lock taking_turns takes (register)


def register(model: Any) -> None:
    """`model` (with its `_lock`) is told apart in a forked child where another thread held it at the fork."""
    _MODELS.add(model)


def _after_fork_in_child() -> None:
    """A model whose lock a thread of the parent held at the fork (a fit or an evaluation running beside the thread
    that forked): the child has no such thread, so every call on the model waited forever for it (an embedder's
    trial: a Pool worker hung). Its buffers may be half-written, so its calls are refused in one line (FORKED_BUSY);
    a model the forking thread itself held (a fork from a fit's callback) is the child's thread's, as it was. The
    calls queued for a fit are of threads the child does not have: dropped."""
    for model in list(_MODELS):
        fit = model.__dict__.get("_fit")
        if fit is not None:
            if fit.thread is threading.current_thread():
                fit.waiting.clear()             # (the fit goes on here: its callers are not)
            else:
                # no such fit here: a call of this thread waiting for it (a signal handler's fork) withdraws and is
                # refused below in one line, as any call on the model is
                model.__dict__["_fit"] = None
        lock = model.__dict__.get("_lock")
        if lock is None:
            continue
        if lock.acquire(blocking=False):
            lock.release()
        else:
            object.__setattr__(model, "_lock", threading.RLock())
            object.__setattr__(model, "_forked_busy", True)


if hasattr(os, "register_at_fork"):         # (every POSIX Python; Windows has no fork)
    os.register_at_fork(after_in_child=_after_fork_in_child)
