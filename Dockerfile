# syntax=docker/dockerfile:1
# Few-shot image search service. CPU image by default; the GPU variant is the same file
# built with TORCH_INDEX pointing at a CUDA wheel index (see docker-compose.yml, profile gpu).

ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim AS build
# The CPU wheel index keeps the image small: PyPI's default torch wheels bundle gigabytes
# of CUDA libraries.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG TORCH_VERSION=2.9.1
ARG TORCHVISION_VERSION=0.24.1
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv \
    && pip install --index-url "${TORCH_INDEX}" \
        "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY models ./models
COPY training ./training
COPY app ./app
# The project itself, with the ranges its pyproject.toml declares; torch is already
# satisfied by the CPU wheel above, so this adds only the rest.
# hadolint ignore=DL3013
RUN pip install ".[lite]"

FROM python:${PYTHON_VERSION}-slim AS runtime
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOST=0.0.0.0 \
    PORT=8000 \
    DATA_DIR=/data \
    GALLERY_DIR=/gallery \
    CHECKPOINT=/app/models/checkpoints/default.pt \
    HF_HUB_OFFLINE=1
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --home-dir /app --shell /usr/sbin/nologin app \
    && mkdir -p /data /gallery \
    && chown app:app /data
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY --chown=app:app models ./models
COPY --chown=app:app training ./training
COPY --chown=app:app app ./app
USER 10001:10001
VOLUME ["/data"]
EXPOSE 8000
# No curl in a slim image: Python itself checks /healthz.
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '8000'), timeout=4)"]
CMD ["python", "-m", "app"]
