"""One call at a time per model: the lock that fit, evaluate, encode, decode, ... and fastvae.evaluate's bounds take
(they share the model's buffers and weights), the one-line MemoryError of the call the user made, and a forked
child's models that a thread of its parent held."""
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


def taking_turns(hint: str) -> Callable[[Callable[_P, _R]], Callable[_P, _R]]:
    """A decorator for a call whose first argument is a model (a method's self, or iwae_bound's model, by position
    or by name): the model's lock is held for the whole call, a call from another thread waiting for the one in
    progress (they share the buffers: two evaluations at once gave wrong numbers; a fit between iwae_bound's encode
    and its decodes gave a bound of neither model). Separate models run at once. A first argument without the lock
    (not a model) is passed through, for the call's own check to refuse. A MemoryError is named once, by the
    outermost call, with `hint` (what to ask for instead); a call that does not fit the signature is a UserError too.
    Typed (ParamSpec), so that a type checker still sees each call's signature."""
    def decorator(method: Callable[_P, _R]) -> Callable[_P, _R]:
        signature = inspect.signature(method)
        name = method.__qualname__
        first = next(iter(signature.parameters))

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
            with lock:
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
        return locked
    return decorator



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
    a model the forking thread itself held (a fork from a fit's callback) is the child's thread's, as it was."""
    for model in list(_MODELS):
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
