# The HTTP gateway: Flask under gunicorn, talking gRPC to Triton. No torch, no build tools.
# Built by docker-compose.yml (context: the repository root), or by hand:
#   docker build -f deploy/gateway.Dockerfile -t visionai/gateway .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    GATEWAY_BIND=0.0.0.0:8080

# A fixed, unprivileged user: the process never runs as root and owns none of its code.
RUN groupadd --system --gid 10001 gateway \
 && useradd --system --uid 10001 --gid gateway --no-create-home \
      --home-dir /nonexistent --shell /usr/sbin/nologin gateway

WORKDIR /app

# Requirements first, so that code changes reuse the cached dependency layer. Only the pinned
# gateway requirements, from wheels only (slim has no compiler and needs none).
COPY gateway/requirements.txt /app/gateway/requirements.txt
RUN pip install --only-binary=:all: -r /app/gateway/requirements.txt

COPY model_contract/ /app/model_contract/
COPY gateway/ /app/gateway/
# The operator's rollout command line: `docker compose exec gateway python -m rollout status`.
COPY rollout/ /app/rollout/
COPY deploy/healthcheck.py /app/healthcheck.py

# The rollout records' volume mount point, owned by the gateway user (a new named volume takes
# the ownership of the image's directory).
RUN mkdir -p /var/lib/visionai/rollout && chown gateway:gateway /var/lib/visionai/rollout
USER gateway
EXPOSE 8080

# Ready = Triton reachable and the default model loaded. Standard library only (no curl here).
HEALTHCHECK --interval=15s --timeout=6s --start-period=30s --retries=3 \
  CMD ["python", "/app/healthcheck.py", "http://127.0.0.1:8080/ready", "--timeout", "4"]

CMD ["gunicorn", "-c", "gateway/gunicorn.conf.py", "gateway.wsgi:app"]
