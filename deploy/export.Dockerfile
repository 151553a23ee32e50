# The model exporter: PyTorch -> validated ONNX, published as a new version into the Triton
# model repository mounted at /models. Run on demand (docker-compose.yml, profile `export`):
#   docker compose --profile export run --rm export --model efficientnet_lite0
# PyPI's Linux torch wheels bring CUDA libraries (several GB). For a CPU-only image, point pip
# at a CPU wheel index: --build-arg TORCH_INDEX_URL=<index with +cpu torch wheels>.
FROM python:3.11-slim

ARG TORCH_INDEX_URL=

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    # Writable by whichever uid compose runs the container as (EXPORT_UID): weight downloads
    # and caches go here, never into the image or the repository.
    HOME=/tmp/export-home \
    TORCH_HOME=/tmp/export-home/torch \
    XDG_CACHE_HOME=/tmp/export-home/cache

RUN groupadd --gid 1000 export \
 && useradd --uid 1000 --gid export --no-create-home --home-dir /tmp/export-home \
      --shell /usr/sbin/nologin export

WORKDIR /src
COPY pyproject.toml README.md ./
COPY model_contract/ model_contract/
COPY export/ export/
RUN pip install ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} ".[export]" \
 && rm -rf /src/build

WORKDIR /tmp
USER export

ENTRYPOINT ["python", "-m", "export", "--repository", "/models"]
CMD ["--help"]
