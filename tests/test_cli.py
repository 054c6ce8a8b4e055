"""python -m fastvae.train as a real subprocess on a small slice of the embedded MNIST; the files it writes."""
import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import strict_json

from fastvae import VAE, UserError, checkpoint
from fastvae.cli import run_main
from fastvae.errors import TrainingDiverged, TrainingInterrupted
from fastvae.training import FIRST_STEPS_NOTE

QUICK = ["--epochs", "2", "--train-images", "600", "--test-images", "200", "--hidden", "40", "24",
         "--latent", "3", "--batch-size", "50", "--seed", "11", "--backend", "cpu"]


def train(*args, cwd=None, env=None):
    return subprocess.run([sys.executable, "-m", "fastvae.train", *args], capture_output=True, text=True,
                          timeout=300, cwd=cwd, env=env)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    proc = train(*QUICK, "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    return out, proc


def test_a_run_writes_its_checkpoint_metrics_and_figures(run_dir):
    out, proc = run_dir
    assert "epoch   2/2" in proc.stdout and "done: test loss" in proc.stdout
    # the first epoch (which loads or compiles the kernels) apart from the median of the others
    m = json.loads((out / "metrics.json").read_text())
    from fastvae.train import _duration      # (a small data set's epochs said "median 0.00 s": now in ms)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("epoch ")]
    assert [_duration(e["seconds"]) in line for e, line in zip(m["epochs"], lines)] == [True, True], lines
    # the test pass after each epoch, not in its seconds, said with it (seconds after a "0.8 s" epoch: a new user)
    assert [line.endswith(f"img/s  (test pass {_duration(e['test_seconds'])})")
            for e, line in zip(m["epochs"], lines)] == [True, True], lines
    assert (_duration(0.00423), _duration(0.1), _duration(2.494)) == ("4.2 ms", "0.10 s", "2.49 s")
    assert (f"median {_duration(m['epochs'][1]['seconds'])} per epoch after the first "
            f"({_duration(m['epochs'][0]['seconds'])}, which also loaded or compiled the kernels)") in proc.stdout
    assert "parameters on the cpu backend in fp32;" in proc.stdout.splitlines()[0]
    names = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert names == ["checkpoint.npz", "interpolation.png", "latent.png", "loss.png", "metrics.json",
                     "reconstructions.png", "samples.png", "samples/epoch_001.png", "samples/epoch_002.png"]
    m = json.loads((out / "metrics.json").read_text())
    assert m["backend"] == "cpu" and m["precision"] == "fp32" and "precision" not in m["run"]
    assert m["train_images"] == 600 and m["test_images"] == 200
    assert m["config"]["hidden"] == [40, 24] and m["config"]["latent"] == 3 and m["config"]["seed"] == 11
    assert [e["epoch"] for e in m["epochs"]] == [1, 2] and m["epochs"][-1]["steps"] == 24
    assert m["machine"]["cpu"]
    # what the bits may follow besides fastvae's settings (an auditor's trial found none of it recorded)
    import numba
    from fastvae.backends import cpu_blas
    assert (m["machine"]["numpy"], m["machine"]["numba"]) == (np.__version__, numba.__version__)
    assert m["machine"]["blas"]["fastvae_kernels"] == cpu_blas.KIND and m["machine"]["blas"]["version"]
    assert isinstance(m["machine"]["cpu_features"], list)
    for e in m["epochs"]:
        assert np.isfinite(e["test"]["total"]) and e["test"]["kl"] > 0 and e["images_per_s"] > 0
    assert m["epochs"][1]["train"]["total"] < m["epochs"][0]["train"]["total"]
    # stderr is a pipe here: no bar (its redraws were carriage returns in a log; stdout has a line per epoch)
    assert "\r" not in proc.stderr and "step/s" not in proc.stderr, proc.stderr


def test_on_a_terminal_the_bar_says_why_the_first_epoch_waits(tmp_path):
    """The first epoch's bar says why it sits at 0 (it said nothing for the ≈ 20 s of a fresh install's compile);
    the bar is drawn on a terminal (a real pseudo-terminal as the tool's stderr)."""
    from terminal import Terminal
    terminal = Terminal()
    proc = subprocess.Popen([sys.executable, "-m", "fastvae.train", *QUICK, "--no-plots", "--out", str(tmp_path)],
                            stdout=subprocess.DEVNULL, stderr=terminal.slave)
    terminal.close_slave()
    err = terminal.read().decode(errors="replace")
    terminal.close()
    assert proc.wait(timeout=300) == 0, err
    first, second = err.split("epoch 2:", 1)
    assert FIRST_STEPS_NOTE in first and FIRST_STEPS_NOTE not in second and "step/s" in first, err


def test_json_writes_undefined_values_as_null_and_numpy_values_as_plain_ones():
    from fastvae import jsonfile
    obj = {"a": float("nan"), "b": [float("inf"), np.float32(1.5), -np.inf], "c": np.int64(3), "d": np.arange(2),
           "e": (np.bool_(True), "x", None)}
    assert strict_json.loads(jsonfile.dumps(obj)) == {"a": None, "b": [None, 1.5, None], "c": 3, "d": [0, 1],
                                                "e": [True, "x", None]}


def test_metrics_json_is_strict_json(run_dir):
    out, _ = run_dir
    assert strict_json.loads((out / "metrics.json").read_text())["epochs"]


def test_the_figures_are_real_images_of_the_right_layout(run_dir):
    import matplotlib.image as mpimg
    out, _ = run_dir
    samples = mpimg.imread(out / "samples.png")
    recon = mpimg.imread(out / "reconstructions.png")
    assert samples.shape[1] > samples.shape[0] > 300      # 6 rows x 10 columns of digits, wider than tall
    assert recon.shape[1] > 3 * recon.shape[0]            # 2 rows x 10 columns
    assert samples[..., :3].std() > 0.1                   # not a blank canvas


def test_the_checkpoint_loads_and_matches_the_metrics(run_dir):
    out, _ = run_dir
    m = json.loads((out / "metrics.json").read_text())
    model = VAE.load(out / "checkpoint.npz", backend="cpu")
    assert (model.epoch, model.steps) == (2, 24) and model.config.hidden == (40, 24)
    from fastvae.data import load_mnist
    assert model.evaluate(load_mnist().test_x[:200]) == m["epochs"][-1]["test"]


def test_a_new_run_refuses_a_folder_holding_a_run_unless_told_to_overwrite_it(tmp_path):
    one_epoch = [*QUICK[:1], "1", *QUICK[2:], "--quiet"]
    assert train(*QUICK, "--quiet", "--out", str(tmp_path)).returncode == 0
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    (tmp_path / "notes.txt").write_text("the user's own file")
    proc = train(*one_epoch, "--seed", "7", "--out", str(tmp_path))
    assert proc.returncode == 2, proc.stderr
    line, = proc.stderr.strip().splitlines()
    assert "already holds a run" in line and f"--resume {tmp_path}" in line and "--overwrite" in line, line
    assert all(p.read_bytes() == data for p, data in before.items()), "the old run is untouched"
    proc = train(*one_epoch, "--seed", "7", "--out", str(tmp_path), "--overwrite")
    assert proc.returncode == 0, proc.stderr
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["config"]["seed"] == 7 and [e["epoch"] for e in m["epochs"]] == [1]
    assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == ["epoch_001.png"]
    assert (tmp_path / "notes.txt").read_text() == "the user's own file", "only the old run's files are removed"
    proc = train("--resume", str(tmp_path), "--overwrite", "--epochs", "2")
    assert proc.returncode == 2 and "--overwrite" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_help_documents_every_option():
    proc = train("--help")
    assert proc.returncode == 0
    for option in ("--backend", "--epochs", "--batch-size", "--lr", "--hidden", "--latent", "--seed", "--data",
                   "--out", "--train-images", "--test-images", "--no-plots", "--encoder", "--reconstruction",
                   "--activation", "--precision"):
        assert option in proc.stdout


@pytest.mark.parametrize("tool", ["train", "evaluate", "plot"])
def test_every_tool_takes_the_shared_options(tool):
    import importlib
    text = importlib.import_module(f"fastvae.{tool}").build_parser().format_help()
    for option in ("--backend", "--data", "--test-images", "--quiet", "--version"):
        assert option in text, (tool, option)


INTEGER_OPTIONS = [("train", o) for o in ("--epochs", "--batch-size", "--hidden", "--latent", "--seed",
                                          "--train-images", "--test-images")] + \
                  [("evaluate", o) for o in ("--k", "--batch-size", "--seed", "--test-images")] + \
                  [("plot", "--test-images")]


@pytest.mark.parametrize("tool, option", INTEGER_OPTIONS)
def test_integer_options_take_integral_floats_and_refuse_fractions_naming_the_option(capsys, tool, option):
    """As the library does: "3.0" is 3, "3.5" is a mistake (exit status 2) naming the option."""
    import importlib
    parser = importlib.import_module(f"fastvae.{tool}").build_parser()
    assert not [a.dest for a in parser._actions if a.type is int], "every integer option takes integral floats"
    first = [] if tool == "train" else ["run/checkpoint.npz"]
    value = getattr(parser.parse_args([*first, option, "3.0"]), option[2:].replace("-", "_"))
    assert value in (3, [3]) and type(value if value == 3 else value[0]) is int
    with pytest.raises(SystemExit) as stop:
        parser.parse_args([*first, option, "3.5"])
    assert stop.value.code == 2 and f"argument {option}: must be a whole number, got '3.5'" in capsys.readouterr().err


@pytest.mark.parametrize("raised, status, says", [
    (None, 0, None),
    (UserError("bad input"), 2, "fastvae: error: bad input"),
    (TrainingDiverged("diverged at step 3"), 3, "fastvae: error: diverged at step 3; what is kept"),
    (KeyboardInterrupt(), 130, "fastvae: interrupted; what is kept"),
    (TrainingInterrupted("stopped; resume with X"), 130, "fastvae: stopped; resume with X"),
])
def test_the_shared_runner_maps_each_outcome_to_one_line_and_its_status(capsys, raised, status, says):
    def run(args):
        if raised is not None:
            raise raised
        return 0
    assert run_main(run, None, kept=lambda: "what is kept") == status
    err = capsys.readouterr().err
    assert err == ("" if says is None else says + "\n")


@pytest.mark.parametrize("tool", ["train", "evaluate", "plot"])
def test_a_ctrl_c_in_pythons_shutdown_after_a_tool_finished_keeps_its_status(tool):
    """A Ctrl-C after a tool's work (its last line printed, main returned) killed the process by SIGINT, without a
    line, during Python's shutdown (0.3-0.5 s of freeing Numba's and LLVM's modules, with Python's signal handling
    already off: a fresh user's trial, 3 of 3 tries 0.1 s after train's "done:"). The tool's `python -m` entry (the
    console scripts' too: pyproject.toml names the same function) ignores Ctrl-C once main has returned. The signal
    is sent by an object that Python's shutdown frees, at the moment the trial's landed; the tool's own entry runs
    as `python -m` runs it."""
    code = ("import os, runpy, signal, sys, time\n"
            "class Late:\n"
            "    def __del__(self):\n"
            "        os.kill(os.getpid(), signal.SIGINT)\n"
            "        time.sleep(0.2)\n"
            "late = Late()\n"
            f"sys.argv = ['fastvae.{tool}', '--version']\n"
            f"runpy.run_module('fastvae.{tool}', run_name='__main__')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.startswith("fastvae "), (proc.returncode, proc.stdout, proc.stderr)


def test_the_tools_main_called_by_a_program_leaves_its_ctrl_c_alone(capsys):
    """Only the console entry ignores Ctrl-C after the work: main(argv), which a program embedding the tools calls,
    returns with the program's SIGINT handler as it was."""
    import signal
    from fastvae import evaluate, plot, train
    for tool in (train, evaluate, plot):
        before = signal.getsignal(signal.SIGINT)
        assert tool.main(["--version"]) == 0
        assert signal.getsignal(signal.SIGINT) is before
    import tomllib
    scripts = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {f"fastvae-{t}": f"fastvae.{t}:console" for t in ("train", "evaluate", "plot")}


def test_no_plots_writes_no_figures(tmp_path):
    proc = train(*QUICK[:1], "1", *QUICK[2:], "--no-plots", "--quiet", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in tmp_path.rglob("*.png")) == []
    assert not (tmp_path / "samples").exists(), "no empty samples/ folder either"
    assert (tmp_path / "checkpoint.npz").is_file() and proc.stdout == ""
    proc = train("--resume", str(tmp_path), "--epochs", "2", "--quiet")      # kept (it drew every figure then)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in tmp_path.rglob("*.png")) == [] and not (tmp_path / "samples").exists()


def test_an_out_that_is_a_file_is_named_as_one(tmp_path):
    (tmp_path / "afile").write_text("mine")
    proc = train(*QUICK, "--out", str(tmp_path / "afile"))
    assert proc.returncode == 2 and "output folder" in proc.stderr and "(it is a file, not a folder)" in proc.stderr
    assert (tmp_path / "afile").read_text() == "mine"
    # without --out, where runs/ cannot be made (a file of that name): one line too (a review found the check above
    # would have raised AttributeError there)
    (tmp_path / "runs").write_text("mine")
    proc = train(*QUICK, cwd=tmp_path)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "output folder" in lines[0], proc.stderr


@pytest.mark.parametrize("args,phrase", [
    # each names the option typed, not the library's setting ("batch_size must be ..."; a fresh user's trial)
    (["--epochs", "0"], "--epochs must be a positive integer"),
    (["--lr", "-1"], "--lr must be a positive number"),
    (["--hidden", "0"], "--hidden widths must be positive integers, got (0,); e.g. --hidden 500 500"),
    (["--batch-size", "0"], "--batch-size must be a positive integer"),
    (["--seed", "-1"], "--seed must be an integer in [0, 2**63)"),
    (["--data", "/no/such/folder"], "does not exist"),
    # auto's note on the backend it chose (no GPU here) is held until every input is checked: still one line
    (["--backend", "auto", "--data", "/no/such/folder"], "does not exist"),
    (["--train-images", "30", "--batch-size", "50"], "larger than"),
    (["--backend", "gpu"], "gpu"),
    (["--backend", "gpu", "--precision", "bf16"], "bf16 is not implemented on the gpu backend"),
    (["--backend", "reference", "--precision", "bf16"], "does not apply to the reference backend"),
    (["--backend", "cpu-bf16", "--precision", "fp32"], "contradicts precision fp32"),
    (["--out", "/proc/version/run"], "cannot write to the output folder"),
    (["--out", "/proc/run"], "cannot make the output folder /proc/run (No such file or directory)"),
    # MNIST has its own test set: the fraction was accepted and changed nothing (a fresh user's trial)
    (["--test-fraction", "0.2"], "has its own test set; leave --test-fraction out"),
    # more images than the data set holds were cut to what it holds without a word (a fresh user's trial)
    (["--train-images", "70000"], "--train-images 70000 is more than the 60000 training images of the embedded"),
    (["--test-images", "10001"], "--test-images 10001 is more than the 10000 test images of the embedded"),
])
def test_user_mistakes_get_one_line_and_exit_status_2(tmp_path, args, phrase):
    out = [] if "--out" in args else ["--out", str(tmp_path / "run")]
    proc = train(*QUICK, *out, *args)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fastvae: error:") and phrase in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists(), "a refused run leaves no folder behind"
    # an option's own value (or options together) point at --help, as argparse's mistakes do (they did not: the 14th
    # session's list); a mistake about the data, a path or the machine does not
    of_an_option = lines[0].startswith("fastvae: error: --")
    assert lines[0].endswith("(see python -m fastvae.train --help)") == of_an_option, proc.stderr


def test_auto_says_which_backend_it_chose_when_the_run_starts(tmp_path):
    from fastvae.backends import get_backend
    try:
        get_backend("gpu")
        gpu = True
    except UserError:
        gpu = False
    proc = train(*QUICK, "--backend", "auto", "--epochs", "1", "--no-plots", "--out", str(tmp_path / "deep" / "run"))
    assert proc.returncode == 0, proc.stderr
    notes = [line for line in proc.stderr.splitlines() if line.startswith("fastvae: using the CPU (")]
    assert len(notes) == (0 if gpu else 1), proc.stderr
    assert (tmp_path / "deep" / "run" / "checkpoint.npz").is_file()


def test_a_bad_data_file_is_a_user_error(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "mnist.npz").write_bytes(b"PK\x03\x04 truncated")
    proc = train(*QUICK, "--data", str(data), "--out", str(tmp_path / "run" / "a"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists(), "neither the run's folder nor its parent is left behind"


def test_the_seed_variants_train_and_are_recorded(tmp_path):
    proc = train(*QUICK[:1], "1", *QUICK[2:], "--encoder", "sigma", "--reconstruction", "mse", "--activation",
                 "tanh", "--no-plots", "--quiet", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert [m["config"][k] for k in ("encoder", "reconstruction", "activation")] == ["sigma", "mse", "tanh"]
    model = VAE.load(tmp_path / "checkpoint.npz", backend="cpu")
    assert (model.config.encoder, model.config.reconstruction, model.config.activation) == ("sigma", "mse", "tanh")
    mu, gamma = model.encode(np.zeros((2, 784), np.uint8))
    assert np.all(np.isfinite(gamma)) and np.all(gamma >= np.log(1e-10) - 1e-3)


STAND_IN = Path(__file__).resolve().parent / "stand_in"
GPU_QUICK = ["--train-images", "64", "--test-images", "32", "--hidden", "13", "9", "--latent", "3",
             "--batch-size", "16", "--seed", "11", "--no-plots", "--quiet"]


def with_stand_in_cupy(**extra):
    """The environment of a subprocess whose `import cupy` finds tests/stand_in/cupy (the CUDA C emulated)."""
    path = os.pathsep.join(p for p in (str(STAND_IN), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, **extra}


def test_the_gpu_backend_trains_resumes_and_evaluates_through_the_cli(tmp_path):
    """`python -m fastvae.train --backend gpu` end to end in a subprocess, with the stand-in CuPy: load(), the
    captured step replayed for every batch, the checkpoint, --resume, the test-set evaluation; its losses are the
    cpu backend's within a few float32 Adam steps' worth."""
    from fastvae.cuda import emu
    if emu.unavailable_reason():
        pytest.skip(emu.unavailable_reason())
    metrics = {}
    for backend in ("gpu", "cpu"):
        out = tmp_path / backend
        proc = train("--backend", backend, "--epochs", "2", *GPU_QUICK, "--out", str(out), env=with_stand_in_cupy())
        assert proc.returncode == 0, proc.stderr
        metrics[backend] = json.loads((out / "metrics.json").read_text())
    assert metrics["gpu"]["backend"] == "gpu" and metrics["gpu"]["epochs"][-1]["steps"] == 8
    for e_gpu, e_cpu in zip(metrics["gpu"]["epochs"], metrics["cpu"]["epochs"]):
        for split in ("train", "test"):
            assert abs(e_gpu[split]["total"] - e_cpu[split]["total"]) <= 1e-3 * e_cpu[split]["total"], (e_gpu, e_cpu)
    proc = train("--resume", str(tmp_path / "gpu"), "--epochs", "3", "--quiet", "--no-plots",
                 env=with_stand_in_cupy())
    assert proc.returncode == 0, proc.stderr
    resumed = json.loads((tmp_path / "gpu" / "metrics.json").read_text())
    assert [e["epoch"] for e in resumed["epochs"]] == [1, 2, 3] and resumed["epochs"][-1]["steps"] == 12


def test_a_driver_too_old_for_cupy_is_one_line(tmp_path):
    proc = train("--backend", "gpu", "--epochs", "1", *GPU_QUICK, "--out", str(tmp_path / "run"),
                 env=with_stand_in_cupy(FASTVAE_STAND_IN_DRIVER="12040"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "supports CUDA 12.4, older than the CUDA 13 this CuPy" in lines[0], lines
    assert "--backend cpu" in lines[0] and not (tmp_path / "run" / "checkpoint.npz").exists()


@pytest.mark.parametrize("args,what", [(("--threads", "0"), "--threads"), (("--epochs", "abc"), "--epochs"),
                                       (("--backend", "foo"), "--backend"), (("--bogus",), "--bogus"),
                                       (("--precision", "bf8"), "--precision"),
                                       (("--threads", "many"), "--threads: must be a positive whole number or auto")])
def test_an_option_mistake_is_one_line(tmp_path, args, what):
    proc = train(*args, "--out", str(tmp_path / "run"))
    assert proc.returncode == 2 and what in proc.stderr and "usage:" not in proc.stderr
    assert proc.stderr.startswith("fastvae: error: "), proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("tool", ["train", "evaluate", "plot"])
def test_an_installed_command_names_itself_in_its_mistakes(tmp_path, tool):
    """fastvae-train's option mistakes point at "fastvae-train --help", not `python -m fastvae.train`, which the user
    did not type (a fresh user's trial); `python -m` still says `python -m fastvae.train`. Either starts with
    "fastvae: error:", as every later mistake does (they started with the prog: a second trial)."""
    command = Path(sys.executable).parent / f"fastvae-{tool}"
    if not command.exists():
        pytest.skip(f"{command.name} is not installed beside this Python (pip install -e . puts it there)")
    proc = subprocess.run([str(command), "--bogus"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.startswith("fastvae: error: ") \
        and proc.stderr.endswith(f"(see fastvae-{tool} --help)\n"), proc.stderr
    # so do the examples of its --help (they said `python -m fastvae.train` under fastvae-train: a trial)
    proc = subprocess.run([str(command), "--help"], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                          env={**os.environ, "COLUMNS": "400"})
    assert f"example: fastvae-{tool} runs/quick" in proc.stdout.replace("examples:", "example:") \
        or f"examples: fastvae-{tool} --epochs 3" in proc.stdout, proc.stdout[-400:]
    assert "python -m" not in proc.stdout
    proc = subprocess.run([sys.executable, "-m", f"fastvae.{tool}", "--bogus"], capture_output=True, text=True,
                          timeout=120)
    assert proc.stderr.startswith("fastvae: error:") and f"(see python -m fastvae.{tool} --help)" in proc.stderr, \
        proc.stderr


def test_a_suggested_command_runs_the_tool_the_way_this_one_was_started(tmp_path, monkeypatch):
    """The commands a stop suggests (resume, draw the figures) are the installed command where the user ran one, by
    name where PATH finds that one, else by its path; else `python -m`, by this interpreter's path where PATH's python
    is another (they always said `python -m fastvae.train`: in an unactivated virtual environment, a Python without
    fastvae; a fresh user's trial). Real files on a real PATH."""
    from fastvae.cli import command_of
    bin_dir = tmp_path / "venv-bin"
    bin_dir.mkdir()
    for tool in ("train", "plot"):
        (bin_dir / f"fastvae-{tool}").write_text("#!/bin/sh\n")
        (bin_dir / f"fastvae-{tool}").chmod(0o755)
    monkeypatch.setattr(sys, "argv", [str(bin_dir / "fastvae-train"), "--epochs", "2"])
    monkeypatch.setenv("PATH", str(bin_dir))
    assert (command_of("train"), command_of("plot")) == (["fastvae-train"], ["fastvae-plot"])
    monkeypatch.setenv("PATH", str(tmp_path / "elsewhere"))                      # not activated
    assert (command_of("train"), command_of("plot")) == ([str(bin_dir / "fastvae-train")],
                                                         [str(bin_dir / "fastvae-plot")])
    monkeypatch.setattr(sys, "argv", ["-m"])                                     # python -m fastvae.train
    assert command_of("train") == [sys.executable, "-m", "fastvae.train"]       # PATH's python is not this one
    python_dir = tmp_path / "python-bin"
    python_dir.mkdir()
    (python_dir / "python").symlink_to(sys.executable)
    monkeypatch.setattr(sys, "executable", str(python_dir / "python"))
    monkeypatch.setenv("PATH", str(python_dir))
    assert command_of("plot") == ["python", "-m", "fastvae.plot"]


def test_threads_take_whole_numbers_as_every_integer_option_does():
    from fastvae.train import build_parser
    assert build_parser().parse_args(["--threads", "2.0"]).threads == 2
    assert build_parser().parse_args(["--threads", "auto"]).threads == "auto"


# A run holds its --out folder while it writes to it (fastvae/runlock.py): a fresh user started two runs into one
# folder at the same moment, both passed the start-up check and exited 0, and the second's files replaced the first's;
# two runs without --out started in the same second shared runs/<date>-<time> the same way.
HELD = ["--train-images", "3000", "--test-images", "10", "--hidden", "40", "24", "--latent", "3", "--batch-size", "50",
        "--backend", "cpu", "--threads", "1", "--no-plots", "--quiet"]


def start(*args):
    return subprocess.Popen([sys.executable, "-m", "fastvae.train", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def wait_for(path, proc, timeout=300):
    """Return once `path` exists, `proc` (which writes it) still running."""
    import time
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"the run ended first: {proc.returncode} {proc.stderr.read()}"
        assert time.monotonic() < deadline, f"{path} did not appear in {timeout} s"
        time.sleep(0.01)


def files_of(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_a_folder_held_by_a_live_run_refuses_every_other_run_in_one_line(tmp_path):
    """A second run into the folder of a run that is training (a new one, --overwrite, --resume) exits 2 with one line
    naming the holder's pid, and leaves the first run's files as they were; the first one then finishes unharmed. The
    first is paused (SIGSTOP) while the others try, so its own writes cannot change the files compared."""
    import signal
    from fastvae import runlock
    out = tmp_path / "same"
    first = start(*HELD, "--epochs", "100", "--seed", "1", "--out", str(out))     # (3 s or so)
    try:
        wait_for(out / "metrics.json", first)           # written just before the first step: it is training
        first.send_signal(signal.SIGSTOP)
        before = files_of(out)
        for args, then in [((*HELD, "--epochs", "1", "--seed", "2", "--out", str(out)), "or pass another --out"),
                           ((*HELD, "--epochs", "1", "--seed", "2", "--out", str(out), "--overwrite"),
                            "or pass another --out"),
                           (("--resume", str(out), "--epochs", "200", "--no-plots", "--quiet"), "before resuming it")]:
            proc = train(*args)
            assert proc.returncode == 2, proc.stderr
            line, = proc.stderr.strip().splitlines()
            assert line == (f"fastvae: error: {out} is in use by another fastvae run (pid {first.pid}); "
                            f"wait for it to finish {then}"), line
            assert files_of(out) == before, "the refused run changed the first run's files"
        assert before[runlock.NAME].decode().strip() == str(first.pid), "the lock file names its holder"
        first.send_signal(signal.SIGCONT)
        assert first.wait(timeout=300) == 0, first.stderr.read()
    finally:
        first.kill()                                    # (a no-op once it has ended; a stopped one dies too)
        first.wait()
    m = json.loads((out / "metrics.json").read_text())
    assert m["config"]["seed"] == 1 and [e["epoch"] for e in m["epochs"]] == list(range(1, 101))
    assert sorted(files_of(out)) == ["checkpoint.npz", "metrics.json"], "the lock file goes with the run"


def test_two_runs_started_together_into_one_folder_one_runs_and_one_is_refused(tmp_path):
    """The fresh user's trial itself: two runs started at the same moment into one folder. Exactly one trains; the
    other exits 2 in one line (in use, or, where it looks only after the first has ended, already holding a run)."""
    out = tmp_path / "same"
    procs = [start(*HELD, "--epochs", "3", "--seed", str(seed), "--out", str(out)) for seed in (1, 2)]
    ended = [(proc.wait(timeout=300), proc.stderr.read()) for proc in procs]
    assert sorted(status for status, _ in ended) == [0, 2], ended
    seed = 1 if ended[0][0] == 0 else 2
    line, = ended[2 - seed][1].strip().splitlines()
    assert "is in use by another fastvae run (pid" in line or "already holds a run" in line, line
    m = json.loads((out / "metrics.json").read_text())
    assert m["config"]["seed"] == seed and [e["epoch"] for e in m["epochs"]] == [1, 2, 3]


def test_default_folders_made_in_the_same_second_differ(tmp_path):
    """runs/<date>-<time> is made with os.mkdir, which fails where the name exists: the second run of a second takes
    -2, the third -3, even when they ask at the same moment."""
    import time
    from concurrent.futures import ThreadPoolExecutor
    from fastvae.train import _default_out
    now = time.mktime((2026, 12, 6, 17, 7, 43, 0, 0, -1))
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    root = tmp_path / "runs"
    outs = [_default_out(root, now) for _ in range(3)]
    assert [p.name for p in outs] == [stamp, f"{stamp}-2", f"{stamp}-3"] and all(p.is_dir() for p in outs)
    with ThreadPoolExecutor(8) as pool:
        outs += pool.map(lambda _: _default_out(root, now), range(8))
    assert len(set(outs)) == 11 and sorted(p.name for p in root.iterdir()) == sorted(p.name for p in outs)


def test_a_run_without_out_never_takes_a_folder_that_exists(tmp_path):
    """A real run without --out whose runs/<date>-<time> exists (made here for every second it could start in) takes
    <date>-<time>-2 and leaves the other folder alone; a run refused by a later check leaves no folder behind."""
    import time
    now = int(time.time())
    stamps = [time.strftime("%Y%m%d-%H%M%S", time.localtime(t)) for t in range(now - 2, now + 300)]
    for stamp in stamps:
        (tmp_path / "runs" / stamp).mkdir(parents=True)
        (tmp_path / "runs" / stamp / "notes.txt").write_text("another run's folder")
    proc = train(*HELD, "--epochs", "1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    new = sorted({p.name for p in (tmp_path / "runs").iterdir()} - set(stamps))
    assert len(new) == 1 and new[0].endswith("-2") and new[0][:-2] in stamps, new
    assert sorted(files_of(tmp_path / "runs" / new[0])) == ["checkpoint.npz", "metrics.json"]
    assert all(sorted(files_of(tmp_path / "runs" / stamp)) == ["notes.txt"] for stamp in stamps)
    (tmp_path / "empty").mkdir()
    proc = train(*HELD, "--epochs", "1", "--train-images", "30", cwd=tmp_path / "empty")
    assert proc.returncode == 2 and "larger than" in proc.stderr, proc.stderr
    assert not list((tmp_path / "empty").iterdir()), "neither runs/ nor its new folder is left"


def test_a_run_killed_mid_training_leaves_a_folder_that_resumes(tmp_path):
    """SIGKILL gives no run a chance to let go of its folder: the operating system drops the lock with the process,
    so the lock file it leaves (with the dead pid) neither blocks --resume nor counts as a run of its own."""
    from fastvae import checkpoint, runlock
    out = tmp_path / "run"
    first = start(*HELD, "--epochs", "200", "--seed", "1", "--out", str(out))
    try:
        wait_for(out / "checkpoint.npz", first)         # (written atomically: once there, it is whole)
    finally:
        first.kill()
        first.wait()
    assert first.returncode == -9, "killed while training"
    assert (out / runlock.NAME).read_text().strip() == str(first.pid), "the dead run's lock file is left"
    epoch = checkpoint.load(out / "checkpoint.npz").epoch
    proc = train(*HELD, "--epochs", "1", "--seed", "2", "--out", str(out))
    assert proc.returncode == 2 and "already holds a run" in proc.stderr, proc.stderr    # not "in use"
    proc = train("--resume", str(out), "--epochs", str(epoch + 1), "--no-plots", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert checkpoint.load(out / "checkpoint.npz").epoch == epoch + 1
    m = json.loads((out / "metrics.json").read_text())
    assert m["config"]["seed"] == 1 and [e["epoch"] for e in m["epochs"]] == list(range(1, epoch + 2))
    assert not (out / runlock.NAME).exists(), "the resumed run removed it when it ended"


@pytest.mark.parametrize("tool", ["fastvae.train", "fastvae.evaluate", "fastvae.plot"])
@pytest.mark.parametrize("value", ["2", "0", "-0.1", "1", "nan", "half"])
def test_a_test_fraction_outside_0_1_is_refused_for_every_data_set(tmp_path, tool, value):
    """--test-fraction is checked when it is parsed, whatever the data (a fresh user's trial: with the embedded MNIST,
    whose split is its own, 2 was accepted and recorded in metrics.json)."""
    proc = subprocess.run([sys.executable, "-m", tool, *(["RUN"] if tool != "fastvae.train" else []),
                           "--test-fraction", value, *(["--out", str(tmp_path / "x")] if tool == "fastvae.train"
                                                       else [])],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2 and "--test-fraction" in proc.stderr and "between 0 and 1" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "x").exists()


@pytest.mark.parametrize("tool", ["fastvae.evaluate", "fastvae.plot"])
def test_a_test_fraction_for_a_data_set_with_its_own_test_set_and_too_many_test_images_are_refused(run_dir, tool):
    out, _ = run_dir
    proc = subprocess.run([sys.executable, "-m", tool, str(out), "--test-fraction", "0.2"], capture_output=True,
                          text=True, timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "has its own test set; leave --test-fraction out" in lines[0]
    proc = subprocess.run([sys.executable, "-m", tool, str(out), "--test-images", "10001"], capture_output=True,
                          text=True, timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "--test-images 10001 is more than the 10000" in lines[0]


def test_a_closed_output_pipe_ends_a_tool_quietly(run_dir):
    """`python -m fastvae.evaluate RUN | head -1`: the reader goes away; the tool ends with 128 + SIGPIPE and no
    traceback (a fresh user's trial: a BrokenPipeError traceback)."""
    out, _ = run_dir
    proc = subprocess.Popen([sys.executable, "-m", "fastvae.evaluate", str(out), "--k", "1", "--test-images", "50",
                             "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()                                 # the reader is gone before the tool writes its first line
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 141 and "Traceback" not in err and "BrokenPipe" not in err, err


def test_a_run_whose_data_moved_resumes_with_its_new_place(tmp_path):
    """Moving a project's folder (its runs and its data) left a --data run impossible to continue: --resume said to
    omit --data for MNIST, and --data was refused (a fresh user's trial). Now --data gives the run's own data set its
    new place (kept in metrics.json) and the run ends as an uninterrupted one; another data set is still refused."""
    rng = np.random.default_rng(3)
    data = tmp_path / "shapes.npy"
    np.save(data, (rng.random((240, 6, 5)) < 0.3).astype(np.uint8) * 255)
    tiny = ["--hidden", "16", "--latent", "2", "--batch-size", "40", "--no-plots", "--quiet", "--backend", "cpu",
            "--threads", "1"]
    straight, run = tmp_path / "straight", tmp_path / "run"
    assert train("--data", str(data), *tiny, "--epochs", "2", "--out", str(straight)).returncode == 0
    assert train("--data", str(data), *tiny, "--epochs", "1", "--out", str(run)).returncode == 0
    moved = tmp_path / "elsewhere" / "shapes.npy"
    moved.parent.mkdir()
    data.rename(moved)
    proc = train("--resume", str(run), "--epochs", "2")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert f"{data}, no longer exists" in proc.stderr and f"--resume {run} --data PATH" in proc.stderr
    other = tmp_path / "other.npy"
    np.save(other, np.zeros((240, 6, 5), np.uint8))
    proc = train("--resume", str(run), "--epochs", "2", "--data", str(moved), "--quiet", "--threads", "1")
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["run"]["data_dir"] == str(moved.resolve()) and len(metrics["epochs"]) == 2
    ours, theirs = checkpoint.load(run / "checkpoint.npz"), checkpoint.load(straight / "checkpoint.npz")
    assert np.array_equal(ours.params, theirs.params)
    proc = train("--resume", str(run), "--epochs", "3", "--data", str(other))
    assert proc.returncode == 2 and "--data cannot be changed when resuming" in proc.stderr, proc.stderr


def test_a_run_trained_on_by_the_library_says_which_epochs_have_no_record(tmp_path):
    """A run's checkpoint loaded, fitted and saved by a program, then resumed on the command line, left a gap in
    metrics.json's epochs without a word (a fresh user's trial): the resume says which epochs have no record."""
    from fastvae import VAE
    from fastvae.data import load_mnist
    proc = train(*QUICK[:1], "1", *QUICK[2:], "--no-plots", "--quiet", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    model = VAE.load(tmp_path, backend="cpu")
    model.fit(load_mnist().train_x[:600], epochs=2)
    model.save(tmp_path)
    proc = train("--resume", str(tmp_path), "--epochs", "4", "--no-plots")
    assert proc.returncode == 0, proc.stderr
    notes = [line for line in proc.stderr.splitlines() if "no record" in line]
    assert notes == ["fastvae: the checkpoint is at epoch 3 but metrics.json records epochs up to 1: epochs 2-3 "
                     "trained outside this run have no record (the loss figure joins across them)"], proc.stderr
    assert [r["epoch"] for r in json.loads((tmp_path / "metrics.json").read_text())["epochs"]] == [1, 4]


def test_resuming_a_folder_that_is_not_there_says_so(tmp_path):
    """It said "... is not a fastvae run folder with a readable metrics.json (FileNotFoundError)" (a fresh user)."""
    proc = train("--resume", str(tmp_path / "nothing"), "--epochs", "2")
    assert proc.returncode == 2 and proc.stderr.strip() == (
        f"fastvae: error: --resume {tmp_path / 'nothing'}: there is no such folder; pass the --out folder of an "
        "earlier run"), proc.stderr


def test_a_checkpoint_copied_in_from_another_run_is_refused_by_resume_and_evaluate(tmp_path):
    """Another run's checkpoint copied into a run folder was resumed under the run's name (its metrics.json then
    said hidden [9], its history mixed two models), and evaluate blamed the data for the width (an adversarial
    user's trial). Both refuse it in one line naming the setting; the run's files are left as they were."""
    rng = np.random.default_rng(4)
    data = tmp_path / "rows.npy"
    np.save(data, rng.random((200, 7)).astype(np.float32))
    tiny = ["--data", str(data), "--latent", "2", "--batch-size", "40", "--no-plots", "--quiet", "--backend", "cpu",
            "--threads", "1", "--epochs", "1"]
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    assert train(*tiny, "--hidden", "8", "--out", str(ours)).returncode == 0
    assert train(*tiny, "--hidden", "9", "--lr", "0.01", "--out", str(theirs)).returncode == 0
    shutil.copy(theirs / "checkpoint.npz", ours / "checkpoint.npz")
    metrics = (ours / "metrics.json").read_bytes()
    want = (f"fastvae: error: {ours / 'checkpoint.npz'} is not the checkpoint of the run in {ours}: its hidden is [9], "
            "the run's metrics.json records [8] (a checkpoint of another run copied in?); use the run folder it came "
            "from, or a copy of the checkpoint alone")
    proc = train("--resume", str(ours), "--epochs", "2")
    assert proc.returncode == 2 and proc.stderr.strip() == want, proc.stderr
    assert (ours / "metrics.json").read_bytes() == metrics
    proc = subprocess.run([sys.executable, "-m", "fastvae.evaluate", str(ours), "--k", "1"], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2 and proc.stderr.strip() == want, proc.stderr
    # the run's own model fitted on by a program in another batch size (and learning rate) is the run's still (it
    # was refused as another run's: a review's catch); --resume says which epochs have no record
    from fastvae import VAE
    model = VAE.load(theirs, backend="cpu")
    model.config = dataclasses.replace(model.config, lr=0.002)
    model.fit(np.load(data), epochs=1, batch_size=20)
    model.save(theirs)
    proc = train("--resume", str(theirs), "--epochs", "3")
    assert proc.returncode == 0 and "trained outside this run have no record" in proc.stderr, proc.stderr


def test_a_resume_on_a_data_set_whose_test_set_changed_is_refused(tmp_path):
    """Only the training set was fingerprinted: a file with the same training set and another test set was taken
    on --resume, the history's test losses then of two test sets (an auditor's trial). The run records its test
    set's sha256 too, and a resume on another is refused; on the same file it goes on."""
    rng = np.random.default_rng(5)
    x_train, x_test = (rng.random((n, 7)).astype(np.float32) for n in (200, 60))
    data = tmp_path / "set.npz"
    np.savez(data, x_train=x_train, x_test=x_test)
    run = tmp_path / "run"
    tiny = ["--hidden", "8", "--latent", "2", "--batch-size", "40", "--no-plots", "--quiet", "--backend", "cpu",
            "--threads", "1"]
    assert train("--data", str(data), *tiny, "--epochs", "1", "--out", str(run)).returncode == 0
    assert set(json.loads((run / "metrics.json").read_text())["run"]) >= {"train_sha256", "test_sha256"}
    np.savez(data, x_train=x_train, x_test=np.flip(x_test, axis=1))
    proc = train("--resume", str(run), "--epochs", "2")
    assert proc.returncode == 2 and proc.stderr.strip() == (
        f"fastvae: error: the test set of {data} is not the one this run was trained on (its 60 rows differ from "
        f"those recorded in {run / 'metrics.json'}); pass the run's own data set with --data PATH"), proc.stderr
    np.savez(data, x_train=x_train, x_test=x_test)
    proc = train("--resume", str(run), "--epochs", "2")
    assert proc.returncode == 0, proc.stderr


def test_a_folder_holding_files_of_the_figures_names_is_refused_and_an_empty_path_too(tmp_path):
    """A folder holding no run but the user's own samples.png, loss.png or samples/epoch_001.png: a new run wrote
    its figures over them without a word; and `--out=` (an unset shell variable) trained into the working folder,
    `--resume=` resumed it, `VAE.save("")` wrote ./checkpoint.npz (an adversarial user's trial). Refused in one line,
    the files untouched; with --no-plots the run writes no figure there and goes on."""
    rng = np.random.default_rng(7)
    data = tmp_path / "rows.npy"
    np.save(data, rng.random((120, 5)).astype(np.float32))
    tiny = ["--data", str(data), "--hidden", "8", "--latent", "2", "--batch-size", "40", "--backend", "cpu",
            "--threads", "1", "--epochs", "1", "--quiet"]
    for name in ("loss.png", "samples/epoch_001.png"):
        out = tmp_path / name.replace("/", "_")
        (out / name).parent.mkdir(parents=True)
        (out / name).write_text("mine")
        proc = train(*tiny, "--out", str(out))
        assert proc.returncode == 2 and proc.stderr.strip() == (
            f"fastvae: error: {out} holds {name}, a name of the figures a run writes there; choose another --out, "
            "pass --no-plots, or --overwrite to replace them"), proc.stderr
        assert (out / name).read_text() == "mine" and not (out / "checkpoint.npz").exists()
        assert train(*tiny, "--out", str(out), "--no-plots").returncode == 0
        assert (out / name).read_text() == "mine"
    for option in ("--out=", "--resume=", "--data="):
        proc = train(*tiny[2:], option, cwd=tmp_path)
        assert proc.returncode == 2 and "must name a file or folder, got an empty path ('')" in proc.stderr, \
            proc.stderr
        assert not (tmp_path / "checkpoint.npz").exists()
    model = VAE(hidden=(8,), latent=2, backend="cpu")
    for call in (model.save, VAE.load):
        with pytest.raises(UserError, match=r"^the path is empty \(''\); name a file or folder"):
            call("")


def test_a_metrics_json_of_another_program_is_not_taken_for_a_run(tmp_path):
    """An --out folder holding another program's metrics.json was said to hold "a run that stopped before its first
    checkpoint; start it again with --overwrite", and --overwrite removed the file (an adversarial user's trial)."""
    out = tmp_path / "results"
    out.mkdir()
    (out / "metrics.json").write_text('{"accuracy": 0.9}')
    for extra in ([], ["--overwrite"]):
        proc = train(*QUICK, "--no-plots", "--out", str(out), *extra)
        assert proc.returncode == 2 and proc.stderr.strip() == (
            f"fastvae: error: {out} holds a metrics.json that is not a fastvae run's; choose another --out "
            "(--overwrite would not remove it)"), proc.stderr
        assert (out / "metrics.json").read_text() == '{"accuracy": 0.9}'


def _unshare_works():
    import shutil as sh
    return sh.which("unshare") is not None and subprocess.run(
        ["unshare", "-m", "sh", "-c", "mount --bind /tmp /tmp && mount -o remount,bind,ro /tmp"],
        capture_output=True).returncode == 0


@pytest.mark.skipif(not _unshare_works(), reason="needs `unshare -m` and mount (root with CAP_SYS_ADMIN) to make "
                    "a run folder read-only in a private mount namespace")
def test_resuming_a_read_only_run_folder_says_what_to_do(tmp_path):
    """It said "choose another with --out", which --resume refuses (an adversarial user's trial)."""
    run = tmp_path / "run"
    assert train(*QUICK, "--no-plots", "--quiet", "--out", str(run)).returncode == 0
    script = (f"mount --bind {run} {run} && mount -o remount,bind,ro {run} && exec {sys.executable} -m "
              f"fastvae.train --resume {run} --epochs 3")
    proc = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stderr.strip() == (
        f"fastvae: error: cannot write to the run folder {run} (Read-only file system); a resumed run writes its "
        "checkpoint there: make it writable, or copy the folder and resume the copy"), proc.stderr


def test_a_count_fixed_by_omp_num_threads_is_the_runs_and_kept_by_resume(tmp_path):
    """OMP_NUM_THREADS=1 fixed a run's count, but not in its record: --resume without the variable ran at auto, not
    the uninterrupted run's bits (an auditor's trial). It is the run's count, as --threads 1 would be."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                                            "NUMBA_NUM_THREADS")}
    run = tmp_path / "run"
    proc = train(*QUICK[2:], "--epochs", "1", "--no-plots", "--quiet", "--out", str(run),
                 env={**env, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    assert json.loads((run / "metrics.json").read_text())["run"]["threads"] == 1
    proc = train("--resume", str(run), "--epochs", "2", "--quiet", env=env)
    assert proc.returncode == 0, proc.stderr
    m = json.loads((run / "metrics.json").read_text())
    assert m["run"]["threads"] == 1 and m["epochs"][-1]["threads"]["count"] == 1, m["epochs"][-1]["threads"]
    # (a smaller --epochs said "has already trained 2 of 1 epochs": a new user's trial)
    proc = train("--resume", str(run), "--epochs", "1", env=env)
    assert proc.returncode == 2 and "has already trained 2 epochs, more than --epochs 1 asks for; pass --epochs N " \
        "with N > 2" in proc.stderr, proc.stderr


def test_the_done_lines_median_leaves_out_the_replays_a_later_epoch_compiled():
    """An epoch whose pacer changed the thread count compiles that count's replays (in its seconds): the median
    epoch "after the first" mixed that compile in (a researcher's trial). It is left out, and the line says so."""
    from fastvae.train import _speed
    records = [{"seconds": 20.0}, {"seconds": 2.0}, {"seconds": 9.0, "replay_compile_seconds": 7.0},
               {"seconds": 2.2}]
    assert _speed(records) == ("median 2.00 s per epoch after the first without compiles (20.00 s, which also "
                               "loaded or compiled the kernels)")
    assert _speed(records[:2], part=3) == ("median 2.00 s per epoch after the first (the rest of epoch 3, 20.00 s, "
                                           "which also loaded or compiled the kernels)")
    assert _speed(records[:1]) == "20.00 s, loading or compiling the kernels included"


def test_links_planted_in_a_run_folder_are_never_written_or_followed(tmp_path):
    """In a folder others can write, links planted under the names a run writes through had their targets
    truncated or replaced (.fastvae.lock: the pid written over it; .write-test: emptied; metrics.json.tmp: the
    metrics written over it), and --overwrite removed epoch_001.png and loss.png from folders that `samples` and
    `figures` linked to (a security review). The targets are left as they were."""
    victims = tmp_path / "victims"
    (victims / "dir").mkdir(parents=True)
    for name in ("lock", "probe", "tmp"):
        (victims / name).write_text("precious")
    for name in ("epoch_001.png", "loss.png"):
        (victims / "dir" / name).write_text("precious")
    out = tmp_path / "team"
    out.mkdir()
    (out / ".write-test").symlink_to(victims / "probe")
    (out / "metrics.json.tmp").symlink_to(victims / "tmp")
    (out / ".fastvae.lock").symlink_to(victims / "lock")
    proc = train(*QUICK[2:], "--epochs", "1", "--no-plots", "--quiet", "--out", str(out))
    assert proc.returncode == 2 and ".fastvae.lock in it is a symbolic link" in proc.stderr, proc.stderr
    (out / ".fastvae.lock").unlink()
    proc = train(*QUICK[2:], "--epochs", "1", "--no-plots", "--quiet", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    (out / "samples").symlink_to(victims / "dir")
    (out / "figures").symlink_to(victims / "dir")
    proc = train(*QUICK[2:], "--epochs", "1", "--no-plots", "--quiet", "--out", str(out), "--overwrite")
    assert proc.returncode == 2 and "samples is a link" in proc.stderr, proc.stderr    # (written through, else)
    (out / "samples").unlink()
    proc = train(*QUICK[2:], "--epochs", "1", "--no-plots", "--quiet", "--out", str(out), "--overwrite")
    assert proc.returncode == 0, proc.stderr
    assert all((victims / n).read_text() == "precious" for n in ("lock", "probe", "tmp", "dir/epoch_001.png",
                                                                   "dir/loss.png"))


@pytest.mark.parametrize("what", ["fifo", "zeros"])
def test_a_metrics_json_that_is_no_regular_file_is_no_run_record(run_dir, tmp_path, what):
    """A run folder whose metrics.json is a FIFO hung fastvae-evaluate, and a link to /dev/zero filled the memory (a
    security review): only a regular file of at most 64 MB is read; evaluate then measures the bare checkpoint."""
    out, _ = run_dir
    folder = tmp_path / "run"
    folder.mkdir()
    shutil.copy(out / "checkpoint.npz", folder / "checkpoint.npz")
    if what == "fifo":
        os.mkfifo(folder / "metrics.json")
    else:
        (folder / "metrics.json").symlink_to("/dev/zero")
    proc = subprocess.run([sys.executable, "-m", "fastvae.evaluate", str(folder), "--k", "1", "--test-images", "20",
                           "--backend", "cpu"], capture_output=True, text=True, timeout=120)
    # (one that is there but cannot be read was called "no metrics.json": a fresh user's trial)
    assert proc.returncode == 0 and f"the metrics.json beside {folder / 'checkpoint.npz'} holds no readable run " \
        "record to say which data set it was trained on: measuring it on the embedded MNIST" in proc.stderr, \
        proc.stderr


@pytest.mark.parametrize("damage", [{"run": []}, {"epochs": [1, 2]}, {"run": {"test_images": -150}},
                                    {"run": {"data_dir": 5}}, {"run": {"train_images": "abc"}}])
def test_a_hand_edited_metrics_json_is_one_line_not_a_traceback(run_dir, tmp_path, damage):
    """Values of other types in metrics.json were tracebacks in --resume and plot, and test_images -150 measured all
    but the last 150 images without a word (a security review). --resume refuses the folder in one line, plot draws
    without loss.png, evaluate and plot take no run record from it."""
    from fastvae.cli import run_record
    out, _ = run_dir
    run = tmp_path / "run"
    shutil.copytree(out, run)
    metrics = json.loads((run / "metrics.json").read_text())
    for key, value in damage.items():
        if isinstance(value, dict):
            metrics[key].update(value)
        else:
            metrics[key] = value
    (run / "metrics.json").write_text(json.dumps(metrics))
    proc = train("--resume", str(run), "--epochs", "3")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    # (the file reads as JSON: its record is what is wrong, and the checkpoint goes on in the library)
    assert f"fastvae: error: {run / 'metrics.json'} holds no run record as a run writes them (an older fastvae's, or " \
        "edited): --resume takes the run's settings and data set from it; continue training the checkpoint beside " \
        "it, which is kept, in the library (fastvae.VAE.load, fit)" in proc.stderr, proc.stderr
    (run / "metrics.json").write_text(json.dumps(metrics)[:-9])                 # cut short: no JSON at all
    proc = train("--resume", str(run), "--epochs", "3")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert f"fastvae: error: {run / 'metrics.json'} cannot be read (JSONDecodeError): --resume takes the run's " \
        "settings and data set from it; put a good copy back (the checkpoint beside it is kept" in proc.stderr, \
        proc.stderr
    (run / "metrics.json").write_text(json.dumps(metrics))                      # the edited one again, for plot's
    if "run" in damage:
        assert run_record(run / "checkpoint.npz") is None
    proc = subprocess.run([sys.executable, "-m", "fastvae.plot", str(run), "--out", str(tmp_path / "figs"),
                           "--backend", "cpu", "--test-images", "20"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr


def test_a_samples_link_and_hand_edited_epochs_are_refused_not_followed(run_dir, tmp_path):
    """(A re-review of the fixes above.) A `samples` link planted in a run folder had the epochs' samples written
    through it (--overwrite no longer removed its target's files, but wrote over them), fastvae-plot's default
    figures/ the same; epochs records without a train total were tracebacks in plot; a hard link to another of the
    user's files under the lock's name was truncated."""
    out, _ = run_dir
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "epoch_001.png").write_text("mine")
    run = tmp_path / "run"
    shutil.copytree(out, run)
    (run / "samples").rename(tmp_path / "old-samples")
    (run / "samples").symlink_to(victim)
    proc = train(*QUICK, "--out", str(run), "--overwrite")
    assert proc.returncode == 2 and "samples is a link, not the run's own folder" in proc.stderr, proc.stderr
    assert (victim / "epoch_001.png").read_text() == "mine"
    (run / "samples").unlink()
    (run / "figures").symlink_to(victim)
    proc = subprocess.run([sys.executable, "-m", "fastvae.plot", str(run), "--backend", "cpu"], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2 and "figures is a link" in proc.stderr and os.listdir(victim) == ["epoch_001.png"]
    (run / "figures").unlink()
    metrics = json.loads((run / "metrics.json").read_text())
    metrics["epochs"] = [{"epoch": 1}]
    (run / "metrics.json").write_text(json.dumps(metrics))
    proc = subprocess.run([sys.executable, "-m", "fastvae.plot", str(run), "--backend", "cpu", "--quiet"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "no loss.png" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    from fastvae import runlock
    folder = tmp_path / "locked"
    folder.mkdir()
    (tmp_path / "precious").write_text("precious")
    os.link(tmp_path / "precious", folder / runlock.NAME)
    with pytest.raises(OSError, match="is not a lock file of fastvae.s"):
        runlock.acquire(folder)
    assert (tmp_path / "precious").read_text() == "precious"
