"""The try-it page (GET /), the OpenAPI document (/openapi.json) and its viewer (/docs).

The page is static files of ours (gateway/static, gateway/templates): no CDN, no build step,
no inline script or style, so its Content-Security-Policy can forbid them. The viewer is
Swagger UI from the `swagger-ui-py` wheel, served from the installed package (offline).
Every response gets `X-Content-Type-Options: nosniff` (and HSTS over HTTPS); the HTML pages
also get a strict CSP,
`frame-ancestors 'none'` and `Referrer-Policy: no-referrer`.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

from flask import (
    Blueprint,
    Flask,
    Response,
    jsonify,
    render_template,
    request,
    send_from_directory,
)

from gateway.errors import json_error
from gateway.openapi import build_document
from gateway.routes import services

bp = Blueprint("web", __name__)

# No inline code anywhere; images may be the user's own (blob: previews). connect-src 'self':
# the page talks to this gateway only. frame-ancestors: never framed (clickjacking).
#: One year, the usual HSTS lifetime (and what the preload list requires, should one opt in).
HSTS_MAX_AGE_S = 31_536_000
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'"
)
# Swagger UI sets element styles from script (allowed by style-src 'self': CSSOM, not markup)
# and shows its own SVG icons as data: URLs.
DOCS_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'"
)
#: The viewer's files that /docs uses (the wheel ships more: editors, source maps).
DOCS_ASSETS = frozenset(
    {"swagger-ui.css", "swagger-ui-bundle.js", "favicon-32x32.png", "favicon-16x16.png"}
)


def swagger_ui_directory() -> Path:
    """Where the installed swagger-ui-py wheel keeps Swagger UI's files."""
    return Path(str(importlib.resources.files("swagger_ui") / "static"))


def _page_headers(response: Response, csp: str) -> Response:
    response.headers["Content-Security-Policy"] = csp
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Cache-Control"] = "no-cache"
    return response


@bp.get("/")
def page() -> Response:
    """The try-it page: an API key, an image, its top-5."""
    svc = services()
    html = render_template(
        "index.html",
        max_bytes=svc.settings.max_body_bytes,
        history="on" if svc.history is not None else "off",
    )
    return _page_headers(Response(html, mimetype="text/html"), PAGE_CSP)


@bp.get("/openapi.json")
def openapi() -> Response:
    """The OpenAPI 3.1 document of every route."""
    return jsonify(build_document())


@bp.get("/docs")
def docs() -> Response:
    """The document, readable (Swagger UI, served offline)."""
    return _page_headers(Response(render_template("docs.html"), mimetype="text/html"), DOCS_CSP)


@bp.get("/docs/assets/<path:filename>")
def docs_asset(filename: str) -> Response:
    """One of Swagger UI's files from the installed wheel."""
    if filename not in DOCS_ASSETS:
        return json_error(404, "not_found", "No such file.")
    return send_from_directory(swagger_ui_directory(), filename, max_age=3600)


def init_app(app: Flask) -> None:
    """Register the pages and the header every response gets."""
    app.register_blueprint(bp)

    @app.after_request
    def no_sniffing(response: Response) -> Response:
        # A JSON error must never be sniffed into HTML by an old browser.
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        # HSTS only over HTTPS (RFC 6797 §7.2): gunicorn serving TLS, or a proxy trusted by
        # GATEWAY_FORWARDED_ALLOW_IPS saying X-Forwarded-Proto: https. No includeSubDomains
        # or preload: those commit every other host of the domain, the operator's choice.
        if request.is_secure:
            response.headers.setdefault("Strict-Transport-Security", f"max-age={HSTS_MAX_AGE_S}")
        return response
