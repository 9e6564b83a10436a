#!/usr/bin/env bash
# One command for the GPU machine (the device tool): install the carried wheels (`make gpu-wheels`
# here fills .whl/; carry ".whl"), then run benchmarks/gpu.py; the report lands in $OUT.
#   on the GPU machine:   bash benchmarks/gpu_run.sh
#   rehearsal on a CPU:   bash benchmarks/gpu_run.sh --device cpu --quick
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ -d .whl ] && ! "$PY" -c "import fastapi, pydantic_settings, sqlalchemy, multipart" 2>/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
REPORT_DIR=${OUT:-/tmp/decaf-gpu-out}
mkdir -p "$REPORT_DIR"
"$PY" -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'cuda', torch.cuda.is_available())"
timeout 470 "$PY" benchmarks/gpu.py --out "$REPORT_DIR/gpu_report.txt" "$@" 2>&1 | tee "$REPORT_DIR/gpu_log.txt"
