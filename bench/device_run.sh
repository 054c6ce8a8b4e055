#!/usr/bin/env bash
# Everything a lent GPU machine should run, in one command, from the repository root, without installing (its
# Python already has numpy, numba, cupy, torch, pytest-benchmark):   bash bench/device_run.sh OUTDIR
# Correctness first, then the timings, within 9 minutes on one GPU (each stage has its own time limit; they sum to
# 500 s, under the device tool's 600 s a command; pytest's stages are stopped with SIGINT, so that pytest still writes
# its JUnit XML and benchmark JSON of what ran):
#   1. the `gpu` test marker (kernels, whole steps, the captured step, one epoch of MNIST); it FAILS if any gpu
#      test was skipped or deselected: a skip there means the GPU checked nothing;
#   2. compute-sanitizer memcheck and racecheck over a few steps (uncaptured and replayed), where the toolkit has it;
#   3. the GPU benchmarks: fastvae's gpu backend, then PyTorch on the same card beside fastvae's epoch again
#      (torch.compile's first compile is the slow part: apart, so that it cannot cost fastvae's numbers), and reports.
# Writes into OUTDIR, named by date and card: the tests' log and JUnit XML, the sanitizers' logs, the benchmarks'
# JSON and report, nvidia-smi's description of the card. Commit them under bench/results/. Exit status: 0 only when
# every stage that ran passed and nothing was skipped.
set -uo pipefail
out=${1:?usage: bash bench/device_run.sh OUTDIR}
py=${PYTHON:-python3}       # the device image's Python is python3 (its venv's); PYTHON=... for another
command -v "$py" > /dev/null || { echo "no $py on PATH (set PYTHON)" >&2; exit 2; }
limit() { timeout -s INT -k 15 "$@"; }      # SIGINT first: pytest ends its session and writes its files
mkdir -p "$out"
export PYTHONPATH=$PWD
card=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 | tr -c 'A-Za-z0-9\n' '-' | tr -s '-')
stem="$out/$(date -u +%F)-gpu-${card:-unknown}"
nvidia-smi > "$stem-nvidia-smi.txt" 2>&1
failed=()

echo "== 1. the gpu marker"
limit 200 "$py" -m pytest -m gpu tests/test_gpu.py tests/test_gpu_steps.py tests/test_kernels.py -v -rs \
    -p no:cacheprovider --junitxml "$stem-tests.xml" 2>&1 | tee "$stem-tests.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || failed+=("gpu tests")
"$py" - "$stem-tests.xml" <<'EOF' || failed+=("gpu tests skipped or missing")
import sys, xml.etree.ElementTree as ET
suites = ET.parse(sys.argv[1]).getroot()
suite = suites if suites.tag == "testsuite" else suites.find("testsuite")
tests, skipped = int(suite.get("tests", 0)), int(suite.get("skipped", 0))
print(f"gpu marker: {tests} tests, {skipped} skipped")
if tests == 0 or skipped:
    for case in suite.iter("testcase"):
        for s in case.findall("skipped"):
            print(f"SKIPPED {case.get('name')}: {s.get('message')}", file=sys.stderr)
    sys.exit(f"FAIL: the gpu marker ran {tests} tests and skipped {skipped}: the GPU was not checked")
EOF

echo "== 2. compute-sanitizer"
sanitizer=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)
if [ -n "$sanitizer" ]; then
    steps='
import numpy as np
from fastvae import step
from fastvae.backends import gpu
from fastvae.config import Config
from fastvae.params import Layout, he_init
be = gpu.load()
cfg = Config(hidden=(500, 500), latent=20, batch_size=150)
layout = Layout(cfg)
st, ws = step.State(be, layout, he_init(layout, seed=1), seed=3), step.Workspace(be, cfg, 150)
data = be.asarray(np.random.default_rng(0).integers(0, 256, (600, 784)), dtype=np.uint8)
# first one step in two row shards (as the cpu backend splits a batch): heads at COUNTER_ROW 75, Adam summing (2, P)
step.train_step(be, cfg, st, ws, data, be.asarray(np.arange(150) + 450, dtype=np.int64), 2)
stepper = step.Stepper(be, cfg, st, ws, data)
for k in range(3):
    step.train_step(be, cfg, st, ws, data, be.asarray(np.arange(150) + 150 * k, dtype=np.int64))
    stepper(be.asarray(np.arange(150) + 150 * k, dtype=np.int64))
be.synchronize()
assert np.all(np.isfinite(be.to_host(st.params))), "non-finite parameters"
print("sanitized steps: ok")
'
    for tool in memcheck racecheck; do
        timeout -k 10 60 "$sanitizer" --tool "$tool" --error-exitcode 1 "$py" -c "$steps" > "$stem-$tool.txt" 2>&1 \
            || failed+=("compute-sanitizer $tool")
        tail -3 "$stem-$tool.txt"
    done
else
    echo "compute-sanitizer is not installed here: skipped (not a failure)"
fi

echo "== 3. benchmarks"
limit 80 "$py" -m pytest bench/test_kernel_timings.py bench/test_training.py -k gpu \
    -p no:cacheprovider --benchmark-enable --benchmark-json "$stem.json" 2>&1 | tail -30
[ "${PIPESTATUS[0]}" -eq 0 ] || failed+=("benchmarks")
[ -s "$stem.json" ] && "$py" bench/report.py "$stem.json" > "$stem.md" && cat "$stem.md"
limit 100 "$py" -m pytest bench/test_training.py bench/test_peers.py -k "one_epoch and gpu or cuda" \
    -p no:cacheprovider --benchmark-enable --benchmark-json "$stem-peers.json" 2>&1 | tail -30
[ "${PIPESTATUS[0]}" -eq 0 ] || failed+=("peer benchmarks")
[ -s "$stem-peers.json" ] && "$py" bench/report.py "$stem-peers.json" > "$stem-peers.md" && cat "$stem-peers.md"

if [ "${#failed[@]}" -gt 0 ]; then
    printf 'FAILED: %s\n' "${failed[@]}" >&2
    exit 1
fi
echo "device run: every stage passed"
