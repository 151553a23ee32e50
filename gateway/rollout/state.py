"""The rollout record of each model, its transitions, and the store every process reads.

A record says which version is *stable* (answers unpinned requests), which is the
*candidate* and in which phase it is, the canary and shadow percentages, the previous stable
(kept loaded for an instant rollback), the verification results and a bounded history of
changes with time and author. Transitions are pure functions from record to record, so the
CLI, the controller and the tests share one set of rules.

The store keeps one JSON file per model in the rollout directory. A change takes the model's
lock (``fcntl.flock`` on a sibling file), reads the record, applies the transition and replaces
the file atomically (temporary file, fsync, ``os.replace``, fsync of the directory): a reader,
or a process killed half-way, sees the old record or the new one, never a mix. The directory
lives outside the model repository, so no change to it ever makes Triton reload a model.
"""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import json
import math
import os
import socket
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal, cast

from model_contract.errors import ContractError
from model_contract.files import check_model_name, is_valid_model_name

STATE_FORMAT = 1
STATE_SUFFIX = ".json"
_LOCK_PREFIX = ".lock-"
_TEMP_PREFIX = ".tmp-"
MAX_EVENTS = 200
MAX_VERIFICATIONS = 10

Phase = Literal["stable", "verifying", "failed", "verified", "canary", "shadow"]
#: Phases in which a candidate exists and is kept loaded.
CANDIDATE_PHASES: frozenset[str] = frozenset({"verifying", "verified", "canary", "shadow"})
Promotion = Literal["auto", "canary", "manual"]
PROMOTIONS: tuple[str, ...] = ("auto", "canary", "manual")


class RolloutError(ContractError):
    """A rollout command that the record's current state does not allow (says why)."""


@dataclass(frozen=True)
class Policy:
    """How a model's candidates are judged and promoted; every threshold is recorded."""

    #: auto: promote as soon as verification passes (the checked hot swap); canary: serve
    #: canary_percent for canary_duration_s, then promote if healthy; manual: wait for promote.
    promotion: Promotion = "auto"
    canary_percent: float = 10.0
    canary_duration_s: float = 300.0
    # Fidelity: the served outputs against the candidate's own references.
    fidelity_min_top1: float = 0.95
    fidelity_logit_tolerance: float | None = None  # None: the version's golden tolerance
    # Quality, where the golden photos' classes are known.
    quality_min_top1: float = 0.5
    quality_min_top5: float = 0.75
    # Optional: top-1 agreement with stable on the golden photos.
    verify_min_agreement: float | None = None
    # Automatic rollback during canary and shadow, over the last rollback_window_s.
    rollback_window_s: float = 30.0
    rollback_min_requests: int = 20
    rollback_max_error_rate: float = 0.05
    rollback_max_latency_ratio: float = 3.0  # candidate p95 / stable p95
    rollback_min_latency_ms: float = 250.0  # ...and only when the candidate's p95 exceeds this
    rollback_min_agreement: float = 0.5
    rollback_min_compared: int = 20

    def __post_init__(self) -> None:
        """Refuse values no rule can use."""
        if self.promotion not in PROMOTIONS:
            raise RolloutError(f"promotion must be one of {PROMOTIONS}, got {self.promotion!r}")
        _percent("canary_percent", self.canary_percent)
        for name in (
            "fidelity_min_top1",
            "quality_min_top1",
            "quality_min_top5",
            "rollback_max_error_rate",
            "rollback_min_agreement",
        ):
            _fraction(name, getattr(self, name))
        if self.verify_min_agreement is not None:
            _fraction("verify_min_agreement", self.verify_min_agreement)
        if not (math.isfinite(self.rollback_min_latency_ms) and self.rollback_min_latency_ms >= 0):
            raise RolloutError("rollback_min_latency_ms must be 0 or more")
        for name in ("canary_duration_s", "rollback_window_s", "rollback_max_latency_ratio"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) > 0):
                raise RolloutError(f"{name} must be a positive number, got {getattr(self, name)}")
        if self.fidelity_logit_tolerance is not None and not self.fidelity_logit_tolerance >= 0:
            raise RolloutError("fidelity_logit_tolerance must be 0 or more")
        if self.rollback_min_requests < 1 or self.rollback_min_compared < 1:
            raise RolloutError("rollback_min_requests and rollback_min_compared must be >= 1")

    def with_changes(self, changes: Mapping[str, str]) -> Policy:
        """A copy with `changes` (field name -> text, as the CLI gives them) applied."""
        known = {item.name: item for item in fields(self)}
        values: dict[str, Any] = {}
        for name, text in changes.items():
            if name not in known:
                raise RolloutError(f"unknown policy setting {name!r}; known: {sorted(known)}")
            current = getattr(self, name)
            if text.lower() in ("none", "") and name in (
                "fidelity_logit_tolerance",
                "verify_min_agreement",
            ):
                values[name] = None
            elif name == "promotion":
                values[name] = text
            elif isinstance(current, int) and not isinstance(current, bool):
                values[name] = _parse(name, text, int)
            else:
                values[name] = _parse(name, text, float)
        return replace(self, **values)


@dataclass(frozen=True)
class Event:
    """One change of the record: when, by whom, what, and why."""

    at: float
    who: str
    action: str
    detail: str = ""


@dataclass(frozen=True)
class RolloutState:
    """A model's rollout record (one JSON file)."""

    model: str
    revision: int = 0
    stable: str | None = None
    previous: str | None = None  # the stable before the last promotion, kept loaded
    candidate: str | None = None
    phase: Phase = "stable"
    phase_since: float = 0.0
    canary_percent: float = 0.0
    shadow_percent: float = 0.0
    seen: tuple[str, ...] = ()  # every version ever adopted or made a candidate
    rejected: tuple[str, ...] = ()  # failed verification or rolled back: never routed again
    verifications: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    policy: Policy = field(default_factory=Policy)
    events: tuple[Event, ...] = ()

    # -- what readers use ------------------------------------------------------------------

    @property
    def has_candidate(self) -> bool:
        """True while a candidate exists and is kept loaded."""
        return self.candidate is not None and self.phase in CANDIDATE_PHASES

    def route(self, draw: float) -> str | None:
        """The version for an unpinned request, given a uniform `draw` in [0, 1)."""
        canary = self.phase == "canary" and self.candidate is not None
        if canary and draw * 100.0 < self.canary_percent:
            return self.candidate
        return self.stable

    def shadow_target(self, answered: str, draw: float) -> str | None:
        """The version that should also see this request (never answering), or None."""
        if self.candidate is None or self.stable is None or self.shadow_percent <= 0:
            return None
        if self.phase not in ("shadow", "canary") or draw * 100.0 >= self.shadow_percent:
            return None
        return self.stable if answered == self.candidate else self.candidate

    def loaded_versions(self) -> tuple[int, ...]:
        """The versions Triton must keep loaded: stable, previous stable, the candidate."""
        wanted = {self.stable, self.previous}
        if self.has_candidate:
            wanted.add(self.candidate)
        return tuple(sorted(int(version) for version in wanted if version is not None))

    def split(self) -> dict[str, float]:
        """Percent of unpinned traffic per version."""
        if self.stable is None:
            return {}
        if self.phase == "canary" and self.candidate is not None:
            return {self.stable: 100.0 - self.canary_percent, self.candidate: self.canary_percent}
        return {self.stable: 100.0}

    # -- (de)serialisation -------------------------------------------------------------------

    def as_dict(self) -> dict[str, Any]:
        """The JSON record."""
        record = asdict(self)
        record["format"] = STATE_FORMAT
        record["seen"], record["rejected"] = list(self.seen), list(self.rejected)
        record["events"] = [asdict(event) for event in self.events]
        return record

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> RolloutState:
        """Read a JSON record back; RolloutError when it is not one."""
        if not isinstance(record, Mapping):
            raise RolloutError("a rollout record must be a JSON object")
        try:
            if record.get("format") != STATE_FORMAT:
                raise RolloutError(f"unknown rollout record format {record.get('format')!r}")
            policy_fields = {item.name for item in fields(Policy)}
            policy = Policy(
                **{k: v for k, v in dict(record.get("policy") or {}).items() if k in policy_fields}
            )
            state = cls(
                model=check_model_name(str(record["model"])),
                revision=int(record["revision"]),
                stable=_version_or_none(record.get("stable")),
                previous=_version_or_none(record.get("previous")),
                candidate=_version_or_none(record.get("candidate")),
                phase=cast(Phase, str(record.get("phase", "stable"))),
                phase_since=float(record.get("phase_since", 0.0)),
                canary_percent=float(record.get("canary_percent", 0.0)),
                shadow_percent=float(record.get("shadow_percent", 0.0)),
                seen=tuple(str(v) for v in record.get("seen", ())),
                rejected=tuple(str(v) for v in record.get("rejected", ())),
                verifications={
                    str(k): dict(v) for k, v in dict(record.get("verifications") or {}).items()
                },
                policy=policy,
                events=tuple(Event(**event) for event in record.get("events", ())),
            )
        except (KeyError, TypeError, ValueError) as error:
            if isinstance(error, RolloutError):
                raise
            raise RolloutError(f"malformed rollout record: {error!r}") from None
        if state.phase not in ("stable", *CANDIDATE_PHASES, "failed"):
            raise RolloutError(f"unknown rollout phase {state.phase!r}")
        _percent("canary_percent", state.canary_percent)
        _percent("shadow_percent", state.shadow_percent)
        return state


# -- transitions (pure: record in, record out) --------------------------------------------------


def adopt(
    model: str, version: str, who: str, now: float, policy: Policy | None = None
) -> RolloutState:
    """The first record of a model: `version` (what Triton serves today) becomes stable."""
    state = RolloutState(model=model, policy=policy or Policy())
    return _changed(
        state,
        who,
        now,
        "adopt",
        f"version {version} is stable (it served this model before rollout managed it)",
        stable=version,
        seen=(version,),
        phase="stable",
        phase_since=now,
    )


def propose(state: RolloutState, version: str, who: str, now: float) -> RolloutState:
    """A newly published `version` becomes the candidate (replacing an unfinished one)."""
    if version in state.seen:
        raise RolloutError(f"version {version} of {state.model} was already considered")
    detail = f"version {version} published; verifying before it gets traffic"
    rejected = state.rejected
    if state.has_candidate and state.candidate is not None:
        detail += f" (replaces candidate {state.candidate}, which never became stable)"
        rejected = (*rejected, state.candidate)
    return _changed(
        state,
        who,
        now,
        "candidate",
        detail,
        candidate=version,
        phase="verifying",
        phase_since=now,
        canary_percent=0.0,
        shadow_percent=0.0,
        seen=(*state.seen, version),
        rejected=rejected,
    )


def record_verification(
    state: RolloutState, version: str, result: Mapping[str, Any], who: str, now: float
) -> RolloutState:
    """Store a verification result; a failed one takes the candidate out of traffic for good."""
    verifications = {k: v for k, v in state.verifications.items() if k != version}
    verifications[version] = dict(result)  # newest last: the oldest results are dropped first
    while len(verifications) > MAX_VERIFICATIONS:
        verifications.pop(next(iter(verifications)))
    passed = bool(result.get("passed"))
    reasons = "; ".join(result.get("reasons", ())) or "all checks passed"
    if version != state.candidate or not state.has_candidate:
        # A verification of another version (e.g. `verify` of stable) is only recorded.
        return _changed(
            state, who, now, "verified" if passed else "verify-failed",
            f"version {version}: {reasons}", verifications=verifications,
        )  # fmt: skip
    if passed:
        return _changed(
            state, who, now, "verified", f"candidate {version} passed: {reasons}",
            verifications=verifications, phase="verified", phase_since=now,
        )  # fmt: skip
    return _changed(
        state, who, now, "verify-failed", f"candidate {version} failed: {reasons}",
        verifications=verifications, phase="failed", phase_since=now,
        canary_percent=0.0, shadow_percent=0.0, rejected=(*state.rejected, version),
    )  # fmt: skip


def start_canary(state: RolloutState, percent: float, who: str, now: float) -> RolloutState:
    """Send `percent` % of unpinned requests to the verified candidate."""
    _percent("canary percent", percent)
    _require_verified(state, "canary")
    return _changed(
        state, who, now, "canary", f"candidate {state.candidate} gets {percent:g} % of traffic",
        phase="canary", phase_since=now if state.phase != "canary" else state.phase_since,
        canary_percent=float(percent),
    )  # fmt: skip


def start_shadow(state: RolloutState, percent: float, who: str, now: float) -> RolloutState:
    """Also send `percent` % of requests to the other version and compare (never answer)."""
    _percent("shadow percent", percent)
    _require_verified(state, "shadow")
    phase: Phase = "canary" if state.phase == "canary" else "shadow"
    return _changed(
        state, who, now, "shadow",
        f"{percent:g} % of requests are also sent to candidate {state.candidate} and compared",
        phase=phase, phase_since=state.phase_since if phase == state.phase else now,
        shadow_percent=float(percent),
    )  # fmt: skip


def promote(state: RolloutState, who: str, now: float, detail: str = "") -> RolloutState:
    """The verified candidate becomes stable for all traffic; the old stable stays loaded."""
    _require_verified(state, "promote")
    return _changed(
        state, who, now, "promote",
        detail or f"version {state.candidate} is stable (was {state.stable})",
        stable=state.candidate, previous=state.stable, candidate=None, phase="stable",
        phase_since=now, canary_percent=0.0, shadow_percent=0.0,
    )  # fmt: skip


def rollback(state: RolloutState, who: str, now: float, reason: str = "") -> RolloutState:
    """All traffic back to the previous stable at once.

    With a candidate in play, it is withdrawn (stable keeps serving); after a promotion, the
    previous stable becomes stable again. The withdrawn version is never routed again.
    """
    why = f": {reason}" if reason else ""
    if state.has_candidate and state.candidate is not None:
        return _changed(
            state, who, now, "rollback",
            f"candidate {state.candidate} withdrawn, {state.stable} serves all traffic{why}",
            candidate=None, phase="stable", phase_since=now, canary_percent=0.0,
            shadow_percent=0.0, rejected=(*state.rejected, state.candidate),
        )  # fmt: skip
    if state.phase == "failed":
        raise RolloutError(
            f"candidate {state.candidate} of {state.model} failed verification and never got "
            f"traffic: nothing to roll back (stable {state.stable} serves everything; "
            "`rollback` again only after a new candidate or to undo a promotion)"
        )
    if state.previous is None or state.stable is None:
        raise RolloutError(
            f"{state.model} has no candidate and no previous stable version to roll back to"
        )
    return _changed(
        state, who, now, "rollback",
        f"version {state.previous} serves all traffic again (was {state.stable}){why}",
        stable=state.previous, previous=None, phase="stable", phase_since=now,
        canary_percent=0.0, shadow_percent=0.0, rejected=(*state.rejected, state.stable),
    )  # fmt: skip


def set_policy(state: RolloutState, policy: Policy, who: str, now: float) -> RolloutState:
    """Replace the model's policy."""
    return _changed(state, who, now, "policy", json.dumps(asdict(policy)), policy=policy)


def _require_verified(state: RolloutState, action: str) -> None:
    if not state.has_candidate or state.phase == "verifying":
        what = {
            "verifying": "is still being verified",
            "failed": f"has only candidate {state.candidate}, which failed verification",
        }.get(state.phase, "has no candidate")
        raise RolloutError(
            f"cannot {action} {state.model}: it {what} (run `python -m rollout status "
            f"{state.model}`)"
        )


def _changed(
    state: RolloutState, who: str, now: float, action: str, detail: str, **changes: Any
) -> RolloutState:
    events = (*state.events, Event(at=round(now, 3), who=who, action=action, detail=detail))
    return replace(state, revision=state.revision + 1, events=events[-MAX_EVENTS:], **changes)


# -- the store -----------------------------------------------------------------------------------


def operator() -> str:
    """Who makes a change from this process: user@host (pid)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()} (pid {os.getpid()})"


class RolloutStore:
    """One JSON record per model in `directory`, changed under a per-model lock."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def path(self, model: str) -> Path:
        """The record file of `model`."""
        return self.directory / f"{check_model_name(model)}{STATE_SUFFIX}"

    def models(self) -> list[str]:
        """Models that have a record."""
        if not self.directory.is_dir():
            return []
        names = (entry.name[: -len(STATE_SUFFIX)] for entry in self.directory.iterdir())
        return sorted(
            name
            for name in names
            if is_valid_model_name(name) and (self.directory / f"{name}{STATE_SUFFIX}").is_file()
        )

    def read(self, model: str) -> RolloutState | None:
        """The record of `model`, None when it has none."""
        try:
            text = self.path(model).read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except UnicodeDecodeError as error:
            raise RolloutError(f"{self.path(model)} is not UTF-8 text: {error.reason}") from None
        try:
            return RolloutState.from_dict(json.loads(text))
        except json.JSONDecodeError as error:
            raise RolloutError(f"{self.path(model)} is not JSON: {error}") from None

    def update(
        self,
        model: str,
        change: Callable[[RolloutState | None], RolloutState | None],
    ) -> RolloutState | None:
        """Apply `change` to the current record under the model's lock; write what it returns.

        `change` returns None (or the record unchanged) to write nothing. RolloutError from it
        propagates with nothing written.
        """
        with self._locked(model):
            current = self.read(model)
            updated = change(current)
            if updated is None or updated == current:
                return current
            self._write(model, updated)
            return updated

    @contextlib.contextmanager
    def _locked(self, model: str) -> Iterator[None]:
        self.directory.mkdir(parents=True, exist_ok=True)
        lock_path = self.directory / f"{_LOCK_PREFIX}{check_model_name(model)}"
        descriptor = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX)  # released by the kernel if we are killed
            yield
        finally:
            os.close(descriptor)

    def _write(self, model: str, state: RolloutState) -> None:
        self._remove_stale_temps()
        target = self.path(model)
        payload = json.dumps(state.as_dict(), indent=1, sort_keys=False) + "\n"
        handle, temp = tempfile.mkstemp(prefix=_TEMP_PREFIX, dir=self.directory)
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as out:
                out.write(payload)
                out.flush()
                os.fsync(out.fileno())
            os.chmod(temp, 0o644)
            os.replace(temp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise
        directory = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

    def _remove_stale_temps(self, older_than_s: float = 60.0) -> None:
        """Delete temporary files a writer killed before its rename left behind."""
        cutoff = time.time() - older_than_s
        for entry in self.directory.glob(f"{_TEMP_PREFIX}*"):
            with contextlib.suppress(OSError):
                if entry.stat().st_mtime < cutoff:
                    entry.unlink()


def now_s() -> float:
    """Wall-clock seconds (records are compared across processes and machines)."""
    return time.time()


def _version_or_none(value: object) -> str | None:
    if value is None:
        return None
    text = str(value)
    if not (text.isascii() and text.isdigit()):
        raise RolloutError(f"{text!r} is not a version number")
    return text


def _percent(name: str, value: float) -> None:
    if not (math.isfinite(value) and 0.0 <= value <= 100.0):
        raise RolloutError(f"{name} must be between 0 and 100, got {value}")


def _fraction(name: str, value: float) -> None:
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise RolloutError(f"{name} must be between 0 and 1, got {value}")


def _parse(name: str, text: str, kind: type[int] | type[float]) -> Any:
    try:
        return kind(text)
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise RolloutError(f"policy setting {name} needs {what}, got {text!r}") from None
