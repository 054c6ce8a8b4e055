"""The public VAE class: fit, encode, decode, sample, reconstruct, evaluate, save and load.

It only configures and delegates: fastvae.training runs the epochs, the step (fastvae.step) composes the
backend's kernels, and the backend owns the arrays.
"""
from __future__ import annotations

import dataclasses
import inspect
import math
import os
import threading
from collections.abc import Iterator
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol, Sequence, cast

import numpy as np
from numpy.typing import ArrayLike

from . import checkpoint, inference, rng, step, training, turns
from .backends import get_backend, precision_of, resolve
from .config import Config, flag, integer, seed_value
from .constants import COUNTERS, EVAL_ROWS, INFERENCE_WORKSPACE_KEPT, SIGMA_SMOOTHING
from .data import as_images, as_rows, check_width
from .errors import UserError, also
from .params import Layout, he_init
from .threads import check as check_threads, detect as detect_threads
from .turns import taking_turns

if TYPE_CHECKING:
    from .backends.contract import Backend


# What fit's `stop` and an open file given to save/load need, for type checkers (a threading.Event, a
# gzip.GzipFile or a cloud store's stream: what the docstrings promise, which typing.BinaryIO did not take)
class Stop(Protocol):
    def is_set(self) -> bool: ...


class Writable(Protocol):
    def write(self, data: bytes, /) -> Any: ...


class Readable(Protocol):
    def read(self, size: int = ..., /) -> bytes: ...


# one call at a time per model (fastvae.turns): its buffers are shared; a call from another thread during a fit is
# run by that fit between its steps (fastvae.turns.serve); a fit from another thread waits for the one in progress
_one_at_a_time = taking_turns("ask for fewer rows at a time")
_one_fit_at_a_time = taking_turns("ask for fewer rows at a time", served=False)


class VAE:
    """The VAE of Géron's Hands-On ML (1st ed., ch. 15): d -> hidden -> (mu, logvar) -> z -> hidden reversed -> d
    (d: the data's width, MNIST's 784).

    `backend` is "auto" (gpu when usable, else cpu), "cpu", "gpu", "reference" (float64 NumPy, slow) or "cpu-bf16".
    `precision` is "fp32" or "bf16": the matrix products' operands rounded to bf16, fp32 sums, fp32 master weights
    and Adam moments (backend "cpu" or "auto" without a GPU runs as "cpu-bf16": on AMX tiles, or with AVX512-BF16
    where there is no AMX). None (default) is the backend's own: fp32, bf16 for "cpu-bf16". bf16 where the CPU has
    neither: `notify` hears one line and the model computes in fp32. bf16 on "gpu" (or "auto" that finds one) or
    "reference", and "fp32" with "cpu-bf16", raise UserError. `model.precision` is the precision in use;
    fastvae.backends.resolve holds these rules.
    `encoder` is "gamma" (the heads output logvar = log sigma^2, the seed's final form) or "sigma";
    `reconstruction` "xent" (sigmoid cross-entropy) or "mse"; `activation` the hidden layers' "elu" (the seed's),
    "relu" or "tanh". `notify(message)` hears which backend "auto" chose and why (and, once, that the kernels found no
    BLAS to call: fastvae.backends.cpu_blas). `**settings`: any other field of fastvae.Config by name, with its range
    there: Adam's beta1, beta2, adam_eps, and epochs (fit's default), input_width and image_shape (else taken from
    the first fit's data). The loss is the negative ELBO of Kingma & Welling (2014): the reconstruction's negative log
    likelihood plus KL(N(mu, exp(logvar)) || N(0, I)) = 1/2 sum (exp(logvar) + mu^2 - 1 - logvar) (their appendix
    B), in nats per image; weights are He-initialised (He et al. 2015: normal, variance 2 / fan_in; biases 0).
    `threads` (host backends): how many threads a training step runs on. The cpu backend splits each batch into
    that many row shards (at most one per 32 rows) on its own threads, OpenBLAS at one thread each (fastvae.workers).
    None/"auto" sizes the count to the CPUs this process may use (affinity mask, cgroup quota) and adapts it while
    training when other work takes cores (fastvae.threads); a whole number fixes it (needed for bit-identical
    reruns: the row shards follow the count, and the last bits of some sums (the loss's at least) follow the shards;
    a count the pacer changed carries into a resumed or later fit); a whole number above the CPUs this process may
    use runs as that many (more would only take turns on them: `notify` hears it, `history`'s "threads" records the
    count that ran, and the bits are that count's). evaluate, encode and decode share their rows' chunks between
    that many threads (for "auto": the CPUs this process may use, not adapted; the cpu backends, whose bits are then
    the same at every count: fastvae.inference).
    `model.threads` (the count asked for) can be changed between fits.
    Arrays in and out are NumPy: images (n, h, w) or rows (n, d), uint8 or floats in [0, 1]. A new model takes its
    input width d (and image shape) from the data it is first fitted on (MNIST's 784 = 28 x 28 until then); every
    later call must match it, and decode/sample/reconstruct return rows (n, d): `.reshape(-1, *image_shape)`.
    A bad setting raises UserError (one line).

    Attributes: `config` (fastvae.Config: every setting; Adam's and `epochs` may be changed between fits with
    dataclasses.replace), `threads`, `history` (one dict per epoch fitted in this process: see fit), `epoch` and
    `steps` (the training position), `epoch_step` (batches done in an epoch a stop ended early; 0 at an epoch's end),
    `precision`, `backend`, `input_width`, `image_shape`, `diverged`; the state is read-only, and setting an attribute
    a model does not have raises UserError (an AttributeError too).
    """

    # What a model holds, for type checkers and readers (set in _set_up and by training through _set)
    config: Config
    if TYPE_CHECKING:       # a plain attribute, checked as it is set (__setattr__): None or "auto" is read as None
        @property
        def threads(self) -> int | None: ...
        @threads.setter
        def threads(self, value: int | str | None) -> None: ...
    backend: Backend
    layout: Layout
    state: step.State
    history: list[dict[str, Any]]
    epoch: int
    epoch_step: int
    epoch_loss: np.ndarray
    diverged: bool
    step_broken: bool

    # The attributes a user may set: `threads`, and `config` for a training setting (checked as they are set). The
    # model's state (set by fastvae's own code through _set) can be read, not set; others are refused, not kept (a
    # typo, or a setting such as `model.lr = 0.01`, would otherwise be stored and change nothing).
    _STATE = frozenset({"backend", "layout", "state", "epoch", "epoch_step", "epoch_loss", "diverged", "step_broken",
                        "history"})
    # the config's fields fixed once the model is made: the architecture, the seed (its noise and shuffles: the
    # state holds it), and batch_size (part of the training position: fit(batch_size=...) changes it, by its rules)
    _FIXED = ("hidden", "latent", "input_width", "image_shape", "encoder", "reconstruction", "activation", "seed",
              "batch_size")

    def __setattr__(self, name, value):
        if name in ("threads", "config") and self.__dict__.get("_fitting"):
            # (from the fit's callback or another thread) the fit runs at the settings it started with: a change was
            # kept and ignored, then saved as if it had trained (a fresh user's trial)
            raise UserError(f"model.{name} cannot change while fit runs: the fit in progress keeps the settings it "
                            "started with; change it between fits (fit one epoch at a time: for _ in range(n): "
                            "model.fit(X, epochs=1)), or stop the fit (fit(..., stop=event)) and fit again")
        if name == "threads":
            value = check_threads(value)
        elif name == "config" and "config" in self.__dict__:
            value = self._checked_config(value)
        elif name in self._STATE or (isinstance(getattr(type(self), name, None), property)
                                     and getattr(type(self), name).fset is None):
            raise also(AttributeError, f"model.{name} is the model's own state: it can be read, not set (make or "
                       "load another model instead)")
        elif not (name.startswith("_") or name == "config" or hasattr(type(self), name) or _subclass(type(self))):
            # (a subclass keeps what it sets)
            setting = name in {f.name for f in dataclasses.fields(Config)}
            raise also(AttributeError, f"VAE has no attribute {name!r} to set" + (
                f": {name} is a setting in model.config (model.config = dataclasses.replace(model.config, "
                f"{name}=...) for a training setting)" if setting else
                "; model.threads and model.config may be set"))
        object.__setattr__(self, name, value)

    def __delattr__(self, name):
        if name not in self.__dict__:
            raise also(AttributeError, f"VAE has no attribute {name!r} to delete")
        raise also(AttributeError, f"model.{name} cannot be deleted (a model without it would fail later); make or "
                                   "load another model instead")

    def _set(self, **values):
        """The model's state, set by fastvae's own code (training, loading)."""
        for name, value in values.items():
            object.__setattr__(self, name, value)

    def _checked_config(self, cfg):
        """A config the user sets: a fastvae.Config (the constructor's checks ran) that keeps the model's _FIXED
        fields; Adam's settings (lr, beta1, beta2, adam_eps) and epochs may change between fits."""
        if not isinstance(cfg, Config):
            raise UserError(f"model.config must be a fastvae.Config, not {type(cfg).__name__}; change a setting with "
                            "model.config = dataclasses.replace(model.config, lr=...)")
        moved = [f for f in self._FIXED if getattr(cfg, f) != getattr(self.config, f)]
        if moved:
            how = "fit(X, batch_size=...) changes it" if moved[0] == "batch_size" else "make a new VAE for another"
            raise UserError(f"model.config cannot change the model's {moved[0]} ({getattr(self.config, moved[0])!r} "
                            f"to {getattr(cfg, moved[0])!r}): only lr, beta1, beta2, adam_eps and epochs may "
                            f"change; {how}")
        return cfg

    def __init__(self, hidden: Sequence[int] = (500, 500), latent: int = 20, backend: str = "auto",
                 seed: int = 0, lr: float = 0.001, batch_size: int = 150, encoder: str = "gamma",
                 reconstruction: str = "xent", notify: Callable[[str], None] | None = None,
                 activation: str = "elu", threads: int | str | None = None, precision: str | None = None,
                 **adam: Any):
        # activation, threads, precision last: positional calls still work
        self.threads = threads      # (checked as it is set) not part of the config: the machine's, not the model's
        _check_notify(notify)
        unknown = sorted(set(adam) - {f.name for f in dataclasses.fields(Config)})
        if unknown:
            raise also(TypeError, f"VAE has no setting {unknown[0]!r}; its settings are its arguments and the other "
                       "fields of fastvae.Config (Adam's beta1, beta2 and adam_eps; epochs, input_width, image_shape)")
        self.config = Config(hidden=hidden, latent=latent, seed=seed, lr=lr, batch_size=batch_size,
                             encoder=encoder, reconstruction=reconstruction, activation=activation, **adam)
        try:
            self._set_up(resolve(backend, precision, notify), he_init(Layout(self.config), self.config.seed), notify)
        except MemoryError:
            raise also(MemoryError, f"VAE(): not enough memory for a model of {Layout(self.config).size:,} "
                       f"parameters (hidden={self.config.hidden}); choose smaller layers") from None

    def _set_up(self, backend, params, notify, m=None, v=None, step_count=0, epoch=0, epoch_step=0,
                epoch_loss=None):
        be = get_backend(backend, notify=notify)
        layout = Layout(self.config)
        self._set(
            backend=be, layout=layout,
            state=step.State(be, layout, params, self.config.seed, m=m, v=v, step=step_count),
            epoch=epoch,                        # epochs completed; the next epoch's shuffle depends on it
            epoch_step=epoch_step,              # batches done in the epoch in progress (after a Ctrl-C)
            epoch_loss=np.zeros(2) if epoch_loss is None else np.asarray(epoch_loss, np.float64),
            diverged=False,                     # set when training produced NaN or Inf: never save such a model
            step_broken=False,                  # set when a step raised part-way (its update may be half done):
                                                # never save such a model either
            history=[])                         # one dict per epoch fitted in this process
        self._ws = None
        self._ws_inference = None
        if not hasattr(self, "_lock"):
            self._lock = threading.RLock()      # (_one_at_a_time)
            turns.register(self)                # (a fork while another thread holds it: fastvae.turns)
        _say_if_fewer_threads_run(self.threads, be, notify)

    # ------------------------------------------------------------------ training

    @property
    def steps(self) -> int:
        """Training steps taken so far (Adam's t; also the noise counter of the next step)."""
        return int(self.backend.to_host(self.state.counters)[1])

    @property
    def precision(self) -> str:
        """The precision the model computes in: "fp32", "bf16" (the products' operands; weights, gradients and
        Adam's moments stay fp32) or "fp64" (the reference backend). Not saved, as the backend is not: bf16 rounds
        only the products' operands, so a checkpoint's weights are fp32 whatever trained them and load at either."""
        return precision_of(self.backend)

    @_one_fit_at_a_time
    def fit(self, X: ArrayLike, epochs: int | None = None, batch_size: int | None = None,
            validation: ArrayLike | None = None, callback: Callable[[VAE, dict[str, Any]], None] | None = None,
            progress: bool = False, stop: Stop | None = None) -> VAE:
        """Train for `epochs` more epochs (default: the config's, the seed's 50) on images X: (n, h, w) or rows (n, d)
        of the model's width (a new model takes it from X), uint8 0..255 (an array whose largest value is 1 is
        refused: binarized images read as 0..255) or floats in [0, 1]; reshuffled every epoch as a
        function of (seed, epoch); batch_size defaults to the config's (150) and becomes the config's (it is part
        of the training position that save() keeps). Returns self.

        validation: optional test images, evaluated after each epoch. callback(model, record) runs after each
        epoch with that epoch's record (also appended to self.history): {"epoch", "steps" (the model's steps
        in all, as model.steps, not the epoch's own), "seconds", "images_per_s", "backend", "precision", "train":
        losses ({"reconstruction", "kl", "total"}: means per image in nats, the negative ELBO and its two terms),
        "test": losses (with validation; absent where a stop or an exception cut that pass short: the epoch and its
        record count already), "test_seconds" (that pass's, not in "seconds"), "threads" (host backends:
        the count and the pacer's changes),
        "replay_compile_seconds" (an epoch that compiled the captured step's replays, inside its seconds),
        "first_steps_seconds" (the epoch of this process's first steps on its backend: the seconds of their first
        call, which loads the kernels from Numba's cache or, after an install, compiles them, 10-30 s; inside its
        seconds), "served_seconds" (an epoch during or at the end of which the fit ran other threads' calls on the
        model, below: their seconds, not in its seconds)}; an exception it raises comes out of fit as it is, after the
        epoch has counted (the model stays consistent). progress: a tqdm progress bar on stderr where it is a
        terminal, else (a log file, a pipe) one line there per epoch.
        stop: a threading.Event (or anything with is_set()) that ends the fit early when set, from another thread, a
        signal handler or the callback: fit returns after the step in progress (on the cpu backend, the chunk of at
        most 25 steps), the model consistent (model.epoch_step says where inside an epoch; a later fit goes on from
        there), with no record for a part epoch; already set, fit returns at once. The way to stop a fit running in
        a thread other than the main one, or where the program handles SIGINT itself (fit then leaves Ctrl-C to it).
        A model stopped in the middle of an epoch (Ctrl-C) finishes that epoch first, as one of `epochs`, in
        the batch size it started with (another one is refused until the next epoch).
        Calls on this model from other threads meanwhile (encode, sample, evaluate, save, ...; another fit waits) are
        run by the fit on its own thread between two chunks of steps (at most 25 steps apart on the cpu backend) and
        at each epoch's end, the model as it stands after a step, and answer there and then (fastvae.turns); they
        change none of the fit's numbers, and the fit's steps (and its `stop`) wait while one runs.
        Raises UserError for bad arguments or images; TrainingInterrupted on Ctrl-C (a fit in the main thread,
        where SIGINT has Python's default handler: a handler of the program's own is left alone), after the step in
        progress (on the cpu backend, after the chunk of at most 25 steps in progress: fastvae.step_chunks),
        leaving the model consistent (save it to resume); TrainingDiverged naming the step when the
        loss or a parameter becomes NaN or Inf (the model then refuses to be saved or trained further). A model
        whose step raised part-way (a second Ctrl-C) refuses both fit and save (UserError): load the last
        checkpoint.
        """
        cfg = self.config
        if self.diverged:
            raise UserError(f"this model diverged (NaN or Inf at step {self.steps}): it is not trained further; load "
                            f"the last checkpoint, or start a new model with a lower learning rate (now {cfg.lr:g})")
        if self.__dict__.get("_fitting"):     # (only this thread can be inside: the others wait for the lock)
            # a fit from the callback of a fit of the same model: it trained in its own batch size and the outer one
            # went on in its, a stopped epoch then finished in the inner one's (an embedder's trial)
            raise UserError("fit cannot be called while this model's fit runs (from its callback): return from the "
                            "callback, and fit again after it; a stop=event set in the callback ends the fit early")
        if self.step_broken:
            raise UserError("a training step of this model stopped part-way (a second Ctrl-C, or an error inside the "
                            "step), so some of its layers were updated and others not: it is not trained further; "
                            "load the last checkpoint to go on")
        given: Any = epochs
        if np.ndim(given) > 0:               # fit(X, y), Keras's way: "epochs must be a whole number, got array(...)"
            raise UserError("fit takes images only, no labels (a VAE learns without them): fit(X, epochs=...); the "
                            f"second argument is the number of epochs, got an array of shape {np.shape(given)}")
        # 0 trains nothing (fit(X, epochs=target - model.epoch) once the target is reached: a fresh user's trial)
        epochs = cfg.epochs if epochs is None else integer(epochs, "epochs", low=0, what="a whole number >= 0")
        batch_size = cfg.batch_size if batch_size is None else integer(batch_size, "batch_size")
        if self.epoch_step and batch_size != cfg.batch_size:
            raise UserError(f"this model stopped after batch {self.epoch_step} of epoch {self.epoch + 1}, in batches "
                            f"of batch size {cfg.batch_size}; finish that epoch with it (batch_size="
                            f"{cfg.batch_size}), another batch size can start at the next epoch")
        if callback is not None and not callable(callback):
            raise UserError(f"callback must be a function of (model, record), not {type(callback).__name__}")
        if callback is not None:                # one that cannot take them failed after a whole epoch (a trial)
            try:
                signature = inspect.signature(callback)
            except (TypeError, ValueError):     # (no signature to read, as some builtins: called as it is)
                signature = None
            if signature is not None:
                try:
                    signature.bind(self, {})
                except TypeError:
                    raise UserError(f"callback must take two arguments, (model, record); it takes "
                                    f"{signature}") from None
        progress = flag(progress, "progress")
        if stop is not None and not callable(getattr(stop, "is_set", None)):
            raise UserError(f"stop must be a threading.Event (anything with is_set()), not {type(stop).__name__}")
        if stop is not None and stop.is_set():  # at once, the model as it was (a new one took X's width: a trial)
            return self
        before = self.config
        X = self._adopt_width(X)
        try:
            if batch_size > len(X):
                raise UserError(f"batch_size {batch_size} is larger than the {len(X)} training images; "
                                f"use a batch size of at most {len(X)}")
            if validation is not None:
                # (checked against the width this fit's X gave: "fit it on such data first" does not apply)
                validation = self._images(validation, "validation", unfitted=False)
        except UserError:
            self._undo_width(before)            # a refused fit leaves the model as it was (a fresh user's trial)
            raise
        # the batch size is part of the training position: saved with the model, the default of the next fit
        self._set(config=dataclasses.replace(self.config, batch_size=batch_size))
        # (the flags set and cleared by plain stores, and the marker taken inside one call: a signal handler's
        # exception comes only at a call, and one there left the model refusing fit for good: a review's storm)
        try:
            self.__dict__["_fitting"] = True
            turns.begin_serving(self)           # other threads' calls meanwhile: run between the steps
            training.run_epochs(self, X, self._workspace(batch_size), epochs, validation, callback, progress, stop)
        finally:
            self.__dict__["_fitting"] = False
            # calls stop queueing for this fit however it ends; those it did not run take their turns
            turns.end_serving(self.__dict__.pop("_fit", None))
        return self

    @property
    def input_width(self) -> int:
        """d: the values per row the model takes and reconstructs."""
        return self.config.input_width

    @property
    def image_shape(self) -> tuple[int, int] | None:
        """(h, w) of the model's images, or None for feature rows."""
        return self.config.image_shape

    def _images(self, X: ArrayLike, what: str, empty: bool = False, unfitted: bool | None = None) -> np.ndarray:
        """X as rows of the model's width (and image shape), or a one-line UserError; `empty`: no rows taken;
        `unfitted` (default: whether the model has trained) says so in the message, and how its width is set."""
        if unfitted is None:
            unfitted = self.steps == 0 and self.epoch == 0 and self.epoch_step == 0
        return as_images(X, what, self.config.input_width, self.config.image_shape, empty, unfitted)

    def _adopt_width(self, X: ArrayLike, image_shape: tuple[int, int] | None = None,
                     rows: bool = False) -> np.ndarray:
        """X as rows; a model that has not trained yet takes its width and image shape (X's (h, w), or
        `image_shape` for rows of images, or none where `rows`: a data set of feature rows, whose width may be the
        default's 784: such rows were drawn as 28 x 28 images, a researcher's trial) from X (new He-initialised
        parameters for that width), a trained one refuses another width."""
        flat, found = as_rows(X, "X")
        shape = found if image_shape is None else cast(tuple[int, int], tuple(image_shape))     # (Config checks it)
        cfg = self.config
        untrained = self.steps == 0 and self.epoch == 0 and self.epoch_step == 0
        if untrained and flat.shape[1] != cfg.input_width:
            self._set(config=dataclasses.replace(cfg, input_width=flat.shape[1], image_shape=shape))
            self._set_up(self.backend, he_init(Layout(self.config), self.config.seed), None)
        elif untrained and shape is not None and shape != cfg.image_shape:
            self._set(config=dataclasses.replace(cfg, image_shape=shape))     # same width, other (h, w)
        elif untrained and rows and shape is None and cfg.image_shape is not None:
            self._set(config=dataclasses.replace(cfg, image_shape=None))      # feature rows of the default's width
        check_width(flat, shape, np.shape(X), "X", self.config.input_width, self.config.image_shape)
        return flat

    def _undo_width(self, before):
        """An untrained model that _adopt_width() moved to another width or image shape goes back to `before`'s:
        its He-initialised parameters are a function of its config, so they are the same bits again."""
        if self.config is before:
            return
        moved = self.config.input_width != before.input_width
        self._set(config=before)
        if moved:
            self._set_up(self.backend, he_init(Layout(before), before.seed), None)

    def _workspace(self, batch):
        if self._ws is None or self._ws.batch != batch:
            self._ws = step.Workspace(self.backend, self.config, batch)
        return self._ws

    # ------------------------------------------------------------------ inference

    @_one_at_a_time
    def evaluate(self, X: ArrayLike) -> dict[str, float]:
        """The mean loss per image on images X, in nats: {"reconstruction", "kl", "total"} (the negative ELBO,
        one sample per image; the noise of X[i] is a function of (seed, i) alone, whatever the batch size, so the
        same model always gets the same numbers). With reconstruction "mse" the reconstruction is the training loss,
        sum (p - x)^2: -log N(x; p, 1/2) less (d / 2) log(pi) (fastvae.evaluate.evaluate_model adds it).
        Raises UserError for bad images, and for a model that diverged."""
        self._refuse_if_diverged()
        X = self._images(X, "X")
        be, cfg, weights = self.backend, self.config, self.state.weights
        data, idx = step.data_for(be, X), be.asarray(np.arange(len(X)), dtype=np.int64)
        chunks = -(-len(X) // EVAL_ROWS)    # EVAL_ROWS, not the training batch: see step.evaluate_chunk
        losses = be.zeros((chunks, 2), dtype=np.float64)        # each chunk's (reconstruction, KL)
        counters = be.zeros((chunks, COUNTERS), dtype=np.int64)

        def chunk(a, rows, j):
            step.evaluate_chunk(be, cfg, weights, a, data, idx[rows], cfg.seed, j, losses[j], counters[j])
        self._in_chunks(len(X), EVAL_ROWS, chunk)
        rec = kl = 0.0
        for r, k in be.to_host(losses).tolist():   # in the chunks' order, as one thread adds them
            rec, kl = rec + r, kl + k
        rec, kl = rec / len(X), kl / len(X)
        if not math.isfinite(rec + kl):     # (a NaN came back without a word: a numerics review's extreme checkpoint)
            raise UserError(f"the loss on these images is not finite (reconstruction {rec:g}, KL {kl:g}): the model's "
                            f"values overflow {np.dtype(be.dtype).name} on them (extreme weights?); the reference "
                            "backend computes in float64")
        return {"reconstruction": rec, "kl": kl, "total": rec + kl}

    @_one_at_a_time
    def encode(self, X: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
        """(mu, logvar) of q(z | x) for images X (n, d) or (n, h, w) of the fitted width: float32 (n, latent) each, with
        logvar = log sigma^2 (the seed's gamma). A model with the sigma encoder reports
        logvar = log(1e-10 + sigma^2), the smoothed form its KL term uses. Raises UserError for bad images, and for a
        model that diverged."""
        self._refuse_if_diverged()
        X = self._images(X, "X", empty=True)
        be, latent = self.backend, self.config.latent
        data = step.data_for(be, X)
        mu_logvar = np.empty((len(X), 2 * latent), dtype=np.float32)

        def chunk(a, rows, _):
            be.gather_batch(a.x, data, be.asarray(np.arange(rows.start, rows.stop), dtype=np.int64))
            step.encode(be, self.config, self.state.weights, a)
            mu_logvar[rows] = be.to_host(a.mu_logvar)
        self._in_chunks(len(X), self._batch(), chunk)
        # two arrays of their own, C-ordered (they were views into one buffer, strided: a consumer taking their raw
        # memory, ctypes or a C extension, read mu and logvar interleaved: an API review's note)
        mu, second = np.ascontiguousarray(mu_logvar[:, :latent]), np.ascontiguousarray(mu_logvar[:, latent:])
        if self.config.encoder == "sigma":
            second = np.log(SIGMA_SMOOTHING + second.astype(np.float64) ** 2).astype(np.float32)
        return mu, second

    def _refuse_if_diverged(self):
        """A diverged model's parameters hold NaN or Inf: every output would be NaN (it returned them without a
        word: a fresh user's trial)."""
        if self.diverged:
            raise UserError(f"this model diverged (NaN or Inf at step {self.steps}): its outputs would be NaN; load "
                            f"the last checkpoint, or train a new model with a lower learning rate (now "
                            f"{self.config.lr:g})")

    @_one_at_a_time
    def decode(self, z: ArrayLike) -> np.ndarray:
        """Pixel probabilities of p(x | z), float32 (n, d) in [0, 1], for codings z (n, latent).
        Raises UserError for codings of the wrong shape or with NaN or Inf."""
        return (0.5 * (1.0 + np.tanh(0.5 * self.decode_logits(z)))).astype(np.float32)  # sigmoid, no overflow

    @_one_at_a_time
    def decode_logits(self, z: ArrayLike, rows: int | None = None) -> np.ndarray:
        """The decoder's logits, float64 (n, d), for codings z (n, latent): log p(x | z) needs them, not the
        probabilities, to stay stable. rows: decoder rows per chunk (default: the training batch size; at most
        CHUNK_ROWS_ON_WORKERS = 256 on the cpu backends, whose threads share the chunks: fastvae.inference).
        Raises UserError for codings of the wrong shape or with NaN or Inf, and for a model that diverged (decode,
        sample and reconstruct too)."""
        self._refuse_if_diverged()
        latent = self.config.latent
        if isinstance(z, Iterator):     # (np.asarray made it an object array: "got object ()", an API trial)
            raise UserError(f"z is an iterator ({type(z).__name__}), read only once; pass an array of shape (n, "
                            f"{latent}), e.g. np.stack(list(z))")
        z = np.asarray(z)
        be = self.backend
        if z.ndim != 2 or z.shape[1] != latent or not np.issubdtype(z.dtype, np.number) or np.iscomplexobj(z):
            raise UserError(f"z must be a real numeric array of shape (n, {latent}), got {z.dtype} {z.shape}")
        with np.errstate(over="ignore"):        # finite in the backend's dtype too (1e300 is Inf in float32)
            finite = np.all(np.isfinite(z)) and np.all(np.isfinite(z.astype(be.dtype)))
        if not finite:
            raise UserError(f"z must be finite (no NaN or Inf, also as {np.dtype(be.dtype).name})")
        logits = np.empty((len(z), self.config.input_width), dtype=np.float64)

        def chunk(a, part, _):
            a.z[...] = be.asarray(z[part])
            step.decode(be, self.config, self.state.weights, a)
            logits[part] = be.to_host(a.logits)
        # at most the codings asked for (rows=10**9 for 3 codings asked for 238 GiB, an API trial)
        self._in_chunks(len(z), self._batch() if rows is None else min(integer(rows, "rows"), max(len(z), 1)), chunk)
        if np.isnan(logits).any():          # (Inf - Inf inside: NaN "probabilities" came back without a word)
            raise UserError(f"decoding these codings overflowed {np.dtype(be.dtype).name} (the largest |z| is "
                            f"{np.abs(z).max():g}; the prior's draws lie within about ±6): pass codings of ordinary "
                            "size")
        return logits

    @_one_at_a_time
    def weights(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Copies of the parameters: one (W, b) per dense layer, in the order the data flows: the encoder's hidden
        layers, the heads (W (h, 2 * latent): its first `latent` columns give mu, the others logvar, or sigma
        itself with encoder="sigma"), the decoder's hidden layers, the output layer (logits). W is (fan_in, fan_out), b
        (fan_out,), float32 (float64 on the reference backend); a layer computes x @ W + b, then the activation (not
        the heads' and the output's). Copies: changing them changes the model in nothing."""
        be = self.backend
        return [(np.array(be.to_host(w)), np.array(be.to_host(b))) for w, b in self.state.weights]

    @_one_at_a_time
    def sample(self, n: int, seed: int | None = None) -> np.ndarray:
        """n new images, pixel probabilities float32 (n, d), decoded from codings drawn from the prior N(0, I).

        The codings are a pure function of `seed` (default: the model's seed), so the same call gives the same
        digits, which is how the trainer shows one set of codings evolving epoch by epoch. Raises UserError unless
        n is a whole number in [0, 2**56 / latent) (also a MemoryError where its images do not fit in memory)."""
        # (0: no rows, as decode of none; the bound keeps the n x latent codings below NumPy's own size check, whose
        # "array is too big" ValueError came before the MemoryError)
        high = 2**56 // self.config.latent
        n = integer(n, "n", low=0, high=high, what=f"a whole number in [0, {high:,})")
        seed = self.config.seed if seed is None else seed_value(seed)
        from .backends.cpu_philox import fill_normals
        z = np.empty((n, self.config.latent), dtype=np.float32)
        # rng.normals' draw, bit for bit, in Numba: NumPy's Philox took 0.2 ms a call whatever n (sample(1): 254 us,
        # its decode 53), and 3x fill_normals' time per coding
        fill_normals(z, seed, rng.STREAM_SAMPLE, 0, 0)
        return self.decode(z)

    @_one_at_a_time
    def reconstruct(self, X: ArrayLike) -> np.ndarray:
        """Pixel probabilities float32 (n, d) of each image decoded from its coding's mean mu (the deterministic
        reconstruction). Raises UserError for bad images."""
        mu, _ = self.encode(X)
        return self.decode(mu)

    def _batch(self):
        """encode's and decode's default chunk: the training batch size (the last fit's, else the config's)."""
        return self._ws.batch if self._ws is not None else self.config.batch_size

    def _in_chunks(self, n, size, fn):
        """fn(a, rows, j) for chunk j of n items in chunks of `size` (at most fastvae.inference.chunk_rows: its
        `rows`, a slice of 0..n; `a`, that many rows of the inference workspace, one region per thread, its forward
        buffers only), on the backend's workers at the model's `threads` (fastvae.inference: the same bits at every
        count). The workspace is kept for the next call up to INFERENCE_WORKSPACE_KEPT bytes."""
        be = self.backend
        size = inference.chunk_rows(be, size)
        chunks = -(-n // size)
        parts = inference.parts(be, self.threads, chunks)
        # a call inside another's chunks on the same thread (a signal handler's: the model's lock is the thread's
        # already) gets a workspace of its own: it wrote into the other's, whose answers came out wrong (a review)
        inside = self.__dict__.get("_in_chunks_now", False)
        # one that holds the rows already serves (iwae_bound's calls of 2048, 2048 and 904 rows built one each
        # time: a review); the training workspace keeps its size
        if inside:
            ws = step.Workspace(be, self.config, parts * size, training=False)
        else:
            if self._ws_inference is None or self._ws_inference.batch < parts * size:
                self._ws_inference = step.Workspace(be, self.config, parts * size, training=False)
            ws = self._ws_inference

        def one(k, j):
            rows = slice(j * size, min((j + 1) * size, n))
            fn(ws.rows(rows.stop - rows.start, lo=k * size), rows, j)
        held = inference.threads_held(be, self.threads)
        try:
            self.__dict__["_in_chunks_now"] = True
            with held:
                inference.run(be, parts, chunks, one)
        finally:
            held.__exit__()         # (again, idempotent: a second handler's exception cut the with's own short)
            self.__dict__["_in_chunks_now"] = inside
            if not inside and ws.nbytes > INFERENCE_WORKSPACE_KEPT:
                self._ws_inference = None

    # ------------------------------------------------------------------ persistence

    @_one_at_a_time
    def save(self, path: str | PathLike[str] | Writable) -> None:
        """Write config, parameters, Adam state and the training position to `path` (npz, atomically, no pickle);
        where `path` is a folder, to its checkpoint.npz (where load() reads one, and where a training run keeps it);
        where it is an open binary file (io.BytesIO, a cloud store's stream), into it at its position.
        Raises UserError when the model diverged, a step of it was interrupted part-way, or the file cannot be written
        (any earlier file stays whole); the last is also the OSError kind the system gave (PermissionError,
        FileNotFoundError for a missing folder, OSError with errno ENOSPC for a full disk), with its errno and
        filename (fastvae.errors.file_error)."""
        target: str | PathLike[str] | Writable = path   # (an open binary file is written into as it is)
        if not checkpoint.is_file_object(path):
            target = where = _checked_path(path)
            if Path(where).is_dir():            # (it said "Is a directory ... free some space": a fresh user)
                target = Path(where) / "checkpoint.npz"
            elif where.endswith(("/", os.sep)):     # a folder meant, not there: Path() drops the slash
                raise UserError(f"cannot write a checkpoint into {where}: there is no such folder; make "
                                f"it first, or name a file (e.g. {where.rstrip('/' + os.sep)}.npz)")
        self._check_savable()
        checkpoint.save(target, self._checkpoint())

    def _checkpoint(self, copy=False):
        """What save() writes and pickling carries: a checkpoint.Checkpoint of the model as it stands, its arrays
        the backend's own host arrays or, with `copy`, copies of them (a copy.copy must not share the model's)."""
        be = self.backend
        host = (lambda a: np.array(be.to_host(a), dtype=np.float32)) if copy else be.to_host
        return checkpoint.Checkpoint(self.config, host(self.state.params), host(self.state.m), host(self.state.v),
                                     steps=self.steps, epoch=self.epoch, epoch_step=self.epoch_step,
                                     epoch_loss=np.array(self.epoch_loss, np.float64))

    def _check_savable(self, what="saved"):
        if self.diverged:
            raise UserError(f"this model diverged (NaN or Inf): it is not {what}; a checkpoint saved before stands")
        if self.step_broken:
            raise UserError("a training step of this model stopped part-way (a second Ctrl-C, or an error inside the "
                            f"step), so some of its layers were updated and others not: it is not {what}; a "
                            "checkpoint saved before stands")

    @classmethod
    def load(cls, path: str | PathLike[str] | Readable, backend: str = "auto",
             notify: Callable[[str], None] | None = None, threads: int | str | None = None,
             precision: str | None = None) -> VAE:
        """A model from a file written by save(); training resumes exactly where it stopped (bit for bit when
        `threads` is fixed to the count the saved run used; see VAE). A checkpoint written before a setting existed
        loads with that setting's default (e.g. activation "elu"); `path` may be a training run's folder (its
        checkpoint.npz is read), or an open binary file that save() wrote into (read from its position). `precision`
        as in VAE: a checkpoint holds fp32 weights, so one trained in bf16 loads in fp32 and the other way round.
        Raises UserError for a missing, corrupt or foreign file, naming it (a missing one is a FileNotFoundError
        too, an unreadable one a PermissionError, with errno and filename), for a precision the backend cannot take,
        and for a bad `backend`, `threads` or `notify` (see VAE)."""
        threads = check_threads(threads)
        _check_notify(notify)
        target: str | PathLike[str] | Readable = path   # (an open binary file is read as it is)
        if not checkpoint.is_file_object(path):
            target = where = _checked_path(path)
            if Path(where).is_dir():            # a run folder (python -m fastvae.train --out): its checkpoint
                target = Path(where) / "checkpoint.npz"
        ck = checkpoint.load(target)
        return cls._from_checkpoint(ck, resolve(backend, precision, notify), threads, notify)

    @classmethod
    def _from_checkpoint(cls, ck, backend, threads, notify=None):
        """A model of checkpoint.Checkpoint `ck` on `backend` (a resolved name), at `threads` (checked)."""
        model = cls.__new__(cls)
        model.threads = threads
        model.config = ck.config
        model._set_up(backend, ck.params, notify, m=ck.m, v=ck.v, step_count=ck.steps, epoch=ck.epoch,
                      epoch_step=ck.epoch_step, epoch_loss=ck.epoch_loss)
        return model

    @_one_at_a_time
    def __reduce__(self):
        """pickle and copy (a model returned by a multiprocessing Pool's worker, copy.deepcopy): a model travels as
        what save() writes (config, parameters, Adam's moments, the training position) with its backend's name,
        its thread setting and its history, and is made anew by _unpickled, an independent model (copy.copy too);
        raises UserError where save() would (a diverged model, a step stopped part-way)."""
        self._check_savable("copied")
        return _unpickled, (self._checkpoint(copy=True), self.backend.name, self.threads, list(self.history))

    def __repr__(self) -> str:
        c = self.config
        return (f"VAE(hidden={c.hidden}, latent={c.latent}, backend={self.backend.name!r}, "
                f"precision={self.precision!r}, seed={c.seed}; "
                f"{self.layout.size:,} parameters, {self.epoch} epoch{'s' * (self.epoch != 1)}, {self.steps} "
                f"step{'s' * (self.steps != 1)}"
                + ("; diverged: NaN or Inf, refuses fit, save and its outputs" * self.diverged)
                + ("; a step stopped part-way: refuses fit and save" * (self.step_broken and not self.diverged)) + ")")


def _unpickled(ck, backend, threads, history):
    """A model from VAE.__reduce__'s values, on the backend it had (a gpu model needs a GPU where it is unpickled:
    else UserError; load a saved checkpoint there with VAE.load(path, backend="cpu"))."""
    model = VAE._from_checkpoint(ck, resolve(backend, None, None), threads)
    model._set(history=history)
    return model


def _checked_path(path: object) -> str:
    """A file path (str or os.PathLike) with a leading ~ expanded, as a shell would have (save("~/m.npz") wrote into a
    folder named ~: a fresh user's trial), else a one-line UserError (pathlib's TypeError otherwise)."""
    if not isinstance(path, (str, PathLike)):
        raise UserError(f"a path (str or os.PathLike) is needed, not {type(path).__name__}")
    text = os.fspath(path)
    if text == "":                          # (save("") wrote ./checkpoint.npz without a word: a trial)
        raise UserError(f"the path is empty ({text!r}); name a file or folder (\".\" for the working folder)")
    return os.path.expanduser(text)


def _subclass(cls: type) -> bool:
    """Whether `cls` is a user's subclass of VAE, not fastvae's own class: by name, since a model made before
    importlib.reload(fastvae.model) is of the old class object (it took `model.lr = 0.2` without a word then, where a
    new one refuses it: a notebook user's trial)."""
    return (cls.__module__, cls.__qualname__) != (__name__, "VAE")


def _say_if_fewer_threads_run(threads, be, notify):
    """notify hears it where a fixed count is above the CPUs this process may use: that many run (a model made with
    threads=1000 read 1000 and ran 2 without a word, and a fixed count is asked for its bits: an API trial)."""
    if notify is not None and isinstance(threads, int) and be.xp is np:
        runs = detect_threads(threads).threads
        if runs < threads:
            notify(f"threads={threads}: {runs} run, one per CPU this process may use (its affinity mask); the "
                   f"training's last bits are those of {runs} threads (evaluate's, encode's and decode's are the "
                   "same at every count)")


def _check_notify(notify):
    """None or a function of one message (str), else a one-line UserError (a TypeError where it is first called)."""
    if notify is not None and not callable(notify):
        raise UserError(f"notify must be a function of one message (str), or None; not {type(notify).__name__}")
