"""Safe rollout end to end: real Triton (explicit mode), gunicorn with 2 workers, real HTTP.

Every candidate is published into the repository the way export publishes; the gateway's
controller loads it next to stable, verifies it on the serving stack and applies the policy.
Figures are printed (`pytest -s`). Sizes: ROLLOUT_LOAD_S (seconds of 8-client load around the
failing candidates, 20), ROLLOUT_CANARY_REQUESTS (400).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.models import SMALL_MODEL_ARGS, run_export
from tests.reliability_support import (
    PHOTO_NAMES,
    env_int,
    photo_jpeg,
    report,
)
from tests.rollout_support import (
    MODEL,
    Load,
    RolloutStack,
    perturb_model,
    publish_copy,
    seed_repository,
    shuffle_labels,
    start_stack,
    wait_state,
)

LOAD_S = env_int("ROLLOUT_LOAD_S", 20)
CANARY_REQUESTS = env_int("ROLLOUT_CANARY_REQUESTS", 400)


# -- candidates that must fail -------------------------------------------------------------------


@pytest.fixture(scope="module")
def failing_stack(
    model_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RolloutStack]:
    """classifier v1 = the trained EfficientNet-Lite0, default policy (auto promotion)."""
    root = tmp_path_factory.mktemp("rollout_failing")
    repository = seed_repository(model_repository / "efficientnet_lite0", root / "repository")
    yield from start_stack(repository, tmp_path_factory, "rollout_failing")


def test_failing_candidates_get_no_traffic(
    failing_stack: RolloutStack, model_repository: Path
) -> None:
    """An untrained ResNet50 fails quality; an altered model.onnx and a wrong label file fail
    fidelity; under 8 clients none of them answers a request and stable answers every one."""
    stack = failing_stack
    photos = [photo_jpeg(name) for name in PHOTO_NAMES]
    lite0 = model_repository / "efficientnet_lite0" / "1"
    candidates = [
        ("untrained ResNet50", model_repository / "resnet50" / "1", None, "quality"),
        ("Lite0 with model.onnx altered", lite0, perturb_model, "fidelity"),
        ("Lite0 with a label file that does not match", lite0, shuffle_labels, "fidelity"),
    ]
    started = time.monotonic()
    with Load(stack, photos, duration_s=LOAD_S + 600) as load:
        for number, (what, source, alter, check) in enumerate(candidates, start=2):
            version = str(number)
            publish_copy(source, stack.repository, number, alter=alter)

            def failed(record: dict[str, Any], version: str = version) -> bool:
                return record.get("phase") == "failed" and record.get("candidate") == version

            record = wait_state(stack, failed, f"{what} (version {version}) to fail", 180)
            result = record["verifications"][version]
            assert not result["passed"]
            assert any(reason.startswith(check) for reason in result["reasons"]), result
            report(
                f"candidate {version}: {what}",
                *(f"  {reason}" for reason in result["reasons"]),
                f"  fidelity {result.get('fidelity')}",
                f"  quality {result.get('quality')}",
            )
        remaining = LOAD_S - (time.monotonic() - started)
        if remaining > 0:
            time.sleep(remaining)
    statuses = load.run.statuses()
    versions = load.versions()
    report(
        "failing candidates under load",
        f"{len(load.run.outcomes)} requests in {time.monotonic() - started:.1f} s: "
        f"statuses {statuses}, answering versions {versions}",
    )
    assert statuses == {200: len(load.run.outcomes)}
    assert set(versions) == {"1"}
    status = stack.status()
    assert status["stable"] == "1"
    assert set(status["rejected"]) >= {"2", "3", "4"}
    quality = status["verifications"]["2"]["quality"]
    assert quality["top1"] < 0.5, quality


# -- canary, shadow, promote, rollback -------------------------------------------------------------


@pytest.fixture(scope="module")
def canary_stack(
    model_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RolloutStack]:
    """classifier v1 = Lite0; v2 = MobileNetV3-small with other labels, verified, manual policy."""
    root = tmp_path_factory.mktemp("rollout_canary")
    repository = seed_repository(model_repository / "efficientnet_lite0", root / "repository")
    for stack in start_stack(repository, tmp_path_factory, "rollout_canary"):
        # Other labels: top-1 agreement with stable means nothing here, so it is not a limit.
        stack.cli("policy", MODEL, "promotion=manual", "rollback_min_agreement=0")
        labels = root / "other-labels.txt"
        labels.write_text("".join(f"kind {index:04d}\n" for index in range(1000)))
        result = run_export(
            *SMALL_MODEL_ARGS,
            "--labels",
            str(labels),
            "--name",
            MODEL,
            "--repository",
            str(repository),
            "--quiet",
        )
        assert result.returncode == 0, result.stdout + result.stderr
        record = wait_state(stack, lambda r: r.get("phase") == "verified", "verification", 180)
        assert record["candidate"] == "2"
        yield stack


def _check_answers(stack: RolloutStack, load: Load) -> dict[str, int]:
    """Every answer's labels and confidences are its own version's (direct ONNX Runtime)."""
    checked: dict[str, int] = {}
    for outcome in load.run.outcomes:
        if outcome.body is None or outcome.status != 200:
            continue
        version = outcome.body["model"]["version"]
        matched = [
            photo for photo in load.photos if stack.truth(version).matches(photo, outcome.body)
        ]
        assert matched, (
            f"answer of version {version} matches none of its own answers: {outcome.body}"
        )
        checked[version] = checked.get(version, 0) + 1
    return checked


def test_canary_share_and_per_version_answers(canary_stack: RolloutStack) -> None:
    """Canary 20 %: the share is 20 +- 5 % over >= 400 requests, 0 failures, and every answer's
    labels and confidences are those of the version that gave it (direct ONNX Runtime)."""
    stack = canary_stack
    photos = [photo_jpeg(name) for name in PHOTO_NAMES]
    stack.cli("canary", MODEL, "--percent", "20")
    wait_state(stack, lambda r: r.get("phase") == "canary", "canary", 10)
    time.sleep(1.0)  # every worker re-reads the record within GATEWAY_ROLLOUT_REFRESH_S
    with Load(stack, photos, duration_s=300) as load:
        deadline = time.monotonic() + 240
        while len(load.run.outcomes) < CANARY_REQUESTS and time.monotonic() < deadline:
            time.sleep(0.2)
    statuses = load.run.statuses()
    versions = load.versions()
    total = sum(versions.values())
    share = versions.get("2", 0) / total
    checked = _check_answers(stack, load)
    report(
        "canary 20 %",
        f"{len(load.run.outcomes)} requests: statuses {statuses}, versions {versions}, "
        f"candidate share {share:.1%}; answers checked against ONNX Runtime: {checked}",
    )
    assert statuses == {200: len(load.run.outcomes)}
    assert total >= CANARY_REQUESTS
    assert 0.15 <= share <= 0.25
    assert sum(checked.values()) == total


def test_shadow_compares_and_never_answers(canary_stack: RolloutStack) -> None:
    """Shadow: live requests also reach the candidate and are compared; users get stable only."""
    stack = canary_stack
    photos = [photo_jpeg(name) for name in PHOTO_NAMES]
    stack.cli("canary", MODEL, "--percent", "0")
    stack.cli("shadow", MODEL, "--percent", "50")
    time.sleep(1.0)
    with Load(stack, photos, duration_s=12):
        pass
    load = Load(stack, photos, duration_s=12)
    with load:
        load.thread.join(timeout=60)
    versions = load.versions()
    assert load.run.statuses() == {200: len(load.run.outcomes)}
    assert set(versions) == {"1"}, versions
    time.sleep(2.5)  # the workers' counters reach the shared files within a second or two
    status = stack.status()
    health = status["health"]["candidate"]
    report("shadow 50 %", f"users' versions {versions}; candidate health {health}")
    assert health["compared"] > 0
    assert health["agreement"] is not None
    stack.cli("shadow", MODEL, "--percent", "0")


def test_promote_and_rollback_within_two_seconds(canary_stack: RolloutStack) -> None:
    """promote -> 100 % new within 2 s; rollback -> 100 % previous within 2 s; 0 failures."""
    stack = canary_stack
    photos = [photo_jpeg(name) for name in PHOTO_NAMES]
    with Load(stack, photos, duration_s=120) as load:
        time.sleep(3)
        stack.cli("promote", MODEL)
        promoted = time.monotonic()
        time.sleep(5)
        rolling_back = time.monotonic()  # the record may change any time the CLI runs
        stack.cli("rollback", MODEL, "--reason", "test")
        rolled_back = time.monotonic()
        time.sleep(5)
    statuses = load.run.statuses()
    after_promote_only = set(load.versions(after=promoted + 2.0, before=rolling_back))
    after_rollback = load.versions(after=rolled_back + 2.0)
    first_new = min(
        (o.started for o in load.run.outcomes if o.body and o.started >= promoted
         and o.status == 200 and o.body["model"]["version"] == "2"),
        default=None,
    )  # fmt: skip
    report(
        "promote and rollback under load",
        f"{len(load.run.outcomes)} requests, statuses {statuses}",
        f"versions from 2 s after promote to rollback: {after_promote_only}",
        f"versions from 2 s after rollback: {after_rollback}",
        f"first answer of the promoted version "
        f"{(first_new - promoted) if first_new is not None else float('nan'):.2f} s after promote",
    )
    timeline: dict[int, dict[str, int]] = {}
    for o in load.run.outcomes:
        if o.body and o.status == 200:
            second = int(o.started - promoted)
            bucket = timeline.setdefault(second, {})
            version = o.body["model"]["version"]
            bucket[version] = bucket.get(version, 0) + 1
    failures = [(round(o.started - promoted, 2), o.status, o.body) for o in load.run.outcomes
                if o.status != 200]  # fmt: skip
    report("timeline (s after promote: versions)", str(sorted(timeline.items())), str(failures[:5]))
    assert statuses == {200: len(load.run.outcomes)}
    assert after_promote_only == {"2"}
    assert set(after_rollback) == {"1"}
    _check_answers(stack, load)
