#!/usr/bin/env bash
# GPU check for a session lent an H100/H200 (which cannot reach the internet): install mbias from wheels carried
# along, then run benchmarks/gpu_check.py under a hard limit (400 s; then 150 s for FSDP2). It checks, on
# random-weight models of real 7B shapes: the audit in bf16 and 4-bit; the audit split by accelerate's device map over every visible GPU (one
# GPU: part of the model offloaded to the CPU) with its scores compared to the one-device run; the real-shape cost
# benchmark (audit_cost.py at the LLaVA-1.5 shape, 7B width: LLM tokens per probe against each probe's minimum,
# tokens/s and the fraction of the bf16 matmul peak, printed); a QLoRA M-SAM step; and QLoRA steps of every recipe.
# Each stage is written to the JSON report as soon as it ends. Then every recipe under FSDP2 (fsdp_check.py).
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
# 400 s for the audit, cost and QLoRA stages, then 150 s for every recipe under FSDP2 through the Trainer and
# accelerate (benchmarks/fsdp_check.py, LoRA and --tune full, bf16, one process per GPU): the 10-minute call limit
timeout 400 "$PY" benchmarks/gpu_check.py "$@" || echo "gpu_check.py stopped early (exit $?); its JSON has the stages it finished"
"$PY" -c "from mbias.tiny import build_tiny; build_tiny('llava', '/tmp/mbias-fsdp/llava')" >/dev/null 2>&1 || true
NGPU=$(nvidia-smi -L 2>/dev/null | wc -l)
timeout 150 "$PY" -m accelerate.commands.launch --config_file benchmarks/configs/accelerate/fsdp2.yaml \
  --num_processes "$(( NGPU > 0 ? NGPU : 1 ))" benchmarks/fsdp_check.py --model /tmp/mbias-fsdp/llava \
  --out "${OUT:-benchmarks/results}" 2>&1 | grep -v "Warning\|warn(" | tail -25 || echo "fsdp_check.py stopped early"
