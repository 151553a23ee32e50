"""The VisionAI gateway: a Flask service that turns an image into top-5 labels through Triton.

``create_app`` is the application factory (Flask's tutorial pattern): nothing is built
at import time, and every resource is created here, per app.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from flask import Flask
from flask_cors import CORS

from gateway import analyses, batch, routes, telemetry, web
from gateway.admission import AdmissionGate
from gateway.auth import ApiKeyAuth
from gateway.backend import InferenceBackend, ModelLoader
from gateway.cache import AnswerCache, AnswerStore, MemoryCache, RedisCache
from gateway.classifier import Classifier
from gateway.config import PREFIX, ConfigError, Settings
from gateway.errors import register_error_handlers
from gateway.images import ImageLimits
from gateway.labels import LabelStore
from gateway.logs import configure_logging
from gateway.metrics import GatewayMetrics
from gateway.ratelimit import KeyRateLimiter, parse_rate_limit, shared_salt
from gateway.redis_link import RedisLink

if TYPE_CHECKING:
    from gateway.rollout.routing import RolloutRuntime

log = logging.getLogger("gateway")
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

    metrics = GatewayMetrics()
    if backend is None:
        from gateway.triton import TritonBackend  # tritonclient only when Triton is used

        backend = TritonBackend(
            settings.triton_url,
            settings.triton_timeout_s,
            settings.ready_timeout_s,
            on_retry=lambda what: metrics.triton_retries.labels(what).inc(),
        )
    classifier = Classifier(
        backend,
        LabelStore(settings.model_repository),
        default_model=settings.default_model,
        limits=ImageLimits(max_pixels=settings.max_pixels),
        cache_ttl_s=settings.model_cache_ttl_s,
        draft_jpeg=settings.jpeg_draft,
    )
    link = _redis_link(settings, metrics)
    history = _history(settings)
    rollout = _rollout(settings, classifier, backend, metrics)
    app.extensions[routes.EXTENSION] = routes.Services(
        settings=settings,
        classifier=classifier,
        auth=ApiKeyAuth(settings.api_keys, enabled=settings.auth_enabled),
        metrics=metrics,
        admission=AdmissionGate(
            settings.max_inflight, settings.max_queue, settings.queue_timeout_s
        ),
        rate_limiter=_rate_limiter(settings, link, metrics),
        history=history,
        rollout=rollout,
        cache=_cache(settings, link, metrics),
    )
    register_error_handlers(app)
    telemetry.init_app(app, metrics, classifier.is_known_model)
    if settings.cors_origins:
        CORS(
            app,
            origins=list(settings.cors_origins),
            methods=["GET", "POST", "DELETE", "OPTIONS"],
            allow_headers=["Content-Type", "X-API-Key", "Authorization", "X-Request-ID"],
            expose_headers=["X-Request-ID"],
            max_age=600,
        )
    app.register_blueprint(routes.bp)
    app.register_blueprint(batch.bp)
    app.register_blueprint(analyses.bp)
    web.init_app(app)
    if history is not None and history.purger is not None:
        history.purger.start()
    return app


def _redis_link(settings: Settings, metrics: GatewayMetrics) -> RedisLink | None:
    """The link to Redis when GATEWAY_REDIS_URL is set (nothing connects before first use)."""
    if not settings.redis_url:
        return None
    metrics.redis_up.set(1)
    return RedisLink(
        settings.redis_url,
        settings.redis_timeout_s,
        on_state=lambda up: metrics.redis_up.set(1 if up else 0),
    )


def _rate_limiter(
    settings: Settings, link: RedisLink | None, metrics: GatewayMetrics
) -> KeyRateLimiter | None:
    """The per-key limiter when GATEWAY_RATE_LIMIT is set: in Redis when there is one."""
    if not settings.rate_limit:
        return None
    items = parse_rate_limit(settings.rate_limit)
    if link is None:
        return KeyRateLimiter(items)
    fallback = metrics.redis_fallbacks.labels("rate_limit")
    return KeyRateLimiter(
        items,
        redis=link,
        salt=shared_salt(settings.api_keys, "rate-limit"),
        on_fallback=fallback.inc,
    )


def _cache(
    settings: Settings, link: RedisLink | None, metrics: GatewayMetrics
) -> AnswerCache | None:
    """The answer cache unless GATEWAY_CACHE=off: in Redis when there is one, else in memory."""
    if not settings.cache_enabled:
        return None
    store: AnswerStore
    if link is not None:
        fallback = metrics.redis_fallbacks.labels("cache")
        store = RedisCache(link, settings.cache_ttl_s, on_fallback=fallback.inc)
    else:
        store = MemoryCache(
            settings.cache_max_bytes,
            settings.cache_ttl_s,
            on_evict=metrics.cache_evictions.inc,
            on_size=metrics.cache_bytes.set,
        )
    hits = metrics.cache_lookups.labels(store.kind, "hit")
    misses = metrics.cache_lookups.labels(store.kind, "miss")
    return AnswerCache(
        store,
        owner_salt=None if settings.cache_shared else shared_salt(settings.api_keys, "cache"),
        on_result=lambda result: (hits if result == "hit" else misses).inc(),
    )


def _rollout(
    settings: Settings, classifier: Classifier, backend: InferenceBackend, metrics: GatewayMetrics
) -> RolloutRuntime | None:
    """Routing by the rollout records (and their controller) when GATEWAY_ROLLOUT_DIR is set."""
    if settings.rollout_dir is None:
        return None
    from gateway.rollout.controller import STATS_DIR, RolloutController
    from gateway.rollout.routing import RolloutRuntime
    from gateway.rollout.state import RolloutStore
    from gateway.rollout.stats import WorkerStats

    store = RolloutStore(settings.rollout_dir)
    try:
        (settings.rollout_dir / STATS_DIR).mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(
            f"GATEWAY_ROLLOUT_DIR={str(settings.rollout_dir)!r} cannot be created or written: "
            f"{error.strerror or error}"
        ) from None
    runtime = RolloutRuntime(
        store, WorkerStats(settings.rollout_dir / STATS_DIR), refresh_s=settings.rollout_refresh_s
    )
    if settings.rollout_controller:
        if not isinstance(backend, ModelLoader):
            raise ConfigError("GATEWAY_ROLLOUT_CONTROLLER=on needs a backend that loads models")
        controller = RolloutController(
            store,
            classifier,
            backend,
            on_event=lambda model, action: metrics.rollout_events.labels(model, action).inc(),
            on_model=lambda model: _zero_alerted_events(metrics, model),
        )
        controller.start()
    return runtime


def _zero_alerted_events(metrics: GatewayMetrics, model: str) -> None:
    """Start the events the alerts watch at 0, so that their first increase is visible."""
    for action in ("rollback-automatic", "verify-failed"):
        metrics.rollout_events.labels(model, action)


def _history(settings: Settings) -> analyses.History | None:
    """The history when GATEWAY_HISTORY_URL is set; ConfigError on a schema that is not current.

    A database that cannot be reached at start does not stop the gateway: answers carry
    ``"id": null`` until it is back (docs/history.md).
    """
    if not settings.history_url:
        return None
    from gateway.history.migrations import SchemaMismatch
    from gateway.history.retention import RetentionPurger
    from gateway.history.store import HistoryStore, HistoryUnavailable

    store = HistoryStore(settings.history_url, settings.history_timeout_s)
    try:
        store.check_schema()
    except SchemaMismatch as error:
        raise ConfigError(str(error)) from None
    except HistoryUnavailable as error:
        log.warning("history database (%s) unreachable at start: %s", store.backend, error)
    days = settings.history_retention_days
    purger = RetentionPurger(store, days) if days > 0 else None
    return analyses.History(store, settings.history_secret, purger)
