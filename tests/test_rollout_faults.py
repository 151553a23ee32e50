"""Rollout under faults: automatic rollback of a failing canary, a gateway worker SIGKILLed
while the controller changes the record, and Triton restarted (routing resumes as recorded).

The models are the reliability suite's tiny Python-backend classifiers (fast to load), with
golden references written by the test from the model's own formula.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from gateway.rollout.state import RolloutState
from tests.reliability_support import PHOTO_NAMES, photo_jpeg, report, write_python_model
from tests.rollout_support import (
    MODEL,
    Load,
    RolloutStack,
    leader_pid,
    start_stack,
    wait_state,
    write_flaky_model,
    write_python_golden,
)


def _photos() -> dict[str, bytes]:
    return {name: photo_jpeg(name) for name in PHOTO_NAMES}


def _publish_python(repository: Path, version: int, *, flaky: bool = False) -> None:
    """Publish a tiny Python model version with golden references (staged, then renamed)."""
    staging_root = repository.parent / f"staging-{version}"
    write_python_model(staging_root, MODEL, version=version)
    staged = staging_root / MODEL
    if flaky:
        write_flaky_model(staged / str(version))
    write_python_golden(staged, str(version), _photos())
    os.rename(staged / str(version), repository / MODEL / str(version))
    shutil.rmtree(staging_root)


@pytest.fixture(scope="module")
def python_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RolloutStack]:
    """classifier v1: the tiny Python model with golden references, under the rollout stack."""
    root = tmp_path_factory.mktemp("rollout_faults")
    repository = root / "repository"
    write_python_model(repository, MODEL, version=1)
    write_python_golden(repository / MODEL, "1", _photos())
    yield from start_stack(repository, tmp_path_factory, "rollout_faults")


def _metric(stack: RolloutStack, name: str, **labels: str) -> float:
    text = requests.get(f"{stack.gateway.url}/metrics", timeout=10).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_failing_canary_is_rolled_back_automatically(python_stack: RolloutStack) -> None:
    """A verified candidate that fails 1 request in 3 in a 50 % canary is rolled back within
    the window by itself, counted in a metric; afterwards stable answers everything."""
    stack = python_stack
    stack.cli(
        "policy",
        MODEL,
        "promotion=canary",
        "canary_percent=50",
        "canary_duration_s=600",
        "rollback_window_s=10",
        "rollback_min_requests=10",
        "rollback_max_error_rate=0.05",
    )
    photos = list(_photos().values())
    _publish_python(stack.repository, 2, flaky=True)
    wait_state(stack, lambda r: r.get("phase") == "canary", "candidate 2 in canary", 120)
    canary_started = time.monotonic()
    with Load(stack, photos, duration_s=120) as load:
        record = wait_state(
            stack,
            lambda r: r.get("phase") == "stable" and "2" in r.get("rejected", []),
            "the automatic rollback",
            60,
        )
        rolled_back = time.monotonic()
        time.sleep(4)
    failed = [o for o in load.run.outcomes if o.status != 200]
    after = [o for o in load.run.outcomes if o.started >= rolled_back + 2.0]
    rollback_event = [e for e in record["events"] if e["action"] == "rollback"][-1]
    report(
        "automatic rollback of a failing canary",
        f"{len(load.run.outcomes)} requests; {len(failed)} failed before the rollback "
        f"(statuses {load.run.statuses()}); rolled back "
        f"{rolled_back - canary_started:.1f} s after the canary began",
        f"event: {rollback_event['detail']}",
    )
    assert rollback_event["detail"].startswith("candidate 2 withdrawn")
    assert "automatic" in rollback_event["detail"]
    assert failed, "the flaky candidate never failed: the test proves nothing"
    assert all(o.status == 200 and o.body and o.body["model"]["version"] == "1" for o in after)
    assert rolled_back - canary_started < 60
    assert _metric(stack, "gateway_rollout_events_total", action="rollback-automatic") >= 1


def test_worker_killed_during_changes_leaves_a_valid_record(python_stack: RolloutStack) -> None:
    """SIGKILL of the controller's worker while a candidate is loaded, verified and promoted:
    the record always reads back whole, and another worker finishes the promotion."""
    stack = python_stack
    stack.cli("policy", MODEL, "promotion=auto")
    before = RolloutState.from_dict(stack.record())
    _publish_python(stack.repository, 3)
    kills = 0
    revisions = [before.revision]
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        state = RolloutState.from_dict(stack.record())  # raises on a torn or invalid record
        assert state.revision >= revisions[-1]
        revisions.append(state.revision)
        if state.stable == "3":
            break
        pid = leader_pid(stack)
        if pid is not None and kills < 6:
            os.kill(pid, signal.SIGKILL)
            kills += 1
        time.sleep(0.7)
    final = RolloutState.from_dict(stack.record())
    report(
        "controller's worker SIGKILLed during a rollout",
        f"{kills} kills; revisions seen {sorted(set(revisions))}; final stable {final.stable}",
    )
    assert kills >= 1
    assert final.stable == "3", [e.detail for e in final.events[-6:]]


def test_triton_restart_routing_resumes_as_recorded(python_stack: RolloutStack) -> None:
    """Triton restarted: it first loads only the newest version; the controller loads what the
    record says again, and unpinned requests are answered by the recorded stable."""
    stack = python_stack
    # A newer version that failed verification is what a restarted Triton loads by default.
    _publish_python(stack.repository, 4)
    (stack.repository / MODEL / "4" / "golden" / "references.json").unlink()
    wait_state(stack, lambda r: "4" in r.get("rejected", []), "version 4 rejected", 60)
    stable = stack.record()["stable"]
    stack.triton.restart()
    restarted = time.monotonic()
    photos = list(_photos().values())
    with Load(stack, photos, duration_s=60) as load:
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            recent = [o for o in load.run.outcomes if o.started > time.monotonic() - 2]
            if len(recent) > 10 and all(o.status == 200 for o in recent):
                break
            time.sleep(0.5)
        resumed = time.monotonic()
        time.sleep(2)
    answered = {o.body["model"]["version"] for o in load.run.outcomes if o.status == 200 and o.body}
    report(
        "Triton restarted",
        f"answers again {resumed - restarted:.1f} s after Triton was ready; statuses "
        f"{load.run.statuses()}; versions {answered}",
    )
    assert answered == {stable}
    tail = [o for o in load.run.outcomes if o.started >= resumed]
    assert tail and all(o.status == 200 for o in tail)
