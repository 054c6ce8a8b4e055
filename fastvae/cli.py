"""What the command-line tools (train, evaluate, plot) share: the runner that turns their outcome into an exit
status and one line on stderr, the options they all take, and how a checkpoint is named (its file or the run
folder holding it).

Exit statuses: 0 done, 2 a user's mistake (UserError), 3 training diverged (TrainingDiverged), 130 Ctrl-C
(KeyboardInterrupt, TrainingInterrupted included), 143 a SIGTERM that stopped training (TrainingInterrupted), 141 a
closed reader of stdout, 74 done but stdout could not be written (streams.tool_streams).
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import math
import os
import shlex
import shutil
import signal
import sys
from pathlib import Path
from typing import Callable, TypeVar, cast

from . import __version__
from .config import integer
from .constants import BACKENDS as NAMES, PRECISIONS
from .errors import TrainingDiverged, UserError, also
from .streams import to_devnull


_Main = TypeVar("_Main", bound=Callable[..., int])


def returns_status(main: _Main) -> _Main:
    """A tool's main(argv) that returns its exit status whatever ends it, argparse's own ends too (--help, --version:
    0; a mistake in the options: 2): an embedder calling main(argv) got a status for every end but those, which
    raised SystemExit (an API trial). argv: a list of strings, as sys.argv[1:], or None for sys.argv[1:]; a str
    (read letter by letter as options) raises UserError (a TypeError too)."""
    @functools.wraps(main)
    def checked(argv: list[str] | None = None) -> int:
        def wrong(example=""):
            return also(TypeError, f"{main.__module__}.main takes a list of strings (as sys.argv[1:]), not "
                        f"{argv!r}{example}")
        if isinstance(argv, str):
            raise wrong(f"; e.g. main({argv.split()!r})")
        if isinstance(argv, bytes):
            raise wrong()
        if argv is not None:
            argv = list(argv)               # (read once: an iterator checked here then parsed as nothing, a review)
            if not all(isinstance(a, str) for a in argv):
                raise wrong()
        try:
            return main(argv)
        except SystemExit as e:
            if e.code is None or isinstance(e.code, int):
                return e.code or 0
            raise
    return cast(_Main, checked)


def script(main: Callable[[], int]) -> Callable[[], int]:
    """The entry of a tool's console script and of `python -m`: main()'s exit status, and Ctrl-C ignored from then on
    (the process ends with that status). The work is done and its output written when main returns, but Python's
    shutdown (0.3-0.5 s here: Numba's and LLVM's modules freed) runs with Python's signal handling already off, so a
    Ctrl-C there killed the process by SIGINT, without a line, after a complete run (a fresh user's trial: 3 of 3
    tries 0.1 s after train's "done:"; `fastvae-train ... && next` read it as interrupted). main itself, called by a
    program embedding the tools, leaves the program's handlers alone."""
    @functools.wraps(main)
    def entry() -> int:
        status = main()
        with contextlib.suppress(ValueError):   # (a handler is set from the main thread only)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        return status
    return entry


def run_main(run: Callable[[argparse.Namespace], int], args: argparse.Namespace,
             kept: Callable[[], str | None] | None = None) -> int:
    """run(args)'s exit status, with every way it can stop turned into one line on stderr and its status.

    kept(): what a stopped run leaves behind (e.g. "the last saved checkpoint is kept"), asked when a divergence or
    a Ctrl-C stops it and said after its message. A TrainingInterrupted's own message (what was saved, how to resume)
    replaces the generic one.
    """
    def note():
        text = kept() if kept is not None else None
        return f"; {text}" if text else ""
    try:
        return run(args)
    except BrokenPipeError:
        # the reader of stdout went away (`... | head`): no traceback, and none again when Python flushes stdout at
        # exit (it is pointed at /dev/null); the status of a process a closed pipe stopped, 128 + SIGPIPE. A tool
        # that says what a stop leaves (train: the pipe ends its training) says why it stopped, on stderr
        to_devnull(sys.stdout)
        if kept is not None:
            with contextlib.suppress(OSError, ValueError):
                _stop(f"stopped: standard output was closed (its reader went away, as `| head` does){note()}", 141)
        return 141
    except TrainingDiverged as e:           # a UserError too: caught first for its own status
        return _stop(f"error: {e}{note()}", 3)
    except OptionMistake as e:             # an option's value found wrong after parsing: as argparse's own mistakes
        return _stop(f"error: {e} (see {getattr(args, 'prog', 'the tool')} --help)", 2)
    except UserError as e:
        return _stop(f"error: {e}", 2)
    except KeyboardInterrupt as e:          # a plain Ctrl-C has no message; TrainingInterrupted says what it saved
        return _stop(str(e) or f"interrupted{note()}", getattr(e, "status", 130))


def _stop(message, status):
    print(f"fastvae: {message}", file=sys.stderr)
    return status


def add_shared_options(p: argparse.ArgumentParser, quiet: str, precision: str = "", of_a_run: bool = False) -> None:
    """The options every tool takes: --backend, --precision (its help ends with `precision`), --data, --test-fraction,
    --test-images, --quiet (its help: `quiet`), --version. of_a_run: the tool reads a trained run (evaluate, plot),
    whose data and split are the defaults of --data, --test-fraction and --test-images (run_test_set)."""
    run = "the run's, as its metrics.json records; else " if of_a_run else ""
    p.add_argument("--backend", choices=NAMES, default="auto",
                   help="auto (default) picks gpu when CuPy and a CUDA device are usable, else cpu; cpu-bf16 is cpu "
                        "with its matrix products in bf16 (--precision bf16); reference is float64 NumPy (slow, the "
                        "specification)")
    p.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="fp32 or bf16: the matrix products' operands rounded to bf16, with fp32 sums, weights and "
                        "Adam moments, on the cpu backend with AMX tiles or AVX512-BF16 (a CPU with neither computes "
                        "in fp32, after a notice; not on gpu or reference)"
                        + (precision or "; default fp32 (bf16 for --backend cpu-bf16)"))
    p.add_argument("--data", type=path_argument, metavar="PATH",
                   help="a folder of four IDX files of any image size (MNIST, Fashion-MNIST, KMNIST, EMNIST; .gz or "
                        "raw) or a Keras mnist.npz; a Keras-style .npz (x_train, x_test, optional y_train, y_test); "
                        "or an .npy/.npz of one array of images (n, h, w) or rows (n, d), split by --test-fraction "
                        + ("(default: the data set the run was trained on, as its metrics.json records; the MNIST "
                           "copy embedded in fastvae for a checkpoint without one)" if of_a_run else
                           "(default: the MNIST copy embedded in fastvae)"))
    p.add_argument("--test-fraction", type=fraction, metavar="F",
                   help="for --data holding one array: the fraction of its rows held out as the test set, chosen by "
                        "a permutation seeded with the model's seed (default: " + run + "1/7, MNIST's 10000 of 70000)")
    p.add_argument("--test-images", type=whole_number, metavar="N",
                   help="use only the first N test images (default: " + run + "all)")
    p.add_argument("--quiet", action="store_true", help=quiet)
    p.add_argument("--version", action="version", version=f"fastvae {__version__}")


def path_argument(text: str) -> Path:
    """A path option's value; an empty one (`--out=`, an unset shell variable) is refused: Path("") is the working
    folder, where `--out=` trained and `--resume=` resumed without a word (an adversarial user's trial)."""
    if text == "":                          # (" " is a name a file may have)
        raise argparse.ArgumentTypeError(f"must name a file or folder, got an empty path ({text!r}); \".\" is the "
                                         "working folder")
    return Path(text)


def thread_count(text):
    """--threads: "auto" or a whole number (as every integer option), checked as VAE(threads=...) checks it."""
    from .threads import check
    try:
        return "auto" if text == "auto" else check(whole_number(text))
    except UserError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    except argparse.ArgumentTypeError:      # (whole_number's own line does not know auto)
        raise argparse.ArgumentTypeError(f"must be a positive whole number or auto, got {text!r}") from None


def at_most(count, x, option, what):
    """UserError (one line, naming the option) where a count of images asked for is more than x holds: it was cut
    to what there is without a word."""
    if count > len(x):
        raise OptionMistake(f"{option} {count} is more than the {len(x)} {what}; pass at most {len(x)}, or leave "
                        f"{option} out to use them all")


def load_data(args: argparse.Namespace, split_seed: int, data_path=None, asked=None):
    """The data set --data names (or `data_path`), its test set split off by --test-fraction and `split_seed` where
    it is one array; its notices (a checksum no published set has, EMNIST's transpose) go to stderr unless --quiet.
    `asked`: the --test-fraction given on this command line (None: not given), refused for a data set with its own
    test set. Raises UserError (one line) for a bad path, file or fraction."""
    from .data import OwnTestSet, load_data as load
    try:
        data = load(args.data if data_path is None else data_path, args.test_fraction, split_seed)
    except OwnTestSet as e:     # it would change nothing: say so, not train as if it did
        if asked is None:       # (a run's recorded fraction, for data that now has its own test set: the default)
            data = load(args.data if data_path is None else data_path, None, split_seed)
        else:
            raise OptionMistake(f"--test-fraction {asked:g} splits a data set of one array, but the one of "
                                f"{e.source} has its own test set; leave --test-fraction out") from None
    for notice in data.notices if not args.quiet else ():
        print(f"fastvae: {notice}", file=sys.stderr)
    return data


def run_metrics(checkpoint: Path) -> dict:
    """The metrics.json beside `checkpoint` (jsonfile.read: a regular file of bounded size), or {} where there is
    none, or none that reads as a JSON object."""
    from . import jsonfile                  # (NumPy: not loaded by a tool's --help)
    try:
        metrics = jsonfile.read(checkpoint.parent / "metrics.json")
    except (OSError, ValueError):
        return {}
    return metrics if isinstance(metrics, dict) else {}


def run_record(checkpoint: Path) -> dict | None:
    """The `run` record (data_dir, test_fraction, train_images, test_images) of the metrics.json beside `checkpoint`,
    or None where there is none: a bare checkpoint, or a metrics.json without one or that cannot be read (the data
    set is then unknown, and the tools fall back to the embedded MNIST as they did before runs recorded it)."""
    record = run_metrics(checkpoint).get("run")
    return record if valid_run_record(record) else None


def valid_run_record(record) -> bool:
    """Whether a metrics.json's `run` record has the types and ranges a run writes: a hand-edited one of others is
    as good as none (rather than a traceback where it is used; test_images -150 measured all but the last 150
    images without a word: a security review)."""
    def count(v):
        return v is None or (isinstance(v, int) and not isinstance(v, bool) and v >= 1)
    fraction = record.get("test_fraction") if isinstance(record, dict) else None
    return isinstance(record, dict) and isinstance(record.get("data_dir"), (str, type(None))) and \
        count(record.get("test_images")) and count(record.get("train_images")) and \
        (fraction is None or (isinstance(fraction, (int, float)) and not isinstance(fraction, bool) and
                              0 < fraction < 1)) and \
        (record.get("threads") in (None, "auto") or count(record.get("threads")))


def valid_epochs(epochs) -> bool:
    """Whether a metrics.json's `epochs` are records as a run writes them: each a dict with a whole-number epoch and
    a finite train total (and a finite test total where it has a test). Hand-edited ones were tracebacks in
    fastvae-plot, or a nonsense loss figure, and --resume carried them on (a security review and its re-review)."""
    def total(part):
        value = part.get("total") if isinstance(part, dict) else None
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return isinstance(epochs, list) and all(
        isinstance(r, dict) and isinstance(r.get("epoch"), int) and not isinstance(r.get("epoch"), bool)
        and total(r.get("train")) and ("test" not in r or total(r["test"])) for r in epochs)


def check_run_config(model, checkpoint: Path, metrics: dict | None = None) -> None:
    """Raises UserError (one line) where the model loaded from `checkpoint` is not the one the metrics.json beside it
    describes (`metrics`: that file's contents where already read): its architecture or seed differs (the settings
    a program may change between fits, Adam's, epochs and batch_size, are not compared: a checkpoint fitted on with
    another batch size was refused, a review's catch). A checkpoint of another run copied into a run folder was
    resumed under the run's name, its history mixed with the other model's, and the tools blamed the data ("has
    changed since it was trained on": an adversarial user's trial). A bare checkpoint, or a metrics.json without a
    readable config, is not checked."""
    import json
    recorded = (run_metrics(checkpoint) if metrics is None else metrics).get("config")
    if not isinstance(recorded, dict):
        return
    have = json.loads(json.dumps(model.config.to_dict()))       # (tuples as the JSON's lists)
    for key in _RUN_FIXED:
        value = have.get(key)
        if key in have and key in recorded and recorded[key] != value:
            raise UserError(f"{checkpoint} is not the checkpoint of the run in {checkpoint.parent}: its {key} is "
                            f"{value!r}, the run's metrics.json records {recorded[key]!r} (a checkpoint of another "
                            "run copied in?); use the run folder it came from, or a copy of the checkpoint alone")


# what a model cannot change once made (VAE._FIXED, less the batch size, which fit(batch_size=...) may change)
_RUN_FIXED = ("hidden", "latent", "input_width", "image_shape", "encoder", "reconstruction", "activation", "seed")


def same_file(a, b) -> bool:
    """Whether paths a and b name the same file (resolved: symlinks, relative paths)."""
    try:
        return Path(a).resolve() == Path(b).resolve()
    except (OSError, RuntimeError):         # a symlink loop: then they are not the same path to us
        return False


def run_test_set(args: argparse.Namespace, checkpoint: Path, model,
                 notify: Callable[[str], None] | None = None) -> tuple:
    """(data set, test rows, their labels or None) on which evaluate and plot measure and draw the model of
    `checkpoint`: --data where given, else the data set its run was trained on (the data_dir of the run record in its
    metrics.json), else the embedded MNIST (a bare checkpoint). The run's data is split as the run split it: its
    test fraction and test-image count apply unless --test-fraction or --test-images say otherwise, also when --data
    names the run's own file, or any file once the recorded one is gone (its new place); another data set gets the
    options' defaults; `notify` hears where a bare checkpoint is measured on the embedded MNIST (a run's checkpoint
    copied away from its metrics.json was measured on MNIST without a word: a fresh user's trial). Raises UserError
    (one line) when the recorded data path is gone and no --data is given, or when the data's width is not the
    model's (with advice for the command line: --data)."""
    check_run_config(model, checkpoint)     # (before its data is blamed for a width that is not the run's)
    record = run_record(checkpoint)
    recorded = None if record is None else record.get("data_dir")
    gone = recorded is not None and not Path(recorded).exists()
    # the run's own data: no --data, or --data naming the recorded file, or its new place where that file is gone
    # (what the line below for a gone file asks for), which must then be split as the run split it too
    own = record is not None and (args.data is None or gone or recorded is not None and same_file(args.data, recorded))
    fraction, count = args.test_fraction, args.test_images
    if own and record is not None:          # the run's split: the same test images the run measured
        fraction = record.get("test_fraction") if fraction is None else fraction
        count = record.get("test_images") if count is None else count
    path = args.data
    if path is None and gone:
        raise UserError(f"the data set this run was trained on, {recorded} (as {checkpoint.parent / 'metrics.json'} "
                        "records), no longer exists; pass it where it is now with --data PATH")
    if path is None and recorded is not None:
        path = Path(recorded)
    elif path is not None and record is not None and not path.exists():
        # data.load_data's own line says to omit --data for the embedded MNIST: here that means the run's data
        if gone:
            raise UserError(f"data path {path} does not exist, nor does the run's own, {recorded}; pass the data "
                            "set the run was trained on, where it is now, with --data PATH")
        raise UserError(f"data path {path} does not exist; pass an existing one with --data, or leave out --data to "
                        f"use the run's own ({'the embedded MNIST' if recorded is None else recorded})")
    data = load_data(argparse.Namespace(**{**vars(args), "test_fraction": fraction}), model.config.seed,
                     data_path=path, asked=args.test_fraction)
    width, shape = model.config.input_width, model.config.image_shape
    if data.width != width:
        fitted = f" ({shape[0]}x{shape[1]} images)" if shape else ""
        if gone:
            advice = (f"the run was trained on {recorded}, which is gone; pass the data set it was trained on "
                      "with --data PATH")
        elif own and recorded is not None:  # the run's own file, rewritten since
            advice = (f"the run's data at {recorded} has changed since it was trained on; pass the data it was "
                      "trained on with --data PATH")
        elif recorded is not None:
            advice = f"pass the run's data with --data {shlex.quote(str(recorded))}"
        elif record is not None and args.data is not None:
            advice = "the run was trained on the embedded MNIST: leave out --data"
        else:
            advice = "pass the data set the model was trained on with --data PATH"
        raise UserError(f"the test set of {data.source} has rows of {data.width} values but the model takes "
                        f"{width}{fitted}; {advice}")
    if record is None and args.data is None and notify is not None:
        # (one that is there but damaged was called "no metrics.json": a fresh user's trial)
        which = ("the metrics.json beside {} holds no readable run record to say" if
                 (checkpoint.parent / "metrics.json").exists() else "no metrics.json beside {} says").format(checkpoint)
        notify(f"fastvae: {which} which data set it was trained on: measuring it on the embedded MNIST (--data PATH "
               "for another)")
    if args.test_images is not None:
        at_most(args.test_images, data.test_x, "--test-images", f"test images of {data.source}")
    test_x = model._images(data.test_x[:count], f"the test set of {data.source}")     # [:None] is all
    test_y = None if data.test_y is None else data.test_y[:count]
    return data, test_x, test_y


def remove_empty(folders) -> None:
    """Remove the `folders` a tool made that are still empty, the deepest first; stop at the first that is not (it
    holds another run's files, or this one's, or a folder another run made inside it). Train uses it for the run's
    folder when a run writes nothing; plot for figures/ when drawing stops before a figure."""
    for folder in sorted(set(folders), key=lambda p: len(p.parts), reverse=True):
        try:
            folder.rmdir()
        except FileNotFoundError:           # (a mkdir that failed part way made only the shallower ones)
            continue
        except OSError:
            break


def _installed_command() -> str | None:
    """sys.argv[0] where this process is one of fastvae's installed commands (fastvae-train, ...), else None."""
    typed = sys.argv[0] if sys.argv and sys.argv[0] else ""
    return typed if os.path.basename(typed).startswith("fastvae-") else None


def command_of(tool: str) -> list[str]:
    """The words that run fastvae's `tool` ("train", "evaluate", "plot") the way this process was started, for the
    commands a tool suggests (resume, draw the figures): the installed command where this process is one (by its name
    where that name on PATH is this one, else by its path), else `python -m fastvae.TOOL`, by this interpreter's path
    where `python` on PATH is another one. (They always said `python -m`: in an unactivated virtual environment that
    named a Python without fastvae: a fresh user's trial.)"""
    typed = _installed_command()
    if typed is not None:
        mine = os.path.join(os.path.dirname(typed), f"fastvae-{tool}")
        found = shutil.which(f"fastvae-{tool}")
        return [f"fastvae-{tool}" if found and os.path.abspath(found) == os.path.abspath(mine) else mine]
    python = shutil.which("python")
    same = python is not None and os.path.abspath(python) == os.path.abspath(sys.executable)
    return ["python" if same else sys.executable, "-m", f"fastvae.{tool}"]


class Parser(argparse.ArgumentParser):
    """argparse's parser whose mistakes are one line on stderr (argparse prints its whole usage first), exit status 2:
    "fastvae: error: what was wrong (see prog --help)", the prefix of every other line the tools write (a mistake in
    an option said "fastvae-train: error:" and one found later "fastvae: error:": a fresh user's trial). A tool run by
    its installed command (fastvae-train) is called that in its usage and errors, not `python -m fastvae.train` (its
    prog), which is what the user did not type."""

    def __init__(self, *args, prog=None, **kw):
        typed = os.path.basename(_installed_command() or "")
        if prog is not None and typed and prog == f"python -m fastvae.{typed[len('fastvae-'):]}":
            prog = typed
        super().__init__(*args, prog=prog, **kw)

    def error(self, message):
        self.exit(2, f"fastvae: error: {message} (see {self.prog} --help)\n")

    def parse_args(self, args=None, namespace=None):        # type: ignore[override]
        parsed = super().parse_args(args, namespace)
        parsed.prog = self.prog             # (run_main's line for an OptionMistake names the tool as argparse does)
        return parsed


class OptionMistake(UserError):
    """A mistake in an option's value found after parsing (`--batch-size -1`, Config's checks): run_main says it as
    argparse says its own, "fastvae: error: ... (see PROG --help)" (it ended without the pointer: a trial)."""


def whole_number(text: str) -> int:
    """The type of every integer option: "3", or a float that is a whole number ("3.0", "1e3"), as the library
    takes them (fastvae.config.integer); "3.5" is argparse's one-line mistake naming the option."""
    try:
        return int(text)                    # exact, even beyond 2**53 (a seed)
    except ValueError:
        try:
            return integer(float(text), "", low=-math.inf)     # the sign is each option's own check
        except (ValueError, UserError):
            raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None


def fraction(text: str) -> float:
    """The type of --test-fraction: a number strictly between 0 and 1, checked for every data set (with MNIST's own
    split it was accepted and recorded, 2.0 included, and used by nothing)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be a number between 0 and 1 (exclusive), got {text!r}")
    return value


def check_positive(args: argparse.Namespace, *names: str) -> None:
    """UserError (one line, naming the option) unless each of these options is unset or a positive integer."""
    for name in names:
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise OptionMistake(f"--{name.replace('_', '-')} must be a positive integer, got {value}")


def note_fewer_threads(notes: Callable[[str], None], asked_by: str, model) -> None:
    """Where `model`'s fixed thread count is above the CPUs this process may use, one note saying how many run,
    naming what asked for the count (`asked_by`: "--threads 5", "OPENBLAS_NUM_THREADS=5", ...), as train and
    evaluate say it (evaluate printed the library's own line: "threads=5", the training's bits)."""
    import numpy as np
    if isinstance(model.threads, int) and model.backend.xp is np:
        from .threads import detect
        runs = detect(model.threads).threads
        if runs < model.threads:
            notes(f"fastvae: {asked_by} asks for {model.threads} threads: {runs} run, one per CPU this process may "
                  "use (its affinity mask)")


class Notes:
    """Notes for the user (such as which backend auto chose, and why), held until flush() prints them on stderr
    (nothing with --quiet): a tool flushes once its inputs have all been checked, so that a run stopped by a
    mistake says only that mistake, in one line."""

    def __init__(self, args: argparse.Namespace):
        from . import numba_cache
        self.quiet = args.quiet
        self.held: list[str] = []
        if numba_cache.passed_over():
            self(f"fastvae: FASTVAE_CACHE_DIR={numba_cache.passed_over()} cannot hold the compiled kernels (it cannot "
                 "be written, or others could write into it or a folder above it); another place serves")
        if numba_cache.nowhere():           # (every run pays the first call's compile: say why, and the way out)
            self("fastvae: no folder can be written for the compiled kernels (the user's cache, a temporary one): "
                 "they are compiled again in every run; set FASTVAE_CACHE_DIR to a writable folder of your own")
        elif numba_cache.taken():
            self(f"fastvae: {numba_cache.taken()} is not this user's alone (another user's, or open to others), so "
                 "the compiled kernels are kept for this run only and compiled again in every run; remove it, or set "
                 "NUMBA_CACHE_DIR to a folder of your own")

    def __call__(self, message: str) -> None:
        if not self.quiet:
            self.held.append(message)

    def flush(self) -> None:
        for message in self.held:
            print(message, file=sys.stderr)
        self.held = []


def checkpoint_path(path: str | Path) -> Path:
    """`path` itself, or its checkpoint.npz when it is a run folder."""
    path = Path(path)
    return path / "checkpoint.npz" if path.is_dir() else path


def run_precision(checkpoint: Path, given: str | None) -> str | None:
    """The precision to load a checkpoint at: `given` (--precision), else bf16 where the metrics.json beside it says
    the run trained in bf16 (so that a bf16 run is evaluated as it was measured while training), else None (the
    backend's own: fp32 on cpu)."""
    if given is not None:
        return given
    return "bf16" if run_metrics(checkpoint).get("precision") == "bf16" else None
