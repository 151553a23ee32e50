"""POST /analyze/batch: many images in one request, classified together in batched Triton calls.

The answer is ``{"results": [...]}`` in request order: each entry is the /analyze answer for
that image, or ``{"error": code, "message": ..., "status": n}`` for an image that could not
be read or decoded; one bad image fails alone. A failure that concerns every image (unknown
model, Triton down or slow) is the request's own error, as for /analyze.

Images, not requests, are what the limits count: the rate limit is charged one per image,
and the request holds one admission slot per image (at most all of the worker's). All images
of a request are answered by the same model version: the rollout's choice for the request,
or the version Triton serves when the request starts, pinned.
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from typing import TYPE_CHECKING, Any

from flask import Blueprint, Response, jsonify, request

from gateway import telemetry
from gateway.auth import presented_key
from gateway.cache import CachedAnswer
from gateway.classifier import Attempt, StageTimings
from gateway.errors import GatewayError, TooManyImages
from gateway.payload import batch_image, read_batch_request
from gateway.routes import (
    CacheLookup,
    Services,
    answer_of,
    count_version,
    refusal_counted,
    require_api_key,
    services,
)

if TYPE_CHECKING:
    from gateway.rollout.routing import Route

bp = Blueprint("batch", __name__)


def batch_limit(svc: Services, name: str, version: str) -> int:
    """The most images one request may hold: GATEWAY_MAX_BATCH_IMAGES or the model's batch."""
    if svc.settings.max_batch_images:
        return svc.settings.max_batch_images
    spec = svc.classifier.model(name, version).spec
    return spec.max_batch_size if spec.batched and spec.max_batch_size > 0 else 1


@bp.post("/analyze/batch")
@require_api_key
def analyze_batch() -> Response:
    """Classify several images; answers their results in request order."""
    svc = services()
    # A batch body may be larger than one image's (GATEWAY_MAX_BATCH_BODY_BYTES); each image
    # is still held to GATEWAY_MAX_BODY_BYTES.
    request.max_content_length = svc.settings.max_batch_body_bytes
    request.max_form_memory_size = svc.settings.max_batch_body_bytes
    started = time.perf_counter()
    parsed = read_batch_request(request, svc.settings.default_top_k)
    read_s = time.perf_counter() - started
    name = parsed.model or svc.settings.default_model
    route = svc.rollout.choose(name) if svc.rollout is not None and not parsed.version else None
    version = route.version if route is not None else parsed.version
    if version is None:
        version = svc.classifier.backend.served_version(name)
    count = len(parsed.entries)
    limit = batch_limit(svc, name, version)
    if count > limit:
        raise TooManyImages(
            f"A batch holds at most {limit} images; this one has {count}. "
            f"Send them in requests of at most {limit}."
        )
    if svc.rate_limiter is not None:
        with refusal_counted(svc):
            svc.rate_limiter.hit(presented_key(), cost=count)
    with ExitStack() as slot:
        with refusal_counted(svc):
            slot.enter_context(svc.admission.admit(weight=count))
        results, spent = _classify(svc, parsed.entries, name, version, parsed.top_k, route, read_s)
    svc.metrics.batch_images.observe(count)
    # The request's stage times are the sums over its images (the Triton calls' included).
    telemetry.report(telemetry.Analysis(name, version, spent))
    return jsonify(results=results)


def _classify(
    svc: Services,
    entries: list[object],
    name: str,
    version: str,
    top_k: int,
    route: Route | None,
    read_s: float,
) -> tuple[list[dict[str, Any]], StageTimings]:
    """Every entry's answer or error (hits from the cache, misses in batched Triton calls)."""
    results: list[dict[str, Any] | None] = [None] * len(entries)
    total = StageTimings(decode_s=read_s)
    read = StageTimings(decode_s=read_s / len(entries))  # the body's parsing, shared out
    misses: list[tuple[int, bytes, CacheLookup | None]] = []
    for index, entry in enumerate(entries):
        try:
            data = batch_image(entry, svc.settings.max_body_bytes)
        except GatewayError as error:
            results[index] = _error(error)
            continue
        lookup = CacheLookup.start(svc, data, name, version, top_k)
        hit = lookup.hit() if lookup is not None else None
        if hit is None:
            misses.append((index, data, lookup))
            continue
        attempt = Attempt(read, hit.classification, image=hit.image)
        count_version(svc, name, version, route, attempt, None)
        results[index] = answer_of(svc, data, attempt, read, cached=True)
    if misses:
        attempts = svc.classifier.classify_batch(
            [data for _, data, _ in misses], name, version, top_k
        )
        for (index, data, lookup), attempt in zip(misses, attempts, strict=True):
            spent = attempt.timings
            total += spent
            seconds = spent.decode_s + spent.preprocess_s + spent.triton_s
            count_version(svc, name, version, route, attempt, seconds)
            if isinstance(attempt.error, GatewayError):  # the image's own failure
                results[index] = _error(attempt.error)
                continue
            if lookup is not None and attempt.image is not None:
                lookup.store(CachedAnswer(attempt.result(), attempt.image))
            results[index] = answer_of(svc, data, attempt, read + spent, cached=False)
    return [result for result in results if result is not None], total


def _error(error: GatewayError) -> dict[str, Any]:
    """One image's error entry: the JSON error shape with its HTTP status."""
    return {"error": error.code, "message": error.message, "status": error.status}
