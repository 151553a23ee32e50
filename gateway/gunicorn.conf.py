"""Production gunicorn settings for the gateway, all overridable through the environment.

    gunicorn -c gateway/gunicorn.conf.py gateway.wsgi:app

GATEWAY_BIND (default 127.0.0.1:8080; the container image sets 0.0.0.0:8080),
GATEWAY_WORKERS (default 2), GATEWAY_THREADS (gthread threads per worker; default
GATEWAY_MAX_INFLIGHT + GATEWAY_MAX_QUEUE + 4, so that beyond the requests working and
waiting there are always threads free to refuse overload at once and to answer /health,
/ready and /metrics), GATEWAY_TIMEOUT_S (worker timeout, default 60), GATEWAY_ACCESS_LOG
(on/off, default on). Errors gunicorn answers itself (431 for huge headers, 414, 400)
are JSON too (gateway/gunicorn_worker.py).
With several workers, metrics use prometheus_client's multiprocess mode: set
PROMETHEUS_MULTIPROC_DIR to an empty directory (a tmpfs in the container), or a
private temporary directory is made here. The app loads in each worker (no preload),
so no gRPC channel ever crosses a fork.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from typing import Any


def _int_env(name: str, default: int, minimum: int = 1) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        sys.exit(f"gateway: configuration error: {name}={raw!r} must be an integer")
    if value < minimum:
        sys.exit(f"gateway: configuration error: {name}={value} must be at least {minimum}")
    return value


# Spare threads beyond the admission gate's working and waiting requests (docs/reliability.md).
SPARE_THREADS = 4
_max_inflight = _int_env("GATEWAY_MAX_INFLIGHT", 8)  # as gateway/config.py
_max_queue = _int_env("GATEWAY_MAX_QUEUE", 16, minimum=0)

bind = [os.environ.get("GATEWAY_BIND", "").strip() or "127.0.0.1:8080"]
# Two workers, one per core of the 2-core reference box (docs/performance.md): the gateway's
# own work is ~10 ms of CPU per 1080p request (JSON, base64, draft decode, resize), 0.2 of a
# core at saturation, so more processes add no capacity; two let the parts that hold the GIL
# (JSON, base64, Flask) run on both cores (Pillow's decode and resize release it). What
# sets throughput is how many requests reach Triton at once (workers x GATEWAY_MAX_INFLIGHT,
# the dynamic batch), not the number of workers: 2 x 8 = 16 lets Triton form batches of 8
# on average at 16 clients instead of 4, +6.7 % img/s in paired runs.
workers = _int_env("GATEWAY_WORKERS", 2)
# Threads only wait (on the admission gate or on Triton); their count follows the gate's
# bounds, so more threads would only queue in gunicorn instead of getting a fast 503.
threads = _int_env("GATEWAY_THREADS", _max_inflight + _max_queue + SPARE_THREADS)
worker_class = "gateway.gunicorn_worker.JsonErrorThreadWorker"
# Above the Triton timeout, so a slow Triton gives a 504 JSON answer, not a killed worker.
timeout = _int_env("GATEWAY_TIMEOUT_S", 60)
graceful_timeout = 30
keepalive = 5
preload_app = False
reload = False
control_socket_disable = True  # no runtime management socket in production
forwarded_allow_ips = os.environ.get("GATEWAY_FORWARDED_ALLOW_IPS", "127.0.0.1")
# Bounded request lines and headers; the body limit is the app's (GATEWAY_MAX_BODY_BYTES).
limit_request_line = 8190
limit_request_fields = 100
limit_request_field_size = 8190

errorlog = "-"
loglevel = os.environ.get("GATEWAY_LOG_LEVEL", "info").lower()
_access = os.environ.get("GATEWAY_ACCESS_LOG", "on").strip().lower()
accesslog = None if _access in ("0", "off", "false", "no") else "-"
# No headers (API keys live there), no query string, no referer: method, path, status,
# size, duration and the request id the app returns.
access_log_format = '%(h)s "%(m)s %(U)s" %(s)s %(B)s %(M)sms rid=%({x-request-id}o)s'

_own_metrics_dir: str | None = None


def on_starting(server: Any) -> None:
    """Validate the gateway settings in the master, and start with an empty metrics directory."""
    global _own_metrics_dir
    from gateway.config import ConfigError, Settings

    try:
        Settings.from_env(os.environ)
    except ConfigError as exc:
        sys.exit(f"gateway: configuration error: {exc}")
    if server.cfg.threads <= _max_inflight + _max_queue:
        server.log.warning(
            "GATEWAY_THREADS=%d leaves no thread beyond GATEWAY_MAX_INFLIGHT=%d + "
            "GATEWAY_MAX_QUEUE=%d: under overload requests wait in gunicorn's queue instead "
            "of getting a fast 503",
            server.cfg.threads,
            _max_inflight,
            _max_queue,
        )
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not directory and server.cfg.workers > 1:
        # Set in the master before any worker exists (and imports prometheus_client):
        # workers inherit it through fork.
        directory = _own_metrics_dir = tempfile.mkdtemp(prefix="gateway-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    if directory:
        os.makedirs(directory, exist_ok=True)
        # Files of a previous run would be summed into this run's counters.
        for entry in os.scandir(directory):
            if entry.is_file() and entry.name.endswith(".db"):
                os.unlink(entry.path)


def child_exit(server: Any, worker: Any) -> None:
    """Mark a dead worker so its live gauges (requests in flight) stop counting."""
    from gateway.metrics import mark_worker_dead

    mark_worker_dead(worker.pid)


def on_exit(server: Any) -> None:
    """Remove the metrics directory this config created (never one it was given)."""
    if _own_metrics_dir is not None:
        shutil.rmtree(_own_metrics_dir, ignore_errors=True)
