"""The rollout controller: adopt, load, verify, promote and roll back, a cycle every 0.5 s.

One controller acts per rollout directory and machine: every gateway worker runs the loop's
thread, and the one that holds ``<rollout dir>/.controller.lock`` (a non-blocking
``fcntl.flock``, released by the kernel when its process dies) does the work; the others
retry every few seconds, so a killed leader is replaced at once. Every step is one atomic
change of the model's record and every cycle starts again from the record and what Triton
reports, so a controller killed half-way leaves a state the next cycle continues from.

Per model, a cycle:
1. adopts a model it has no record of: the version Triton serves becomes stable;
2. makes the newest published version it has not seen the candidate;
3. asks Triton (explicit model-control mode) to keep exactly stable, previous stable and the
   candidate loaded, also after Triton restarted;
4. verifies a loaded candidate on the serving stack (verify.py) and records the figures;
5. applies the policy: promote at once (auto), start a canary (canary), or wait (manual);
6. during a canary or shadow, rolls back when the candidate's error rate, latency or
   agreement with stable over the window is beyond the policy's limits; promotes a timed
   canary that stayed healthy.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.backend import ModelLoader
from gateway.classifier import Classifier
from gateway.errors import GatewayError
from gateway.rollout.state import (
    CANDIDATE_PHASES,
    RolloutError,
    RolloutState,
    RolloutStore,
    adopt,
    now_s,
    promote,
    propose,
    record_verification,
    rollback,
    start_canary,
)
from gateway.rollout.stats import VersionHealth, prune, read_health
from gateway.rollout.verify import verify_version
from model_contract.files import CONFIG_FILE, is_valid_model_name
from model_contract.repository import list_versions

log = logging.getLogger("gateway.rollout")
CONTROLLER_LOCK = ".controller.lock"
LEADER_RETRY_S = 2.0
#: A load that did not give the wanted versions is asked again after this long.
RELOAD_RETRY_S = 5.0
LOAD_TIMEOUT_S = 120.0
#: A version no longer routed to stays loaded this long (workers' refresh, requests in flight).
UNLOAD_GRACE_S = 10.0
STATS_DIR = "stats"

EventSink = Callable[[str, str], None]  # (model, action): counts rollout events in metrics


class RolloutController:
    """The loop that moves each model's record along (see the module docstring)."""

    def __init__(
        self,
        store: RolloutStore,
        classifier: Classifier,
        loader: ModelLoader,
        *,
        interval_s: float = 0.5,
        on_event: EventSink | None = None,
        on_model: Callable[[str], None] | None = None,
    ) -> None:
        self.store = store
        self.classifier = classifier
        self.loader = loader
        self.interval_s = interval_s
        self.repository: Path = classifier.labels.repository
        self.stats_dir = store.directory / STATS_DIR
        self._on_event = on_event or (lambda _model, _action: None)
        # Called once per model and process: lets metrics start its counters at zero.
        self._on_model = on_model or (lambda _model: None)
        self._known_models: set[str] = set()
        self._retiring: dict[str, dict[str, float]] = {}  # model -> version -> unload after
        self._lock_fd: int | None = None
        self._thread: threading.Thread | None = None
        self._thread_pid = -1
        self._stop = threading.Event()
        self._loads: dict[str, tuple[tuple[int, ...], float]] = {}  # model -> (asked, when)
        self._warned: set[str] = set()
        self._load_failures: dict[tuple[str, str], str] = {}  # (model, version) -> reason
        self._who = f"controller@{os.uname().nodename} (pid {os.getpid()})"

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the loop's daemon thread in this process (again after a fork)."""
        if self._thread is not None and self._thread_pid == os.getpid():
            return
        self._lock_fd = None  # a descriptor inherited through fork is not this process's lock
        self._stop.clear()
        self._who = f"controller@{os.uname().nodename} (pid {os.getpid()})"
        self._thread = threading.Thread(target=self._run, name="rollout-controller", daemon=True)
        self._thread_pid = os.getpid()
        self._thread.start()

    def stop(self) -> None:
        """Stop the loop and give up leadership."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._lock_fd)
            self._lock_fd = None

    def _run(self) -> None:
        last_prune = 0.0
        while not self._stop.is_set():
            if not self.lead():
                self._stop.wait(LEADER_RETRY_S)
                continue
            try:
                self.run_once()
                if time.monotonic() - last_prune > 600:
                    prune(self.stats_dir)
                    last_prune = time.monotonic()
            except Exception:  # the loop must survive anything one cycle meets
                log.exception("rollout controller cycle failed")
            self._stop.wait(self.interval_s)

    def lead(self) -> bool:
        """True when this process holds the controller lock (taking it if free)."""
        if self._lock_fd is not None:
            return True
        try:
            self.store.directory.mkdir(parents=True, exist_ok=True)
            descriptor = os.open(self.store.directory / CONTROLLER_LOCK, os.O_RDWR | os.O_CREAT)
        except OSError as error:
            self._warn_once("lock", "cannot open the rollout controller lock: %s", error)
            return False
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(descriptor)
            return False
        self._lock_fd = descriptor
        log.info("rollout controller active in pid %d", os.getpid())
        return True

    # -- one cycle -------------------------------------------------------------------------------

    def run_once(self) -> None:
        """One pass over every model in the repository (and every model with a record)."""
        try:
            index = self.loader.repository_index()
        except GatewayError as error:
            self._warn_once("index", "rollout controller cannot reach Triton: %s", error)
            return
        self._warned.discard("index")
        ready: dict[str, set[str]] = {}
        self._load_failures = {}
        for row in index:
            if row.version and row.state == "READY":
                ready.setdefault(row.name, set()).add(row.version)
            elif row.version and row.state == "UNAVAILABLE" and row.reason.strip():
                # "unloaded" is the reason of a version taken out on purpose, not a failure.
                failed = "unloaded" not in row.reason.lower()
                if failed:
                    self._load_failures[(row.name, row.version)] = row.reason
        models = set(self.store.models())
        if self.repository.is_dir():
            models.update(
                entry.name
                for entry in self.repository.iterdir()
                if is_valid_model_name(entry.name) and (entry / CONFIG_FILE).is_file()
            )
        for model in sorted(models):
            try:
                self.reconcile(model, ready.get(model, set()))
                self._warned.discard(f"model:{model}")  # a later problem is logged again
            except (RolloutError, GatewayError, OSError) as error:
                self._warn_once(f"model:{model}", "rollout of %s: %s", model, error)
            except Exception as error:  # one model's surprise must not stop the others' rollout
                self._warn_once(f"model:{model}", "rollout of %s failed: %r", model, error)

    def reconcile(self, model: str, ready: set[str]) -> None:
        """Move one model's record along by what is published and what Triton serves."""
        published = [str(version) for version in list_versions(self.repository / model)]
        state = self.store.read(model)
        if model not in self._known_models and (state is not None or published):
            self._known_models.add(model)
            self._on_model(model)
        if state is None:
            if not published:
                return
            state = self._adopt(model, published, ready)
        newest = self._newest_unseen(state, published)
        if newest is not None:
            state = self._change(
                model,
                lambda s: (
                    None
                    if s is None or newest in s.seen
                    else propose(s, newest, self._who, now_s())
                ),
            )
        self._keep_loaded(model, state, ready)
        candidate = state.candidate
        if state.phase == "verifying" and candidate is not None:
            failure = self._load_failures.get((model, candidate))
            if candidate in ready:
                state = self._verify(model, state)
            elif failure is not None and model in self._loads:
                state = self._record_load_failure(model, candidate, failure)
        if state.phase == "verified":
            state = self._apply_policy(model, state)
        if state.phase in ("canary", "shadow"):
            self._watch(model, state)

    def _adopt(self, model: str, published: list[str], ready: set[str]) -> RolloutState:
        serving = max(ready, key=int) if ready else published[-1]

        def first(current: RolloutState | None) -> RolloutState:
            if current is not None:
                return current
            adopted = adopt(model, serving, self._who, now_s())
            older = tuple(v for v in published if int(v) < int(serving))
            return RolloutState.from_dict({**adopted.as_dict(), "seen": [*older, serving]})

        return self._change(model, first)

    @staticmethod
    def _newest_unseen(state: RolloutState, published: list[str]) -> str | None:
        highest_seen = max((int(version) for version in state.seen), default=0)
        fresh = [version for version in published if int(version) > highest_seen]
        return fresh[-1] if fresh else None

    def _keep_loaded(self, model: str, state: RolloutState, ready: set[str]) -> None:
        wanted = self._with_retiring(model, state.loaded_versions(), ready)
        if not wanted or {str(version) for version in wanted} == ready:
            return
        asked = self._loads.get(model)
        if (
            asked is not None
            and asked[0] == wanted
            and time.monotonic() - asked[1] < RELOAD_RETRY_S
        ):
            return  # asked for this set recently: Triton is loading it, or failed and logged why
        self._loads[model] = (wanted, time.monotonic())
        config_path = self.repository / model / CONFIG_FILE
        config_text = config_path.read_text(encoding="utf-8")
        log.info("rollout: loading %s versions %s (ready now: %s)", model, wanted, sorted(ready))
        try:
            self.loader.load_versions(model, config_text, wanted, LOAD_TIMEOUT_S)
        except GatewayError as error:
            self._warn_once(
                f"load:{model}",
                "rollout cannot load %s versions %s: %s (Triton must run with "
                "--model-control-mode=explicit; docs/rollout.md)",
                model,
                wanted,
                error,
            )

    def _with_retiring(
        self, model: str, wanted: tuple[int, ...], ready: set[str]
    ) -> tuple[int, ...]:
        """`wanted` plus loaded versions that left it less than UNLOAD_GRACE_S ago.

        Workers see a changed record up to GATEWAY_ROLLOUT_REFRESH_S later than this loop does,
        and requests already sent to a version are still running: a version that stops being
        routed (rolled back, replaced) stays loaded a little longer so that none of them fails.
        """
        now = time.monotonic()
        retiring = self._retiring.setdefault(model, {})
        for version in ready:
            if int(version) not in wanted:
                retiring.setdefault(version, now + UNLOAD_GRACE_S)
        for version in list(retiring):
            if version not in ready or int(version) in wanted:
                del retiring[version]  # unloaded, or routed again
        grace = {int(version) for version, until in retiring.items() if until > now}
        return tuple(sorted({*wanted, *grace}))

    def _verify(self, model: str, state: RolloutState) -> RolloutState:
        candidate = state.candidate
        assert candidate is not None
        result = verify_version(
            self.classifier, model, candidate, state.policy, stable=state.stable
        )
        log.info(
            "rollout: %s candidate %s verification %s: %s",
            model,
            candidate,
            "passed" if result["passed"] else "FAILED",
            "; ".join(result["reasons"]) or "all checks passed",
        )

        def record(current: RolloutState | None) -> RolloutState | None:
            if current is None or current.candidate != candidate or current.phase != "verifying":
                return None  # an operator or another cycle moved on meanwhile
            return record_verification(current, candidate, result, self._who, now_s())

        return self._change(model, record)

    def _record_load_failure(self, model: str, candidate: str, reason: str) -> RolloutState:
        result = {
            "version": candidate,
            "passed": False,
            "checked_at": round(now_s(), 3),
            "reasons": [f"Triton could not load version {candidate}: {reason}"],
        }
        log.warning("rollout: %s candidate %s failed to load: %s", model, candidate, reason)

        def record(current: RolloutState | None) -> RolloutState | None:
            if current is None or current.candidate != candidate or current.phase != "verifying":
                return None
            return record_verification(current, candidate, result, self._who, now_s())

        return self._change(model, record)

    def _apply_policy(self, model: str, state: RolloutState) -> RolloutState:
        policy = state.policy
        if policy.promotion == "auto":
            detail = f"version {state.candidate} passed verification: promoted (policy auto)"
            return self._change(
                model, lambda s: _if_phase(s, "verified", promote, self._who, detail)
            )
        if policy.promotion == "canary":
            return self._change(
                model,
                lambda s: (
                    start_canary(s, policy.canary_percent, self._who, now_s())
                    if s is not None and s.phase == "verified"
                    else None
                ),
            )
        return state  # manual: an operator promotes

    def _watch(self, model: str, state: RolloutState) -> None:
        candidate, stable = state.candidate, state.stable
        if candidate is None or stable is None:
            return
        policy = state.policy
        window = policy.rollback_window_s
        since = now_s() - state.phase_since
        health = read_health(self.stats_dir, model, candidate, window_s=min(window, since))
        baseline = read_health(self.stats_dir, model, stable, window_s=min(window, since))
        reason = rollback_reason(health, baseline, state)
        if reason is not None:
            log.warning("rollout: rolling %s back from candidate %s: %s", model, candidate, reason)

            def back(current: RolloutState | None) -> RolloutState | None:
                if current is None or current.candidate != candidate:
                    return None
                if current.phase not in CANDIDATE_PHASES:
                    return None
                return rollback(current, self._who, now_s(), f"automatic: {reason}")

            self._change(model, back, action="rollback-automatic")
            return
        timed = policy.promotion == "canary" and state.phase == "canary"
        if timed and since >= policy.canary_duration_s:
            detail = (
                f"canary of version {candidate} healthy for {since:.0f} s "
                f"({health.requests} requests, {health.failures} failed): promoted"
            )
            self._change(model, lambda s: _if_phase(s, "canary", promote, self._who, detail))

    # -- helpers ---------------------------------------------------------------------------------

    def _change(
        self,
        model: str,
        change: Callable[[RolloutState | None], RolloutState | None],
        action: str | None = None,
    ) -> RolloutState:
        seen: list[RolloutState | None] = []

        def observed(current: RolloutState | None) -> RolloutState | None:
            seen.append(current)  # the record under the lock, to tell whether it changed
            return change(current)

        after = self.store.update(model, observed)
        if after is None:
            raise RolloutError(f"{model} has no rollout record")
        before = seen[0] if seen else None
        if before is None or after.revision != before.revision:
            self._on_event(model, action or after.events[-1].action)
        return after

    def _warn_once(self, key: str, message: str, *args: Any) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message, *args)


def rollback_reason(
    health: VersionHealth, baseline: VersionHealth, state: RolloutState
) -> str | None:
    """Why the candidate must be rolled back now, or None while it is within the limits."""
    policy = state.policy
    if health.requests >= policy.rollback_min_requests:
        rate = health.error_rate or 0.0
        if rate > policy.rollback_max_error_rate:
            return (
                f"{health.failures} of {health.requests} requests failed ({rate:.1%}, limit "
                f"{policy.rollback_max_error_rate:.1%}; {health.timeouts} timeouts)"
            )
        slow, usual = health.p95_ms, baseline.p95_ms
        if (
            slow is not None
            and usual is not None
            and slow > policy.rollback_min_latency_ms
            and slow > usual * policy.rollback_max_latency_ratio
        ):
            return (
                f"p95 latency {slow:.0f} ms against stable's {usual:.0f} ms "
                f"(limit {policy.rollback_max_latency_ratio:g}x)"
            )
    if health.compared >= policy.rollback_min_compared:
        agreement = health.agreement or 0.0
        if agreement < policy.rollback_min_agreement:
            return (
                f"top-1 agrees with stable on {agreement:.0%} of {health.compared} compared "
                f"requests (limit {policy.rollback_min_agreement:.0%})"
            )
    return None


def _if_phase(
    state: RolloutState | None,
    phase: str,
    transition: Callable[[RolloutState, str, float, str], RolloutState],
    who: str,
    detail: str,
) -> RolloutState | None:
    if state is None or state.phase != phase:
        return None
    return transition(state, who, now_s(), detail)
