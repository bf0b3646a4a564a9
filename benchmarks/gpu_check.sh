#!/usr/bin/env bash
# GPU check for a session lent an H100/H200 (which cannot reach the internet): install mbias from wheels carried
# along, then run benchmarks/gpu_check.py under a hard 9-minute limit. It checks, on random-weight models of real
# 7B shapes: the audit in bf16 and 4-bit; the audit split by accelerate's device map over every visible GPU (one
# GPU: part of the model offloaded to the CPU) with its scores compared to the one-device run; a QLoRA M-SAM step;
# and QLoRA steps of every recipe. Each stage is written to the JSON report as soon as it ends.
#
# Prepare here (with network):   pip wheel --wheel-dir wheels/ -e . && pip download -d wheels/ torch==2.14.1 ...
#   or carry a ready virtual environment (.venv) with the run tool's `carry`.
# On the GPU machine:            bash benchmarks/gpu_check.sh [--samples 16] [--out "$OUT"]
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -x .venv/bin/python ] && .venv/bin/python -c "import mbias, torch" 2>/dev/null; then
  PY=.venv/bin/python
elif [ -d wheels ]; then
  python3 -m venv /tmp/mbias-gpu-venv
  /tmp/mbias-gpu-venv/bin/pip install -q --no-index --find-links wheels/ -e .
  PY=/tmp/mbias-gpu-venv/bin/python
else
  echo "gpu_check.sh: no .venv with mbias and no wheels/ folder; see the comment at the top of this file" >&2
  exit 2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
timeout 540 "$PY" benchmarks/gpu_check.py "$@"
