"""The rollout controller's rules on fakes: adoption, new candidates, which versions it keeps
loaded (with the unload grace), and when a canary's health means a rollback (unit tests; the
real proof is tests/test_rollout_e2e.py and tests/test_rollout_faults.py)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from gateway.backend import ModelVersionState
from gateway.classifier import Classifier
from gateway.images import ImageLimits
from gateway.labels import LabelStore
from gateway.rollout import controller as controller_module
from gateway.rollout.controller import RolloutController, rollback_reason
from gateway.rollout.state import Policy, RolloutState, RolloutStore, adopt, now_s, propose
from gateway.rollout.stats import VersionHealth
from tests.fakes_gateway import FakeBackend, class_names, write_labels


@dataclass
class FakeLoader:
    """Records load requests and makes exactly those versions READY."""

    ready: dict[str, set[str]] = field(default_factory=dict)
    loads: list[tuple[int, ...]] = field(default_factory=list)

    def load_versions(
        self, name: str, config_text: str, versions: tuple[int, ...], timeout_s: float
    ) -> None:
        """Pretend Triton loaded `versions` of `name`."""
        self.loads.append(versions)
        self.ready[name] = {str(version) for version in versions}

    def repository_index(self) -> list[ModelVersionState]:
        """READY rows for what was loaded."""
        return [
            ModelVersionState(name, version, "READY", "")
            for name, versions in self.ready.items()
            for version in sorted(versions)
        ]


def _repository(tmp_path: Path, versions: int) -> Path:
    repository = tmp_path / "repository"
    for version in range(1, versions + 1):
        write_labels(repository, "m", class_names(10), version=str(version))
    (repository / "m" / "config.pbtxt").write_text('name: "m"\n')
    return repository


def _controller(tmp_path: Path, repository: Path, loader: FakeLoader) -> RolloutController:
    classifier = Classifier(
        FakeBackend(),
        LabelStore(repository),
        default_model="m",
        limits=ImageLimits(max_pixels=10_000_000),
        cache_ttl_s=0.0,
    )
    return RolloutController(RolloutStore(tmp_path / "rollout"), classifier, loader)


def test_adopts_what_triton_serves_and_proposes_the_next(tmp_path: Path) -> None:
    """The served version becomes stable (older ones seen); a newer one becomes the candidate."""
    repository = _repository(tmp_path, 2)
    loader = FakeLoader(ready={"m": {"1"}})
    controller = _controller(tmp_path, repository, loader)
    controller.run_once()
    state = controller.store.read("m")
    assert state is not None
    assert state.stable == "1" and state.candidate == "2" and state.phase == "verifying"
    assert loader.loads == [(1, 2)]  # the candidate is loaded next to stable


def test_a_version_no_longer_routed_stays_loaded_for_the_grace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A withdrawn version is unloaded only after UNLOAD_GRACE_S, not on the next cycle."""
    repository = _repository(tmp_path, 2)
    loader = FakeLoader(ready={"m": {"1", "2"}})
    controller = _controller(tmp_path, repository, loader)
    store = controller.store
    store.update("m", lambda _s: propose(adopt("m", "1", "t", now_s()), "2", "t", now_s()))
    withdrawn = RolloutState.from_dict(
        {**store.read("m").as_dict(), "phase": "stable", "candidate": None}  # type: ignore[union-attr]
    )
    store.update("m", lambda _s: withdrawn)
    clock = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])  # the controller's clock
    controller.run_once()
    assert loader.loads == []  # 2 is retiring: still loaded
    clock[0] += controller_module.UNLOAD_GRACE_S + 1
    controller.run_once()
    assert loader.loads == [(1,)]
    clock[0] += 60
    controller.run_once()
    assert loader.loads == [(1,)]  # unloaded once, not re-added to the grace


def test_rollback_reason_follows_the_policy() -> None:
    """Errors, latency and disagreement beyond the limits (with enough samples) roll back."""
    state = RolloutState(model="m", policy=Policy(rollback_min_requests=10))
    healthy = VersionHealth(requests=100, errors=2, p95_ms=80.0)
    stable = VersionHealth(requests=400, p95_ms=70.0)
    assert rollback_reason(healthy, stable, state) is None
    failing = VersionHealth(requests=100, errors=10, timeouts=2, p95_ms=80.0)
    assert "12 of 100 requests failed" in (rollback_reason(failing, stable, state) or "")
    too_few = VersionHealth(requests=5, errors=5)
    assert rollback_reason(too_few, stable, state) is None
    slow = VersionHealth(requests=100, p95_ms=900.0)
    assert "p95 latency 900 ms" in (rollback_reason(slow, stable, state) or "")
    disagreeing = VersionHealth(requests=0, compared=40, agreed=8)
    assert "agrees with stable on 20%" in (rollback_reason(disagreeing, stable, state) or "")
