"""The gateway's side of rollout on a fake backend: routing by the record, per-version
preprocessing, per-version metrics and GET /models (unit tests; the e2e proof is
tests/test_rollout_e2e.py with real Triton)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from flask import Flask

from gateway.rollout.state import (
    RolloutStore,
    adopt,
    now_s,
    promote,
    propose,
    record_verification,
    rollback,
    start_canary,
)
from tests.fakes_gateway import (
    FakeBackend,
    FakeVersion,
    class_names,
    data_url,
    encode_image,
    write_labels,
)
from tests.fixtures.gateway import UNIT_KEYS, MakeApp

KEY = {"X-API-Key": UNIT_KEYS[0]}
PHOTO = encode_image(np.random.default_rng(7).integers(0, 256, (60, 80, 3), np.uint8), "JPEG")
WHO = "unit test"


@pytest.fixture
def two_versions(fake_backend: FakeBackend, gateway_repository: Path) -> FakeBackend:
    """resnet50 v1 (class 3 wins) and v2 (class 5 wins), v2 with its own mean in export.json."""
    second = np.linspace(-2.0, 1.0, 10, dtype=np.float32)
    second[5] = 6.0
    fake_backend.add("resnet50", "2", FakeVersion(logits=lambda b: second[None].repeat(len(b), 0)))
    write_labels(gateway_repository, "resnet50", class_names(10), version="1")
    write_labels(gateway_repository, "resnet50", class_names(10, "other"), version="2")
    own = {"resize_size": 40, "crop_size": 32, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
    (gateway_repository / "resnet50" / "2" / "export.json").write_text(
        json.dumps({"preprocessing": {**own, "interpolation": "bilinear"}})
    )
    return fake_backend


def _app(make: MakeApp, state_dir: Path) -> Flask:
    return make(
        GATEWAY_ROLLOUT_DIR=str(state_dir),
        GATEWAY_ROLLOUT_CONTROLLER="off",
        GATEWAY_ROLLOUT_REFRESH_S="0.05",
    )


def _canary(store: RolloutStore, percent: float) -> None:
    def change(_state: object) -> object:
        state = propose(adopt("resnet50", "1", WHO, now_s()), "2", WHO, now_s())
        state = record_verification(state, "2", {"passed": True, "reasons": []}, WHO, now_s())
        return start_canary(state, percent, WHO, now_s())

    store.update("resnet50", change)  # type: ignore[arg-type]


def _analyze(app: Flask, **body: object) -> dict[str, object]:
    response = app.test_client().post(
        "/analyze", json={"image": data_url(PHOTO, "image/jpeg"), **body}, headers=KEY
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    return dict(response.get_json())


def test_without_a_record_triton_chooses(
    make_gateway_app: MakeApp, two_versions: FakeBackend, tmp_path: Path
) -> None:
    """A model the rollout has no record of is sent unpinned: Triton's newest answers."""
    answer = _analyze(_app(make_gateway_app, tmp_path / "rollout"))
    assert answer["model"] == {"name": "resnet50", "version": "2"}
    assert two_versions.batches[-1][1] is None


def test_unpinned_requests_follow_the_record(
    make_gateway_app: MakeApp, two_versions: FakeBackend, tmp_path: Path
) -> None:
    """Stable answers unpinned requests; a 100 % canary sends them to the candidate, pinned."""
    store = RolloutStore(tmp_path / "rollout")
    store.update("resnet50", lambda _s: adopt("resnet50", "1", WHO, now_s()))
    app = _app(make_gateway_app, tmp_path / "rollout")
    assert _analyze(app)["model"] == {"name": "resnet50", "version": "1"}
    assert two_versions.batches[-1][1] == "1"
    _canary(store, 100)
    time.sleep(0.1)  # beyond GATEWAY_ROLLOUT_REFRESH_S
    answer = _analyze(app)
    assert answer["model"] == {"name": "resnet50", "version": "2"}
    assert answer["label"] == "other 5"  # the candidate's own labels
    assert _analyze(app, version="1")["model"]["version"] == "1"  # type: ignore[index]


def test_each_version_gets_its_own_preprocessing(
    make_gateway_app: MakeApp, two_versions: FakeBackend, tmp_path: Path
) -> None:
    """Version 2's mean/std come from its export.json; version 1 keeps the config's."""
    app = _app(make_gateway_app, tmp_path / "rollout")
    _analyze(app, version="1")
    _analyze(app, version="2")
    first, second = two_versions.batches[-2][2], two_versions.batches[-1][2]
    # The same pixels: (x - 0.485) / 0.229 against (x - 0.5) / 0.5 on the red channel.
    pixels = first[0, 0] * np.float32(0.229) + np.float32(0.485)
    np.testing.assert_allclose(second[0, 0], (pixels - 0.5) / 0.5, atol=1e-5)


def test_canary_share_follows_the_percent(
    make_gateway_app: MakeApp, two_versions: FakeBackend, tmp_path: Path
) -> None:
    """A 30 % canary sends about 30 % of 400 unpinned requests to the candidate."""
    del two_versions
    store = RolloutStore(tmp_path / "rollout")
    _canary(store, 30)
    app = _app(make_gateway_app, tmp_path / "rollout")
    versions = [_analyze(app)["model"]["version"] for _ in range(400)]  # type: ignore[index]
    share = versions.count("2") / len(versions)
    assert 0.22 <= share <= 0.38, share


def test_models_shows_the_split_and_metrics_name_the_version(
    make_gateway_app: MakeApp, two_versions: FakeBackend, tmp_path: Path
) -> None:
    """GET /models gives stable, candidate and split; metrics count answers by version."""
    del two_versions
    store = RolloutStore(tmp_path / "rollout")
    _canary(store, 25)
    app = _app(make_gateway_app, tmp_path / "rollout")
    _analyze(app, version="2")
    models = app.test_client().get("/models", headers=KEY).get_json()
    rollout = models["models"][0]["rollout"]
    assert rollout["stable"] == "1" and rollout["candidate"] == "2"
    assert rollout["phase"] == "canary" and rollout["split"] == {"1": 75.0, "2": 25.0}
    assert rollout["candidate_verification"]["passed"] is True
    text = app.test_client().get("/metrics").get_data(as_text=True)
    assert (
        'gateway_model_version_requests_total{model="resnet50",outcome="ok",role="pinned",'
        'version="2"} 1.0' in text
    )


def test_no_route_changes_a_rollout(
    make_gateway_app: MakeApp, two_versions: FakeBackend, tmp_path: Path
) -> None:
    """An API key can read the split but no HTTP route changes the record (CLI only)."""
    del two_versions
    store = RolloutStore(tmp_path / "rollout")
    _canary(store, 25)
    before = store.path("resnet50").read_bytes()
    client = _app(make_gateway_app, tmp_path / "rollout").test_client()
    for method in ("post", "put", "patch", "delete"):
        for path in ("/models", "/models/resnet50", "/models/resnet50/rollout"):
            response = getattr(client, method)(path, headers=KEY, json={"stable": "2"})
            assert response.status_code in (404, 405), (method, path, response.status_code)
    assert store.path("resnet50").read_bytes() == before


def test_cached_answers_follow_promotion_and_rollback(
    make_gateway_app: MakeApp, two_versions: FakeBackend, tmp_path: Path
) -> None:
    """With the answer cache on, a promotion or rollback changes the answer at once."""
    store = RolloutStore(tmp_path / "rollout")
    store.update("resnet50", lambda _s: adopt("resnet50", "1", WHO, now_s()))
    app = _app(make_gateway_app, tmp_path / "rollout")
    first, again = _analyze(app), _analyze(app)
    assert (first["model"], first["cached"], again["cached"]) == (
        {"name": "resnet50", "version": "1"},
        False,
        True,
    )
    store.update(
        "resnet50",
        lambda _s: promote(
            record_verification(
                propose(adopt("resnet50", "1", WHO, now_s()), "2", WHO, now_s()),
                "2",
                {"passed": True, "reasons": []},
                WHO,
                now_s(),
            ),
            WHO,
            now_s(),
        ),
    )
    time.sleep(0.1)  # beyond GATEWAY_ROLLOUT_REFRESH_S
    promoted = _analyze(app)
    assert (promoted["model"]["version"], promoted["cached"]) == ("2", False)  # type: ignore[index]
    assert promoted["label"] == "other 5" and _analyze(app)["cached"] is True
    store.update("resnet50", lambda state: rollback(state, WHO, now_s()))  # type: ignore[arg-type]
    time.sleep(0.1)
    back = _analyze(app)
    assert back["model"]["version"] == "1" and back["label"] == first["label"]  # type: ignore[index]
