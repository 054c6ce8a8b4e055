"""bench/report.py as a user runs it: a real subprocess on a committed benchmark run, and on files that are not one."""
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
RUN = HERE / "results" / "2026-12-06-xeon-floors.json"      # turns, breakdowns, products and memory, no epochs


def report(*args):
    return subprocess.run([sys.executable, str(HERE / "report.py"), *args], capture_output=True, text=True,
                          timeout=120)


def test_every_table_of_a_run_is_printed_from_its_json():
    proc = report(str(RUN))
    assert proc.returncode == 0, proc.stderr
    for heading in ("### Epochs in turns", "### The products of one step", "### One cpu step, part by part",
                    "### One cpu-bf16 step, part by part", "### Peak memory of one epoch"):
        assert heading in proc.stdout, heading
    assert "| fastvae cpu-bf16 | 318.8 |" in proc.stdout             # the memory benchmark's figure, as recorded
    assert "| step ÷ that floor |" in proc.stdout


@pytest.mark.parametrize("args,says", [
    ([], "usage: python bench/report.py"),
    (["/no/such/run.json"], "cannot read /no/such/run.json"),
    ([str(HERE / "results" / "2026-12-05-xeon-quality-fp32-bf16.json")], "is not a pytest-benchmark JSON"),
])
def test_a_wrong_argument_is_one_line_and_a_nonzero_status(args, says):
    proc = report(*args)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    line, = proc.stderr.strip().splitlines()
    assert says in line


def test_fastvae_threads_per_epoch_are_reported():
    """The turns' JSON keeps fastvae's thread record per epoch (bench/peers/run.py); the report says the counts and
    any change the pacer made inside an epoch, and says nothing for a run made before that was recorded."""
    from report import _threads_lines
    start = {"step": 0, "threads": 2, "reason": "start: 2 CPUs in the affinity mask"}
    probe = {"step": 130, "threads": 1, "reason": "probe"}
    frameworks = {"fastvae": {"threads": [{"count": 2, "changes": [start]}, {"count": 1, "changes": [probe]}]},
                  "torch eager": {}}
    lines = _threads_lines(frameworks)
    assert lines == ["", "fastvae: threads per epoch 2, 1; changed by the pacer: 1 at step 130 (probe)"]
    assert _threads_lines({"fastvae": {"threads": [{"count": 2, "changes": [start]}]}})[1].endswith(
        "no change by the pacer")
    assert _threads_lines({"fastvae": {"seconds": [1.0]}}) == []


def test_the_step_breakdowns_own_json_is_printed_too(tmp_path):
    """python -m bench.step_breakdown --json wrote a file report.py refused as "not a pytest-benchmark JSON" (a fresh
    user's trial): both real subprocesses, at 2 steps, where pytest does not import (the README runs them without
    pytest; both imported it, through the products' list: a second trial)."""
    import os
    (tmp_path / "no_pytest").mkdir()
    (tmp_path / "no_pytest" / "pytest.py").write_text("raise ImportError('no pytest in this environment')\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "no_pytest")}
    out = tmp_path / "breakdown.json"
    made = subprocess.run([sys.executable, "-m", "bench.step_breakdown", "--steps", "2", "--rounds", "1", "--json",
                           str(out)], capture_output=True, text=True, timeout=300, cwd=HERE.parent, env=env)
    assert made.returncode == 0, made.stderr
    proc = subprocess.run([sys.executable, str(HERE / "report.py"), str(out)], capture_output=True, text=True,
                          timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    first, *rest = proc.stdout.splitlines()
    assert first.startswith("Machine: ") and "--steps 2 --rounds 1" in first, first
    assert "### One cpu step, part by part" in proc.stdout and "| step ÷ products alone |" in proc.stdout
    # the Xeon's AMX tool too (it imported pytest through bench/test_training.py's trainer); --help runs its imports
    turns = subprocess.run([sys.executable, str(HERE / "bf16_turns.py"), "--help"], capture_output=True, text=True,
                           timeout=120, env=env)
    assert turns.returncode == 0 and "--rounds" in turns.stdout, turns.stderr


def test_issue_14s_targets_are_judged_from_the_runs_own_figures():
    """Each target of issue 14 says met or NOT met from the run's median ratio (its lowest round beside it), the step
    from the cpu breakdown; a target the run did not measure says so. A run of the EPYC that met them all, and the
    same run with eager's rounds and the step made slower."""
    import copy
    import json

    from report import targets_lines
    from step_breakdown import GROUP as BREAKDOWN
    from test_side_by_side import GROUP as TURNS
    doc = json.loads((HERE / "results" / "2026-12-07-epyc-eighteenth.json").read_text())
    lines = targets_lines(doc["benchmarks"])
    assert [line.split(":")[1].split(",")[0].strip() for line in lines[2:6]] == ["met"] * 4, lines
    assert "1.84×" in lines[2] and "lowest round 1.63×" in lines[2] and "1.22×" in lines[5]
    slower = copy.deepcopy(doc["benchmarks"])
    for b in slower:
        if b["group"] == TURNS:
            eager = b["extra_info"]["frameworks"]["torch eager"]
            eager["median_ratio_to_fastvae"], eager["ratio_to_fastvae"] = 1.25, [1.2, 1.25, 1.31]
            del b["extra_info"]["frameworks"]["jax jit"]
        if b["group"] == BREAKDOWN and b["extra_info"]["breakdown"].get("backend", "cpu") == "cpu":
            b["extra_info"]["breakdown"]["ms"]["step in chunks"] = 9.0
    lines = targets_lines(slower)
    assert "torch eager: NOT met, 1.25×" in lines[2] and "lowest round 1.20×" in lines[2]
    assert "jax jit: not measured in this run" in lines[3]
    assert "NOT met, 1.44×" in lines[5]                          # (9.0 ms against 6.272)
