"""verify_version over several servers: each is checked on its own, and all must pass."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.backend import InferenceBackend
from gateway.classifier import Classifier
from gateway.images import ImageLimits
from gateway.labels import LabelStore
from gateway.rollout import verify
from gateway.rollout.state import Policy
from tests.fakes_gateway import FakeBackend


class FanOutBackend(FakeBackend):
    """A fake balanced backend: its per_server() names one fake backend per server."""

    def __init__(self, servers: dict[str, FakeBackend]) -> None:
        super().__init__()
        self.servers = servers

    def per_server(self) -> list[tuple[str, InferenceBackend]]:
        """Every fake server with its address."""
        return list(self.servers.items())


def classifier_on(backend: FakeBackend, repository: Path) -> Classifier:
    """A classifier over `backend` with an empty label store."""
    return Classifier(
        backend,
        LabelStore(repository),
        default_model="m",
        limits=ImageLimits(max_pixels=1_000_000),
        cache_ttl_s=1.0,
    )


def checked_on(
    monkeypatch: pytest.MonkeyPatch, failing: set[str], names: dict[int, str]
) -> list[str]:
    """Replace the one-server check: it fails on the servers in `failing`; returns call order."""
    calls: list[str] = []

    def one(classifier: Classifier, *_args: Any) -> dict[str, Any]:
        name = names[id(classifier.backend)]
        calls.append(name)
        passed = name not in failing
        reasons = [] if passed else ["fidelity: a served logit differs from its reference"]
        return {"passed": passed, "reasons": reasons, "fidelity": {"server": name}}

    monkeypatch.setattr(verify, "_verify_on", one)
    return calls


def test_a_candidate_must_pass_on_every_server(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """It fails on one of two servers: failed, the reason names that server, figures from it."""
    servers = {"10.0.0.5:8001": FakeBackend(), "10.0.0.6:8001": FakeBackend()}
    names = {id(backend): name for name, backend in servers.items()}
    calls = checked_on(monkeypatch, {"10.0.0.6:8001"}, names)
    result = verify.verify_version(
        classifier_on(FanOutBackend(servers), tmp_path), "m", "2", Policy()
    )
    assert calls == ["10.0.0.5:8001", "10.0.0.6:8001"]
    assert result["passed"] is False
    assert result["servers"] == {"10.0.0.5:8001": True, "10.0.0.6:8001": False}
    assert result["reasons"] == [
        "on 10.0.0.6:8001: fidelity: a served logit differs from its reference"
    ]
    assert result["fidelity"] == {"server": "10.0.0.6:8001"}


def test_passing_on_every_server_passes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Both servers pass: passed, no reasons, both listed."""
    servers = {"a:1": FakeBackend(), "b:1": FakeBackend()}
    checked_on(monkeypatch, set(), {id(b): n for n, b in servers.items()})
    result = verify.verify_version(
        classifier_on(FanOutBackend(servers), tmp_path), "m", "2", Policy()
    )
    assert result["passed"] is True and result["reasons"] == []
    assert result["servers"] == {"a:1": True, "b:1": True}


def test_one_server_is_checked_through_the_classifier_itself(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A plain backend (no per_server): one check on the classifier's own backend."""
    backend = FakeBackend()
    calls = checked_on(monkeypatch, set(), {id(backend): "only"})
    result = verify.verify_version(classifier_on(backend, tmp_path), "m", "2", Policy())
    assert calls == ["only"] and result["passed"] is True and "servers" not in result
