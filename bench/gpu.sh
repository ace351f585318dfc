#!/usr/bin/env bash
# The whole GPU bench set in one command (< 10 min on one H200): bench/bench_gpu.py.
# Writes bench/results/gpu-<date>-<machine>.json (or under $OUT when set). Exits 3 at once,
# with a message, on a machine without a usable CUDA device.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY="$(command -v python3)"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec timeout 590 "$PY" bench/bench_gpu.py "$@"
