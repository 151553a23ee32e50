"""`python -m rollout` as operators run it: a real process on a seeded rollout directory."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.rollout.state import (
    RolloutState,
    RolloutStore,
    adopt,
    propose,
    record_verification,
)
from gateway.rollout.stats import WorkerStats

REPO_ROOT = Path(__file__).resolve().parent.parent
MODEL = "resnet50"
RESULT: dict[str, Any] = {
    "version": "2",
    "passed": True,
    "reasons": [],
    "checked_at": 1_700_000_002.0,
    "seconds": 1.5,
    "fidelity": {
        "images": 8,
        "top1_agreement": 1.0,
        "max_logit_diff": 0.0012,
        "logit_tolerance": 0.05,
    },
    "quality": {"images": 6, "top1": 0.8333, "top5": 1.0},
}


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    """resnet50 at stable 1 with verified candidate 2; mobilenet with candidate 4 verifying."""
    directory = tmp_path / "rollout"
    store = RolloutStore(directory)
    now = time.time()
    store.update(MODEL, lambda _s: adopt(MODEL, "1", "seed@host (pid 1)", now - 60))
    store.update(MODEL, lambda s: propose(_present(s), "2", "seed@host (pid 1)", now - 30))
    store.update(
        MODEL, lambda s: record_verification(_present(s), "2", RESULT, "seed@host (pid 1)", now)
    )
    store.update("mobilenet", lambda _s: adopt("mobilenet", "3", "seed@host (pid 1)", now))
    store.update("mobilenet", lambda s: propose(_present(s), "4", "seed@host (pid 1)", now))
    return directory


def _present(state: RolloutState | None) -> RolloutState:
    """The record, which the fixture has just created."""
    assert state is not None
    return state


def _record(directory: Path, model: str = MODEL) -> RolloutState:
    """The record as the file holds it now."""
    return _present(RolloutStore(directory).read(model))


def _cli(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run `python -m rollout ARGS` from the repository root, with no GATEWAY_* settings."""
    base = {key: value for key, value in os.environ.items() if not key.startswith("GATEWAY_")}
    return subprocess.run(
        [sys.executable, "-m", "rollout", *map(str, args)],
        cwd=REPO_ROOT,
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _ok(result: subprocess.CompletedProcess[str]) -> str:
    """stdout of a command that must have succeeded."""
    assert result.returncode == 0, result.stderr
    return result.stdout


def _refused(result: subprocess.CompletedProcess[str], code: int, *fragments: str) -> None:
    """A command that failed with `code` and one sentence (no traceback) on stderr."""
    assert result.returncode == code, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in result.stderr


def test_status_human_block(state_dir: Path) -> None:
    """status shows stable, candidate and phase, split, policy, verification and events."""
    out = _ok(_cli("status", MODEL, "--state-dir", state_dir))
    assert "stable     1" in out
    assert "candidate  2   verified since" in out
    assert "split      1: 100 %" in out
    assert "promotion  auto" in out
    assert "top-1 agreement 100 %" in out and "max logit diff 0.0012" in out
    assert "top-1 83.3 %, top-5 100 %" in out
    assert "seed@host (pid 1)  candidate  version 2 published" in out
    assert "health     last 30 s" in out
    everything = _ok(_cli("--state-dir", state_dir, "status"))  # global option before
    assert (
        MODEL in everything
        and "mobilenet" in everything
        and "candidate  4   verifying" in everything
    )


def test_status_json_is_the_record_plus_health(state_dir: Path) -> None:
    """--json prints the record, its split and the health of stable and candidate."""
    stats = WorkerStats(state_dir / "stats", name="worker")
    for _ in range(3):
        stats.record_request(MODEL, "1", "ok", 0.012)
    stats.record_request(MODEL, "1", "error", 0.012)
    stats.close()
    document = json.loads(_ok(_cli("status", MODEL, "--json", "--state-dir", state_dir)))
    assert RolloutState.from_dict(document) == _record(state_dir)
    assert document["split"] == {"1": 100.0}
    health = document["health"]
    assert health["window_s"] == 30.0
    assert health["stable"]["version"] == "1" and health["stable"]["requests"] == 4
    assert health["stable"]["errors"] == 1 and health["stable"]["error_rate"] == 0.25
    assert health["candidate"]["version"] == "2" and health["candidate"]["requests"] == 0
    human = _ok(_cli("status", MODEL, "--state-dir", state_dir))
    assert "stable 1: 4 requests, 1 failed (25 %; 0 timeouts)" in human
    listing = json.loads(_ok(_cli("--json", "status", "--state-dir", state_dir)))
    assert [entry["model"] for entry in listing] == ["mobilenet", MODEL]


def test_status_of_a_model_without_a_record(state_dir: Path) -> None:
    """A model the controller has not seen: exit 1 with the reason."""
    result = _cli("status", "vgg16", "--state-dir", state_dir)
    _refused(result, 1, "no rollout record for vgg16", "controller creates it")


def test_canary_promote_rollback_change_the_record(state_dir: Path) -> None:
    """canary, promote and rollback move the file along and print the new split."""
    out = _ok(_cli("canary", MODEL, "--percent", "10", "--state-dir", state_dir))
    assert "split    1: 90 %, 2: 10 %" in out
    state = _record(state_dir)
    assert state.phase == "canary" and state.canary_percent == 10.0
    # Every change names its operator: user@host (pid) of the CLI process.
    assert re.fullmatch(r"[^@\s]+@\S+ \(pid \d+\)", state.events[-1].who)
    assert state.events[-1].who != "seed@host (pid 1)"

    out = _ok(_cli("promote", MODEL, "--state-dir", state_dir))
    assert "split    2: 100 %" in out and "1 stays loaded" in out
    state = _record(state_dir)
    assert (state.stable, state.previous, state.candidate) == ("2", "1", None)

    out = _ok(_cli("rollback", MODEL, "--reason", "wrong labels", "--state-dir", state_dir))
    assert "split    1: 100 %" in out and "wrong labels" in out
    state = _record(state_dir)
    assert (state.stable, state.previous) == ("1", None) and "2" in state.rejected
    assert state.events[-1].action == "rollback" and "wrong labels" in state.events[-1].detail


def test_shadow_prints_the_percent(state_dir: Path) -> None:
    """shadow records the share and prints it with the (unchanged) split."""
    out = _ok(_cli("shadow", MODEL, "--percent", "25", "--state-dir", state_dir))
    assert "25 % of requests are also sent" in out and "shadow   25 %" in out
    assert "split    1: 100 %" in out
    state = _record(state_dir)
    assert state.phase == "shadow" and state.shadow_percent == 25.0
    document = json.loads(
        _ok(_cli("--json", "shadow", MODEL, "--percent", "5", "--state-dir", state_dir))
    )
    assert document["shadow_percent"] == 5.0 and document["split"] == {"1": 100.0}


def test_refused_transitions_exit_2_and_change_nothing(state_dir: Path) -> None:
    """A transition the state refuses: exit 2, its message on stderr, the file untouched."""
    before = (state_dir / "mobilenet.json").read_bytes()
    result = _cli("promote", "mobilenet", "--state-dir", state_dir)
    _refused(result, 2, "cannot promote mobilenet: it is still being verified")
    result = _cli("canary", "mobilenet", "--percent", "10", "--state-dir", state_dir)
    _refused(result, 2, "still being verified")
    result = _cli("canary", MODEL, "--percent", "150", "--state-dir", state_dir)
    _refused(result, 2, "between 0 and 100")
    result = _cli("canary", MODEL, "--percent", "lots", "--state-dir", state_dir)
    _refused(result, 2, "invalid float value")
    assert (state_dir / "mobilenet.json").read_bytes() == before
    assert _record(state_dir).phase == "verified"
    result = _cli("promote", "vgg16", "--state-dir", state_dir)
    _refused(result, 1, "no rollout record for vgg16")
    assert not (state_dir / ".lock-vgg16").exists()  # nothing created for an unknown model


def test_policy_show_and_change(state_dir: Path) -> None:
    """policy prints the settings; KEY=VALUE pairs change them and are recorded."""
    out = _ok(_cli("policy", MODEL, "--state-dir", state_dir))
    assert "promotion " in out and "canary_percent " in out
    out = _ok(
        _cli("policy", MODEL, "promotion=canary", "canary_percent=5", "--state-dir", state_dir)
    )
    assert "policy changed" in out
    state = _record(state_dir)
    assert state.policy.promotion == "canary" and state.policy.canary_percent == 5.0
    assert state.events[-1].action == "policy"
    document = json.loads(_ok(_cli("--json", "policy", MODEL, "--state-dir", state_dir)))
    assert document["promotion"] == "canary"
    revision = state.revision
    _refused(
        _cli("policy", MODEL, "bogus=1", "--state-dir", state_dir), 2, "unknown policy setting"
    )
    _refused(_cli("policy", MODEL, "promotion", "--state-dir", state_dir), 2, "is not KEY=VALUE")
    _refused(
        _cli("policy", MODEL, "quality_min_top1=80", "--state-dir", state_dir), 2, "between 0 and 1"
    )
    assert _record(state_dir).revision == revision


def test_missing_state_dir_says_how_to_set_it(tmp_path: Path) -> None:
    """Without --state-dir or GATEWAY_ROLLOUT_DIR: exit 2 and a hint; the env var works too."""
    _refused(_cli("status"), 2, "GATEWAY_ROLLOUT_DIR", "--state-dir", ".cache/rollout")
    empty = tmp_path / "empty"
    result = _cli("status", env={"GATEWAY_ROLLOUT_DIR": str(empty)})
    _refused(result, 1, "no rollout records in")
    assert not empty.exists()


def test_help_documents_the_exit_codes() -> None:
    """--help lists the commands and the exit codes."""
    out = _ok(_cli("--help"))
    for fragment in ("status", "verify", "canary", "rollback", "exit codes", "3  the serving"):
        assert fragment in out
    assert _cli("frobnicate").returncode == 2


def test_verify_against_a_closed_port_exits_3(state_dir: Path) -> None:
    """No Triton: exit 3 quickly with a sentence, and nothing recorded."""
    with socket.socket() as probe:  # a port nobody listens on once this closes
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    before = (state_dir / f"{MODEL}.json").read_bytes()
    started = time.monotonic()
    result = _cli("verify", MODEL, "--state-dir", state_dir, "--triton-url", f"127.0.0.1:{port}")
    assert time.monotonic() - started < 40
    _refused(result, 3, f"cannot reach Triton at 127.0.0.1:{port}", "--triton-url")
    assert (state_dir / f"{MODEL}.json").read_bytes() == before
    _refused(_cli("verify", MODEL, "--state-dir", state_dir, "--version", "x"), 2, "not a version")


class _FakeClassifier:
    """Stands in for the serving stack: `model()` answers, or fails once Triton is 'gone'."""

    def __init__(self) -> None:
        self.gone = False
        self.asked: list[tuple[str, str | None]] = []
        self.calls: list[dict[str, Any]] = []  # the arguments verify_version was called with

    def model(self, name: str, version: str | None, *, refresh: bool = False) -> None:
        """Raise UpstreamUnavailable once gone, as TritonBackend does for a dead connection."""
        from gateway.errors import UpstreamUnavailable

        self.asked.append((name, version))
        if self.gone:
            raise UpstreamUnavailable("The inference server is unavailable; try again shortly.")


def _fake_stack(
    monkeypatch: pytest.MonkeyPatch, result: dict[str, Any], *, gone_after: bool = False
) -> _FakeClassifier:
    """Replace the classifier and verify_version (in-process), returning the fake classifier."""
    import gateway.rollout.cli as cli
    import gateway.rollout.verify as verify

    fake = _FakeClassifier()

    def fake_verify(classifier: Any, model: str, version: str, policy: Any, **kw: Any) -> Any:
        fake.calls.append({"model": model, "version": version, **kw})
        fake.gone = gone_after  # Triton dies during the check
        return result

    monkeypatch.setattr(cli, "_classifier", lambda _context, _model: fake)
    monkeypatch.setattr(verify, "verify_version", fake_verify)
    return fake


def test_verify_records_a_pass_and_a_failure(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """verify records the result as the operator: 0 on a pass, 1 on a failure (withdrawn)."""
    from gateway.rollout.cli import main

    fake = _fake_stack(monkeypatch, {**RESULT, "version": "1"})
    assert main(["verify", MODEL, "--version", "1", "--state-dir", str(state_dir)]) == 0
    assert fake.calls[-1]["stable"] is None
    state = _record(state_dir)
    assert state.verifications["1"]["passed"] is True and state.phase == "verified"
    assert "passed" in capsys.readouterr().out

    failed = {**RESULT, "passed": False, "reasons": ["quality: top-1 accuracy 10%"]}
    fake = _fake_stack(monkeypatch, failed)
    assert main(["verify", MODEL, "--state-dir", str(state_dir)]) == 1  # the candidate, 2
    assert fake.calls[-1]["version"] == "2" and fake.calls[-1]["stable"] == "1"
    state = _record(state_dir)
    assert state.phase == "failed" and "2" in state.rejected
    assert state.events[-1].action == "verify-failed" and "@" in state.events[-1].who
    out = capsys.readouterr().out
    assert "FAILED" in out and "reason: quality: top-1 accuracy 10%" in out and "withdrawn" in out


def test_verify_records_nothing_when_triton_goes_away_during_it(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A failure that is only Triton vanishing mid-check is exit 3, the candidate untouched."""
    from gateway.rollout.cli import main

    before = (state_dir / f"{MODEL}.json").read_bytes()
    failed = {**RESULT, "passed": False, "reasons": ["the serving stack could not answer"]}
    _fake_stack(monkeypatch, failed, gone_after=True)
    assert main(["verify", MODEL, "--state-dir", str(state_dir)]) == 3
    assert "cannot reach Triton" in capsys.readouterr().err
    assert (state_dir / f"{MODEL}.json").read_bytes() == before
