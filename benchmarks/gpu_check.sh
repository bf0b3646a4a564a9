#!/usr/bin/env bash
# GPU check for a session lent an H100/H200 (which cannot reach the internet): install mbias from wheels carried
# along, then run benchmarks/gpu_check.py under a hard 8-minute limit.
#
# Prepare here (with network):   pip wheel --wheel-dir wheels/ -e . && pip download -d wheels/ torch==2.14.1 ...
#   or carry a ready virtual environment (.venv) with the run tool's `carry`.
# On the GPU machine:            bash benchmarks/gpu_check.sh [--samples 16]
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
timeout 480 "$PY" benchmarks/gpu_check.py "$@"
