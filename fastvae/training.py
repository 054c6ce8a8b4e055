"""The training loop: epochs of shuffled batches, the divergence guard, Ctrl-C, timing and each epoch's record.

VAE.fit checks its arguments and calls run_epochs; everything between two calls of the step lives here. The
loop works on the model's own state (its backend, step.State, workspace and training position: epoch,
epoch_step, epoch_loss), so a model stopped by Ctrl-C can be saved and resumed exactly where it stood.
"""
import contextlib
import os
import signal
import sys
import time

import numpy as np

from . import rng, step, threads, turns
from .constants import LOSS_CHECK_INTERVAL_DEVICE
from .errors import TrainingDiverged, TrainingInterrupted, UserError, signal_name
from .sigint import CtrlCHandled, KeptHandlerErrors, held_interrupts, held_signals

# Steps between updates of the progress bar: the device backends read the loss back at this rate, so the bar
# costs them nothing more.
PROGRESS_EVERY = LOSS_CHECK_INTERVAL_DEVICE

# What the bar says until this process's first steps on a backend are done: they load its kernels from Numba's
# cache, or compile them (9-21 s on the project's machines after an install); the bar sat at 0 without a word.
FIRST_STEPS_NOTE = "loading the kernels (compiled once after an install: up to 30 s)"
# (said on a line of its own where there is no bar; a bar's postfix has no room for it on an 80-column terminal)
FIRST_STEPS_STOP = "; Ctrl-C stops after them"
_first_steps_done: set[str] = set()               # the backends whose first steps this process has taken


def run_epochs(model, X, ws, epochs, validation=None, callback=None, progress=False, stop_event=None):
    """Train `model` for `epochs` epochs on the images X (already checked: uint8 or float (n, 784)) in the
    workspace `ws`, whose size is the batch size; return early once stop_event (VAE.fit's `stop`) is set. See
    VAE.fit for what the arguments mean and what it raises."""
    be, cfg = model.backend, model.config
    stepper = step.Stepper(be, cfg, model.state, ws, step.data_for(be, X))
    # the host backends' thread count (the workers', OpenBLAS's), sized to the CPUs available and adapted (threads.py)
    pacer = threads.pacer_for(model, ws, model.threads)
    stop = StopOnCtrlC(stop_event)
    try:
        _run_epochs(model, X, ws, epochs, validation, callback, progress, stepper, pacer, stop)
    finally:
        # again where a second signal handler's exception (a repeated timer's) cut the with statement's own exits
        # short: fit's handler was left on Ctrl-C (which it then swallowed), the BLAS counts held (both idempotent)
        stop.__exit__()
        if pacer:
            pacer.__exit__()


def _run_epochs(model, X, ws, epochs, validation, callback, progress, stepper, pacer, stop):
    cfg = model.config
    # NaN/Inf arising inside the kernels is reported once, by the divergence guard, not as NumPy warnings
    with stop, np.errstate(invalid="ignore", over="ignore", divide="ignore"), (pacer or contextlib.nullcontext()):
        stepper = pacer.wrap(stepper) if pacer else stepper
        for _ in range(epochs):
            if stop.asked():                    # (set before the fit, or by the last epoch's callback)
                return
            order = rng.epoch_permutation(cfg.seed, model.epoch, len(X))
            record = _epoch(model, stepper, order, ws, progress, stop, pacer)
            if record is None:                  # stopped inside the epoch by stop_event: no record, no callback
                return
            if pacer:
                record["threads"] = pacer.record()
            _serve_at_end(model, pacer, record)     # (queued during the epoch's last chunk: before the validation)
            if validation is not None:
                begin = time.perf_counter()
                record["test"] = model.evaluate(validation)
                # (not in the epoch's seconds: on a busy machine the pass at OpenBLAS's own threads took seconds
                # after a "0.8 s" epoch without a word, a new user's trial)
                record["test_seconds"] = time.perf_counter() - begin
            if progress and sys.stderr is not None and not on_terminal(sys.stderr):     # (a log: see _epoch)
                _tell(_epoch_line(record))
            if callback is not None:
                with turns.resting(lambda: _serve_at_end(model, pacer, record)):
                    callback(model, record)
            _serve_at_end(model, pacer, record)     # (queued during the validation or the callback)
            stop.kept.raise_kept()
            stop.check()


def _epoch(model, stepper, order, ws, progress, stop, pacer=None):
    """One epoch (or the rest of one stopped by Ctrl-C) over the shuffled `order`; returns its record, or None where
    the fit's stop event ended it early (the model consistent, at its step: the next fit goes on from there). Calls
    that other threads made on the model meanwhile run between two chunks of steps (_serve)."""
    be, n = model.backend, len(order)
    starts = range(0, n, ws.batch)
    # (every batch done but the epoch's end, which a stop cut short: a second Ctrl-C, a timeout's handler as the last
    # chunk ended: that end runs now, with the epoch's record; such an epoch went without one until 2026-12-07)
    if model.epoch_step > len(starts):
        raise UserError(f"this model stopped after batch {model.epoch_step} of epoch {model.epoch + 1}, but "
                        f"{n} images in batches of {ws.batch} make {len(starts)}; resume with the same data "
                        "and batch size")
    # a resumed epoch's bar starts at its step (tqdm's `initial`: counted in its rate, the steps before would not be)
    # a bar on a terminal only: in a file its redraws were carriage returns and no line stayed (fresh users' trials:
    # run_epochs writes a line per epoch there); none without stderr (pythonw, some services: tqdm raised)
    bar = _progress_bar(len(starts), f"epoch {model.epoch + 1}", model.epoch_step) \
        if progress and on_terminal(sys.stderr) else None
    ws.loss[...] = be.asarray(model.epoch_loss, dtype=np.float64)
    order = be.asarray(order, dtype=np.int64)
    check_every = be.loss_check_interval          # reading the loss waits for a device: not every step there
    compiled_before = getattr(stepper, "compile_seconds", 0.0)
    first, begin = model.epoch_step, time.perf_counter()
    full = n // ws.batch                    # the epoch's full batches (a short last one is stepped alone)
    loading = be.name not in _first_steps_done     # this process's first steps on the backend: kernels loaded
    first_steps = None
    served = 0.0                            # seconds of other threads' calls run between the steps (not the epoch's)
    if bar is not None and loading:
        bar.set_postfix_str(FIRST_STEPS_NOTE)
    elif progress and loading and sys.stderr is not None:
        # a log or a notebook (no bar): the first epoch's line came only after the compile, which a notebook's cell
        # sat through blank, its interrupt acting only at the first step's end (a notebook user's trial)
        _tell(f"epoch {model.epoch + 1}: {FIRST_STEPS_NOTE}{FIRST_STEPS_STOP}")
    k = first
    try:
        while k < len(starts):
            start = starts[k]
            # a program's own signal handlers run after the steps, at their boundary, not inside them: a timeout's
            # handler raising there left the model half updated and refused for good. SIGINT too: fit's first asks
            # for a stop at the boundary anyway, and a second one close behind it (Python's own handler by then)
            # raised in the chunk's bookkeeping, after its steps and before their count was kept, and the model was
            # refused for good (a review: 2 Ctrl-Cs 0.5 ms apart, 1 in 10-20 tries): now it stops the fit here
            with held_interrupts():
                try:
                    if k < full:
                        # up to the next multiple of PROGRESS_EVERY, so the bar (and a device's loss reads) stay where
                        # they were; a cpu backend runs them as one chunk (step_chunks), the others one step
                        done = stepper.many(order, k, min(full, (k // PROGRESS_EVERY + 1) * PROGRESS_EVERY) - k)
                    else:
                        stepper(order[start:start + ws.batch])
                        done = 1
                except BaseException:
                    # the update of a layer starts as soon as every row shard is done with it (fastvae.step), so a
                    # step that raised part-way may have updated some layers and not others
                    model._set(step_broken=True)
                    raise
                k += done
                model._set(epoch_step=k)
                if check_every == 1:                # (a host's loss: read for free; a device's is read below)
                    model._set(epoch_loss=np.array(be.to_host(ws.loss), dtype=np.float64))
            stop.kept.raise_kept()                  # (a handler's exception Python dropped meanwhile: here, between chunks)
            if loading and first_steps is None:
                be.synchronize()                    # (a device's steps end after their launches: counted whole)
                first_steps = time.perf_counter() - begin
            _first_steps_done.add(be.name)
            last = k == len(starts)
            # counted from the step's number, as the bar's updates are, so that on a device the reads are the bar's
            # (a chunk stops after the step whose loss is not finite: the host's check still names that step)
            if k // check_every != (k - done) // check_every or last:
                loss = be.to_host(ws.loss)
                if not np.all(np.isfinite(loss)):
                    _diverged(model, f"the loss became {float(loss.sum())}")
                if bar is not None and (k % PROGRESS_EVERY == 0 or last):
                    seen = min(k * ws.batch, n)
                    rate = (seen - starts[first]) / (time.perf_counter() - begin)
                    count = getattr(stepper, "threads", None)
                    bar.set_postfix_str(f"loss {float(loss.sum()) / seen:.2f}, {rate:,.0f} img/s"
                                        + (f", {count} thread{'s' * (count != 1)}" if count else ""))
                    bar.update(k - bar.n)
            if turns.waiting(model) and not last:
                took = _serve(model, pacer, ws.loss)
                served += took
                begin += took                   # (the epoch's seconds and the bar's rate: its steps' alone)
            if (stop.requested or stop.asked()) and not last:
                model._set(epoch_loss=np.array(be.to_host(ws.loss), dtype=np.float64))
                if bar is not None:
                    bar.close()
                stop.check()
                return None
    except BaseException:
        # left between two steps (a handler's exception, a second Ctrl-C there): the epoch's loss so far is kept
        # with its position, as a stop keeps it, so that the resumed epoch's record counts every step's loss (a
        # host's is kept with each chunk's position already, above: a second handler's exception here lost it)
        if not model.step_broken and not model.diverged and check_every != 1:
            with contextlib.suppress(Exception):
                model._set(epoch_loss=np.array(be.to_host(ws.loss), dtype=np.float64))
        if bar is not None:
            bar.close()                         # (what is said next starts a line of its own)
        raise
    be.synchronize()
    seconds = time.perf_counter() - begin
    if bar is not None:
        bar.close()
    if not np.all(np.isfinite(be.to_host(model.state.params))):
        _diverged(model, "a parameter became NaN or Inf")
    rec, kl = (float(t) / n for t in be.to_host(ws.loss))
    trained = n - starts[first] if first < len(starts) else 0
    # the backend and precision with every epoch: a resumed run may change them (--backend, --precision)
    record = {"epoch": model.epoch + 1, "steps": model.steps, "seconds": seconds, "images_per_s": trained / seconds,
              "backend": model.backend.name, "precision": model.precision,
              "train": {"reconstruction": rec, "kl": kl, "total": rec + kl}}
    # the epoch counted and its record in the history together (a handler's exception lands before or after both):
    # appended later, a timeout between the two left the epoch counted and without a record for good (a CI run);
    # what follows (threads, the validation's test loss, served seconds) goes into this same dict
    with held_signals():
        model._set(epoch=model.epoch + 1, epoch_step=0, epoch_loss=np.zeros(2))
        model.history.append(record)
    compiled = getattr(stepper, "compile_seconds", 0.0) - compiled_before
    if compiled > 0:                        # the first-call cost of the captured step, inside `seconds`
        record["replay_compile_seconds"] = compiled
    if first_steps is not None:             # the kernels' loading (or compiling, after an install), inside `seconds`
        record["first_steps_seconds"] = first_steps
    if served:
        record["served_seconds"] = served
    return record


def _serve_at_end(model, pacer, record):
    """At an epoch's end, the calls waiting (if any) served, and counted in the epoch's record (the same dict is in
    history: a new user's trial found 2 s of calls served there in no record)."""
    if turns.waiting(model):
        record["served_seconds"] = record.get("served_seconds", 0.0) + _serve(model, pacer)


def _serve(model, pacer, loss=None):
    """Run the calls other threads made on the model during the fit (fastvae.turns.serve), between two steps, the
    model as it stands: inside an epoch the running loss `loss` is committed first (what save() writes, as after a
    stop), the thread counts are as outside the fit (as for the validation pass: the same numbers as a call outside
    it) and the pacer's window starts again (the calls' time would read as slow steps). Returns their seconds."""
    begin = time.perf_counter()
    if loss is not None:
        model._set(epoch_loss=np.array(model.backend.to_host(loss), dtype=np.float64))
    if pacer:
        pacer.pause()
    turns.serve(model)
    return time.perf_counter() - begin


def _diverged(model, what):
    model._set(diverged=True)               # save() refuses from now on: a checkpoint saved before stands
    lr = model.config.lr
    where = f"training diverged at step {model.steps} (epoch {model.epoch + 1}): {what}"
    raise TrainingDiverged(f"{where}; lower the learning rate (now {lr:g}), e.g. VAE(..., lr={lr / 10:g})", where,
                           lr, step=model.steps, epoch=model.epoch + 1)


def on_terminal(stream):
    """Whether `stream` (sys.stderr) is a terminal a bar can be drawn on: False for a file, a pipe, None, a stand-in
    without isatty, or a terminal of no columns (a new pseudo-terminal is 0 x 0 until its size is set, as under
    `script` from a shell without one: tqdm drew nothing there, the first steps' note included, a new user's trial;
    such a terminal gets the lines a log gets)."""
    try:
        if not stream.isatty():
            return False
    except (AttributeError, ValueError, OSError):
        return False
    try:
        return os.get_terminal_size(stream.fileno()).columns > 0
    except (AttributeError, ValueError, OSError):
        return True                         # (a terminal whose size cannot be asked: tqdm's own default width)


def duration(seconds):
    """'2.49 s', or '4.2 ms' below a tenth of a second (a small data set's epochs said 'median 0.00 s')."""
    return f"{seconds:.2f} s" if seconds >= 0.1 else f"{1e3 * seconds:.1f} ms"


def _tell(line):
    """A progress line on stderr. A stderr that fails (closed, or a pipe whose reader went away: a service's log)
    loses the line, not the fit: its BrokenPipeError ended the fit after the epoch, the epoch's record lost and the
    callback not called (an embedder's trial)."""
    try:
        print(line, file=sys.stderr, flush=True)
    except (OSError, ValueError):       # (ValueError: a closed file)
        pass


def _epoch_line(record):
    """progress=True's line for an epoch where stderr is not a terminal (a log): what the bar shows, once."""
    train = record["train"]
    test = record.get("test")
    return (f"epoch {record['epoch']}: train loss {train['total']:.3f} per image"
            + (f", test {test['total']:.3f} (its pass {duration(record['test_seconds'])})" if test else "")
            + f", {duration(record['seconds'])}, {record['images_per_s']:,.0f} img/s"
            + (", loading the kernels included" if "first_steps_seconds" in record else ""))


def _progress_bar(total, desc, initial=0):
    from tqdm import tqdm                   # loaded only when a bar is shown
    return tqdm(total=total, desc=desc, unit="step", leave=False, dynamic_ncols=True, initial=initial)


# Signals besides SIGINT that stop a fit after its step as a first Ctrl-C does (also_stopping_on): the command line
# adds SIGTERM (plain `kill`'s, `timeout`'s, a batch scheduler's or `docker stop`'s) while it trains, whose default
# killed the run with its epoch lost; a fit in a user's program leaves SIGTERM to that program.
_also_stopping_on = ()


@contextlib.contextmanager
def also_stopping_on(*signals):
    """Fits inside the block stop cleanly after their step on each of `signals` too (TrainingInterrupted with that
    `signum`); a second one of them acts at once, as its default handler does."""
    global _also_stopping_on
    previous, _also_stopping_on = _also_stopping_on, tuple(signals)
    try:
        yield
    finally:
        _also_stopping_on = previous


class StopOnCtrlC(CtrlCHandled):
    """While training, the first Ctrl-C (or a signal of also_stopping_on) only asks to stop after the step (or chunk
    of steps) in progress (check() then raises TrainingInterrupted); a second one interrupts at once (Ctrl-C:
    KeyboardInterrupt; another signal: its default action)."""

    def __init__(self, event=None):
        super().__init__(also=_also_stopping_on)
        self.requested = None                  # the signal that asked, once one has
        self._event = event                    # VAE.fit's `stop`: ends the fit, which returns (no exception)
        self.kept = KeptHandlerErrors()        # a handler's exception Python dropped: raised between two chunks

    def __enter__(self):
        self.kept.__enter__()
        try:
            return super().__enter__()
        except BaseException:
            self.kept.__exit__()
            raise

    def __exit__(self, *exc):
        try:
            return super().__exit__(*exc)
        finally:
            self.kept.__exit__()

    def asked(self):
        return self._event is not None and bool(self._event.is_set())

    def _handle(self, signum, frame):
        if self.requested is not None:          # a second stop, of either kind (a Ctrl-C after a SIGTERM): at once
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)
            return
        self.requested = signum
        signal.signal(signum, signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL)

    def check(self):
        if self.requested is not None:
            raise TrainingInterrupted(f"training stopped cleanly after a step ({signal_name(self.requested)}); the "
                                      "model can be saved, or fit again to go on", self.requested)
