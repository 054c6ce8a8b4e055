"""bench/device_run.sh, the one command a lent GPU machine runs (15 minutes of device time in all, 600 s a command):
its stage limits fit a command, and where no GPU checks anything it says so and fails, writing its files."""
import os
import re
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "device_run.sh"
COMMAND_LIMIT = 600                         # the device tool's limit on one command, in seconds


def test_the_stage_limits_fit_one_device_command_with_room_to_start():
    """They summed to 690 s (a review): the command would have been killed in its benchmarks, their JSON unwritten."""
    text = SCRIPT.read_text()
    limits = [int(n) for n in re.findall(r"^\s*(?:limit|timeout(?: -s \w+)?(?: -k \d+)?) (\d+) ", text, re.M)]
    sanitizer_tools = 2                     # memcheck and racecheck, one limit written once in their loop
    total = sum(limits) + limits[1] * (sanitizer_tools - 1)
    assert len(limits) == 4 and total <= COMMAND_LIMIT - 100, (limits, total)


def test_without_a_gpu_it_fails_saying_nothing_was_checked(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(SCRIPT), str(tmp_path / "out")], capture_output=True, text=True, timeout=600,
                          cwd=SCRIPT.parents[1], env=env)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    found = re.search(r"gpu marker: (\d+) tests, (\d+) skipped", proc.stdout)
    assert found and int(found[1]) > 100 and found[1] == found[2], proc.stdout[-3000:]
    assert "FAILED: gpu tests skipped or missing" in proc.stderr and "every stage passed" not in proc.stdout
    names = sorted(p.name.split("-gpu-")[1] for p in (tmp_path / "out").iterdir())
    assert names == ["unknown-nvidia-smi.txt", "unknown-tests.txt", "unknown-tests.xml"], names
    proc = subprocess.run(["bash", str(SCRIPT), str(tmp_path / "out")], capture_output=True, text=True, timeout=60,
                          cwd=SCRIPT.parents[1], env={**env, "PYTHON": "no-such-python-fastvae"})
    assert proc.returncode == 2 and "no no-such-python-fastvae on PATH (set PYTHON)" in proc.stderr
