"""Domain exceptions, the one JSON error helper, and every error handler, registered in one place.

Each exception's docstring names the HTTP status it maps to. Messages are written for
the caller; they never carry internals (stack traces, upstream debug strings, keys).
"""

from __future__ import annotations

import logging
from typing import ClassVar

from flask import Flask, Response, jsonify
from werkzeug.exceptions import HTTPException

log = logging.getLogger("gateway.errors")


class GatewayError(Exception):
    """Base of all expected failures: ``status``, a stable ``code`` and a human ``message``."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"
    retry_after_s: int | None = None  # seconds for Retry-After; a class default, or per error
    # Expected in bulk (load shedding): counted in metrics, not logged one by one.
    quiet: ClassVar[bool] = False

    def __init__(self, message: str, *, retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if retry_after_s is not None:
            self.retry_after_s = retry_after_s


class BadRequest(GatewayError):
    """400: the request is malformed (body, JSON types, base64, parameter ranges)."""

    status = 400
    code = "bad_request"


class InvalidImage(GatewayError):
    """400: the bytes claim a supported format but cannot be decoded as an image."""

    status = 400
    code = "invalid_image"


class Unauthorized(GatewayError):
    """401: no API key, or a key that matches none configured."""

    status = 401
    code = "unauthorized"


class ModelNotFound(GatewayError):
    """404: the model (or the requested version) is not in Triton's repository."""

    status = 404
    code = "model_not_found"


class PayloadTooLarge(GatewayError):
    """413: the body, the decoded bytes or the image's pixel count exceed the configured limits."""

    status = 413
    code = "payload_too_large"


class UnsupportedMediaType(GatewayError):
    """415: the image is not JPEG, PNG, WebP, GIF or BMP."""

    status = 415
    code = "unsupported_media_type"


class TooManyRequests(GatewayError):
    """429: this API key used up its rate limit (GATEWAY_RATE_LIMIT); Retry-After says when."""

    status = 429
    code = "rate_limited"
    retry_after_s = 1


class Overloaded(GatewayError):
    """503: this worker's in-flight limit and waiting line are full (GATEWAY_MAX_INFLIGHT)."""

    status = 503
    code = "overloaded"
    retry_after_s = 1
    quiet = True


class ModelNotReady(GatewayError):
    """503: Triton knows the model but it is not ready (loading, unloading, failed)."""

    status = 503
    code = "model_not_ready"
    retry_after_s = 5


class ModelMisconfigured(GatewayError):
    """503: the model's config, metadata or label file disagree; logged for the operator."""

    status = 503
    code = "model_misconfigured"
    retry_after_s = 30


class UpstreamUnavailable(GatewayError):
    """503: Triton cannot be reached."""

    status = 503
    code = "upstream_unavailable"
    retry_after_s = 5


class UpstreamTimeout(GatewayError):
    """504: Triton did not answer within the configured timeout."""

    status = 504
    code = "upstream_timeout"


class UpstreamError(GatewayError):
    """502: Triton answered with an error the gateway cannot attribute to the request."""

    status = 502
    code = "upstream_error"


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
_HTTP_CODES: dict[int, tuple[str, str]] = {
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
        code, message = _HTTP_CODES.get(status, ("http_error", "The request failed."))
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
