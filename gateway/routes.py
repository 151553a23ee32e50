"""The HTTP endpoints: /analyze, /models (API key required), /health, /ready, /metrics (open)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps
from typing import Any, TypeVar, cast

from flask import Blueprint, Response, current_app, g, jsonify, request

from gateway.auth import ApiKeyAuth
from gateway.classifier import Classifier, Timings
from gateway.config import Settings
from gateway.errors import json_error
from gateway.metrics import GatewayMetrics
from gateway.payload import read_analyze_request

bp = Blueprint("gateway", __name__)
View = TypeVar("View", bound=Callable[..., Any])
EXTENSION = "visionai_gateway"


@dataclass(frozen=True)
class Services:
    """What the views need, built once by create_app and stored in ``app.extensions``."""

    settings: Settings
    classifier: Classifier
    auth: ApiKeyAuth
    metrics: GatewayMetrics


def services() -> Services:
    """The current app's Services."""
    return cast(Services, current_app.extensions[EXTENSION])


def require_api_key(view: View) -> View:
    """Reject the request with 401 unless it carries a configured API key."""

    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        services().auth.check_request()
        return view(*args, **kwargs)

    return cast(View, wrapper)


@bp.post("/analyze")
@require_api_key
def analyze() -> Response:
    """Classify one image; answers label, confidence (percent) and the top-k predictions."""
    svc = services()
    timings: Timings = g.timings
    started = time.perf_counter()
    parsed = read_analyze_request(request, svc.settings.max_body_bytes, svc.settings.default_top_k)
    timings.decode_s += time.perf_counter() - started  # base64 decoding counts as decoding
    name = parsed.model or svc.settings.default_model
    g.model = name
    result = svc.classifier.classify(parsed.image, name, parsed.version, parsed.top_k, timings)
    g.version = result.version
    predictions = [{"label": p.label, "confidence": p.confidence} for p in result.predictions]
    return jsonify(
        label=predictions[0]["label"],
        confidence=predictions[0]["confidence"],
        predictions=predictions,
        mode="real",
        message=f"Classified by {result.model} (version {result.version}) on Triton.",
        model={"name": result.model, "version": result.version},
    )


@bp.get("/models")
@require_api_key
def models() -> Response:
    """The models and versions in Triton's repository, with their state."""
    svc = services()
    grouped: dict[str, list[dict[str, str]]] = {}
    for row in svc.classifier.backend.repository_index():
        versions = grouped.setdefault(row.name, [])
        if row.version or row.state:
            versions.append({"version": row.version, "state": row.state, "reason": row.reason})
    return jsonify(
        default_model=svc.settings.default_model,
        models=[{"name": name, "versions": versions} for name, versions in sorted(grouped.items())],
    )


@bp.get("/health")
def health() -> Response:
    """Liveness: the process answers (Triton is not consulted)."""
    return jsonify(status="healthy", model=services().settings.default_model)


@bp.get("/ready")
def ready() -> Response:
    """Readiness: 200 only when Triton is reachable and the default model is ready."""
    svc = services()
    if svc.classifier.ready():
        return jsonify(status="ready", model=svc.settings.default_model)
    return json_error(
        503,
        "not_ready",
        f"Triton is unreachable or model {svc.settings.default_model!r} is not ready.",
        retry_after_s=5,
    )


@bp.get("/metrics")
def metrics() -> Response:
    """Prometheus text exposition."""
    body, content_type = services().metrics.exposition()
    return Response(body, content_type=content_type)
