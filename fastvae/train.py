"""python -m fastvae.train: train the seed's VAE on MNIST and write its results to a run folder.

Writes into --out: checkpoint.npz (every epoch, atomically), metrics.json, samples/epoch_NNN.png (the same
SAMPLE_CODINGS = 60 codings decoded each epoch), and at the end the figures of fastvae.plot (samples,
reconstructions, latent scatter, interpolations, loss curves, and the manifold for a 2-D latent space).
A user's mistake is one line on stderr and exit status 2; divergence exits with 3 (the last good checkpoint
stays); Ctrl-C stops after the step in progress, saves a checkpoint and exits with 130 (a SIGTERM during training:
the same, with 143); --resume continues.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import itertools
import os
import shlex
import signal
import sys
import time
from pathlib import Path

import numpy as np

from . import __version__, jsonfile, machine, runlock, tempfiles, training
from .cli import (Notes, OptionMistake, Parser, add_shared_options, at_most, check_positive, check_run_config,
                  command_of, load_data, note_fewer_threads, path_argument, remove_empty, returns_status, run_main,
                  script, thread_count, valid_epochs, valid_run_record, whole_number)
from .config import Config
from .constants import ENCODERS, HIDDEN_ACTIVATIONS, RECONSTRUCTIONS, SAMPLE_CODINGS
from .errors import StoppedBySignal, TrainingDiverged, TrainingInterrupted, UserError, file_error
from .sigint import CtrlCNoted
from .streams import tool_streams

DEFAULTS = Config()


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="python -m fastvae.train",
        description="Train the VAE of Geron's Hands-On ML (ch. 15) on MNIST (or another data set: --data) with "
                    "fastvae's fused kernels. "
                    "Every default is the seed's.",
        epilog="examples: %(prog)s --epochs 3 --out runs/quick;  %(prog)s --resume runs/quick --epochs 10.  "
               "Exit status: 0 done, 2 a mistake in the input, 3 training diverged, 130 interrupted (Ctrl-C), 143 "
               "stopped by SIGTERM (kill) during training; both save a checkpoint to --resume from; 74 done but "
               "standard output could not be written.")
    add_shared_options(p, quiet="no header, progress bar, per-epoch or done lines (errors still print)",
                       precision="; default fp32 (bf16 for --backend cpu-bf16); --resume keeps the run's unless "
                                 "given")
    p.add_argument("--epochs", type=whole_number, default=None,
                   help=f"passes over the training set (default {DEFAULTS.epochs}; with --resume: the total to reach)")
    p.add_argument("--batch-size", type=whole_number, help=f"images per training step (default {DEFAULTS.batch_size})")
    p.add_argument("--lr", type=float, help=f"Adam's learning rate (default {DEFAULTS.lr})")
    p.add_argument("--hidden", type=whole_number, nargs="+", metavar="WIDTH",
                   help="encoder widths; the decoder mirrors them (default: %s)" % " ".join(map(str, DEFAULTS.hidden)))
    p.add_argument("--latent", type=whole_number, help=f"size of the coding z (default {DEFAULTS.latent})")
    p.add_argument("--encoder", choices=ENCODERS,
                   help="the heads output gamma = log sigma^2 (default, the seed's final form) or sigma itself "
                        "(its first form, KL smoothed by 1e-10)")
    p.add_argument("--reconstruction", choices=RECONSTRUCTIONS,
                   help="xent: sigmoid cross-entropy (default, the seed's); mse: squared error of the pixel "
                        "probabilities")
    p.add_argument("--activation", choices=HIDDEN_ACTIVATIONS,
                   help=f"the hidden layers' activation (default {DEFAULTS.activation}, the seed's); each one's "
                        "derivative follows from its output, so the fused kernels keep only that")
    p.add_argument("--seed", type=whole_number,
                   help=f"decides the initial weights, the shuffles and every noise draw (default {DEFAULTS.seed})")
    p.add_argument("--train-images", type=whole_number, metavar="N", help="use only the first N training images")
    p.add_argument("--out", type=path_argument, metavar="DIR",
                   help="run folder for checkpoint, metrics and figures (default: runs/<date>-<time>)")
    p.add_argument("--resume", type=path_argument, metavar="RUN_DIR",
                   help="continue the run in RUN_DIR from its checkpoint, exactly as if it had not stopped")
    p.add_argument("--overwrite", action="store_true",
                   help="start a new run in an --out folder that holds one: that run's checkpoint, metrics and "
                        "figures are removed first (without it such a folder is refused)")
    p.add_argument("--no-plots", action="store_true", help="write no figures (no matplotlib needed); --resume keeps "
                                                           "it (draw them later with fastvae-plot)")
    p.add_argument("--threads", type=thread_count, default=None, metavar="N|auto",
                   help="CPU threads of the step: its row shards and update, OpenBLAS at one thread each "
                        "(default auto: the CPUs this process may "
                        "use, affinity and cgroup quota, adapted while training when other work takes cores; a "
                        "number fixes it, for bit-identical reruns); --resume keeps the run's unless given")
    return p


def _as_option(e):
    """A UserError of a setting the options made (fastvae.Config's checks, which name the library's setting:
    "batch_size must be ...") naming the option instead ("--batch-size must be ..."; a fresh user's trial)."""
    text = str(e).replace("e.g. hidden=(500, 500)", "e.g. --hidden 500 500")
    name, _, rest = text.partition(" ")
    if name in {f.name for f in dataclasses.fields(Config)}:
        return OptionMistake(f"--{name.replace('_', '-')} {rest}")
    return e


# what marks a folder as holding a run
_RUN_FILES = ("checkpoint.npz", "metrics.json")
# options that describe the model or its data: fixed once a run has started
_RUN_OPTIONS = ("batch_size", "lr", "hidden", "latent", "encoder", "reconstruction", "activation", "seed", "data",
                "test_fraction", "train_images", "test_images", "out")


@returns_status
def main(argv: list[str] | None = None) -> int:
    """The command line `python -m fastvae.train [options]`; returns its exit status
    (0, 2, 3 or 130; fastvae.cli lists them all), argparse's own too."""
    with tool_streams() as streams:
        args = build_parser().parse_args(argv)
        args.argv = list(sys.argv[1:] if argv is None else argv)      # (what a stop before any checkpoint repeats)
        return streams.status(run_main(run, args, kept=lambda: _kept(getattr(args, "run_dir", None))))


def _kept(out):
    """What a run stopped by a divergence or a second Ctrl-C leaves in its folder `out` (None: it had none yet)."""
    if out is None:
        return None
    if (out / "checkpoint.npz").exists():
        return "the last saved checkpoint is kept"
    return "no checkpoint was saved (no epoch ended)"


def _prepare_out(out, hold, new_run=False, overwrite=False, figures=False):
    """The run's folder (`out`, or a new runs/<date>-<time>), made where missing and held by this run (runlock) until
    `hold`, a contextlib.ExitStack, closes; then the folders made here are removed again where still empty, so that a
    run refused by a later check leaves nothing behind. Raises UserError (one line) where another run holds it, where
    a new run would replace a run without --overwrite, or files of the names its `figures` take, or where it cannot
    be written."""
    made = []                                   # the folders this run made, to remove if it writes nothing
    hold.callback(remove_empty, made)           # (registered first: it runs last, once the lock file is gone)
    for attempt in range(3):
        try:
            if out is None:
                made += [p for p in (_RUNS, *_RUNS.parents) if not p.exists()]
                out = _default_out(_RUNS)
                made.append(out)
            else:
                out = Path(out)
                made += [p for p in (out, *out.parents) if not p.exists()]
                out.mkdir(parents=True, exist_ok=True)
            # held before the folder's contents are looked at: two runs started together cannot both find it free
            lock = runlock.acquire(out)
            break
        except runlock.InUse as e:
            pid = f" (pid {e.pid})" if e.pid is not None else ""
            then = "before resuming it" if not new_run else "or pass another --out"
            raise UserError(f"{out} is in use by another fastvae run{pid}; wait for it to finish {then}") from None
        except FileNotFoundError as e:          # a run refused right after making it removed it again: make it anew
            if attempt == 2:                    # (or a place where no folder can be made: /proc/run)
                raise UserError(f"cannot make the output folder {out} ({e.strerror}); choose another with --out") \
                    from None
        except OSError as e:
            why = "it is a file, not a folder" if out is not None and os.path.isfile(out) else e.strerror
            raise _unwritable(out, why, new_run) from None
    if lock is not None:
        hold.callback(lock.release)
    # the lock file is not among these: a folder left with only a killed run's lock file holds no run
    held = [name for name in _RUN_FILES if (out / name).exists()]
    if new_run and held == ["metrics.json"] and not _is_run_metrics(out / "metrics.json"):
        # another program's metrics.json was taken for a run that stopped early, and --overwrite (which the line
        # advised) removed it (an adversarial user's trial)
        raise UserError(f"{out} holds a metrics.json that is not a fastvae run's; choose another --out (--overwrite "
                        "would not remove it)")
    if new_run and held and not overwrite:
        if "checkpoint.npz" not in held:        # (--resume would refuse it)
            raise UserError(f"{out} holds a run that stopped before its first checkpoint; start it again with "
                            "--overwrite")
        raise UserError(f"{out} already holds a run ({held[0]}); continue it with --resume {shlex.quote(str(out))}, "
                        "or pass --overwrite to replace it")
    if (out / "samples").is_symlink():
        # the epochs' samples were written through a `samples` link planted in a folder others can write (a review)
        raise UserError(f"{out / 'samples'} is a link, not the run's own folder; remove it, or choose another --out")
    if new_run and figures and not overwrite:
        # a folder holding no run, but files of the figures' names: the user's own samples.png, loss.png and
        # samples/epoch_001.png were replaced without a word (an adversarial user's trial)
        from .plot import FIGURES
        theirs = [p for p in (*(out / f for f in FIGURES), *sorted((out / "samples").glob("epoch_*.png")))
                  if p.exists()]
        if theirs:
            raise UserError(f"{out} holds {theirs[0].relative_to(out)}, a name of the figures a run writes there; "
                            "choose another --out, pass --no-plots, or --overwrite to replace them")
    try:                                        # (an old lock file of a killed run opens even in a read-only folder)
        tempfiles.probe(out)
    except OSError as e:
        raise _unwritable(out, e.strerror, new_run) from None
    return out


def _unwritable(out, why, new_run):
    """The line for a run folder that cannot be written: a new run's names --out; a resumed run's cannot (--out does
    not go with --resume, which the line advised: an adversarial user's trial)."""
    if new_run:
        return UserError(f"cannot write to the output folder {out} ({why}); choose another with --out")
    return UserError(f"cannot write to the run folder {out} ({why}); a resumed run writes its checkpoint there: make "
                     "it writable, or copy the folder and resume the copy")


def _is_run_metrics(path):
    """Whether `path` reads as a fastvae run's metrics.json: a JSON object with its "run" and "epochs"."""
    try:
        metrics = jsonfile.read(path)
    except (OSError, ValueError):
        return False
    return isinstance(metrics, dict) and {"run", "epochs"} <= metrics.keys()


# where runs go without --out (relative to the working directory)
_RUNS = Path("runs")


def _default_out(root, now=None):
    """A new folder root/<date>-<time> (local time `now`, default the present), made here: os.mkdir fails where the
    name exists, so two runs started in the same second never share one; the later gets -2 (then -3, ...)."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    root.mkdir(parents=True, exist_ok=True)
    for n in itertools.count(1):
        out = root / (stamp if n == 1 else f"{stamp}-{n}")
        try:
            out.mkdir()
            return out
        except FileExistsError:
            continue


def _new_run(args, notify, hold):
    """(model, run info, folder) for a fresh run from the options, the seed's defaults filling the rest; the folder
    is held until `hold` closes (_prepare_out)."""
    from .model import VAE
    d = DEFAULTS
    try:
        cfg = _new_config(args, d)
    except UserError as e:
        raise _as_option(e) from None
    model = VAE(hidden=cfg.hidden, latent=cfg.latent, backend=args.backend, seed=cfg.seed, lr=cfg.lr,
                batch_size=cfg.batch_size, encoder=cfg.encoder, reconstruction=cfg.reconstruction,
                activation=cfg.activation, notify=notify, precision=args.precision)
    model.config = cfg
    run_info = {"data_dir": None if args.data is None else str(args.data.resolve()),
                "test_fraction": args.test_fraction,
                "train_images": args.train_images, "test_images": args.test_images}
    return model, run_info, _prepare_out(args.out, hold, new_run=True, overwrite=args.overwrite,
                                         figures=not args.no_plots)


def _new_config(args, d):
    """The Config of a new run: the options given, the seed's defaults `d` for the rest (Config checks each)."""
    return Config(hidden=tuple(args.hidden or d.hidden), latent=_or(args.latent, d.latent),
                  batch_size=_or(args.batch_size, d.batch_size), epochs=_or(args.epochs, d.epochs),
                  lr=_or(args.lr, d.lr), seed=_or(args.seed, d.seed), encoder=_or(args.encoder, d.encoder),
                  reconstruction=_or(args.reconstruction, d.reconstruction),
                  activation=_or(args.activation, d.activation))       # validates each, one line each


def _resumed_run(args, notify, hold):
    """(model, run info, folder) of the run in args.resume, with its history; --epochs sets a new total. The folder
    is held until `hold` closes (_prepare_out)."""
    from .model import VAE
    # (--data: only the run's own data set, at a new place where the recorded one is gone; checked below)
    given = [f"--{k.replace('_', '-')}" for k in _RUN_OPTIONS if getattr(args, k) is not None and k != "data"]
    if args.overwrite:
        raise OptionMistake("--overwrite starts a new run in an --out folder; it cannot be combined with --resume")
    if given:
        raise OptionMistake(f"{', '.join(given)} cannot be changed when resuming; the run keeps its own settings "
                            "(only --epochs, --backend, --precision, --threads, --no-plots and --quiet apply, and "
                            "--data where the run's data set has moved)")
    out = args.resume
    # held before its files are read, so that a live run writing them refuses this one; a missing folder is not made
    # here (it is refused below as no run folder)
    if out.is_dir():
        _prepare_out(out, hold)
    read = False                            # (metrics.json read as JSON: what was wrong is then its content)
    try:
        metrics = jsonfile.read(out / "metrics.json")
        read = True
        run_info, history = metrics["run"], metrics["epochs"]
        # types and ranges as a run writes them (hand-edited ones were tracebacks: a security review)
        if not valid_run_record(run_info) or not valid_epochs(history):
            raise ValueError("its run record or epochs are not as a run writes them")
    except (OSError, ValueError, KeyError, TypeError) as e:
        if not out.exists():                # (it said "(FileNotFoundError)")
            raise file_error(f"--resume {out}: there is no such folder; pass the --out folder of an earlier run",
                             FileNotFoundError, out) from None
        record, checkpoint = out / "metrics.json", out / "checkpoint.npz"
        if record.is_file() and checkpoint.is_file():
            # a run folder whose record is damaged or of another form: it said "not a fastvae run folder", "pass
            # the --out folder of an earlier run" of the very folder, and no way on (a fresh user's trial)
            what = ("holds no run record as a run writes them (an older fastvae's, or edited)" if read else
                    f"cannot be read ({type(e).__name__})")
            way = "continue training the checkpoint beside it, which is kept, in the library (fastvae.VAE.load, fit)" \
                if read else "put a good copy back (the checkpoint beside it is kept: fastvae.VAE.load reads it)"
            raise UserError(f"{record} {what}: --resume takes the run's settings and data set from it; {way}") \
                from None
        raise UserError(f"{out} is not a fastvae run folder with a readable metrics.json ({type(e).__name__}); "
                        "pass the --out folder of an earlier run") from None
    if not (out / "checkpoint.npz").exists():
        raise UserError(f"the run in {out} stopped before it saved a checkpoint; start it again with its options "
                        f"and --out {out} --overwrite")
    _moved_data(args, run_info, out)
    # the precision the run asked for (kept in its run info, as --threads is) unless --precision changes it
    model = VAE.load(out / "checkpoint.npz", backend=args.backend, notify=notify,
                     precision=_or(args.precision, run_info.get("precision")))
    check_run_config(model, out / "checkpoint.npz", metrics)
    model._set(history=[r for r in history if r["epoch"] <= model.epoch])
    recorded = max((r["epoch"] for r in model.history), default=0)
    if recorded < model.epoch:              # a checkpoint trained on outside this run (VAE.load, fit, save)
        notify(f"fastvae: the checkpoint is at epoch {model.epoch} but metrics.json records epochs up to {recorded}: "
               f"epoch{'s' * (model.epoch - recorded > 1)} {_span(recorded + 1, model.epoch)} trained outside this "
               "run have no record (the loss figure joins across them)")
    if args.epochs is not None:
        model.config = dataclasses.replace(model.config, epochs=args.epochs)
    if model.epoch >= model.config.epochs:
        # (with a smaller --epochs it said "3 of 1 epochs": a new user's trial)
        done = (f"{model.epoch} epochs, more than --epochs {model.config.epochs} asks for"
                if model.epoch > model.config.epochs else f"{model.epoch} of {model.config.epochs} epochs")
        raise UserError(f"the run in {out} has already trained {done}; pass --epochs N with N > {model.epoch} to "
                        "train more")
    return model, run_info, out


def _items(n, image_shape):
    """What n rows of the data are called: images, or rows where the data are feature rows (they were all "images":
    a fresh user's trial)."""
    return ("image" if image_shape is not None else "row") + "s" * (n != 1)


def _span(first, last):
    return str(first) if first == last else f"{first}-{last}"


def _moved_data(args, run_info, out):
    """A resumed run's data set where it is now: --data may name the recorded file itself, or its new place where the
    recorded path is gone (moving a project's folder left its runs impossible to continue: a fresh user's trial);
    the new place is kept in the run info, hence in metrics.json. Raises UserError (one line) for another data set,
    or for a recorded path that is gone when no --data is given."""
    from .cli import same_file
    recorded = run_info.get("data_dir")
    gone = recorded is not None and not Path(recorded).exists()
    resume = shlex.join([*command_of("train"), "--resume", str(out)])
    if args.data is None:
        if gone:
            raise UserError(f"the data set this run was trained on, {recorded}, no longer exists; pass it where it "
                            f"is now: {resume} --data PATH")
        return
    if recorded is None or not (gone or same_file(args.data, recorded)):
        where = "the embedded MNIST" if recorded is None else recorded
        raise OptionMistake(f"--data cannot be changed when resuming: the run was trained on {where} (--data only "
                            "gives the run's own data set its new place, where the recorded path is gone)")
    run_info["data_dir"] = str(args.data.resolve())


def _fingerprint(x):
    """sha256 of an array's shape, dtype and bytes (47 MB of MNIST: 0.1 s)."""
    digest = hashlib.sha256(f"{x.shape} {x.dtype.str}".encode())
    digest.update(np.ascontiguousarray(x).data)
    return digest.hexdigest()


def _or(value, default):
    return default if value is None else value


class _Stop:
    """What the line of a run stopped by Ctrl-C says, as far as the run has got: its folder (None before it is made
    for good), the epoch of the checkpoint in it (None before one is saved), the epochs asked for, and the command
    that draws the figures (None with --no-plots). Each suggested command works (tests/test_reliability.py)."""

    def __init__(self, argv=None):
        self.out = self.epochs = self.plot = None
        self.argv = argv                        # the options as typed (None: not known, a run() of parsed options)

    def saved_epoch(self):
        """The epoch of the checkpoint in the run's folder, read from it (a stop may land between its save and
        anything that would note it), or None where there is none."""
        try:
            from . import checkpoint
            return checkpoint.load(self.out / "checkpoint.npz").epoch
        except (OSError, UserError):
            return None

    def line(self, how):
        if self.out is None:
            return f"{how} before the run started; nothing was written"
        saved = self.saved_epoch()
        if saved is not None and saved >= self.epochs:
            figures = f"; draw its figures with: {self.plot}" if self.plot else ""
            return f"{how} after the last epoch ({saved} of {self.epochs}); checkpoint saved{figures}"
        if saved is not None:
            return (f"{how}; the checkpoint of epoch {saved} is kept; continue with: "
                    f"{shlex.join([*command_of('train'), '--resume', str(self.out)])}")
        if self.argv is None:
            return (f"{how} before the run saved a checkpoint; nothing to resume: start it again with its options "
                    f"and --out {shlex.quote(str(self.out))} --overwrite")
        # its own options, in its own folder (a default --out is a new name each time), replacing what it began
        again = [*command_of("train"), *_without(self.argv, "--out", "--overwrite"), "--out", str(self.out),
                 "--overwrite"]
        return f"{how} before the run saved a checkpoint; nothing to resume: start it again with: {shlex.join(again)}"


def _without(argv, valued, flag):
    """argv without the option `valued` (and its value: "--out X" or "--out=X") and without the flag `flag`."""
    kept, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == valued:
            skip = True
        elif not (a == flag or a.startswith(valued + "=")):
            kept.append(a)
    return kept


def run(args: argparse.Namespace) -> int:
    """Train as the parsed options say; returns 0. Raises UserError, TrainingDiverged or TrainingInterrupted
    (after saving the checkpoint), which run_main turns into the exit status; a second Ctrl-C (a KeyboardInterrupt
    that stops at once), or one before training or while the final figures are drawn, says what is kept."""
    stop = _Stop(getattr(args, "argv", None))
    try:
        with contextlib.ExitStack() as hold:    # the run's folder is held (runlock) until the run ends, however
            return _train(args, stop, hold)
    except TrainingInterrupted:
        raise
    except StoppedBySignal as e:             # (SIGTERM while the final figures are drawn)
        raise StoppedBySignal(stop.line(f"stopped by {e.how}"), e.signum) from None
    except KeyboardInterrupt:
        raise KeyboardInterrupt(stop.line("interrupted")) from None


def _train(args, stop, hold):
    from .figures import matplotlib_missing

    check_positive(args, "train_images", "test_images")
    notes = Notes(args)
    model, run_info, out = (_resumed_run if args.resume is not None else _new_run)(args, notes, hold)
    args.run_dir = out                      # (what a stop leaves there is said by main: _kept)
    # where a fixed count came from, as the note below names it (it said "--threads 5" for OPENBLAS_NUM_THREADS=5,
    # an option the user never gave: a fresh user's trial)
    asked_by = "the run's threads (its metrics.json)"
    if args.threads is not None:                # kept in metrics.json's run info: --resume keeps the count
        run_info["threads"] = args.threads
        asked_by = f"--threads {args.threads}"
    elif args.resume is None:
        # a count fixed by OMP_NUM_THREADS (or the others) is the run's too: --resume without the variable ran at
        # auto, and the resumed run was not the uninterrupted one's bits (an auditor's trial)
        from .threads import explicit_from_env
        fixed = explicit_from_env()
        if fixed is not None:
            run_info["threads"] = fixed[0]
            asked_by = f"{fixed[1]}={fixed[0]}"
    if args.precision is not None:              # the same: asked for once, kept; the one in use is info's
        run_info["precision"] = args.precision
    elif args.resume is None and model.precision == "bf16":   # a bf16 backend named (cpu-bf16): resume in bf16 too
        run_info["precision"] = "bf16"
    model.threads = run_info.get("threads")     # (checked as it is set)
    note_fewer_threads(notes, asked_by, model)  # (said once here; metrics.json records it with every epoch)
    cfg = model.config
    asked = args.test_fraction if args.resume is None else None
    args.test_fraction = run_info.get("test_fraction")     # the run's own: a resumed run splits as it did
    data = load_data(args, cfg.seed, data_path=run_info["data_dir"], asked=asked)
    if args.resume is None:                 # (a resumed run's counts were checked when it began)
        for key, x, what in (("train_images", data.train_x, "training"), ("test_images", data.test_x, "test")):
            if run_info[key] is not None:
                at_most(run_info[key], x, f"--{key.replace('_', '-')}", f"{what} images of {data.source}")
    train_x = data.train_x[:run_info["train_images"]]       # [:None] is all of them
    test_x = data.test_x[:run_info["test_images"]]
    # the training set's contents, recorded when the run begins and compared when it resumes: --data gives a moved
    # data set its new place, and another file took it without a word (2000 images became 700 in the middle of a
    # run, the history mixed: a researcher's trial); runs recorded before this have none, and are not checked
    # (the test set's too: a file with the same training set and another test set mixed two test sets' losses in
    # one history, an auditor's trial)
    fingerprints = {"train_sha256": _fingerprint(train_x), "test_sha256": _fingerprint(test_x)}
    test_y = None if data.test_y is None else data.test_y[:len(test_x)]
    if args.resume is None:                # a new model takes the data's width and image shape (None: rows)
        train_x = model._adopt_width(train_x, data.image_shape, rows=data.image_shape is None)
        cfg = model.config
        run_info.update(fingerprints)
    else:
        train_x = model._images(train_x, f"the training set of {data.source}")     # (its width first: said apart)
        for key, rows, what in (("train_sha256", train_x, "training"), ("test_sha256", test_x, "test")):
            if run_info.get(key) not in (None, fingerprints[key]):
                raise UserError(f"the {what} set of {data.source} is not the one this run was trained on (its "
                                f"{len(rows)} rows differ from those recorded in {out / 'metrics.json'}); pass the "
                                "run's own data set with --data PATH")
        run_info.update(fingerprints)      # (a run recorded before the test set's was: from now on)
    test_x = model._images(test_x, f"the test set of {data.source}")
    if cfg.batch_size > len(train_x):
        raise OptionMistake(f"--batch-size {cfg.batch_size} is larger than the {len(train_x)} training images")
    if args.no_plots:                           # kept in the run info too: a resumed run drew every figure
        run_info["no_plots"] = True
    draw = not run_info.get("no_plots", False)
    if draw and matplotlib_missing():
        print(f"fastvae: no figures: {matplotlib_missing()}", file=sys.stderr)
        draw = False
    say = (lambda *a: None) if args.quiet else (lambda msg: print(msg, flush=True))
    engine = _bf16_engine() if model.precision == "bf16" else None     # which of two CPUs' instructions ran
    info = {"fastvae": __version__, "backend": model.backend.name, "precision": model.precision,
            **({"bf16_engine": engine} if engine else {}),
            "config": cfg.to_dict(), "data": data.source, "data_set": data.name,
            "train_images": len(train_x), "test_images": len(test_x), "machine": machine.describe(),
            "run": run_info}
    notes.flush()                           # every input checked: the notes now, the run's header after them
    where = f"resuming {out} at epoch {model.epoch + 1}" if args.resume else f"writing to {out}"
    say(f"fastvae {__version__}: {model.layout.size:,} parameters on the {model.backend.name} backend in "
        f"{model.precision}{f' ({engine})' if engine else ''}; {len(train_x)} training and {len(test_x)} test "
        f"{_items(len(test_x), cfg.image_shape)} from {data.source}; {where}")
    codings_seed = cfg.seed
    if args.resume is None and args.overwrite:
        _remove_run(out)                    # only now: every check above has passed
    # the run starts writing here, into the folder _prepare_out made and holds (it removes it again, empty, where the
    # run stops before this line); metrics.json is written before the first step, so a Ctrl-C in the first epoch
    # leaves a folder that --resume can continue
    jsonfile.write(out / "metrics.json", {**info, "epochs": model.history})
    stop.out, stop.epochs = out, cfg.epochs
    if draw:
        same = [("--data", run_info.get("data_dir")), ("--test-images", run_info.get("test_images")),
                # (a run recorded before --test-fraction was refused for a data set with its own test set may hold
                # one: fastvae.plot would refuse it now)
                ("--test-fraction", run_info.get("test_fraction") if data.test_fraction is not None else None)]
        stop.plot = shlex.join([*command_of("plot"), str(out), "--out", str(out),
                                *(x for option, value in same if value is not None for x in (option, str(value)))])

    def after_epoch(m, record):
        say(f"epoch {record['epoch']:3d}/{cfg.epochs}  train {record['train']['total']:8.3f}  "
            f"test {record['test']['total']:8.3f} (reconstruction {record['test']['reconstruction']:.3f} "
            f"+ KL {record['test']['kl']:.3f})  {_duration(record['seconds']):>7}  "
            f"{record['images_per_s']:9,.0f} img/s  (test pass {_duration(record['test_seconds'])})")
        # the record first: a stop between the two leaves one that --resume drops (it keeps those up to the
        # checkpoint's epoch) and writes again, where the other order lost it for good
        jsonfile.write(out / "metrics.json", {**info, "epochs": m.history})
        m.save(out / "checkpoint.npz")
        if draw and m.image_shape is not None:
            from .figures import save_digits
            (out / "samples").mkdir(exist_ok=True)
            save_digits(out / "samples" / f"epoch_{record['epoch']:03d}.png",
                        m.sample(SAMPLE_CODINGS, seed=codings_seed), shape=m.image_shape,
                        title=f"{SAMPLE_CODINGS} codings from N(0, I), decoded after epoch {record['epoch']}")

    earlier = len(model.history)            # a resumed run's epochs from before this process
    part = model.epoch + 1 if model.epoch_step > 0 else None    # its first epoch here: the rest of a stopped one
    try:
        with training.also_stopping_on(signal.SIGTERM):     # (kill, timeout, schedulers: saved like a Ctrl-C)
            model.fit(train_x, epochs=cfg.epochs - model.epoch, validation=test_x, callback=after_epoch,
                      progress=not args.quiet and training.on_terminal(sys.stderr))   # (stdout has its lines)
    except TrainingDiverged as e:
        # a run resumes only at its own --lr: the lower rate the message advises starts it again
        advice = "lower the learning rate" if e.lr is None else \
            f"lower the learning rate (now {e.lr:g}), e.g. --lr {e.lr / 10:g},"
        raise TrainingDiverged(f"{e.what}; {advice} with --overwrite to start this run again (or another --out)",
                               e.what, e.lr, e.step, e.epoch) from None
    except TrainingInterrupted as e:
        model.save(out / "checkpoint.npz")
        if model.epoch >= cfg.epochs:       # every epoch was trained (Ctrl-C in the last one's end): nothing to resume
            raise TrainingInterrupted(stop.line(f"stopped by {e.how}"), e.signum) from None
        raise TrainingInterrupted(f"stopped by {e.how} after step {model.steps}; checkpoint saved; continue with: "
                                  f"{shlex.join([*command_of('train'), '--resume', str(out)])}", e.signum) from None
    if draw:
        from .plot import write_figures
        with CtrlCNoted() as ctrl_c:
            write_figures(model, test_x, test_y, out, history=model.history, seed=codings_seed,
                          notify=lambda msg: None, skipped=say)        # (the README: each skip says so)
        ctrl_c.check()
    final = model.history[-1]
    plural = "s" if model.epoch != 1 else ""
    # this process's first epoch apart: a fresh install's also compiles the kernels (19.9 s against 0.29 s an epoch
    # in a fresh user's 2-epoch run, whose median of the two said 10.08 s per epoch), and every process's loads them
    speed = _speed(model.history[earlier:] or model.history, part if part and len(model.history) > earlier else None)
    say(f"done: test loss {final['test']['total']:.3f} per image after {model.epoch} epoch{plural}; {speed}; "
        f"results in {out}")
    return 0


_duration = training.duration                # (the epoch lines, the done line; training shares it)


def _speed(records, part=None):
    """The done line's speed: the median epoch after the first, without the replays a later epoch compiled (one
    whose pacer changed the thread count compiles that count's: the median mixed a compile in, a researcher's
    trial), and the first epoch, which also loaded or compiled the kernels (`part`: the epoch it finished)."""
    seconds = [r["seconds"] for r in records]
    first = f"the rest of epoch {part}, " if part else ""
    if len(seconds) == 1:
        return f"{first}{_duration(seconds[0])}, loading or compiling the kernels included"
    later = [r["seconds"] - r.get("replay_compile_seconds", 0.0) for r in records[1:]]
    compiled = " without compiles" if any("replay_compile_seconds" in r for r in records[1:]) else ""
    return (f"median {_duration(float(np.median(later)))} per epoch after the first{compiled} ({first}"
            f"{_duration(seconds[0])}, which also loaded or compiled the kernels)")


def _bf16_engine():
    """The engine of the bf16 products here: "AMX tiles" or "AVX512-BF16" (amx.USE_AMX, fixed by Numba's target)."""
    from .backends import amx
    return "AMX tiles" if amx.USE_AMX else "AVX512-BF16"


def _remove_run(out):
    """Remove the files a run writes into `out` (and fastvae.plot's default figures/), none of the user's own."""
    from .plot import FIGURES
    found = [out / name for name in _RUN_FILES] + [out / "metrics.json.tmp", *out.glob(".checkpoint.npz.*.tmp"),
                                                   *out.glob(".metrics.json.*.tmp")]
    found += [*(out / f for f in FIGURES)]
    # never through a link: `samples` or `figures` planted as links to another folder had that folder's
    # epoch_001.png and loss.png removed (a security review)
    for sub, names in (("samples", None), ("figures", FIGURES)):
        if (out / sub).is_dir() and not (out / sub).is_symlink():
            found += [*(out / sub).glob("epoch_*.png")] if names is None else [out / sub / f for f in names]
    for path in found:
        path.unlink(missing_ok=True)


# the console script fastvae-train (pyproject.toml) and python -m fastvae.train
console = script(main)

if __name__ == "__main__":
    sys.exit(console())
