#!/usr/bin/env bash
# Everything a lent GPU machine should run, in one command, from the repository root, without installing (its
# Python already has numpy, numba, cupy, torch, pytest-benchmark):   bash bench/device_run.sh OUTDIR
# Writes into OUTDIR: the gpu test marker's log, the GPU benchmarks' JSON (fastvae's gpu backend and PyTorch on
# the same card, side by side) and its report, and nvidia-smi's description of the card. Commit them under
# bench/results/ with the date and the device in their names.
set -uo pipefail
out=${1:?usage: bash bench/device_run.sh OUTDIR}
mkdir -p "$out"
export PYTHONPATH=$PWD
card=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 | tr -c 'A-Za-z0-9\n' '-' | tr -s '-')
stem="$out/$(date -u +%F)-gpu-${card:-unknown}"
nvidia-smi > "$stem-nvidia-smi.txt" 2>&1
python -m pytest -m gpu tests/test_gpu.py -v -rs -p no:cacheprovider 2>&1 | tee "$stem-tests.txt"
python -m pytest bench/test_kernel_timings.py bench/test_training.py bench/test_peers.py -k "gpu or cuda" \
    -p no:cacheprovider --benchmark-enable --benchmark-json "$stem.json" 2>&1 | tail -30
python bench/report.py "$stem.json" > "$stem.md" && cat "$stem.md"
