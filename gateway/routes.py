"""The HTTP endpoints: /analyze, /models (API key required), /health, /ready, /metrics (open).

/analyze/batch is in gateway/batch.py and the history's routes in gateway/analyses.py.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass
from functools import wraps
from typing import TYPE_CHECKING, Any, TypeVar, cast

from flask import Blueprint, Response, current_app, jsonify, request

from gateway import telemetry
from gateway.admission import AdmissionGate
from gateway.auth import ApiKeyAuth, presented_key
from gateway.cache import AnswerCache, CachedAnswer, answer_key, image_digest
from gateway.classifier import Attempt, Classifier, StageTimings
from gateway.config import Settings
from gateway.errors import GatewayError, Overloaded, TooManyRequests, json_error
from gateway.metrics import GatewayMetrics
from gateway.payload import read_analyze_request
from gateway.ratelimit import KeyRateLimiter

if TYPE_CHECKING:
    from gateway.analyses import History  # analyses' views import this module
    from gateway.rollout.routing import RolloutRuntime, Route
    from gateway.rollout.state import RolloutState

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
    admission: AdmissionGate
    rate_limiter: KeyRateLimiter | None = None  # None: GATEWAY_RATE_LIMIT is off
    history: History | None = None  # None: GATEWAY_HISTORY_URL is off
    rollout: RolloutRuntime | None = None  # None: GATEWAY_ROLLOUT_DIR is off
    cache: AnswerCache | None = None  # None: GATEWAY_CACHE=off


def services() -> Services:
    """The current app's Services."""
    return cast(Services, current_app.extensions[EXTENSION])


def view_guard(
    gate: Callable[[Services], AbstractContextManager[object]],
) -> Callable[[View], View]:
    """Turn ``gate``, a context manager over the app's Services, into a view decorator."""

    def decorate(view: View) -> View:
        @wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with gate(services()):
                return view(*args, **kwargs)

        return cast(View, wrapper)

    decorate.__doc__ = gate.__doc__  # the decorator is documented by its gate
    return decorate


@view_guard
@contextmanager
def require_api_key(svc: Services) -> Iterator[None]:
    """Reject the request with 401 unless it carries a configured API key."""
    svc.auth.check_request()
    yield


@view_guard
@contextmanager
def rate_limited(svc: Services) -> Iterator[None]:
    """Count the request against its API key's rate limit (429 beyond it), when one is set."""
    if svc.rate_limiter is not None:
        with refusal_counted(svc):
            svc.rate_limiter.hit(presented_key())
    yield


@view_guard
@contextmanager
def admitted(svc: Services) -> Iterator[None]:
    """Run the view only with an admission slot; 503 overloaded when none frees up in time."""
    with ExitStack() as slot:
        with refusal_counted(svc):
            slot.enter_context(svc.admission.admit())
        yield


@contextmanager
def refusal_counted(svc: Services) -> Iterator[None]:
    """Count a rate-limit or admission refusal raised in the block in the metrics."""
    try:
        yield
    except (TooManyRequests, Overloaded) as refusal:
        # The metric's reasons are the refusals' codes: rate_limited, overloaded.
        svc.metrics.rejected.labels(refusal.code).inc()
        raise


# Order matters: a request is authenticated first (unknown keys never touch the limiter's
# storage), then counted against its key, then admitted. Admission comes before the body is
# read, so an overloaded gateway refuses at once instead of reading megabytes first.
@bp.post("/analyze")
@require_api_key
@rate_limited
@admitted
def analyze() -> Response:
    """Classify one image; answers label, confidence (percent) and the top-k predictions."""
    svc = services()
    started = time.perf_counter()
    parsed = read_analyze_request(request, svc.settings.max_body_bytes, svc.settings.default_top_k)
    # Reading the body (JSON or multipart parsing, base64) counts as decoding.
    read = StageTimings(decode_s=time.perf_counter() - started)
    name = parsed.model or svc.settings.default_model
    version = parsed.version
    # Unpinned requests go where the model's rollout record says (stable, or the canary's
    # share to the candidate); without a record Triton's newest version answers.
    route = svc.rollout.choose(name) if svc.rollout is not None and version is None else None
    if route is not None:
        version = route.version
    lookup = CacheLookup.start(svc, parsed.image, name, version, parsed.top_k)
    hit = lookup.hit() if lookup is not None else None
    if hit is not None:
        telemetry.report(telemetry.Analysis(name, hit.classification.version, StageTimings()))
        attempt = Attempt(read, hit.classification, image=hit.image)
        count_version(svc, name, hit.classification.version, route, attempt, None)
        return jsonify(answer_of(svc, parsed.image, attempt, read, cached=True))
    classified = time.perf_counter()
    attempt = svc.classifier.classify(parsed.image, name, version, parsed.top_k)
    seconds = time.perf_counter() - classified
    timings = read + attempt.timings
    telemetry.report(telemetry.Analysis(name, attempt.version, timings))
    count_version(svc, name, version or attempt.version, route, attempt, seconds)
    result = attempt.result()
    if lookup is not None and attempt.image is not None:
        lookup.store(CachedAnswer(result, attempt.image))
    rollout = svc.rollout
    if (
        route is not None
        and rollout is not None
        and rollout.shadow(svc.classifier, name, route, parsed.image, result)
    ):
        svc.metrics.shadow_comparisons.labels(name).inc()
    return jsonify(answer_of(svc, parsed.image, attempt, timings, cached=False))


def answer_of(
    svc: Services, data: bytes, attempt: Attempt, timings: StageTimings, *, cached: bool
) -> dict[str, Any]:
    """The /analyze answer of one classified image (stored in the history when it is on)."""
    result = attempt.result()
    predictions = [prediction._asdict() for prediction in result.predictions]
    answer: dict[str, Any] = {
        "label": predictions[0]["label"],
        "confidence": predictions[0]["confidence"],
        "predictions": predictions,
        "mode": "real",
        "message": f"Classified by {result.model} (version {result.version}) on Triton."
        + (" Answered from the cache of identical images." if cached else ""),
        "model": {"name": result.model, "version": result.version},
        "cached": cached,
    }
    if svc.history is not None:
        # Committed before the answer leaves, so an id a client got is never missing later.
        answer["id"] = svc.history.record(data, attempt, timings)
        svc.metrics.history_writes.labels("stored" if answer["id"] else "failed").inc()
        if answer["id"] is None:
            answer["message"] += " History is unavailable: this answer was not stored."
    return answer


@dataclass
class CacheLookup:
    """One image's way through the answer cache: the key parts, the lookup, the store."""

    cache: AnswerCache
    digest: str
    scope: str
    name: str
    version: str | None  # the version expected to answer; None: unknown, no lookup
    top_k: int
    draft: bool

    @classmethod
    def start(
        cls, svc: Services, data: bytes, name: str, version: str | None, top_k: int
    ) -> CacheLookup | None:
        """A lookup for ``data`` when the cache is on (None when it is off)."""
        if svc.cache is None:
            return None
        if version is None:
            # No pin and no rollout record: Triton's newest ready version will answer. Asking
            # for it (one metadata call) keeps a hot swap from ever returning the old answer.
            try:
                version = svc.classifier.backend.served_version(name)
            except GatewayError:
                version = None  # the classification that follows reports the problem
        return cls(
            svc.cache,
            image_digest(data),
            svc.cache.scope(presented_key()),
            name,
            version,
            top_k,
            svc.classifier.draft_jpeg,
        )

    def key(self, version: str) -> str:
        """The cache key of this image's answer by ``version``."""
        return answer_key(
            self.digest,
            model=self.name,
            version=version,
            top_k=self.top_k,
            draft=self.draft,
            scope=self.scope,
        )

    def hit(self) -> CachedAnswer | None:
        """The cached answer of the expected version, or None."""
        return self.cache.get(self.key(self.version)) if self.version is not None else None

    def store(self, answer: CachedAnswer) -> None:
        """Cache ``answer`` under the version that actually gave it."""
        self.cache.put(self.key(answer.classification.version), answer)


def count_version(
    svc: Services,
    name: str,
    version: str | None,
    route: Route | None,
    attempt: Attempt,
    seconds: float | None,
) -> None:
    """Per-version metrics, and the rollout's health counts of a routed answer.

    ``seconds`` is None for an answer from the cache: counted, but neither timed nor part of
    the rollout's health figures (the version did no work for it).
    """
    if route is not None and svc.rollout is not None and seconds is not None:
        svc.rollout.observe(name, route, attempt, seconds)
    if version is None or not svc.classifier.is_known_model(name):
        return  # a model never served (maybe a typo) must not become a metrics label
    error = attempt.error
    if error is None:
        outcome = "ok"
    elif isinstance(error, GatewayError) and error.status < 500:
        outcome = "client_error"
    else:
        outcome = "error"
    role = route.role if route is not None else "pinned"
    svc.metrics.version_requests.labels(name, version, role, outcome).inc()
    if error is None and seconds is not None:
        svc.metrics.version_seconds.labels(name, version).observe(seconds)


@bp.get("/models")
@require_api_key
@rate_limited
def models() -> Response:
    """The models and versions in Triton's repository, with their state."""
    svc = services()
    grouped: dict[str, list[dict[str, str]]] = {}
    for row in svc.classifier.backend.repository_index():
        versions = grouped.setdefault(row.name, [])
        if row.version or row.state:
            versions.append({"version": row.version, "state": row.state, "reason": row.reason})
    listed = []
    for name, versions in sorted(grouped.items()):
        entry: dict[str, Any] = {"name": name, "versions": versions}
        if svc.rollout is not None:
            entry["rollout"] = _rollout_view(svc.rollout.state(name))
        listed.append(entry)
    return jsonify(default_model=svc.settings.default_model, models=listed)


def _rollout_view(state: RolloutState | None) -> dict[str, Any] | None:
    """What /models says of a model's rollout: stable, candidate, split, latest verification."""
    if state is None:
        return None
    verification = state.verifications.get(state.candidate or "") if state.candidate else None
    return {
        "stable": state.stable,
        "previous": state.previous,
        "candidate": state.candidate,
        "phase": state.phase,
        "split": state.split(),
        "shadow_percent": state.shadow_percent,
        "promotion": state.policy.promotion,
        "candidate_verification": (
            None
            if verification is None
            else {
                "passed": verification.get("passed"),
                "reasons": verification.get("reasons", []),
                "fidelity": verification.get("fidelity"),
                "quality": verification.get("quality"),
            }
        ),
        "updated": state.events[-1].at if state.events else None,
    }


@bp.get("/health")
def health() -> Response:
    """Liveness: the process answers (Triton is not consulted)."""
    return jsonify(status="healthy", model=services().settings.default_model)


@bp.get("/ready")
def ready() -> Response:
    """Readiness: 200 only when Triton is reachable and the default model is ready."""
    svc = services()
    # The history's state is reported, never a reason to fail: /analyze answers without it.
    history = {} if svc.history is None else {"history": svc.history.store.state()}
    if svc.classifier.ready():
        return jsonify(status="ready", model=svc.settings.default_model, **history)
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
