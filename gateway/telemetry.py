"""Per-request bookkeeping: request id, one structured log line, and the metrics.

/analyze hands what it did (model, version, stage timings) to ``report``; the report rides
on the response, whichever it becomes (the answer or an error), to the log line and metrics.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from flask import Flask, Response, after_this_request, g, request

from gateway.classifier import StageTimings
from gateway.logs import request_id_from
from gateway.metrics import OTHER_MODEL, GatewayMetrics

log = logging.getLogger("gateway.access")
REQUEST_ID_HEADER = "X-Request-ID"


@dataclass(frozen=True)
class Analysis:
    """What /analyze adds to its request's log line and metrics."""

    model: str  # the model asked for (or the default)
    version: str | None  # the version that answered; None when the request failed
    timings: StageTimings


class GatewayResponse(Response):
    """The app's response class: Flask's, able to carry an /analyze request's Analysis."""

    analysis: Analysis | None = None


def report(analysis: Analysis) -> None:
    """Attach ``analysis`` to the current request's response, for its log line and metrics."""

    def attach(response: Response) -> Response:
        if isinstance(response, GatewayResponse):
            response.analysis = analysis
        return response

    after_this_request(attach)  # runs before the app's after_request hooks, errors included


def init_app(app: Flask, metrics: GatewayMetrics, is_known_model: Callable[[str], bool]) -> None:
    """Register the hooks that time, count and log every request."""
    app.response_class = GatewayResponse

    @app.before_request
    def start_request() -> None:
        g.request_id = request_id_from(request.headers.get(REQUEST_ID_HEADER))
        g.started = time.perf_counter()
        metrics.in_flight.inc()
        g.in_flight = True

    @app.after_request
    def finish_request(response: Response) -> Response:
        request_id = g.get("request_id") or request_id_from(None)
        response.headers[REQUEST_ID_HEADER] = request_id
        elapsed = time.perf_counter() - g.get("started", time.perf_counter())
        analysis = response.analysis if isinstance(response, GatewayResponse) else None
        timings = analysis.timings if analysis is not None else StageTimings()
        route = request.url_rule.rule if request.url_rule is not None else "unmatched"
        model = _model_label(analysis, is_known_model)
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
                        "model": analysis.model if analysis is not None else None,
                        "version": analysis.version if analysis is not None else None,
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


def _model_label(analysis: Analysis | None, is_known_model: Callable[[str], bool]) -> str:
    if analysis is None:
        return ""
    return analysis.model if is_known_model(analysis.model) else OTHER_MODEL


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 2)
