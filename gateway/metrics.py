"""Prometheus metrics, correct under several gunicorn workers.

With ``PROMETHEUS_MULTIPROC_DIR`` set (before prometheus_client is imported: the
gunicorn config does it), every worker writes its values to files there and
``/metrics`` aggregates them; gunicorn's ``child_exit`` hook marks dead workers.
Without it (one process: the Flask dev server, tests) each app gets its own registry.
Labels never carry API keys, and the model label is only set for models the
gateway has seen served, so user-chosen names cannot explode cardinality.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
OTHER_MODEL = "other"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0)
STAGE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class GatewayMetrics:
    """The gateway's metric families and their exposition."""

    def __init__(self) -> None:
        self.multiprocess_dir = os.environ.get(MULTIPROC_ENV) or None
        if self.multiprocess_dir:
            registry = None  # values live in files; exposition collects them per scrape
        else:
            self._registry = CollectorRegistry()
            ProcessCollector(registry=self._registry)
            PlatformCollector(registry=self._registry)
            GCCollector(registry=self._registry)
            registry = self._registry
        self.requests = Counter(
            "gateway_requests_total",
            "HTTP requests answered, by route, method, status code and model (/analyze only).",
            ["route", "method", "status", "model"],
            registry=registry,
        )
        self.request_seconds = Histogram(
            "gateway_request_duration_seconds",
            "Seconds from a request reaching the app to its response, by route.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.decode_seconds = Histogram(
            "gateway_decode_duration_seconds",
            "Time reading the request body (JSON or multipart parsing and base64 included) "
            "and decoding the image to RGB.",
            ["model"],
            buckets=STAGE_BUCKETS,
            registry=registry,
        )
        self.preprocess_seconds = Histogram(
            "gateway_preprocess_duration_seconds",
            "Time resizing, cropping and normalising the decoded image into the model's input.",
            ["model"],
            buckets=STAGE_BUCKETS,
            registry=registry,
        )
        self.triton_seconds = Histogram(
            "gateway_triton_duration_seconds",
            "Time in Triton inference calls, failed calls included.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.rejected = Counter(
            "gateway_rejected_requests_total",
            "Requests refused before any work: overloaded (503) or rate_limited (429).",
            ["reason"],
            registry=registry,
        )
        self.history_writes = Counter(
            "gateway_history_writes_total",
            "Answers the history stored, or failed to store (database down or slow), by outcome.",
            ["outcome"],
            registry=registry,
        )
        self.version_requests = Counter(
            "gateway_model_version_requests_total",
            "/analyze answers by model, the version that answered (or was routed to), its "
            "rollout role (stable, candidate, pinned) and outcome (ok, client_error, error).",
            ["model", "version", "role", "outcome"],
            registry=registry,
        )
        self.version_seconds = Histogram(
            "gateway_model_version_duration_seconds",
            "Seconds of /analyze's classification (decode to labels) by model and version.",
            ["model", "version"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.rollout_events = Counter(
            "gateway_rollout_events_total",
            "Rollout changes made by this gateway's controller, by model and action "
            "(adopt, candidate, verified, verify-failed, canary, promote, rollback, "
            "rollback-automatic).",
            ["model", "action"],
            registry=registry,
        )
        self.shadow_comparisons = Counter(
            "gateway_rollout_shadow_requests_total",
            "Requests also sent to the other version for a shadow comparison, by model.",
            ["model"],
            registry=registry,
        )
        self.cache_lookups = Counter(
            "gateway_cache_requests_total",
            "Answer-cache lookups by store (memory, redis) and result (hit, miss).",
            ["backend", "result"],
            registry=registry,
        )
        self.cache_evictions = Counter(
            "gateway_cache_evictions_total",
            "Answers the in-process cache dropped to stay within GATEWAY_CACHE_MAX_BYTES.",
            registry=registry,
        )
        self.cache_bytes = Gauge(
            "gateway_cache_bytes",
            "Bytes the in-process answer caches hold (summed over live workers).",
            multiprocess_mode="livesum",
            registry=registry,
        )
        self.redis_fallbacks = Counter(
            "gateway_redis_fallbacks_total",
            "Requests served without Redis because it failed or was being skipped, by use "
            "(rate_limit: counted per worker instead; cache: not looked up or stored).",
            ["use"],
            registry=registry,
        )
        self.redis_up = Gauge(
            "gateway_redis_up",
            "1 while this worker's Redis link answers, 0 while it is failing (lowest worker).",
            multiprocess_mode="livemin",
            registry=registry,
        )
        self.triton_retries = Counter(
            "gateway_triton_retries_total",
            "Triton calls retried once after a connection failure, by call (with several "
            "servers the retry goes to another one).",
            ["what"],
            registry=registry,
        )
        self.batch_images = Histogram(
            "gateway_batch_images",
            "Images per /analyze/batch request.",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=registry,
        )
        self.in_flight = Gauge(
            "gateway_requests_in_flight",
            "HTTP requests being processed right now (all routes).",
            multiprocess_mode="livesum",
            registry=registry,
        )

    def exposition(self) -> tuple[bytes, str]:
        """The text exposition of every metric (summed over workers in multiprocess mode)."""
        if self.multiprocess_dir:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(  # type: ignore[no-untyped-call]
                registry, path=self.multiprocess_dir
            )
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self._registry), CONTENT_TYPE_LATEST


def mark_worker_dead(pid: int) -> None:
    """Drop a dead worker's live gauges (called from gunicorn's child_exit hook)."""
    if os.environ.get(MULTIPROC_ENV):
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
