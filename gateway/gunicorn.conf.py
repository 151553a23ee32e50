"""Production gunicorn settings for the gateway, all overridable through the environment.

    gunicorn -c gateway/gunicorn.conf.py gateway.wsgi:app

The values come from ``gateway.config.ServerSettings`` (GATEWAY_BIND, GATEWAY_WORKERS,
GATEWAY_THREADS, GATEWAY_TIMEOUT_S, GATEWAY_ACCESS_LOG, ...: defaults and reasons there);
a bad value stops gunicorn with a sentence naming the variable. By default each worker has
GATEWAY_MAX_INFLIGHT + GATEWAY_MAX_QUEUE + 4 threads, so that beyond the requests working
and waiting there are always threads free to refuse overload at once and to answer /health,
/ready and /metrics. Errors gunicorn answers itself (431 for huge headers, 414, 400)
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

from gateway.config import ConfigError, ServerSettings, Settings

try:
    _server = ServerSettings.from_env(os.environ)
except ConfigError as exc:
    sys.exit(f"gateway: configuration error: {exc}")

bind = [_server.bind]
workers = _server.workers
threads = _server.threads
worker_class = "gateway.gunicorn_worker.JsonErrorThreadWorker"
timeout = _server.timeout_s
graceful_timeout = 30
keepalive = 5
preload_app = False
reload = False
control_socket_disable = True  # no runtime management socket in production
forwarded_allow_ips = _server.forwarded_allow_ips
# HTTPS at gunicorn (GATEWAY_TLS_CERT_FILE/KEY_FILE): this port then speaks only TLS, with
# the ssl module's defaults (TLS 1.2+ and its cipher choice); plain HTTP to it is refused.
if _server.tls_cert_file is not None and _server.tls_key_file is not None:
    certfile = str(_server.tls_cert_file)
    keyfile = str(_server.tls_key_file)
# Bounded request lines and headers; the body limit is the app's (GATEWAY_MAX_BODY_BYTES).
limit_request_line = 8190
limit_request_fields = 100
limit_request_field_size = 8190

errorlog = "-"
loglevel = _server.log_level.lower()
accesslog = "-" if _server.access_log else None
# No headers (API keys live there), no query string, no referer: method, path, status,
# size, duration and the request id the app returns.
access_log_format = '%(h)s "%(m)s %(U)s" %(s)s %(B)s %(M)sms rid=%({x-request-id}o)s'

_own_metrics_dir: str | None = None


def on_starting(server: Any) -> None:
    """Validate the gateway settings in the master, and start with an empty metrics directory."""
    global _own_metrics_dir
    try:
        settings = Settings.from_env(os.environ)
    except ConfigError as exc:
        sys.exit(f"gateway: configuration error: {exc}")
    if settings.history_url:
        _check_history_schema(settings)
    if server.cfg.threads <= _server.max_inflight + _server.max_queue:
        server.log.warning(
            "GATEWAY_THREADS=%d leaves no thread beyond GATEWAY_MAX_INFLIGHT=%d + "
            "GATEWAY_MAX_QUEUE=%d: under overload requests wait in gunicorn's queue instead "
            "of getting a fast 503",
            server.cfg.threads,
            _server.max_inflight,
            _server.max_queue,
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


def _check_history_schema(settings: Settings) -> None:
    """Refuse a history schema that is not current here, once, before any worker boots.

    Workers check it too (create_app), but two of them exiting at once make gunicorn's master
    crash with tracebacks instead of one clear line. A database that cannot be reached is the
    workers' business: they start and answer with ``"id": null`` until it is back.
    """
    from gateway.history.migrations import SchemaMismatch
    from gateway.history.store import HistoryStore, HistoryUnavailable

    store = HistoryStore(settings.history_url, settings.history_timeout_s)
    try:
        store.check_schema()
    except SchemaMismatch as exc:
        sys.exit(f"gateway: configuration error: {exc}")
    except HistoryUnavailable:
        pass
    finally:
        store.dispose()  # no connection of the master's crosses a fork


def child_exit(server: Any, worker: Any) -> None:
    """Mark a dead worker so its live gauges (requests in flight) stop counting."""
    from gateway.metrics import mark_worker_dead

    mark_worker_dead(worker.pid)


def on_exit(server: Any) -> None:
    """Remove the metrics directory this config created (never one it was given)."""
    if _own_metrics_dir is not None:
        shutil.rmtree(_own_metrics_dir, ignore_errors=True)
