"""The rollout record's rules (pure transitions) and its store (atomic, locked, kill-safe)."""

from __future__ import annotations

import fcntl
import json
import math
import os
import random
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.rollout.state import (
    MAX_EVENTS,
    Policy,
    RolloutError,
    RolloutState,
    RolloutStore,
    adopt,
    promote,
    propose,
    record_verification,
    rollback,
    set_policy,
    start_canary,
    start_shadow,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
WHO = "tester@host (pid 1)"
T0 = 1_700_000_000.0
PASSED: dict[str, Any] = {"passed": True, "reasons": [], "fidelity": {"top1_agreement": 1.0}}
FAILED: dict[str, Any] = {"passed": False, "reasons": ["fidelity: top-1 matches on 50%"]}
CHILD_TIMEOUT_S = 15.0  # bound of every wait on a child process


def _verifying() -> RolloutState:
    """Version 1 stable, version 2 the candidate being verified."""
    return propose(adopt("m", "1", WHO, T0), "2", WHO, T0 + 1)


def _verified() -> RolloutState:
    """Version 1 stable, version 2 a verified candidate."""
    return record_verification(_verifying(), "2", PASSED, WHO, T0 + 2)


def _canary(percent: float = 10.0) -> RolloutState:
    """Version 2 on canary with `percent` % of unpinned traffic."""
    return start_canary(_verified(), percent, WHO, T0 + 3)


# -- transitions ------------------------------------------------------------------------------


def test_adopt_makes_the_served_version_stable() -> None:
    """The first record: the version Triton serves is stable, nothing else is in play."""
    state = adopt("m", "1", WHO, T0)
    assert (state.stable, state.candidate, state.previous, state.phase) == (
        "1",
        None,
        None,
        "stable",
    )
    assert state.revision == 1 and state.seen == ("1",)
    assert state.events[-1].action == "adopt" and state.events[-1].who == WHO
    assert state.split() == {"1": 100.0}


def test_the_whole_lifecycle_adopt_to_rollback() -> None:
    """adopt → propose → verified → canary → promote → rollback, each step recorded."""
    state = _verifying()
    assert (state.candidate, state.phase, state.has_candidate) == ("2", "verifying", True)
    state = record_verification(state, "2", PASSED, WHO, T0 + 2)
    assert state.phase == "verified" and state.verifications["2"]["passed"] is True
    state = start_canary(state, 10, WHO, T0 + 3)
    assert state.phase == "canary" and state.split() == {"1": 90.0, "2": 10.0}
    state = promote(state, WHO, T0 + 4)
    assert (state.stable, state.previous, state.candidate, state.phase) == (
        "2",
        "1",
        None,
        "stable",
    )
    assert state.split() == {"2": 100.0} and state.canary_percent == 0.0
    state = rollback(state, WHO, T0 + 5, "bad answers")
    assert (state.stable, state.previous, state.phase) == ("1", None, "stable")
    assert "2" in state.rejected and "bad answers" in state.events[-1].detail
    actions = [event.action for event in state.events]
    assert actions == ["adopt", "candidate", "verified", "canary", "promote", "rollback"]
    assert state.revision == len(actions)


def test_a_failed_verification_takes_the_candidate_out_for_good() -> None:
    """A failed candidate is rejected, not loaded and never routed."""
    state = record_verification(_verifying(), "2", FAILED, WHO, T0 + 2)
    assert state.phase == "failed" and not state.has_candidate
    assert "2" in state.rejected and "fidelity" in state.events[-1].detail
    assert state.loaded_versions() == (1,)
    assert {state.route(i / 100) for i in range(100)} == {"1"}
    with pytest.raises(RolloutError, match="failed verification"):
        start_canary(state, 10, WHO, T0 + 3)


def test_a_verification_of_another_version_is_only_recorded() -> None:
    """Verifying stable (or an old version) does not move the candidate's phase."""
    state = record_verification(_verifying(), "1", FAILED, WHO, T0 + 2)
    assert state.phase == "verifying" and state.candidate == "2"
    assert state.verifications["1"]["passed"] is False and "1" not in state.rejected


def test_rollback_with_a_candidate_withdraws_it() -> None:
    """During a canary, rollback keeps stable and withdraws the candidate."""
    state = rollback(_canary(), WHO, T0 + 4, "errors")
    assert (state.stable, state.candidate, state.phase) == ("1", None, "stable")
    assert state.canary_percent == 0.0 and state.shadow_percent == 0.0
    assert "2" in state.rejected and state.split() == {"1": 100.0}


def test_rollback_after_promotion_restores_the_previous_stable() -> None:
    """After a promotion, rollback makes the previous stable serve again."""
    state = rollback(promote(_canary(), WHO, T0 + 4), WHO, T0 + 5)
    assert (state.stable, state.previous) == ("1", None)
    assert state.rejected == ("2",)
    with pytest.raises(RolloutError, match="no candidate and no previous stable"):
        rollback(state, WHO, T0 + 6)


def test_propose_refuses_a_seen_version_and_replaces_an_unfinished_candidate() -> None:
    """A version is considered once; a newer one replaces an unfinished candidate."""
    with pytest.raises(RolloutError, match="already considered"):
        propose(_verified(), "2", WHO, T0 + 5)
    state = propose(_canary(), "3", WHO, T0 + 5)
    assert (state.candidate, state.phase, state.canary_percent) == ("3", "verifying", 0.0)
    assert "2" in state.rejected and "replaces candidate 2" in state.events[-1].detail


@pytest.mark.parametrize(
    ("state", "action", "message"),
    [
        (_verifying(), "canary", "still being verified"),
        (_verifying(), "shadow", "still being verified"),
        (_verifying(), "promote", "still being verified"),
        (adopt("m", "1", WHO, T0), "promote", "has no candidate"),
        (adopt("m", "1", WHO, T0), "canary", "has no candidate"),
    ],
)
def test_refused_transitions_say_why(state: RolloutState, action: str, message: str) -> None:
    """Canary/shadow/promote need a verified candidate; the error names the state and status."""
    transitions = {
        "canary": lambda: start_canary(state, 10, WHO, T0 + 9),
        "shadow": lambda: start_shadow(state, 10, WHO, T0 + 9),
        "promote": lambda: promote(state, WHO, T0 + 9),
    }
    with pytest.raises(RolloutError, match=message) as caught:
        transitions[action]()
    assert "python -m rollout status m" in str(caught.value)


@pytest.mark.parametrize("percent", [-1.0, 100.5, math.nan, math.inf])
def test_percentages_out_of_range_are_refused(percent: float) -> None:
    """Canary and shadow percentages must lie in [0, 100]."""
    with pytest.raises(RolloutError, match="between 0 and 100"):
        start_canary(_verified(), percent, WHO, T0 + 3)
    with pytest.raises(RolloutError, match="between 0 and 100"):
        start_shadow(_verified(), percent, WHO, T0 + 3)


def test_shadow_keeps_a_canary_a_canary() -> None:
    """Shadow on a verified candidate starts the shadow phase; on a canary it adds to it."""
    shadow = start_shadow(_verified(), 20, WHO, T0 + 3)
    assert shadow.phase == "shadow" and shadow.shadow_percent == 20.0
    assert shadow.split() == {"1": 100.0}
    canary = start_shadow(_canary(), 20, WHO, T0 + 4)
    assert canary.phase == "canary" and canary.phase_since == _canary().phase_since
    assert canary.split() == {"1": 90.0, "2": 10.0}


# -- what readers use ---------------------------------------------------------------------------


@pytest.mark.parametrize("percent", [0.0, 0.5, 1.0, 10.0, 12.5, 37.5, 50.0, 99.0, 100.0])
def test_route_gives_the_candidate_exactly_the_canary_share(percent: float) -> None:
    """Draws below the canary percent go to the candidate, the rest to stable, exactly."""
    state = _canary(percent)
    draws = [i / 10_000 for i in range(10_000)]
    routed = [state.route(draw) for draw in draws]
    assert set(routed) <= {"1", "2"}
    assert routed.count("2") / 100 == percent
    # The candidate's draws are the low ones: a request's draw decides, not chance in route().
    assert all(
        version == "2" for draw, version in zip(draws, routed, strict=True) if draw * 100 < percent
    )


def test_route_outside_a_canary_is_always_stable() -> None:
    """Verified, shadow and failed candidates answer no unpinned request."""
    for state in (_verifying(), _verified(), start_shadow(_verified(), 50, WHO, T0 + 3)):
        assert {state.route(i / 1000) for i in range(1000)} == {"1"}


def test_shadow_target() -> None:
    """The other version sees a shadow share of requests; none without shadow or candidate."""
    shadow = start_shadow(_verified(), 20, WHO, T0 + 3)
    assert shadow.shadow_target("1", 0.1) == "2"
    assert shadow.shadow_target("1", 0.2) is None  # the share is [0, 20 %)
    canary = start_shadow(_canary(), 20, WHO, T0 + 4)
    assert canary.shadow_target("2", 0.05) == "1"  # the candidate answered: compare with stable
    assert canary.shadow_target("1", 0.05) == "2"
    assert _verified().shadow_target("1", 0.0) is None  # no shadow share
    assert _canary().shadow_target("1", 0.0) is None
    assert rollback(canary, WHO, T0 + 5).shadow_target("1", 0.0) is None


def test_loaded_versions() -> None:
    """Stable, the previous stable and a live candidate stay loaded; a failed one does not."""
    assert adopt("m", "1", WHO, T0).loaded_versions() == (1,)
    assert _verifying().loaded_versions() == (1, 2)
    assert record_verification(_verifying(), "2", FAILED, WHO, T0).loaded_versions() == (1,)
    promoted = promote(_canary(), WHO, T0 + 4)
    assert promoted.loaded_versions() == (1, 2)  # previous kept for an instant rollback
    assert propose(promoted, "10", WHO, T0 + 5).loaded_versions() == (1, 2, 10)  # numeric order
    assert rollback(promoted, WHO, T0 + 5).loaded_versions() == (1,)


def test_as_dict_from_dict_round_trip() -> None:
    """A record survives JSON: events, verifications, policy and tuples included."""
    policy = Policy().with_changes({"promotion": "canary", "verify_min_agreement": "0.9"})
    state = start_shadow(set_policy(_canary(25), policy, WHO, T0 + 4), 5, WHO, T0 + 5)
    again = RolloutState.from_dict(json.loads(json.dumps(state.as_dict())))
    assert again == state
    assert again.policy.promotion == "canary" and again.policy.verify_min_agreement == 0.9
    assert again.as_dict()["format"] == 1


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"format": 99}, "unknown rollout record format"),
        ({"revision": "x"}, "malformed rollout record"),
        ({"phase": "sideways"}, "unknown rollout phase"),
        ({"stable": "v1"}, "not a version number"),
        ({"model": "../etc"}, "malformed rollout record"),
    ],
)
def test_from_dict_refuses_what_is_not_a_record(change: dict[str, Any], message: str) -> None:
    """A foreign or damaged record is a RolloutError, never a half-read state."""
    with pytest.raises(RolloutError, match=message):
        RolloutState.from_dict({**_verified().as_dict(), **change})


def test_policy_with_changes_parses_the_cli_text() -> None:
    """Text values become the field's type; 'none' clears the optional thresholds."""
    policy = Policy().with_changes(
        {
            "promotion": "manual",
            "canary_percent": "25",
            "rollback_min_requests": "5",
            "fidelity_logit_tolerance": "0.01",
            "verify_min_agreement": "none",
        }
    )
    assert policy.promotion == "manual" and policy.canary_percent == 25.0
    assert policy.rollback_min_requests == 5 and isinstance(policy.rollback_min_requests, int)
    assert policy.fidelity_logit_tolerance == 0.01 and policy.verify_min_agreement is None
    assert Policy().with_changes({}) == Policy()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"bogus": "1"}, "unknown policy setting 'bogus'"),
        ({"canary_percent": "lots"}, "needs a number"),
        ({"rollback_min_requests": "2.5"}, "needs a whole number"),
        ({"promotion": "sometimes"}, "promotion must be one of"),
        ({"canary_percent": "150"}, "between 0 and 100"),
        ({"quality_min_top1": "80"}, "between 0 and 1"),
        ({"rollback_window_s": "0"}, "positive number"),
        ({"rollback_min_requests": "0"}, ">= 1"),
        ({"fidelity_logit_tolerance": "-1"}, "0 or more"),
        ({"canary_percent": "none"}, "needs a number"),
    ],
)
def test_policy_with_changes_refusals(changes: dict[str, str], message: str) -> None:
    """A setting no rule can use is refused with the reason."""
    with pytest.raises(RolloutError, match=message):
        Policy().with_changes(changes)


# -- the store ----------------------------------------------------------------------------------


def _seeded(directory: Path) -> RolloutStore:
    """A store whose model m has a verified candidate (so shadow changes are allowed)."""
    store = RolloutStore(directory)
    store.update("m", lambda _current: _verified())
    return store


def _shadow(percent: float) -> Any:
    """A store change that records one shadow transition at `percent`."""

    def change(current: RolloutState | None) -> RolloutState:
        assert current is not None
        return start_shadow(current, percent, WHO, time.time())

    return change


def test_update_replaces_the_file_atomically(tmp_path: Path) -> None:
    """Only the record and its lock remain; a refused or empty change writes nothing."""
    store = _seeded(tmp_path)
    for percent in (1, 2, 3):
        written = store.update("m", _shadow(percent))
        assert written is not None and store.read("m") == written
    assert sorted(entry.name for entry in tmp_path.iterdir()) == [".lock-m", "m.json"]
    assert store.models() == ["m"]
    before = store.path("m").read_bytes()
    with pytest.raises(RolloutError):
        store.update("m", lambda current: promote(adopt("m", "1", WHO, T0), WHO, T0))
    assert store.update("m", lambda current: None) == RolloutState.from_dict(json.loads(before))
    assert store.update("m", lambda current: current) is not None
    assert store.path("m").read_bytes() == before
    assert sorted(entry.name for entry in tmp_path.iterdir()) == [".lock-m", "m.json"]
    assert store.read("other") is None


def test_a_damaged_file_is_a_rollout_error(tmp_path: Path) -> None:
    """A record that is not JSON reads as a RolloutError naming the file."""
    store = RolloutStore(tmp_path)
    store.path("m").write_text("{not json", encoding="utf-8")
    with pytest.raises(RolloutError, match="is not JSON"):
        store.read("m")


def test_concurrent_updates_lose_none(tmp_path: Path) -> None:
    """4 threads x 50 changes under the lock: revision +200 and every change in the history."""
    store = _seeded(tmp_path)
    start = store.read("m")
    assert start is not None
    errors: list[BaseException] = []

    def work(thread: int) -> None:
        try:
            for i in range(50):
                store.update("m", _shadow((thread * 50 + i) / 2))
        except BaseException as error:  # reported by the main thread
            errors.append(error)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads) and not errors
    end = store.read("m")
    assert end is not None and end.revision == start.revision + 200
    assert len(end.events) == MAX_EVENTS  # 3 before + 200, capped: exactly the 200 changes
    percents = {float(event.detail.split(" ")[0]) for event in end.events}
    assert percents == {n / 2 for n in range(200)}


# -- killed processes -----------------------------------------------------------------------------

_CHILD_LOOP = """
import sys, time
from pathlib import Path
from gateway.rollout.state import RolloutStore, start_shadow
store = RolloutStore(Path(sys.argv[1]))
print("ready", flush=True)
while True:
    store.update("m", lambda s: start_shadow(s, float(s.revision % 100), "child", time.time()))
"""

_CHILD_HOLDS_LOCK = """
import sys, time
from pathlib import Path
from gateway.rollout.state import RolloutStore, start_shadow
def slow(state):
    print("locked", flush=True)
    time.sleep(60)
    return start_shadow(state, 99.0, "child", time.time())
RolloutStore(Path(sys.argv[1])).update("m", slow)
"""


def _spawn(script: str, directory: Path) -> subprocess.Popen[str]:
    """A Python child running `script` on `directory`, stdout piped."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", script, str(directory)],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )


def _expect_line(process: subprocess.Popen[str], expected: str) -> None:
    """Wait (bounded) for the child to print `expected`."""
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], CHILD_TIMEOUT_S)
    assert ready, f"the child did not print {expected!r} within {CHILD_TIMEOUT_S} s"
    assert process.stdout.readline().strip() == expected


def _kill(process: subprocess.Popen[str]) -> None:
    """SIGKILL the child and reap it (bounded)."""
    if process.poll() is None:
        os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=CHILD_TIMEOUT_S)
    if process.stdout is not None:
        process.stdout.close()


def test_sigkill_during_changes_leaves_a_valid_record(tmp_path: Path) -> None:
    """20 SIGKILLs at random moments of a busy writer: the record always reads back, in order."""
    store = _seeded(tmp_path)
    seed = time.time_ns()
    rng = random.Random(seed)
    first = store.read("m")
    assert first is not None
    last = first.revision
    for kill in range(20):
        process = _spawn(_CHILD_LOOP, tmp_path)
        try:
            _expect_line(process, "ready")
            time.sleep(rng.uniform(0.02, 0.2))
        finally:
            _kill(process)
        state = store.read("m")  # raises if the kill left a torn file
        assert state is not None, f"kill {kill} (seed {seed}): the record disappeared"
        assert state.revision >= last, f"kill {kill} (seed {seed}): revision went back"
        last = state.revision
    assert last > first.revision  # the children did change the record
    assert store.models() == ["m"]
    # A write interrupted after mkstemp may leave a .tmp- file (state.py does not sweep them);
    # nothing else may appear.
    names = {entry.name for entry in tmp_path.iterdir()}
    assert {name for name in names if not name.startswith(".tmp-")} == {".lock-m", "m.json"}


def test_a_process_killed_holding_the_lock_does_not_block_the_next(tmp_path: Path) -> None:
    """flock is released by the kernel when its holder dies: the next update goes through."""
    store = _seeded(tmp_path)
    before = store.read("m")
    assert before is not None
    process = _spawn(_CHILD_HOLDS_LOCK, tmp_path)
    try:
        _expect_line(process, "locked")
        descriptor = os.open(tmp_path / ".lock-m", os.O_RDWR)
        try:  # the child really holds the lock now
            with pytest.raises(BlockingIOError):
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(descriptor)
    finally:
        _kill(process)
    done: list[RolloutState | None] = []
    worker = threading.Thread(
        target=lambda: done.append(store.update("m", _shadow(7))), daemon=True
    )
    worker.start()
    worker.join(timeout=5)
    assert not worker.is_alive(), "the update blocked on a dead process's lock"
    after = store.read("m")
    assert after is not None and done == [after]
    assert after.revision == before.revision + 1  # the killed change was never written
    assert after.shadow_percent == 7.0
