"""The gateway's per-process view of the rollout records, and what each request does with it.

`RolloutRuntime.choose` picks the version of an unpinned request from the model's record
(stable, or the candidate for the canary share); a pinned request keeps its version. Records
are re-read when their file changed, checked at most every ``refresh_s`` (one ``stat``), so
a change reaches every worker and replica within that bound without a read per request.
`observe` counts the answer for the controller's health checks; `shadow` sends a sample of
requests to the other version in the background and compares, never answering with it.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from gateway.classifier import Attempt, Classification, Classifier
from gateway.errors import GatewayError, UpstreamTimeout
from gateway.rollout.state import RolloutError, RolloutState, RolloutStore
from gateway.rollout.stats import Outcome, WorkerStats

log = logging.getLogger("gateway.rollout")
#: Background comparisons waiting or running per process; beyond it a sample is skipped.
MAX_SHADOW_PENDING = 4


@dataclass(frozen=True)
class Route:
    """Where an unpinned request goes: the version, and the record that said so."""

    version: str
    state: RolloutState

    @property
    def role(self) -> str:
        """'candidate' or 'stable'."""
        return "candidate" if self.version == self.state.candidate else "stable"


class RolloutRuntime:
    """Cached rollout records, routing, health counting and shadow comparisons for a process."""

    def __init__(
        self,
        store: RolloutStore,
        stats: WorkerStats,
        *,
        refresh_s: float,
        draw: Callable[[], float] = random.random,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.stats = stats
        self._refresh_s = refresh_s
        self._draw = draw
        self._clock = clock
        self._lock = threading.Lock()
        # model -> (checked at, file signature, record)
        self._cache: dict[str, tuple[float, tuple[int, int, int] | None, RolloutState | None]] = {}
        self._executor: ThreadPoolExecutor | None = None
        self._executor_pid = -1
        self._pending = threading.BoundedSemaphore(MAX_SHADOW_PENDING)

    # -- records -----------------------------------------------------------------------------

    def state(self, model: str) -> RolloutState | None:
        """The model's record as of at most ``refresh_s`` ago (None: rollout does not manage it)."""
        now = self._clock()
        cached = self._cache.get(model)
        if cached is not None and now - cached[0] < self._refresh_s:
            return cached[2]
        try:
            stat = self.store.path(model).stat()
            signature: tuple[int, int, int] | None = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        except (OSError, ValueError):
            signature = None
        if cached is not None and cached[1] == signature:
            state = cached[2]
        else:
            state = self._read(model) if signature is not None else None
        with self._lock:
            self._cache[model] = (now, signature, state)
        return state

    def _read(self, model: str) -> RolloutState | None:
        try:
            return self.store.read(model)
        except (RolloutError, OSError) as error:
            # A record that cannot be read keeps the last good one: traffic must not move
            # because of a bad file; the controller and `status` report it.
            log.error("rollout record of %s unreadable, keeping the last one: %s", model, error)
            cached = self._cache.get(model)
            return cached[2] if cached is not None else None

    # -- per request ----------------------------------------------------------------------------

    def choose(self, model: str) -> Route | None:
        """The version an unpinned request for `model` goes to; None when rollout has no record."""
        state = self.state(model)
        if state is None:
            return None
        version = state.route(self._draw())
        return Route(version, state) if version is not None else None

    def observe(self, model: str, route: Route, attempt: Attempt, seconds: float) -> None:
        """Count one routed answer for the health checks (client errors are not the model's)."""
        error = attempt.error
        outcome: Outcome
        if error is None:
            outcome = "ok"
        elif isinstance(error, UpstreamTimeout):
            outcome = "timeout"
        elif isinstance(error, GatewayError) and error.status < 500:
            return
        else:
            outcome = "error"
        self.stats.record_request(model, route.version, outcome, seconds)

    def shadow(
        self,
        classifier: Classifier,
        model: str,
        route: Route,
        data: bytes,
        answer: Classification,
    ) -> bool:
        """Maybe also classify `data` with the other version in the background; True if sent."""
        other = route.state.shadow_target(route.version, self._draw())
        if other is None or not self._pending.acquire(blocking=False):
            return False
        candidate = route.state.candidate
        try:
            self._pool().submit(self._compare, classifier, model, other, candidate, data, answer)
        except RuntimeError:  # interpreter shutting down
            self._pending.release()
            return False
        return True

    def _compare(
        self,
        classifier: Classifier,
        model: str,
        other: str,
        candidate: str | None,
        data: bytes,
        answer: Classification,
    ) -> None:
        try:
            attempt = classifier.classify(data, model, other, top_k=1)
            if attempt.classification is None or candidate is None:
                if candidate is not None and attempt.error is not None:
                    status = getattr(attempt.error, "status", 500)
                    if status >= 500:
                        self.stats.record_request(model, other, "error", attempt.timings.triton_s)
                return
            mine, theirs = answer.predictions[0], attempt.classification.predictions[0]
            if answer.version == candidate:
                candidate_top, stable_top = mine, theirs
            else:
                candidate_top, stable_top = theirs, mine
            self.stats.record_comparison(
                model,
                candidate,
                candidate_top.label == stable_top.label,
                candidate_top.confidence - stable_top.confidence,
            )
        except Exception:  # a background comparison must never take the worker down
            log.exception("shadow comparison for %s failed", model)
        finally:
            self._pending.release()

    def _pool(self) -> ThreadPoolExecutor:
        pid = os.getpid()
        if self._executor is None or self._executor_pid != pid:
            with self._lock:
                if self._executor is None or self._executor_pid != pid:
                    self._executor = ThreadPoolExecutor(1, thread_name_prefix="rollout-shadow")
                    self._executor_pid = pid
        return self._executor
