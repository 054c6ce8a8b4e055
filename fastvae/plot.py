"""python -m fastvae.plot: the figures of a trained checkpoint, as PNG files.

samples.png (SAMPLE_CODINGS = 60 images decoded from N(0, I)), reconstructions.png (10 test images and their
reconstructions), latent.png (the test set's mu coloured by label), manifold.png (the decoded 20 x 20 grid of the
prior's quantiles; only for a 2-D latent space), interpolation.png (decoded codings on the line from one test
image's mu to another's) and loss.png (train and test loss by epoch, from the metrics.json beside the checkpoint, if
present).
A mistake is one line on stderr and exit status 2. The drawing itself is fastvae.figures (matplotlib, lazy).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from statistics import NormalDist
from typing import TYPE_CHECKING, Callable

import numpy as np

from . import jsonfile
from .cli import (Parser, add_shared_options, check_positive, checkpoint_path, path_argument, remove_empty,
                  returns_status, run_main, run_precision, run_test_set, script, valid_epochs)
from .constants import SAMPLE_CODINGS
from .errors import UserError
from .sigint import CtrlCNoted
from .streams import tool_streams

if TYPE_CHECKING:                   # the model module loads only when a checkpoint is read
    from .model import VAE

# every file write_figures may write (a new run with --overwrite removes the old run's)
FIGURES = ("samples.png", "reconstructions.png", "latent.png", "manifold.png", "interpolation.png", "loss.png")
MANIFOLD_SIDE = 20
MANIFOLD_RANGE = (0.05, 0.95)     # probabilities of the prior's quantiles at the grid's first and last points
INTERPOLATION_STEPS = 10
# Pairs of labels to interpolate between where the data hold them all (MNIST's digits): different digits, so that
# the rows are varied (the first test images of 7->1, 2->0, 4->9, 3->8, 6->5); other labels: interpolation_pairs.
INTERPOLATION_DIGITS = ((7, 1), (2, 0), (4, 9), (3, 8), (6, 5))


def manifold_codings(side=MANIFOLD_SIDE, lo=MANIFOLD_RANGE[0], hi=MANIFOLD_RANGE[1]):
    """(quantiles (side,), codings (side * side, 2)): z_0 = q[c], z_1 = q[r] for row r, column c, where
    q = the standard normal's inverse CDF at side points evenly spaced in [lo, hi]."""
    inv = NormalDist().inv_cdf
    q = np.array([inv(p) for p in np.linspace(lo, hi, side)])
    z0, z1 = np.meshgrid(q, q)                # z0 varies along columns, z1 along rows
    return q, np.stack([z0.ravel(), z1.ravel()], axis=1)


def latent_dims(mu):
    """(dims, how): the latent dimensions to scatter — all of them for 1 or 2, else the two whose mu vary most."""
    if mu.shape[1] <= 2:
        return tuple(range(mu.shape[1])), None
    var = mu.var(axis=0)
    i, j = sorted(np.argsort(var)[::-1][:2].tolist())
    return (i, j), f"the two of {mu.shape[1]} with the largest variance of mu: {var[i]:.2f} and {var[j]:.2f}"


def interpolation_pairs(labels, n, pairs=INTERPOLATION_DIGITS, rows=len(INTERPOLATION_DIGITS)):
    """[(index_a, index_b, label_a, label_b)]: which of n test images to interpolate between, at most `rows` pairs.
    With labels: the first images of the label pairs in `pairs` (MNIST's digits) where the data hold them all, else
    the first images of labels taken two by two in their order (a data set's own labels: EMNIST's 1..26 drew only
    pairs of 1..9, labels 100..111 none, with advice to use more images: a fresh user's trial); without labels, the
    first images two by two, their labels None; with one label only, the same pairs, labelled (a data set of one
    class drew none: a researcher's trial). Empty when fewer than two images are there."""
    if labels is None:
        return [(2 * k, 2 * k + 1, None, None) for k in range(min(rows, n // 2))]
    labels = np.asarray(labels)
    first = {}
    for i, label in enumerate(labels.tolist()):
        first.setdefault(label, i)
    if len(first) < 2:
        return [(2 * k, 2 * k + 1, labels[2 * k].item(), labels[2 * k + 1].item()) for k in range(min(rows, n // 2))]
    if not all(a in first and b in first for a, b in pairs):
        classes = list(first)              # in order of first appearance: varied rows, not 0-1, 2-3 of a sort
        pairs = [(classes[k], classes[k + 1]) for k in range(0, len(classes) - 1, 2)][:rows]
    return [(first[a], first[b], a, b) for a, b in pairs if a in first and b in first][:rows]


def interpolation_rows(model, images, labels, steps=INTERPOLATION_STEPS, pairs=INTERPOLATION_DIGITS):
    """(rows (r, steps, d), originals (r, 2, d) in [0, 1], [(label_a, label_b)] or None without labels): each row
    decodes (1 - t) mu_a + t mu_b, t = 0..1, for the test images interpolation_pairs chooses; None when it chooses
    none (fewer than two test images)."""
    chosen = interpolation_pairs(labels, len(images), pairs)
    if not chosen:
        return None
    picked = images[[c[0] for c in chosen] + [c[1] for c in chosen]]
    mu, _ = model.encode(picked)
    mu_a, mu_b = mu[:len(chosen)], mu[len(chosen):]
    t = np.linspace(0.0, 1.0, steps)[None, :, None]
    z = (1.0 - t) * mu_a[:, None, :] + t * mu_b[:, None, :]
    decoded = model.decode(z.reshape(-1, mu.shape[1])).reshape(len(chosen), steps, -1)
    originals = np.asarray(picked, dtype=np.float32) / (255.0 if picked.dtype == np.uint8 else 1.0)
    originals = np.stack([originals[:len(chosen)], originals[len(chosen):]], axis=1)
    return decoded, originals, (None if labels is None else [(c[2], c[3]) for c in chosen])


def _image_figures(model, test_x, test_y, out, seed, shape, done, notify):
    """The figures that draw images of `shape` (h, w): samples, reconstructions, manifold, interpolations."""
    from . import figures
    epochs = f"{model.epoch} epoch{'s' * (model.epoch != 1)}"
    figures.save_digits(out / "samples.png", model.sample(SAMPLE_CODINGS, seed=seed), shape=shape,
                        title=f"{SAMPLE_CODINGS} codings from N(0, I), decoded after {epochs}")
    done("samples.png")
    originals = test_x[:10].astype(np.float32) / (255.0 if test_x.dtype == np.uint8 else 1.0)
    figures.save_reconstructions(out / "reconstructions.png", originals, model.reconstruct(test_x[:10]), shape=shape)
    done("reconstructions.png")
    if model.config.latent == 2:
        q, z = manifold_codings()
        figures.save_manifold(out / "manifold.png", model.decode(z), q, shape=shape)
        done("manifold.png")
    else:
        notify(f"no manifold.png: it needs a 2-D latent space, this model's is {model.config.latent}-D "
               "(train one with --latent 2)")
    found = interpolation_rows(model, test_x, test_y)
    if found is not None:
        figures.save_interpolations(out / "interpolation.png", *found, shape=shape)
        done("interpolation.png")
    else:
        notify(f"no interpolation.png: it needs two test images, and there {'is' if len(test_x) == 1 else 'are'} "
               f"{len(test_x)}")


def write_figures(model: VAE, test_x: np.ndarray, test_y: np.ndarray, out: str | Path, history: list | None = None,
                  seed: int | None = None, notify: Callable[[str], None] = print,
                  skipped: Callable[[str], None] | None = None,
                  image_shape: tuple[int, int] | None = None) -> list[Path]:
    """Write every figure of `model` into folder `out`; returns the paths written. test_x: test images (n, d),
    uint8 or floats in [0, 1], of the model's width; test_y: their labels (n,) or None; history: metrics.json's
    "epochs" list (loss.png is skipped without it); seed: the sample codings' seed (default the model's); notify:
    told "wrote PATH" for each figure, and, unless `skipped` is given, the one line on each figure not drawn (what
    it needs). image_shape: (h, w) to draw the rows as, for a model that has none (trained on rows of images:
    the data set's own shape); default the model's. Raises UserError without matplotlib."""
    from . import figures
    out = Path(out)
    written = []
    notify_skip, notify = notify if skipped is None else skipped, notify

    def done(name):
        written.append(out / name)
        notify(f"wrote {out / name}")

    shape = model.image_shape or image_shape
    mu, _ = model.encode(test_x)
    dims, how = latent_dims(mu)
    figures.save_latent_scatter(out / "latent.png", mu, test_y, dims, how)
    done("latent.png")
    if shape is None:
        notify_skip("no samples, reconstructions, manifold or interpolation figures: the data are feature rows, not "
                    "images (give images as (n, h, w) arrays or IDX files to get them)")
    else:
        _image_figures(model, test_x, test_y, out, seed, shape, done, notify_skip)
    if history:
        figures.save_loss_curves(out / "loss.png", history)
        done("loss.png")
    else:
        notify_skip("no loss.png: no metrics.json with the run's history beside the checkpoint")
    return written


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="python -m fastvae.plot",
        description="Draw the figures of a trained fastvae checkpoint: samples, reconstructions, the latent space "
                    "coloured by label, the 2-D manifold (latent 2 only), interpolations and loss curves.",
        epilog="example: %(prog)s runs/quick/checkpoint.npz --out runs/quick/figures.  "
               "Exit status: 0 done, 2 a mistake in the input, 130 interrupted (Ctrl-C), 74 done but standard "
               "output could not be written.")
    p.add_argument("checkpoint", type=path_argument,
                   help="checkpoint.npz of a training run (or the run folder holding it)")
    p.add_argument("--out", type=path_argument, metavar="DIR",
                   help="folder for the PNG files (default: figures/ beside the checkpoint)")
    add_shared_options(p, quiet="print nothing but errors",
                       precision="; default: the run's (bf16 if its metrics.json says so)", of_a_run=True)
    return p


@returns_status
def main(argv: list[str] | None = None) -> int:
    """The command line `python -m fastvae.plot CHECKPOINT [options]`; returns its exit status
    (0, 2 or 130; fastvae.cli lists them all), argparse's own too."""
    with tool_streams() as streams:
        written: list[str] = []

        def kept():
            # what a stop leaves, said after its line: a closed reader of stdout (`| head`) stopped the figures with
            # status 141 and no line, 2 of 6 figures drawn (a fresh user's trial), as a Ctrl-C can stop them
            return f"written before it: {', '.join(written)}" if written else None
        return streams.status(run_main(lambda args: run(args, written), build_parser().parse_args(argv), kept))


def run(args: argparse.Namespace, written: list[str] | None = None) -> int:
    """The tool's work; each figure's path is added to `written` as it is written."""
    from .figures import matplotlib_missing
    from .model import VAE

    if matplotlib_missing():
        raise UserError(matplotlib_missing())
    check_positive(args, "test_images")
    path = checkpoint_path(args.checkpoint)
    model = VAE.load(path, backend=args.backend, precision=run_precision(path, args.precision))
    history = None
    metrics = path.parent / "metrics.json"
    if metrics.is_file():
        try:
            epochs = jsonfile.read(metrics)["epochs"]
            if not valid_epochs(epochs):        # (tracebacks, or a nonsense figure: two reviews)
                raise ValueError("its epochs are not as a run writes them")
            history = epochs
        except (OSError, ValueError, KeyError, TypeError) as e:
            print(f"fastvae: ignoring {metrics} ({type(e).__name__}); no loss.png", file=sys.stderr)
    note = None if args.quiet else (lambda line: print(line, file=sys.stderr))
    data, test_x, test_y = run_test_set(args, path, model, note)    # --data, else the run's own data set and split
    out = args.out if args.out is not None else path.parent / "figures"
    if args.out is None and out.is_symlink():   # (a link planted in a shared run folder: written through; a review)
        raise UserError(f"{out} is a link, not the run's own figures folder; remove it, or choose a folder with --out")
    # made only now that every input has been checked, and removed again (the folders this call made, while they
    # are empty) if drawing stops before a figure is written: a failed plot leaves no empty figures/ behind
    made = [p for p in (out, *out.parents) if not p.exists()]
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        remove_empty(made)
        raise UserError(f"cannot create the output folder {out} ({e.strerror}); choose another with --out") from None
    told = [] if written is None else written

    def say(line):
        if line.startswith("wrote "):       # (write_figures' line for each figure written: noted before it is shown)
            told.append(line[len("wrote "):])
        if not args.quiet:
            print(line)
    try:
        with CtrlCNoted() as ctrl_c:        # (a Ctrl-C matplotlib's callbacks swallowed is raised after them)
            # a model trained on rows of images (the library's fit of load_data's train_x) is drawn in the data's
            # shape: it said "the data are feature rows" of an IDX folder of images (a researcher's trial)
            write_figures(model, test_x, test_y, out, history=history, notify=say, image_shape=data.image_shape)
        ctrl_c.check()
    except BaseException:                   # a mistake, an error or Ctrl-C: the exception goes on unchanged
        remove_empty(made)
        raise
    return 0


# the console script fastvae-plot (pyproject.toml) and python -m fastvae.plot
console = script(main)

if __name__ == "__main__":
    sys.exit(console())
