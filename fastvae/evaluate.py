"""python -m fastvae.evaluate: the test-set negative ELBO and the importance-weighted estimate of -log p(x).

The IWAE bound (Burda, Grosse & Salakhutdinov 2015): for each image x and k codings z_j ~ q(z | x),
    log p(x) >= log (1/k) sum_j w_j,   log w_j = log p(x | z_j) + log p(z_j) - log q(z_j | x),
with q(z | x) = N(mu, exp(logvar)), p(z) = N(0, I) and p(x | z) the Bernoulli (sigmoid cross-entropy) likelihood
of the decoder's logits l: log p(x | z) = -sum over pixels of [max(l, 0) - l x + log1p(exp(-|l|))].
k = 1 is a one-sample ELBO; the bound rises with k towards log p(x). The backend computes mu, logvar and the
logits. On the float32 backends each chunk of samples is drawn where it is decoded (fastvae.backends.iwae_codings:
the noise, z = mu + sigma eps formed in float64, log p(z) - log q(z | x) in float64), and log p(x | z) comes from
the logits with the training loss's arithmetic (float32 terms, each sample's total in float64); the decoder sees z
rounded to float32. The log-weights' log-mean-exp is float64 NumPy on the host. The reference backend computes
everything in float64 NumPy (_float64_log_weights: the specification of the chunks' codings).

The noise is a pure function of (seed, image index, sample index): sample j of image i is row j of
rng.normals(seed, STREAM_IWAE, i, k, latent). Rows are a prefix (k = 10 uses the first 10 of k = 100's samples),
so one pass with the largest k gives the bound for every smaller k too.

Note: MNIST's pixels are grey levels in [0, 1], not binary, so the "likelihood" is the cross-entropy the model
is trained on, not a normalised density; these nats are not comparable with binarised-MNIST results.
"""
from __future__ import annotations

import argparse
import math
import numbers
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np
from numpy.typing import ArrayLike

from . import __version__, jsonfile, rng, tempfiles
from .cli import (Notes, OptionMistake, Parser, add_shared_options, check_positive, checkpoint_path, note_fewer_threads,
                  returns_status, run_main, path_argument, run_precision, run_record, run_test_set, script, thread_count,
                  whole_number)
from .config import flag, integer, seed_value
from .errors import UserError, one_line
from .rng import STREAM_IWAE
from .streams import tool_streams
from .training import on_terminal
from .turns import taking_turns

if TYPE_CHECKING:                   # the model module loads only when a checkpoint is read
    from .model import VAE


DEFAULT_K = 5000
DEFAULT_ROWS = 2048          # decoder rows per call: bounds memory (the codings and their noise) at any k
_LOG_2PI = math.log(2.0 * math.pi)


def log_mean_exp(a, axis=-1):
    """log(mean(exp(a))) along `axis` of any real array `a` (float64 out, that axis removed), stable for any finite
    or -inf entries (all -inf gives -inf, not NaN; a NaN gives NaN; +inf gives +inf). Raises UserError (one line) for
    an array that is not real numbers, has no such axis, or no values along it (NumPy's own errors came through:
    an API trial)."""
    a = _reals(a, "a").astype(np.float64, copy=False)
    if isinstance(axis, bool) or not isinstance(axis, numbers.Integral) or not -a.ndim <= axis < a.ndim:
        raise UserError(f"axis must be an axis of `a` (shape {a.shape}: -{a.ndim}..{a.ndim - 1}), got {axis!r}"
                        if a.ndim else "log_mean_exp takes an array to average along an axis, not a single number")
    if a.shape[axis] == 0:
        raise UserError(f"log_mean_exp has no values to average along axis {axis} of `a` (shape {a.shape})")
    return _log_mean_exp(a, int(axis))


def _log_mean_exp(a, axis):
    """(log_mean_exp's arithmetic, for the bound's own float64 arrays)"""
    m = np.max(a, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    with np.errstate(divide="ignore"):   # log(0) = -inf where every entry is -inf
        out = np.log(np.mean(np.exp(a - m), axis=axis, keepdims=True)) + m
    return np.squeeze(out, axis=axis)


def _reals(a, name):
    """`a` as an array of real numbers (of its own dtype), or a one-line UserError for what is not (text raised
    NumPy's ValueError, complex lost its imaginary part with a warning: an API trial)."""
    try:
        given = np.asarray(a)
    except (ValueError, TypeError) as e:                    # e.g. ragged nested lists
        raise UserError(f"{name} must be an array of real numbers ({one_line(e)})") from None
    if given.dtype.kind not in "uifb":
        raise UserError(f"{name} must be an array of real numbers, got dtype {given.dtype}")
    return given


def _pair(logits, x):
    """logits and targets x as float64 arrays of one shape (n, d), the targets read as fastvae reads pixels (integers
    0..255 divided by 255: uint8 images scored -1254 nats where their floats scored -47, an API trial; bool 0 and 1;
    floats as they are, in [0, 1]), or a one-line UserError (einsum's own was raw)."""
    logits, given = _reals(logits, "logits").astype(np.float64, copy=False), _reals(x, "x")
    integers = given.dtype.kind in "iu"
    x = given.astype(np.float64, copy=False)
    if logits.ndim != 2 or logits.shape != x.shape:
        raise UserError(f"logits and x must be arrays of one shape (n, d), got {logits.shape} and {x.shape}")
    if integers and x.size:
        if x.min() < 0 or x.max() > 255:
            raise UserError(f"x holds integers from {x.min():g} to {x.max():g}; integer pixels are 0..255 (or pass "
                            "floats in [0, 1])")
        if x.max() == 1:                # (as fastvae's data checks: binarized images read as 0..255 are all black)
            raise UserError("x holds integers with no value above 1, but integer pixels are read as 0..255; for "
                            "targets of 0 and 1, pass them as floats or bool")
        return logits, x / 255.0
    if not np.isfinite(x).all():
        raise UserError(f"x has {np.isnan(x).sum()} NaN and {np.isinf(x).sum()} infinite values; pass finite "
                        "targets in [0, 1]")
    if x.size and (x.min() < 0 or x.max() > 1):
        raise UserError(f"x has values outside [0, 1] (min {x.min()!s}, max {x.max()!s}); pass floats in [0, 1] "
                        "or integer pixels 0..255")
    return logits, x


def bernoulli_log_likelihood(logits, x):
    """log p(x | logits) of each row (n,) float64, nats: -sum [max(l, 0) - l x + log1p(exp(-|l|))] over the d values
    (the stable sigmoid cross-entropy; the Bernoulli decoder of Kingma & Welling 2014, appendix C.1) of logits (n, d)
    and targets x (n, d): floats in [0, 1] or integer pixels 0..255 (uint8: read as x / 255, as everywhere in
    fastvae), any real dtype. Raises UserError (one line) for arrays of other shapes, non-real values, or targets
    outside those ranges."""
    return _bernoulli(*_pair(logits, x))


def _bernoulli(logits, x):
    """(bernoulli_log_likelihood's arithmetic, for float64 arrays already checked.) Written as three row sums with one
    temporary, in place: twice as fast as the one-line form."""
    soft = np.abs(logits)
    np.negative(soft, out=soft)
    np.exp(soft, out=soft)
    np.log1p(soft, out=soft)
    return np.einsum("ij,ij->i", logits, x) - np.maximum(logits, 0.0).sum(axis=1) - soft.sum(axis=1)


def gaussian_log_likelihood(logits, x):
    """log N(x; sigmoid(l), 1/2) of each row (n,) float64, nats: -sum (p - x)^2 - (d / 2) log(pi) over the d values
    of logits (n, d) and targets x (n, d) as fastvae reads pixels (floats in [0, 1], or integers 0..255 read as
    x / 255): the density whose negative log is the squared-error variant's reconstruction loss up to that constant
    (a Gaussian of variance 1/2: -log N = (x - p)^2 + (1/2) log(pi) per value). Raises UserError (one line) for
    arrays of other shapes, non-real values, or targets outside those ranges."""
    return _gaussian(*_pair(logits, x))


def _gaussian(logits, x):
    """(gaussian_log_likelihood's arithmetic, for float64 arrays already checked)"""
    p = 0.5 * (1.0 + np.tanh(0.5 * logits))
    return -np.sum((p - x) ** 2, axis=1) - gaussian_constant(x.shape[1])


def gaussian_constant(d):
    """(d / 2) log(pi), nats: what -log N(x; p, 1/2) of d values adds to their squared error sum (p - x)^2. Raises
    UserError for a d that is not a positive integer."""
    return 0.5 * integer(d, "d") * math.log(math.pi)


# Each sample is a decoder pass of its own (the seed's model on the EPYC's cpu backend: 58,000 a second): a k of
# 10**12, typed as 1e12, ran without a word and without an end (a new user's trial). Burda et al. (2016) use 5000.
MAX_K = 10**8


def _ks(k):
    ks = [k] if isinstance(k, str) or not hasattr(k, "__iter__") else list(k)
    try:
        ks = [integer(v, "k") for v in ks]
    except UserError:
        ks = []
    if not ks:
        raise UserError(f"k must be a positive integer or a list of them, got {k!r}")
    if max(ks) > MAX_K:
        raise UserError(_too_large("k", max(ks)))
    return sorted(set(ks))


def _too_large(name, k):
    return (f"{name} must be at most {MAX_K:,} (each sample is a decoder pass: 10**8 take about half an hour an image "
            f"on a CPU; the usual k is {DEFAULT_K}), got {k:,}")


@taking_turns("pass a smaller batch_size")
def iwae_bound(model: VAE, X: ArrayLike, k: int | Iterable[int] = DEFAULT_K, seed: int = 0,
               batch_size: int | None = None, progress: bool = False) -> dict[str, Any]:
    """Per-image importance-weighted bounds on log p(x) for each k (nats), from one pass with max(k) samples.

    Returns {"k": [k1 < k2 < ...], "bound": float64 (n, len(k)) = log mean_j w_j over the first k samples,
    "elbo": float64 (n, len(k)) = mean_j log w_j over the same samples (a k-sample ELBO; bound >= elbo always)}.
    batch_size: samples decoded per call (default 2048): memory is bounded by it, not by k (at k above it an image's
    samples are drawn, decoded and summed a batch at a time; they were all held at once, 3 GB at k = 4e6: an API
    review's trial). The model's other calls wait for it, and it for them (a fit on another thread took the model
    between the encoding and the decodings: a bound of neither model); made while another thread fits the model, it
    runs whole on the fit's thread between two of its steps (fastvae.turns), the fit waiting for it. progress: a
    bar on stderr where it is a terminal (none into a log). Raises UserError (one line) for a model that is not a
    VAE, and for bad images, k, seed or batch_size.
    """
    _check_model(model)
    ks = _ks(k)
    progress = flag(progress, "progress")
    X = model._images(X, "X")
    rows = DEFAULT_ROWS if batch_size is None else integer(batch_size, "batch_size")
    seed = seed_value(seed)
    n, kmax = len(X), ks[-1]
    rows = max(1, min(rows, n * kmax))  # (no workspace larger than the samples: batch_size=10**12 asked for 62 TiB)
    mu, logvar = (np.asarray(a, dtype=np.float64) for a in model.encode(X))
    sigma = np.exp(0.5 * logvar)

    def log_weights(imgs, s0, s1):
        """log w (len(imgs), s1 - s0): samples s0..s1 of each image in imgs, decoded in one call."""
        owner = np.repeat(imgs, s1 - s0)                  # image of each (image, sample) row
        way = _log_weights if model.backend.dtype == np.float32 else _float64_log_weights
        return way(model, X, owner, rows, mu, sigma, logvar, seed, s0, s1).reshape(len(imgs), s1 - s0)

    bound = np.empty((n, len(ks)))
    elbo = np.empty((n, len(ks)))
    # the bar on a terminal only (into a log or pipe it wrote its redraws: a fresh user's trial), as fit's
    bar = _progress_bar(n, f"IWAE k={kmax}") if progress and on_terminal(sys.stderr) else None
    try:
        with np.errstate(over="ignore"):
            if kmax <= rows:            # whole images, as many as a call takes
                group = max(1, rows // kmax)
                for g0 in range(0, n, group):
                    imgs = np.arange(g0, min(g0 + group, n))
                    lw = log_weights(imgs, 0, kmax)
                    for c, kk in enumerate(ks):
                        bound[imgs, c] = _log_mean_exp(lw[:, :kk], 1)
                        elbo[imgs, c] = lw[:, :kk].mean(axis=1)
                    if bar is not None:
                        bar.update(len(imgs))
            else:                       # an image's samples a batch at a time, summed as they come
                for i in range(n):
                    total = _Sums()
                    for s0 in range(0, kmax, rows):
                        s1 = min(s0 + rows, kmax)
                        lw = log_weights(np.array([i]), s0, s1)[0]
                        for c, kk in enumerate(ks):
                            if s0 < kk <= s1:
                                bound[i, c], elbo[i, c] = total.with_(lw[:kk - s0]).means(kk)
                        total = total.with_(lw)
                        if bar is not None:       # long k: show progress within an image too
                            bar.update((s1 - s0) / kmax)
        if bar is not None:
            bar.n = n
    finally:
        if bar is not None:         # (also when stopped: a stop line that follows is a line of its own)
            bar.close()
    return {"k": ks, "bound": bound, "elbo": elbo}


def _log_weights(model, X, owner, rows, mu, sigma, logvar, seed, s0, s1):
    """log w of each (image, sample) row i, float64 (n,), nats, on the float32 backends: log p(X[owner[i]] | z_i) +
    log p(z_i) - log q(z_i | x), for samples s0..s1 of each image (owner: the images' indices, each repeated s1 - s0
    times), decoded in chunks of at most `rows` (a chunk holds whole images' rows or part of one image's). Each chunk's
    codings are drawn on the thread that decodes it (fastvae.backends.iwae_codings: the noise, z = mu + sigma eps in
    float64 and log p(z) - log q(z | x), _float64_log_weights' formulas; on the calling thread they were 7 % of a
    bound while the workers waited), the decoder's chunk goes straight to the training loss's arithmetic, row by row
    (fastvae.backends.cpu.row_losses: float32 terms, 16 float32 partial sums per row, the row's total in float64):
    float64 logits and targets, and a NumPy pass over them on one thread (5 of an IWAE sample's 14 us on the EPYC),
    are not made. mu, sigma, logvar: float64 (images, latent). Raises UserError where the decoder overflowed (as
    decode_logits)."""
    be, cfg = model.backend, model.config
    mse = cfg.reconstruction == "mse"
    from . import step
    from .backends.cpu import row_losses
    from .backends.iwae_codings import iwae_codings
    losses, ratio = np.empty(len(owner)), np.empty(len(owner))
    images = np.ascontiguousarray(owner[::s1 - s0], dtype=np.int64)
    data = step.data_for(be, X)

    def codings(part):
        z = np.empty((part.stop - part.start, cfg.latent), dtype=np.float32)
        iwae_codings(z, ratio[part], mu, sigma, logvar, images, s0, s1, part.start, seed, STREAM_IWAE)
        return z

    def chunk(a, part, _):
        a.z[...] = be.asarray(codings(part))
        step.decode(be, cfg, model.state.weights, a)
        be.gather_batch(a.x, data, be.asarray(owner[part], dtype=np.int64))
        row_losses(losses[part], be.to_host(a.logits), be.to_host(a.x), mse)
    model._in_chunks(len(owner), rows, chunk)
    if np.isnan(losses).any():          # (decode_logits' refusal, which this path used to go through)
        # the first sample that overflowed, its coding in float64 (as float32 it may be inf: it said "up to inf")
        q = int(np.flatnonzero(np.isnan(losses))[0])
        i, s = int(owner[q]), s0 + q % (s1 - s0)
        eps = rng.normals(seed, STREAM_IWAE, i, 1, cfg.latent, first_row=s)[0].astype(np.float64)
        largest = float(np.abs(mu[i] + sigma[i] * eps).max())
        raise UserError(f"decoding these codings overflowed float32 (|z| up to {largest:g} in a sample that did; the "
                        "prior's draws lie within about ±6): the model's encoder gives codings of extreme size")
    return (-losses - gaussian_constant(X.shape[1]) if mse else -losses) + ratio


def _float64_log_weights(model, X, owner, rows, mu, sigma, logvar, seed, s0, s1):
    """log w of each (image, sample) row as _log_weights, from the decoder's logits as float64 and the targets as
    float64, in NumPy on this thread: the reference backend's way (every backend's until 2026-12-07:
    bench/test_inference_speed.py times it), and the specification of the float32 backends' codings."""
    eps = np.concatenate([rng.normals(seed, STREAM_IWAE, i, s1 - s0, mu.shape[1], first_row=s0)
                          for i in owner[::s1 - s0]]).astype(np.float64)
    z = mu[owner] + sigma[owner] * eps
    log_pz = -0.5 * np.sum(z ** 2 + _LOG_2PI, axis=1)
    log_qz = -0.5 * np.sum(eps ** 2 + logvar[owner] + _LOG_2PI, axis=1)
    logits = model.decode_logits(z, rows=rows)
    x = X[owner].astype(np.float64) / (255.0 if X.dtype == np.uint8 else 1.0)
    log_px = _gaussian(logits, x) if model.config.reconstruction == "mse" else _bernoulli(logits, x)
    return log_px + log_pz - log_qz


def _check_model(model):
    from .model import VAE
    if not isinstance(model, VAE):      # (a checkpoint's path, as the command line takes: an AttributeError)
        raise UserError(f"model must be a fastvae.VAE, not {type(model).__name__}; load a checkpoint with "
                        "fastvae.VAE.load(path)")


class _Sums:
    """Log-weights summed as they come: their largest (m), sum of exp(lw - m) (s) and plain sum, so that log mean
    exp stays stable across batches (log_mean_exp's shift, carried along)."""

    def __init__(self, m=-math.inf, s=0.0, plain=0.0):
        self.m, self.s, self.plain = m, s, plain

    def with_(self, lw):
        plain = self.plain + float(lw.sum())
        highest = float(lw.max())
        if math.isnan(highest) or math.isnan(self.m):   # a NaN makes the mean NaN, as log_mean_exp's does (Python's
            return _Sums(math.nan, math.nan, plain)     # max(-inf, nan) is -inf: the NaN was dropped, a review found)
        top = max(self.m, highest)
        if not math.isfinite(top):      # all -inf so far (log mean exp -inf), or an overflow (+inf)
            return _Sums(top, 1.0 if top > 0 else 0.0, plain)
        return _Sums(top, self.s * math.exp(self.m - top) + float(np.exp(lw - top).sum()), plain)

    def means(self, count):
        """(log mean exp, mean) of the `count` log-weights summed."""
        with np.errstate(divide="ignore"):
            return self.m + float(np.log(self.s)) - math.log(count), self.plain / count


@taking_turns("pass a smaller batch_size")
def evaluate_model(model: VAE, X: ArrayLike, k: int | Iterable[int] = DEFAULT_K, seed: int = 0,
                   batch_size: int | None = None, progress: bool = False) -> dict[str, Any]:
    """The test-set losses of `model` on images X, in nats per image.

    "elbo": the negative ELBO of model.evaluate (one sample per image, analytic KL; the trainer's test loss) with
    its "reconstruction" and "kl" parts, and "constant": what the reconstruction adds to model.evaluate's to be a
    negative log density like the IWAE entries. For reconstruction "xent" 0; for "mse" (d / 2) log(pi) over the d
    values (gaussian_log_likelihood): the training loss sum (p - x)^2 is -log N(x; p, 1/2) less that constant, which
    model.evaluate and the trainer leave out (a reviewer's trial: the NLL came out 450 nats above the negative ELBO,
    which a bound cannot be). "iwae": one entry per k: "nll" = -(IWAE bound), the estimate of -log p(x);
    "negative_elbo_same_samples" = -(mean log-weight of the same k samples), which nll never exceeds; and
    "std_error" of nll's mean over the images. Raises UserError as iwae_bound does.
    """
    _check_model(model)
    flag(progress, "progress")
    _ks(k), seed_value(seed)            # (before the ELBO's pass over X, not after it)
    if batch_size is not None:
        integer(batch_size, "batch_size")
    X = model._images(X, "X")
    begin = time.perf_counter()
    elbo: dict[str, float] = model.evaluate(X)
    constant = gaussian_constant(X.shape[1]) if model.config.reconstruction == "mse" else 0.0
    elbo = {"reconstruction": elbo["reconstruction"] + constant, "kl": elbo["kl"],
            "total": elbo["total"] + constant, "constant": constant}
    res = iwae_bound(model, X, k=k, seed=seed, batch_size=batch_size, progress=progress)
    n = len(X)
    iwae = []
    for c, kk in enumerate(res["k"]):
        b = res["bound"][:, c]
        iwae.append({"k": kk, "nll": float(-b.mean()),
                     "std_error": float(b.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan"),
                     "negative_elbo_same_samples": float(-res["elbo"][:, c].mean())})
    return {"images": n, "seed": int(seed), "elbo": elbo, "iwae": iwae, "seconds": time.perf_counter() - begin}


def _progress_bar(total, desc):
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit="img", leave=False, dynamic_ncols=True,
                bar_format="{l_bar}{bar}| {n:.0f}/{total} [{elapsed}<{remaining}]")


# ---------------------------------------------------------------------- command line

def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="python -m fastvae.evaluate",
        description="Evaluate a trained fastvae checkpoint on a test set (by default the one its run was trained "
                    "and measured on, as its metrics.json records; MNIST's for a bare checkpoint): the negative "
                    "ELBO (reconstruction + KL) and the importance-weighted (IWAE) estimate of -log p(x), in nats "
                    "per image.",
        epilog="examples: %(prog)s runs/quick/checkpoint.npz --k 1 10 100 1000 --test-images 1000;  %(prog)s "
               "runs/quick --json eval.json.  Exit status: 0 done, 2 a mistake in the input, 130 interrupted "
               "(Ctrl-C), 74 done but standard output could not be written (--json is written first).")
    p.add_argument("checkpoint", type=path_argument,
                   help="checkpoint.npz of a training run (or the run folder holding it)")
    p.add_argument("--k", type=whole_number, nargs="+", default=[DEFAULT_K], metavar="K",
                   help=f"importance samples per image (default {DEFAULT_K}); several values cost as much as the "
                        "largest, because smaller k use a prefix of its samples")
    add_shared_options(p, quiet="no progress bar", precision="; default: the run's (bf16 if its metrics.json says so)",
                       of_a_run=True)
    p.add_argument("--batch-size", type=whole_number, metavar="B", default=DEFAULT_ROWS,
                   help=f"decoder rows per call (default {DEFAULT_ROWS}); bounds memory (the cpu backends' threads "
                        "share each call in chunks of at most 256 rows; the bounds' last bits follow the chunks' "
                        "sizes)")
    p.add_argument("--threads", type=thread_count, default=None, metavar="N|auto",
                   help="threads (default auto: the CPUs this process may use; the cpu backends' numbers are the "
                        "same at every count). On the reference backend OpenBLAS's count, whose split of the products "
                        "the last bits follow: default the run's --threads, as its metrics.json records")
    p.add_argument("--seed", type=whole_number, default=0, help="decides the importance samples (default 0)")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH (a file); - writes them to "
                   "standard output instead of the table, which then goes to standard error")
    return p


@returns_status
def main(argv: list[str] | None = None) -> int:
    """The command line `python -m fastvae.evaluate CHECKPOINT [options]`; returns its exit status
    (0, 2 or 130; fastvae.cli lists them all), argparse's own too."""
    with tool_streams() as streams:
        return streams.status(run_main(run, build_parser().parse_args(argv)))


def run(args: argparse.Namespace) -> int:
    from . import machine
    from .model import VAE

    check_positive(args, "test_images", "batch_size")
    if any(k <= 0 for k in args.k):
        raise OptionMistake(f"--k must be positive integers, got {' '.join(map(str, args.k))}")
    if max(args.k) > MAX_K:             # (the library's line, in the command line's words)
        raise OptionMistake(_too_large("--k", max(args.k)))
    seed_value(args.seed, "--seed")
    to_stdout = args.json == "-"    # (it wrote a file named "-": a new user's trial)
    json_path = None if args.json is None or to_stdout else Path(args.json)
    if json_path is not None:       # before minutes of computing, not after (a fresh user's trial lost them so)
        _check_writable(json_path, folder_meant=args.json.endswith(("/", os.sep)))
    path = checkpoint_path(args.checkpoint)
    notes = Notes(args)
    model = VAE.load(path, backend=args.backend, notify=notes, precision=run_precision(path, args.precision))
    model.threads = None if args.threads == "auto" else args.threads
    note_fewer_threads(notes, f"--threads {args.threads}", model)     # (the command line's words, not the library's)
    if args.threads is None and model.backend.name == "reference":
        # the run's thread count: the reference backend's products' last bits follow OpenBLAS's count, and the run's
        # test loss was measured at it (at OpenBLAS's own count a --threads 1 run's came out different: an auditor's
        # trial). The cpu backends' numbers are the same at every count (fastvae.inference): they take every CPU.
        recorded = (run_record(path) or {}).get("threads")
        model.threads = None if recorded == "auto" else recorded
    data, test_x, _ = run_test_set(args, path, model, notes)  # --data, else the run's own data set and split
    notes.flush()
    res = evaluate_model(model, test_x, k=args.k, seed=args.seed, batch_size=args.batch_size,
                         progress=not args.quiet)
    report = {"checkpoint": str(path), "fastvae": __version__, "backend": model.backend.name,
              "precision": model.precision, "threads": _threads_run(model), "batch_size": args.batch_size,
              "config": model.config.to_dict(), "epochs_trained": model.epoch, "data": data.source,
              "machine": machine.describe(), **res}
    if json_path is not None:       # before the table: a stdout that fails (a full disk) loses the table only
        try:
            jsonfile.write(json_path, report)
        except OSError as e:
            raise UserError(f"cannot write {json_path} ({e.strerror})") from None
    if to_stdout:                   # the JSON alone on stdout, for a pipe (jq ...); the table for the reader
        print(jsonfile.dumps(report, indent=1))
        if not args.quiet:
            print(format_table(report), file=sys.stderr)
        return 0
    print(format_table(report))
    if json_path is not None and not args.quiet:
        print(f"wrote {json_path}")
    return 0


def _check_writable(path: Path, folder_meant: bool = False) -> None:
    """Raises UserError (one line) unless the JSON can be written at `path`: its folder exists and takes a new
    file (tried: jsonfile.write's temporary file made and removed), and `path` is not a folder, nor was it typed as
    one (`folder_meant`: a trailing slash, which Path drops: 'new/' wrote a file named new)."""
    if path.is_dir() or folder_meant:
        raise UserError(f"cannot write {path}: it is a folder; give a file name, e.g. --json {path / 'eval.json'}")
    if not path.parent.is_dir():
        raise UserError(f"cannot write {path}: folder {path.parent} does not exist")
    if (path.exists() or path.is_symlink()) and not _is_a_report(path):
        # (it replaced the run's own checkpoint.npz, its metrics.json and its data file without a word: an
        # adversarial user's trial lost a trained model so)
        raise UserError(f"--json {path}: that file exists and is not an earlier fastvae-evaluate report (only those "
                        "are replaced); choose a new file name")
    try:
        tempfiles.probe(path.parent)
    except OSError as e:
        raise UserError(f"cannot write {path} ({e.strerror}); choose another --json path") from None


REPORT_KEYS = frozenset({"checkpoint", "epochs_trained", "elbo", "iwae"})     # held by every report of run()


def _is_a_report(path: Path) -> bool:
    """Whether `path` is a regular file holding a JSON report this command wrote (an object with REPORT_KEYS; a
    report is a few kB, so a file over 4 MB is not one)."""
    import json
    try:
        if not path.is_file() or path.stat().st_size > 4 << 20:
            return False
        report = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return False
    return isinstance(report, dict) and REPORT_KEYS <= report.keys()


# what evaluate_model() returns, and what the command's report adds for the table's first line
_RESULT_KEYS = frozenset({"images", "seed", "elbo", "iwae", "seconds"})
_RUN_KEYS = frozenset({"checkpoint", "epochs_trained", "config", "data", "backend"})


def _threads_run(model):
    """The thread count the evaluation ran at (the report's "threads"): on the cpu backends the workers' (their
    numbers the same at every count), on the reference backend OpenBLAS's fixed count (None: its own), else None."""
    from .threads import detect
    if model.backend.workers is not None:
        return detect(model.threads).threads
    return model.threads if model.backend.name == "reference" else None


def _at_threads(count):
    return "" if count is None else f" at {count} thread{'s' * (count != 1)}"


def format_table(r: dict) -> str:
    """The table `python -m fastvae.evaluate` prints, of its report (what `--json` writes; a first line naming the
    checkpoint, its test set and where that came from) or of evaluate_model()'s result (the same numbers; its first
    line names only the images, seed and time), then the negative ELBO and one row per k of the IWAE estimate.
    Raises UserError for a dict that is neither (format_table({}) raised KeyError: an API trial)."""
    if not isinstance(r, dict) or not _RESULT_KEYS <= set(r):
        raise UserError("format_table takes evaluate_model()'s result or the evaluate command's JSON report, a dict "
                        f"with {', '.join(sorted(_RESULT_KEYS))}; got "
                        + (f"a dict without {', '.join(sorted(_RESULT_KEYS - set(r)))}" if isinstance(r, dict)
                           else type(r).__name__))
    e = r["elbo"]
    facts = f"noise seed {r['seed']}, {r['seconds']:.1f} s"
    if _RUN_KEYS <= set(r):
        epochs = r['epochs_trained']
        first = (f"{r['checkpoint']}: {epochs} epoch{'s' * (epochs != 1)}, latent {r['config']['latent']}, "
                 f"{r['images']} test {'image' if r['config'].get('image_shape') else 'row'}"
                 f"{'s' * (r['images'] != 1)} of {r['data']}, {r['backend']} backend{_at_threads(r.get('threads'))}, "
                 f"{facts}")
    else:
        first = f"{r['images']} image{'s' * (r['images'] != 1)}, {facts}"
    lines = [first,
             "nats per image (lower is better)",
             f"  negative ELBO, 1 sample, analytic KL  {e['total']:9.3f}  = reconstruction {e['reconstruction']:.3f}"
             f" + KL {e['kl']:.3f}",
             *([f"  (reconstruction: the training loss, squared error, + (d/2) log pi = {e['constant']:.3f}: "
                "-log N(x; p, 1/2), a density as the IWAE rows' is)"] if e.get("constant") else []),
             f"  {'k':>6}  {'-IWAE bound (NLL)':>18}  {'± s.e.':>7}  {'-ELBO, same samples':>19}  {'gap':>6}"]
    for row in r["iwae"]:
        same = row["negative_elbo_same_samples"]
        lines.append(f"  {row['k']:>6}  {row['nll']:18.3f}  {row['std_error']:7.3f}  {same:19.3f}  "
                     f"{same - row['nll']:6.3f}")
    return "\n".join(lines)


# the console script fastvae-evaluate (pyproject.toml) and python -m fastvae.evaluate
console = script(main)

if __name__ == "__main__":
    sys.exit(console())
