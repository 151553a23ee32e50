"""The VisionAI gateway: a Flask service that turns an image into top-5 labels through Triton.

``create_app`` is the application factory (Flask's tutorial pattern): nothing is built
at import time, and every resource is created here, per app.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from flask import Flask
from flask_cors import CORS

from gateway import routes, telemetry
from gateway.admission import AdmissionGate
from gateway.auth import ApiKeyAuth
from gateway.backend import InferenceBackend
from gateway.classifier import Classifier
from gateway.config import PREFIX, Settings
from gateway.errors import register_error_handlers
from gateway.images import ImageLimits
from gateway.labels import LabelStore
from gateway.logs import configure_logging
from gateway.metrics import GatewayMetrics
from gateway.ratelimit import KeyRateLimiter, parse_rate_limit

#: create_app config key for an InferenceBackend to use instead of Triton (tests).
BACKEND_KEY = "GATEWAY_BACKEND"


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Build the gateway app.

    ``config`` overrides the environment: ``GATEWAY_*`` string entries are read like the
    environment variables of the same name, ``GATEWAY_BACKEND`` may supply an
    InferenceBackend (tests), and other keys go to Flask's ``app.config``.
    Raises ``gateway.config.ConfigError`` on invalid settings.
    """
    overrides = dict(config or {})
    backend: InferenceBackend | None = overrides.pop(BACKEND_KEY, None)
    environ = {**os.environ, **{k: v for k, v in overrides.items() if k.startswith(PREFIX)}}
    settings = Settings.from_env(environ)
    configure_logging(settings.log_level)

    app = Flask(__name__)
    app.config.update(
        MAX_CONTENT_LENGTH=settings.max_body_bytes,
        MAX_FORM_MEMORY_SIZE=settings.max_body_bytes,
        DEBUG=False,
    )
    app.config.update({k: v for k, v in overrides.items() if not k.startswith(PREFIX)})
    app.json.sort_keys = False  # type: ignore[attr-defined]

    if backend is None:
        from gateway.triton import TritonBackend  # tritonclient only when Triton is used

        backend = TritonBackend(
            settings.triton_url, settings.triton_timeout_s, settings.ready_timeout_s
        )
    classifier = Classifier(
        backend,
        LabelStore(settings.model_repository),
        default_model=settings.default_model,
        limits=ImageLimits(max_pixels=settings.max_pixels),
        cache_ttl_s=settings.model_cache_ttl_s,
        draft_jpeg=settings.jpeg_draft,
    )
    metrics = GatewayMetrics()
    app.extensions[routes.EXTENSION] = routes.Services(
        settings=settings,
        classifier=classifier,
        auth=ApiKeyAuth(settings.api_keys, enabled=settings.auth_enabled),
        metrics=metrics,
        admission=AdmissionGate(
            settings.max_inflight, settings.max_queue, settings.queue_timeout_s
        ),
        rate_limiter=(
            KeyRateLimiter(parse_rate_limit(settings.rate_limit)) if settings.rate_limit else None
        ),
    )
    register_error_handlers(app)
    telemetry.init_app(app, metrics, classifier.is_known_model)
    if settings.cors_origins:
        CORS(
            app,
            origins=list(settings.cors_origins),
            methods=["GET", "POST", "OPTIONS"],
            allow_headers=["Content-Type", "X-API-Key", "Authorization", "X-Request-ID"],
            expose_headers=["X-Request-ID"],
            max_age=600,
        )
    app.register_blueprint(routes.bp)
    return app
