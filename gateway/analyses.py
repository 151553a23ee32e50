"""The history API: the caller's analyses, listed, read, counted and deleted (GATEWAY_HISTORY_URL).

Every route needs the API key, and the key decides the owner: a row of another key does not
exist for the caller (404, never 403). Filters and cursors are validated and always reach the
database as bound parameters.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from flask import Blueprint, Response, g, jsonify, request

from gateway.auth import presented_key
from gateway.classifier import Attempt, Classification, StageTimings
from gateway.errors import AnalysisNotFound, BadRequest, HistoryDown, HistoryOff
from gateway.history.ids import is_valid_id
from gateway.history.retention import RetentionPurger
from gateway.history.store import HistoryStore, HistoryUnavailable, NewAnalysis, owner_of
from gateway.routes import rate_limited, require_api_key, services
from model_contract.files import is_valid_model_name

bp = Blueprint("analyses", __name__)
DEFAULT_LIMIT = 20
MAX_LIMIT = 100
DEFAULT_DAYS = 30
MAX_DAYS = 366
MAX_LABEL_CHARS = 256


@dataclass(frozen=True)
class History:
    """The store, the secret that keys owner ids, and the retention thread (if any)."""

    store: HistoryStore
    secret: bytes
    purger: RetentionPurger | None = None

    def owner(self) -> str:
        """The current request's owner id (with auth off, every caller shares one)."""
        return owner_of(self.secret, presented_key() or "")

    def record(self, data: bytes, attempt: Attempt, timings: StageTimings) -> str | None:
        """Store the current request's answer; its id once committed, None if not stored."""
        result: Classification = attempt.result()
        image = attempt.image
        if image is None:  # an answer always had a decoded image; be safe rather than wrong
            return None
        best = result.predictions[0]
        return self.store.record(
            NewAnalysis(
                owner=self.owner(),
                model=result.model,
                version=result.version,
                label=best.label,
                confidence=best.confidence,
                predictions=[p._asdict() for p in result.predictions],
                image_sha256=hashlib.sha256(data).hexdigest(),
                image_format=image.format,
                image_width=image.width,
                image_height=image.height,
                image_bytes=image.bytes,
                decode_ms=round(timings.decode_s * 1000, 3),
                preprocess_ms=round(timings.preprocess_s * 1000, 3),
                triton_ms=round(timings.triton_s * 1000, 3),
                request_id=str(g.get("request_id", "")),
            )
        )


@contextmanager
def _history() -> Iterator[History]:
    """The app's History (404 history_off when it is not configured); 503 when the DB is down."""
    history = services().history
    if history is None:
        raise HistoryOff(
            "History is off on this gateway: it stores answers when GATEWAY_HISTORY_URL is set."
        )
    try:
        yield history
    except HistoryUnavailable:
        raise HistoryDown("The history database is unavailable; try again shortly.") from None


def _integer(name: str, default: int, maximum: int) -> int:
    """A query parameter between 1 and `maximum` (400 otherwise)."""
    text = request.args.get(name)
    if text is None or text == "":
        return default
    # Bounded length first: int() refuses more than 4300 digits with a ValueError (a 500).
    if not text.isascii() or not text.isdigit() or len(text) > 19 or not 1 <= int(text) <= maximum:
        raise BadRequest(f"{name} must be a whole number from 1 to {maximum}.")
    return int(text)


@bp.get("/analyses")
@require_api_key
@rate_limited
def list_analyses() -> Response:
    """The caller's analyses, newest first; `next` is the cursor for the following page."""
    limit = _integer("limit", DEFAULT_LIMIT, MAX_LIMIT)
    before = request.args.get("before") or None
    if before is not None and not is_valid_id(before):
        raise BadRequest("before must be an analysis id (the `next` of a previous page).")
    model = request.args.get("model") or None
    if model is not None and not is_valid_model_name(model):
        raise BadRequest("model must be a model name.")
    label = request.args.get("label") or None
    if label is not None and len(label) > MAX_LABEL_CHARS:
        raise BadRequest(f"label must be at most {MAX_LABEL_CHARS} characters.")
    with _history() as history:
        rows = history.store.list(
            history.owner(), limit=limit, before=before, model=model, label=label
        )
    next_cursor = rows[-1]["id"] if len(rows) == limit else None
    return jsonify(analyses=rows, next=next_cursor)


@bp.get("/analyses/summary")
@require_api_key
@rate_limited
def summary() -> Response:
    """Counts of the caller's analyses by label and by UTC day over the last `days` days."""
    days = _integer("days", DEFAULT_DAYS, MAX_DAYS)
    with _history() as history:
        return jsonify(history.store.summary(history.owner(), days))


@bp.get("/analyses/<analysis_id>")
@require_api_key
@rate_limited
def get_analysis(analysis_id: str) -> Response:
    """One of the caller's analyses."""
    with _history() as history:
        row = history.store.get(history.owner(), analysis_id) if is_valid_id(analysis_id) else None
    if row is None:
        raise AnalysisNotFound("No analysis with that id belongs to this API key.")
    return jsonify(row)


@bp.delete("/analyses/<analysis_id>")
@require_api_key
@rate_limited
def delete_analysis(analysis_id: str) -> Response:
    """Delete one of the caller's analyses for good (204)."""
    with _history() as history:
        deleted = is_valid_id(analysis_id) and history.store.delete(history.owner(), analysis_id)
    if not deleted:
        raise AnalysisNotFound("No analysis with that id belongs to this API key.")
    return Response(status=204)


@bp.delete("/analyses")
@require_api_key
@rate_limited
def delete_all() -> Response:
    """Delete all of the caller's analyses for good; says how many there were."""
    with _history() as history:
        return jsonify(deleted=history.store.delete_all(history.owner()))
