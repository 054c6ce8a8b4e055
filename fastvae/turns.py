"""One call at a time per model: the lock that fit, evaluate, encode, decode, ... and fastvae.evaluate's bounds take
(they share the model's buffers and weights), the turns a fit hands to other threads' calls between its epochs, the
one-line MemoryError of the call the user made, and a forked child's models that a thread of its parent held."""
from __future__ import annotations

import functools
import inspect
import os
import threading
import weakref
from typing import Any, Callable, ParamSpec, TypeVar

from .errors import UserError, also, one_line

_P = ParamSpec("_P")
_R = TypeVar("_R")

_calls = threading.local()      # how deep this thread is in the model's calls that take turns


POLL_SECONDS = 0.05    # how often a waiter looks again without a notice (a call interrupted while it waited sends none)


class Turns:
    """A model's lock (an RLock: its calls call each other), and the turns a fit hands over between epochs: the calls
    of other threads that were waiting when an epoch ended (not fits) run then, and the fit goes on once they are
    done; a call that comes while they run waits for the next epoch's end (a thread calling the model in a loop held
    the fit back for good: a new user's trial)."""

    def __init__(self):
        self.lock = threading.RLock()
        self.turn = threading.Condition(self.lock)
        self.handing_over = False       # a fit's epoch end: the calls with tickets below `limit` run now
        self.limit = 0
        self.pending: set[int] = set()  # the tickets of other threads' calls not yet done (under _count)
        self._issued = 0
        self._count = threading.Lock()

    def _ticket(self) -> int:
        with self._count:
            ticket, self._issued = self._issued, self._issued + 1
            self.pending.add(ticket)
            return ticket

    def _done(self, ticket: int | None) -> None:
        if ticket is not None:
            with self._count:
                self.pending.discard(ticket)

    def admitted(self) -> bool:
        """Whether a call admitted to the hand-over in progress is not done yet."""
        with self._count:
            return any(t < self.limit for t in self.pending)

    def enter(self, between_epochs: bool) -> int | None:
        """Takes the lock for a call (its ticket back, or None): at once for a call inside a call of this thread;
        else after the call in progress, or, during another thread's fit, at the end of its epoch where
        `between_epochs` (counted before it waits: hand_over waits for it), after the whole fit otherwise."""
        if self.lock._is_owned():  # type: ignore[attr-defined]  # (a call inside one of this thread's)
            self.lock.acquire()
            return None
        ticket = None
        if between_epochs and not self.lock.acquire(blocking=False):
            ticket = self._ticket()
            try:
                self.lock.acquire()
            except BaseException:       # (Ctrl-C while it waited: the fit must not wait for it)
                self._done(ticket)
                raise
        elif not between_epochs:
            self.lock.acquire()
        elif self.handing_over:         # free only because a fit hands over to calls that came before this one
            ticket = self._ticket()
        try:
            # during a hand-over only the calls it admitted run: a later call, and a fit, wait
            while self.handing_over and (ticket is None or ticket >= self.limit):
                self.turn.wait(POLL_SECONDS)
        except BaseException:
            self._done(ticket)
            self.lock.release()
            raise
        return ticket

    def leave(self, ticket: int | None) -> None:
        self._done(ticket)
        self.turn.notify_all()          # (a fit handing over waits for its admitted calls; a fit waits for a fit)
        self.lock.release()


def hand_over(model: Any) -> None:
    """At the end of a fit's epoch (the model consistent, its record made, the callback done): the calls other threads
    made on the model meanwhile (evaluate, encode, decode, sample, save, the IWAE bound: not a fit, which waits for the
    whole fit) run now, one after another, and the fit goes on once they are done. An encode from another thread
    during a fit of many epochs waited for the whole fit (a notebook user's trial); now for the epoch in progress."""
    turns = model.__dict__.get("_turns")
    if turns is None or not turns.pending:
        return
    with turns.turn:                    # (the fit's thread holds the lock already: this is one level more)
        with turns._count:
            turns.limit = turns._issued
        turns.handing_over = True
        turns.turn.notify_all()         # (calls that came during the last hand-over: their turn now)
        try:
            while turns.admitted():
                turns.turn.wait(POLL_SECONDS)   # the lock released, whatever its depth
        finally:
            turns.handing_over = False
            turns.turn.notify_all()


def taking_turns(hint: str, between_epochs: bool = True) -> Callable[[Callable[_P, _R]], Callable[_P, _R]]:
    """A decorator for a call whose first argument is a model (a method's self, or iwae_bound's model, by position
    or by name): the model's lock is held for the whole call, a call from another thread waiting for the one in
    progress (they share the buffers: two evaluations at once gave wrong numbers; a fit between iwae_bound's encode
    and its decodes gave a bound of neither model), or, during another thread's fit, for the end of its epoch where
    `between_epochs` (hand_over: all but fit). Separate models run at once. A first argument without the lock (not a
    model) is passed through, for the call's own check to refuse. A MemoryError is named once, by the outermost
    call, with `hint` (what to ask for instead); a call that does not fit the signature is a UserError too. Typed
    (ParamSpec), so that a type checker still sees each call's signature."""
    def decorator(method: Callable[_P, _R]) -> Callable[_P, _R]:
        signature = inspect.signature(method)
        name = method.__qualname__
        first = next(iter(signature.parameters))

        @functools.wraps(method)
        def locked(*args: _P.args, **kw: _P.kwargs) -> _R:
            # the model by position or by name (iwae_bound(model=m, ...) ran without it held: a review's catch)
            model = args[0] if args else kw.get(first)
            turns = getattr(model, "_turns", None)
            if not isinstance(turns, Turns):
                return method(*args, **kw)
            if getattr(model, "_forked_busy", False):
                raise UserError(FORKED_BUSY)
            depth = getattr(_calls, "depth", 0)
            ticket = turns.enter(between_epochs)
            try:
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
            finally:
                turns.leave(ticket)
        return locked
    return decorator



# ---------------------------------------------------------------- fork

FORKED_BUSY = ("this model was in use by another thread of the parent process when this process was forked from it "
               "(a fit or an evaluation in progress), so its buffers here may be half-written; load a checkpoint in "
               "this process, fork before or after such calls, or start processes with 'spawn' or 'forkserver'")

_MODELS: weakref.WeakSet = weakref.WeakSet()     # every model whose lock taking_turns takes (register)


def register(model: Any) -> None:
    """`model` (with its `_turns`) is told apart in a forked child where another thread held it at the fork."""
    _MODELS.add(model)


def _after_fork_in_child() -> None:
    """A model whose lock a thread of the parent held at the fork (a fit or an evaluation running beside the thread
    that forked): the child has no such thread, so every call on the model waited forever for it (an embedder's
    trial: a Pool worker hung). Its buffers may be half-written, so its calls are refused in one line (FORKED_BUSY);
    a model the forking thread itself held (a fork from a fit's callback) is the child's thread's, as it was."""
    for model in list(_MODELS):
        turns = model.__dict__.get("_turns")
        if turns is None:
            continue
        if turns.lock.acquire(blocking=False):
            turns.lock.release()
            turns._count = threading.Lock()     # (another thread may have held it at the fork)
            turns.pending = set()               # (the waiting threads are not in the child, nor a fit of
            turns.handing_over = False          # another thread handing over: the forking thread ran in its turn)
            turns.turn = threading.Condition(turns.lock)
        else:
            object.__setattr__(model, "_turns", Turns())
            object.__setattr__(model, "_forked_busy", True)


if hasattr(os, "register_at_fork"):         # (every POSIX Python; Windows has no fork)
    os.register_at_fork(after_in_child=_after_fork_in_child)
