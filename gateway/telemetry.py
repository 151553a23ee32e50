"""Per-request bookkeeping: request id, one structured log line, and the metrics."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

from flask import Flask, Response, g, request

from gateway.classifier import Timings
from gateway.logs import request_id_from
from gateway.metrics import OTHER_MODEL, GatewayMetrics

log = logging.getLogger("gateway.access")
REQUEST_ID_HEADER = "X-Request-ID"


def init_app(app: Flask, metrics: GatewayMetrics, is_known_model: Callable[[str], bool]) -> None:
    """Register the hooks that time, count and log every request."""

    @app.before_request
    def start_request() -> None:
        g.request_id = request_id_from(request.headers.get(REQUEST_ID_HEADER))
        g.started = time.perf_counter()
        g.timings = Timings()
        g.model = None
        g.version = None
        metrics.in_flight.inc()
        g.in_flight = True

    @app.after_request
    def finish_request(response: Response) -> Response:
        request_id = g.get("request_id") or request_id_from(None)
        response.headers[REQUEST_ID_HEADER] = request_id
        elapsed = time.perf_counter() - g.get("started", time.perf_counter())
        timings: Timings = g.get("timings") or Timings()
        route = request.url_rule.rule if request.url_rule is not None else "unmatched"
        model = _model_label(g.get("model"), is_known_model)
        metrics.requests.labels(route, request.method, str(response.status_code), model).inc()
        metrics.request_seconds.labels(route).observe(elapsed)
        if timings.decode_s or timings.preprocess_s:
            metrics.decode_seconds.labels(model).observe(timings.decode_s)
            metrics.preprocess_seconds.labels(model).observe(timings.preprocess_s)
        if timings.triton_s:
            metrics.triton_seconds.labels(model).observe(timings.triton_s)
        if route != "/metrics":
            log.info(
                "request",
                extra={
                    "fields": {
                        "request_id": request_id,
                        "method": request.method,
                        "route": route,
                        "status": response.status_code,
                        "model": g.get("model"),
                        "version": g.get("version"),
                        "duration_ms": _ms(elapsed),
                        "decode_ms": _ms(timings.decode_s),
                        "preprocess_ms": _ms(timings.preprocess_s),
                        "triton_ms": _ms(timings.triton_s),
                        "bytes_in": request.content_length,
                        "pid": os.getpid(),
                    }
                },
            )
        return response

    @app.teardown_request
    def end_request(_exc: BaseException | None) -> None:
        if g.pop("in_flight", False):
            metrics.in_flight.dec()


def _model_label(model: object, is_known_model: Callable[[str], bool]) -> str:
    if not isinstance(model, str):
        return ""
    return model if is_known_model(model) else OTHER_MODEL


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 2)
