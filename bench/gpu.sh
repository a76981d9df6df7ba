#!/usr/bin/env bash
# The GPU benchmark as one prepared command for a lent machine (the device tool), under
# 8 minutes: bench/gpu_wheels.sh here first, then run with carry [".whl"]:
#   bash bench/gpu.sh            -> $OUT/gpu.json (and gpu.log)
# The CUDA image has PyTorch, torchvision, timm and onnxruntime; the service's other
# packages come as wheels in .whl/ (no network there).
set -euo pipefail
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:$PWD"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/nvidia-smi.csv" || true
timeout 450 python3 -m bench.gpu --out "$OUT/gpu.json" ${GALLERY:+--gallery "$GALLERY"} \
    2>&1 | tee "$OUT/gpu.log" | grep -v "it/s\]" | tail -20
