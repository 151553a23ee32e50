"""Domain exceptions, the one JSON error helper, and every error handler, registered in one place.

Each exception's class line names the HTTP status it maps to. Messages are written for
the caller; they never carry internals (stack traces, upstream debug strings, keys).
"""

from __future__ import annotations

import logging
from typing import ClassVar

from flask import Flask, Response, jsonify
from werkzeug.exceptions import HTTPException

log = logging.getLogger("gateway.errors")


class GatewayError(Exception):
    """Base of all expected failures: ``status``, a stable ``code`` and a human ``message``.

    A subclass declares its facts in its class line, e.g.
    ``class Overloaded(GatewayError, status=503, code="overloaded", retry_after_s=1)``.
    """

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"
    retry_after_s: int | None = None  # seconds for Retry-After; a class default, or per error
    # Expected in bulk (load shedding): counted in metrics, not logged one by one.
    quiet: ClassVar[bool] = False

    def __init_subclass__(
        cls, *, status: int, code: str, retry_after_s: int | None = None, quiet: bool = False
    ) -> None:
        """Record the subclass's HTTP status, error code, Retry-After default and loudness."""
        super().__init_subclass__()
        cls.status, cls.code, cls.retry_after_s, cls.quiet = status, code, retry_after_s, quiet

    def __init__(self, message: str, *, retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if retry_after_s is not None:
            self.retry_after_s = retry_after_s


class BadRequest(GatewayError, status=400, code="bad_request"):
    """The request is malformed (body, JSON types, base64, parameter ranges)."""


class InvalidImage(GatewayError, status=400, code="invalid_image"):
    """The bytes claim a supported format but cannot be decoded as an image."""


class Unauthorized(GatewayError, status=401, code="unauthorized"):
    """No API key, or a key that matches none configured."""


class ModelNotFound(GatewayError, status=404, code="model_not_found"):
    """The model (or the requested version) is not in Triton's repository."""


class PayloadTooLarge(GatewayError, status=413, code="payload_too_large"):
    """The body, the decoded bytes or the image's pixel count exceed the configured limits."""


class TooManyImages(GatewayError, status=413, code="too_many_images"):
    """An /analyze/batch request holds more images than GATEWAY_MAX_BATCH_IMAGES allows."""


class UnsupportedMediaType(GatewayError, status=415, code="unsupported_media_type"):
    """The image is not JPEG, PNG, WebP, GIF or BMP."""


class TooManyRequests(GatewayError, status=429, code="rate_limited", retry_after_s=1):
    """This API key used up its rate limit (GATEWAY_RATE_LIMIT); Retry-After says when."""


class Overloaded(GatewayError, status=503, code="overloaded", retry_after_s=1, quiet=True):
    """This worker's in-flight limit and waiting line are full (GATEWAY_MAX_INFLIGHT)."""


class ModelNotReady(GatewayError, status=503, code="model_not_ready", retry_after_s=5):
    """Triton knows the model but it is not ready (loading, unloading, failed)."""


class ModelMisconfigured(GatewayError, status=503, code="model_misconfigured", retry_after_s=30):
    """The model's config, metadata or label file disagree; logged for the operator."""


class UpstreamUnavailable(GatewayError, status=503, code="upstream_unavailable", retry_after_s=5):
    """Triton cannot be reached."""


class UpstreamTimeout(GatewayError, status=504, code="upstream_timeout"):
    """Triton did not answer within the configured timeout."""


class UpstreamError(GatewayError, status=502, code="upstream_error"):
    """Triton answered with an error the gateway cannot attribute to the request."""


class HistoryOff(GatewayError, status=404, code="history_off"):
    """The history API was called while GATEWAY_HISTORY_URL is not set."""


class AnalysisNotFound(GatewayError, status=404, code="analysis_not_found"):
    """No analysis with that id belongs to the caller's key (another key's rows included)."""


class HistoryDown(GatewayError, status=503, code="history_unavailable", retry_after_s=5):
    """The history database did not answer in time or refused."""


def json_error(
    status: int, code: str, message: str, *, retry_after_s: int | None = None
) -> Response:
    """Build the one error shape every failure uses: ``{"error": code, "message": message}``."""
    response = jsonify(error=code, message=message)
    response.status_code = status
    if retry_after_s is not None:
        response.headers["Retry-After"] = str(retry_after_s)
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="visionai", charset="UTF-8"'
    return response


# Werkzeug's own errors (unknown route, wrong method, body over MAX_CONTENT_LENGTH...),
# with codes and sentences of ours so clients see a single vocabulary.
HTTP_CODES: dict[int, tuple[str, str]] = {
    400: ("bad_request", "The request could not be understood."),
    401: ("unauthorized", "A valid API key is required."),
    404: ("not_found", "No such endpoint."),
    405: ("method_not_allowed", "This endpoint does not accept that HTTP method."),
    413: ("payload_too_large", "The request body is larger than this gateway accepts."),
    415: ("unsupported_media_type", "The request's content type is not supported."),
    431: ("headers_too_large", "The request's headers are larger than this gateway accepts."),
    429: ("too_many_requests", "Too many requests; slow down."),
}


def register_error_handlers(app: Flask) -> None:
    """Install the handlers that turn every failure into the JSON error shape."""

    @app.errorhandler(GatewayError)
    def handle_gateway_error(exc: GatewayError) -> Response:
        if exc.status >= 500 and not exc.quiet:
            log.warning("request failed: %s (%s)", exc.code, exc.message)
        return json_error(exc.status, exc.code, exc.message, retry_after_s=exc.retry_after_s)

    @app.errorhandler(HTTPException)
    def handle_http_exception(exc: HTTPException) -> Response:
        status = exc.code or 500
        code, message = HTTP_CODES.get(status, ("http_error", "The request failed."))
        response = json_error(status, code, message)
        if status == 405 and exc.response is None:
            allowed = getattr(exc, "valid_methods", None)
            if allowed:
                response.headers["Allow"] = ", ".join(allowed)
        return response

    @app.errorhandler(Exception)
    def handle_unexpected(exc: Exception) -> Response:
        # The traceback goes to the log only; the caller gets a generic sentence.
        log.exception("unhandled error")
        return json_error(500, "internal_error", "The gateway failed to process the request.")
