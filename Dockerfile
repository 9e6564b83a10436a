# decaf HTTP service (CPU image).
#
#   docker build -t decaf .
#   docker run -p 8000:8000 -v decaf-weights:/home/decaf/.cache/torch -v decaf-data:/data decaf
#   # offline trial without pretrained weights:  -e DECAF_WEIGHTS=random
#   # weights already on the host:  -v /path/alexnet-owt-7be5be79.pth:/weights/alexnet.pth:ro \
#   #                               -e DECAF_WEIGHTS=/weights/alexnet.pth
#
# GPU variant: start from a CUDA runtime base instead of python:3.11-slim, e.g.
#   FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04  (then install python3.11 + pip from apt)
# build with --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 and run with
# `docker run --gpus all ...`; DECAF_DEVICE=auto picks the GPU up by itself.
FROM python:3.11-slim

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TORCH_HOME=/home/decaf/.cache/torch \
    DECAF_DATA_DIR=/data \
    DECAF_LOG_JSON=true

RUN groupadd --gid 10001 decaf \
    && useradd --create-home --uid 10001 --gid 10001 decaf

WORKDIR /app

# torch first, from the CPU wheel index (the default PyPI wheel bundles CUDA: ~3 GB larger).
RUN pip install --no-cache-dir --index-url "${TORCH_INDEX}" \
        "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}"

COPY pyproject.toml README.md ./
COPY featurizer ./featurizer
COPY classifiers ./classifiers
COPY retrieval ./retrieval
COPY service ./service
# The `postgres` extra (psycopg) lets replicas share one PostgreSQL: DECAF_DATABASE_URL.
RUN pip install --no-cache-dir "./[postgres]" \
    && mkdir -p /data "${TORCH_HOME}" \
    && chown -R decaf:decaf /data /home/decaf/.cache

USER 10001:10001

# Pretrained weights are cached under TORCH_HOME (downloaded on first start when online);
# stores, probes and the SQLite database live in DECAF_DATA_DIR. Several replicas: mount one
# shared volume at /data in each and set DECAF_DATABASE_URL=postgresql+psycopg://... (README).
VOLUME ["/home/decaf/.cache/torch", "/data"]
EXPOSE 8000

# Liveness only; the port opens once the model is loaded, hence the long start period.
HEALTHCHECK --interval=30s --timeout=5s --start-period=180s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]

CMD ["decaf", "serve", "--host", "0.0.0.0", "--port", "8000"]
