"""The public VAE class: fit, encode, decode, sample, reconstruct, evaluate, save and load.

It only loops and calls: the step (fastvae.step) composes the backend's kernels, the backend owns the arrays.
"""
import signal
import threading
import time

import numpy as np

from . import checkpoint, rng, step
from .backends import get_backend
from .backends.reference import SIGMA_SMOOTHING
from .config import N_PIXELS, Config
from .data import as_images
from .errors import TrainingDiverged, TrainingInterrupted, UserError
from .params import Layout, he_init


class VAE:
    """The VAE of Géron's Hands-On ML (1st ed., ch. 15): 784 -> hidden -> (mu, gamma) -> z -> hidden reversed -> 784.

    `backend` is "auto" (gpu when usable, else cpu), "cpu", "gpu" or "reference" (float64 NumPy, slow).
    Arrays in and out are NumPy; images are (n, 784) or (n, 28, 28), uint8 or floats in [0, 1].
    """

    def __init__(self, hidden=(500, 500), latent=20, backend="auto", seed=0, lr=0.001, batch_size=150,
                 encoder="gamma", reconstruction="xent", notify=None, **adam):
        self.config = Config(hidden=tuple(hidden), latent=latent, seed=seed, lr=lr, batch_size=batch_size,
                             encoder=encoder, reconstruction=reconstruction, **adam)
        self._set_up(backend, he_init(Layout(self.config), self.config.seed), notify)

    def _set_up(self, backend, params, notify, m=None, v=None, step_count=0, epoch=0, epoch_step=0,
                epoch_loss=None):
        self.backend = get_backend(backend, notify=notify)
        step.kernels_for(self.backend, self.config)     # a variant this backend lacks fails here, not mid-run
        self.layout = Layout(self.config)
        self.state = step.State(self.backend, self.layout, params, self.config.seed, m=m, v=v, step=step_count)
        self.epoch = epoch                      # epochs completed; the next epoch's shuffle depends on it
        self.epoch_step = epoch_step            # batches done in the epoch in progress (after a Ctrl-C)
        self.epoch_loss = np.zeros(2) if epoch_loss is None else np.asarray(epoch_loss, np.float64)
        self.diverged = False                   # set when training produced NaN or Inf: never save such a model
        # How often the loss is read back to check it is finite: every step where that is free (host memory)
        self._check_every = getattr(self.backend, "loss_check_interval", 1)
        self.history = []                       # one dict per epoch fitted in this process
        self._ws = None
        self._ws_inference = None

    # ------------------------------------------------------------------ training

    @property
    def steps(self):
        """Training steps taken so far (Adam's t; also the noise counter of the next step)."""
        return int(self.backend.to_host(self.state.counters)[1])

    def fit(self, X, epochs=None, batch_size=None, validation=None, callback=None, progress=False):
        """Train for `epochs` (default: the seed's 50) on X; reshuffled every epoch as a function of (seed, epoch).

        validation: optional test images, evaluated after each epoch. callback(model, record) runs after each
        epoch with that epoch's record (also appended to self.history). progress: show a tqdm progress bar.
        A model stopped in the middle of an epoch (Ctrl-C) finishes that epoch first, as one of `epochs`.
        Ctrl-C stops after the step in progress and raises TrainingInterrupted, leaving the model consistent;
        a NaN or Inf in the loss or the parameters raises TrainingDiverged naming the step. Returns self.
        """
        cfg = self.config
        epochs = cfg.epochs if epochs is None else _positive_int(epochs, "epochs")
        batch_size = cfg.batch_size if batch_size is None else _positive_int(batch_size, "batch_size")
        X = as_images(X, "X")
        if batch_size > len(X):
            raise UserError(f"batch_size {batch_size} is larger than the {len(X)} training images; "
                            f"use a batch size of at most {len(X)}")
        if validation is not None:
            validation = as_images(validation, "validation")
        be = self.backend
        ws = self._workspace(batch_size)
        stepper = step.Stepper(be, cfg, self.state, ws, be.asarray(X, dtype=X.dtype))
        # NaN/Inf arising inside the kernels is reported once, by the divergence guard, not as NumPy warnings
        with _StopOnCtrlC() as stop, np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            for _ in range(epochs):
                order = rng.epoch_permutation(cfg.seed, self.epoch, len(X))
                record = self._train_epoch(stepper, order, ws, progress, stop)
                if validation is not None:
                    record["test"] = self.evaluate(validation)
                self.history.append(record)
                if callback is not None:
                    callback(self, record)
                stop.check()
        return self

    def _train_epoch(self, stepper, order, ws, progress, stop):
        be, n = self.backend, len(order)
        starts = range(0, n, ws.batch)
        if self.epoch_step >= len(starts):
            raise UserError(f"this model stopped after batch {self.epoch_step} of epoch {self.epoch + 1}, but "
                            f"{n} images in batches of {ws.batch} make {len(starts)}; resume with the same data "
                            "and batch size")
        bar = _progress_bar(len(starts), f"epoch {self.epoch + 1}") if progress else None
        if bar is not None:
            bar.update(self.epoch_step)
        ws.loss[...] = be.asarray(self.epoch_loss, dtype=np.float64)
        order = be.asarray(order, dtype=np.int64)
        first, begin = self.epoch_step, time.perf_counter()
        for k in range(first, len(starts)):
            start = starts[k]
            stepper(order[start:start + ws.batch])
            self.epoch_step = k + 1
            last = k == len(starts) - 1
            if k % self._check_every == 0 or last:                # the loss is read only this often
                loss = be.to_host(ws.loss)
                if not np.all(np.isfinite(loss)):
                    self._diverged(f"the loss became {float(loss.sum())}")
                if bar is not None and (k % 25 == 24 or last):
                    seen = min(start + ws.batch, n)
                    rate = (seen - starts[first]) / (time.perf_counter() - begin)
                    bar.set_postfix_str(f"loss {float(loss.sum()) / seen:.2f}, {rate:,.0f} img/s")
                    bar.update(k + 1 - bar.n)
            if stop.requested and not last:
                self.epoch_loss = np.array(be.to_host(ws.loss), dtype=np.float64)
                if bar is not None:
                    bar.close()
                stop.check()
        be.synchronize()
        seconds = time.perf_counter() - begin
        if bar is not None:
            bar.close()
        if not np.all(np.isfinite(be.to_host(self.state.params))):
            self._diverged("a parameter became NaN or Inf")
        rec, kl = (float(t) / n for t in be.to_host(ws.loss))
        self.epoch, self.epoch_step, self.epoch_loss = self.epoch + 1, 0, np.zeros(2)
        trained = n - starts[first]
        return {"epoch": self.epoch, "steps": self.steps, "seconds": seconds, "images_per_s": trained / seconds,
                "train": {"reconstruction": rec, "kl": kl, "total": rec + kl}}

    def _diverged(self, what):
        self.diverged = True
        raise TrainingDiverged(f"training diverged at step {self.steps} (epoch {self.epoch + 1}): {what}; "
                               f"lower the learning rate (now {self.config.lr:g}), e.g. --lr "
                               f"{self.config.lr / 10:g}")

    def _workspace(self, batch):
        if self._ws is None or self._ws.batch != batch:
            self._ws = step.Workspace(self.backend, self.config, batch)
        return self._ws

    # ------------------------------------------------------------------ inference

    def evaluate(self, X):
        """Loss per image on X: {"reconstruction", "kl", "total"} (one ELBO sample per image, fixed noise)."""
        X = as_images(X, "X")
        be = self.backend
        ws = self._workspace(self._ws.batch if self._ws is not None else self.config.batch_size)
        loss = be.zeros(2, dtype=np.float64)
        idx = be.asarray(np.arange(len(X)), dtype=np.int64)
        step.evaluate(be, self.config, self.state, ws, be.asarray(X, dtype=X.dtype), idx, self.config.seed, loss)
        rec, kl = (float(t) / len(X) for t in be.to_host(loss))
        return {"reconstruction": rec, "kl": kl, "total": rec + kl}

    def encode(self, X):
        """(mu, gamma) of q(z | x) for each image, gamma = log sigma^2; float32 (n, latent) each. A model with the
        sigma encoder reports gamma = log(1e-10 + sigma^2), the smoothed form its KL term uses."""
        X = as_images(X, "X")
        be, latent = self.backend, self.config.latent
        data = be.asarray(X, dtype=X.dtype)
        stats = np.empty((len(X), 2 * latent), dtype=np.float32)
        for a, rows in self._chunks(len(X)):
            be.gather_batch(a.x, data, be.asarray(np.arange(rows.start, rows.stop), dtype=np.int64))
            step.encode(be, self.state.weights, a)
            stats[rows] = be.to_host(a.stats)
        mu, second = stats[:, :latent], stats[:, latent:]
        if self.config.encoder == "sigma":
            second = np.log(SIGMA_SMOOTHING + second.astype(np.float64) ** 2).astype(np.float32)
        return mu, second

    def decode(self, z):
        """Pixel probabilities (n, 784) float32 of p(x | z) for codings z (n, latent)."""
        return (0.5 * (1.0 + np.tanh(0.5 * self.decode_logits(z)))).astype(np.float32)  # sigmoid, no overflow

    def decode_logits(self, z, rows=None):
        """The decoder's logits (n, 784) as float64 for codings z (n, latent): log p(x | z) needs them, not the
        probabilities, to stay stable. rows: decoder rows per chunk (default: the training batch size)."""
        z = np.asarray(z)
        latent = self.config.latent
        if z.ndim != 2 or z.shape[1] != latent or not np.issubdtype(z.dtype, np.number):
            raise UserError(f"z must be a numeric array of shape (n, {latent}), got {z.dtype} {z.shape}")
        if len(z) == 0 or not np.all(np.isfinite(z)):
            raise UserError("z must be non-empty and finite (no NaN or Inf)")
        be = self.backend
        logits = np.empty((len(z), N_PIXELS), dtype=np.float64)
        for a, part in self._chunks(len(z), rows):
            a.z[...] = be.asarray(z[part])
            step.decode(be, self.state.weights, a)
            logits[part] = be.to_host(a.dlogits)
        return logits

    def sample(self, n, seed=None):
        """n new images (pixel probabilities, (n, 784)) decoded from codings drawn from the prior N(0, I).

        The codings are a pure function of `seed` (default: the model's seed), so the same call gives the same
        digits, which is how the trainer shows one set of codings evolving epoch by epoch."""
        n = _positive_int(n, "n")
        seed = self.config.seed if seed is None else int(seed)
        return self.decode(rng.normals(seed, rng.STREAM_SAMPLE, 0, n, self.config.latent))

    def reconstruct(self, X):
        """Pixel probabilities of each image decoded from its coding's mean mu (the deterministic reconstruction)."""
        mu, _ = self.encode(X)
        return self.decode(mu)

    def _chunks(self, n, rows=None):
        """(workspace rows, slice) over n items in chunks of `rows` (default: the current workspace's batch)."""
        if rows is None:
            ws = self._workspace(self._ws.batch if self._ws is not None else self.config.batch_size)
        else:                           # an inference workspace of its own: the training one keeps its size
            if getattr(self, "_ws_inference", None) is None or self._ws_inference.batch != rows:
                self._ws_inference = step.Workspace(self.backend, self.config, rows)
            ws = self._ws_inference
        for start in range(0, n, ws.batch):
            part = slice(start, min(start + ws.batch, n))
            yield ws.rows(part.stop - start), part

    # ------------------------------------------------------------------ persistence

    def save(self, path):
        """Write config, parameters, Adam state and the training position to `path` (npz, atomically, no pickle)."""
        if self.diverged:
            raise UserError("this model diverged (NaN or Inf): it is not saved; the last good checkpoint stands")
        be = self.backend
        checkpoint.save(path, checkpoint.Checkpoint(
            self.config, be.to_host(self.state.params), be.to_host(self.state.m), be.to_host(self.state.v),
            steps=self.steps, epoch=self.epoch, epoch_step=self.epoch_step, epoch_loss=self.epoch_loss))

    @classmethod
    def load(cls, path, backend="auto", notify=None):
        """A model from a file written by save(); training resumes exactly where it stopped."""
        ck = checkpoint.load(path)
        model = cls.__new__(cls)
        model.config = ck.config
        model._set_up(backend, ck.params, notify, m=ck.m, v=ck.v, step_count=ck.steps, epoch=ck.epoch,
                      epoch_step=ck.epoch_step, epoch_loss=ck.epoch_loss)
        return model

    def __repr__(self):
        c = self.config
        return (f"VAE(hidden={c.hidden}, latent={c.latent}, backend={self.backend.name!r}, seed={c.seed}; "
                f"{self.layout.size:,} parameters, {self.epoch} epochs, {self.steps} steps)")


def _positive_int(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise UserError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _progress_bar(total, desc):
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit="step", leave=False, dynamic_ncols=True)


class _StopOnCtrlC:
    """While training, the first Ctrl-C only asks to stop after the step in progress (check() then raises
    TrainingInterrupted); a second one interrupts at once. Only the main thread can own SIGINT, so elsewhere
    this does nothing."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        self.requested = True
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def check(self):
        if self.requested:
            raise TrainingInterrupted("training stopped cleanly after a step (Ctrl-C)")

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        return False
