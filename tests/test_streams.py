"""The tools' stdout and stderr (fastvae.streams): a stream that cannot encode a character, or whose writes fail (a
full disk: /dev/full), costs that output, never the run. Real subprocesses of the tools (a fresh user's trial found
each: a traceback and no run for `> /dev/full`, `2> /dev/full`, PYTHONIOENCODING=ascii)."""
import json
import os
import subprocess
import sys

import pytest

from fastvae.streams import LOST_OUTPUT

QUICK = ["--epochs", "1", "--train-images", "300", "--test-images", "100", "--hidden", "24", "--latent", "2",
         "--batch-size", "50", "--seed", "3", "--backend", "cpu", "--no-plots"]
FULL = "/dev/full"
needs_dev_full = pytest.mark.skipif(not os.path.exists(FULL), reason="no /dev/full on this system")


def tool(name, *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=None, cwd=None):
    return subprocess.run([sys.executable, "-m", f"fastvae.{name}", *map(str, args)], stdout=stdout, stderr=stderr,
                          text=True, timeout=300, env={**os.environ, **(env or {})}, cwd=cwd)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("streams") / "run-é"            # (a name ASCII cannot write: the first line)
    proc = tool("train", *QUICK, "--out", out)
    assert proc.returncode == 0, proc.stderr
    return out


@needs_dev_full
def test_a_full_stdout_loses_the_log_not_the_run(tmp_path):
    out = tmp_path / "run"
    with open(FULL, "w") as full:
        proc = tool("train", *QUICK, "--out", out, stdout=full)
    assert proc.returncode == LOST_OUTPUT, proc.stderr
    assert (out / "checkpoint.npz").is_file() and json.loads((out / "metrics.json").read_text())["epochs"]
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("fastvae: error: standard output could not be written (No space left on device)")
    assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr, proc.stderr


@needs_dev_full
def test_a_full_stderr_loses_the_notes_only(tmp_path):
    out = tmp_path / "run"
    with open(FULL, "w") as full:               # --backend auto's note on the backend it chose goes to stderr
        proc = tool("train", *QUICK, "--backend", "auto", "--out", out, stderr=full)
    assert proc.returncode == 0 and "done: test loss" in proc.stdout
    assert (out / "checkpoint.npz").is_file()


@needs_dev_full
def test_help_into_a_full_stdout_says_so(tmp_path):
    with open(FULL, "w") as full:
        proc = tool("train", "--help", stdout=full)
    assert proc.returncode == LOST_OUTPUT and "standard output could not be written" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


@needs_dev_full
def test_evaluate_writes_its_json_before_a_table_a_full_stdout_loses(run, tmp_path):
    with open(FULL, "w") as full:
        proc = tool("evaluate", run, "--k", "1", "--test-images", "20", "--json", tmp_path / "e.json", stdout=full)
    assert proc.returncode == LOST_OUTPUT and "Traceback" not in proc.stderr, proc.stderr
    assert [row["k"] for row in json.loads((tmp_path / "e.json").read_text())["iwae"]] == [1]


def test_a_closed_stdout_is_output_lost_and_its_number_is_not_given_to_a_file(run, tmp_path):
    """Started with stdout closed (`>&-`), Python's sys.stdout is None and print() dropped evaluate's table without a
    word, status 0 (a fresh user's trial): the loss is status 74 and one line, the --json file written all the same;
    a tool that prints nothing there (train --quiet) ends 0. The closed descriptor 1 is pointed at /dev/null: the
    next file opened took the lowest free number, 1, where any C library's write to stdout would land. Real
    subprocesses, started with descriptor 1 closed."""
    def closed_stdout(*args):
        return subprocess.run([sys.executable, "-c", *args], stdout=None, stderr=subprocess.PIPE, text=True,
                              timeout=300, preexec_fn=lambda: os.close(1))
    proc = closed_stdout("import sys; from fastvae import evaluate; sys.exit(evaluate.main(sys.argv[1:]))", str(run),
                         "--k", "1", "--test-images", "20", "--json", str(tmp_path / "e.json"))
    assert proc.returncode == LOST_OUTPUT, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == ("fastvae: error: standard output could not be written (it is "
                                                    "closed); what the tool printed there is lost"), proc.stderr
    assert [row["k"] for row in json.loads((tmp_path / "e.json").read_text())["iwae"]] == [1]
    proc = closed_stdout("import sys; from fastvae import train; sys.exit(train.main(sys.argv[1:]))", *QUICK,
                         "--quiet", "--out", str(tmp_path / "quiet"))
    assert proc.returncode == 0 and (tmp_path / "quiet" / "checkpoint.npz").is_file(), proc.stderr
    proc = closed_stdout("import os, sys\nfrom fastvae import plot\nstatus = plot.main(['--version'])\n"
                         "same = os.path.samestat(os.fstat(1), os.stat(os.devnull))\n"
                         "sys.stderr.write(f'{status} {same}\\n')")
    assert proc.stderr.strip().splitlines()[-1] == f"{LOST_OUTPUT} True", proc.stderr


def test_a_closed_stderr_loses_the_notes_and_keeps_them_out_of_stdout(run):
    """Started with stderr closed (`2>&-`), Python's sys.stderr is None and print(..., file=None) writes to stdout:
    the notes, an error line and --json -'s table went into the output (its JSON no longer parsed: a review). They
    are lost now, as a failing stderr's are; the status stays the tool's. Real subprocesses, descriptor 2 closed."""
    def closed_stderr(*args):
        return subprocess.run([sys.executable, "-m", "fastvae.evaluate", *map(str, args)], stdout=subprocess.PIPE,
                              stderr=None, text=True, timeout=300, preexec_fn=lambda: os.close(2))
    proc = closed_stderr(run, "--k", "1", "--test-images", "20", "--backend", "auto", "--json", "-")
    assert proc.returncode == 0 and [row["k"] for row in json.loads(proc.stdout)["iwae"]] == [1], proc.stdout
    proc = closed_stderr(run / "no-such-checkpoint.npz")
    assert proc.returncode == 2 and proc.stdout == "", proc.stdout


def test_an_ascii_only_stream_gets_escapes_not_a_traceback(run, tmp_path):
    """The table's '±' and a run folder's 'é' are escaped on a stream that cannot encode them (evaluate stopped
    with UnicodeEncodeError before writing its --json file; train before its run)."""
    ascii_only = {"PYTHONIOENCODING": "ascii"}
    proc = tool("evaluate", run, "--k", "1", "--test-images", "20", "--json", tmp_path / "e.json", env=ascii_only)
    assert proc.returncode == 0, proc.stderr
    assert "\\xb1" in proc.stdout and (tmp_path / "e.json").is_file()
    out = tmp_path / "again-é"
    proc = tool("train", *QUICK, "--out", out, env=ascii_only)
    assert proc.returncode == 0 and "again-\\xe9" in proc.stdout.splitlines()[0], proc.stderr
    assert (out / "checkpoint.npz").is_file()


def test_evaluate_draws_no_bar_into_a_log(run):
    """Into a pipe or a file the bar wrote its redraws (carriage returns): drawn on a terminal only, as fit's."""
    proc = tool("evaluate", run, "--k", "1", "10", "--test-images", "20")
    assert proc.returncode == 0 and "\r" not in proc.stderr and "IWAE k=" not in proc.stderr, proc.stderr


def test_a_closed_stdout_stops_training_and_says_so(tmp_path):
    """`fastvae-train ... | head -1`: the pipe's end stops the run (status 141, as a Unix tool), which said nothing
    (a fresh user's trial found a run folder without a checkpoint and no word why): one line on stderr now.
    evaluate stays quiet there, its table being what was lost (tests/test_cli.py); plot names the figures it wrote
    (tests/test_plots.py)."""
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "fastvae.train", *QUICK, "--out", str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    proc.stdout.close()                                 # the reader is gone before the first line
    err = proc.stderr.read()
    assert proc.wait(timeout=300) == 141 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1] == ("fastvae: stopped: standard output was closed (its reader went away, as "
                                            "`| head` does); no checkpoint was saved (no epoch ended)"), err
