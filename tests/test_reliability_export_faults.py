"""Export faults: `python -m export` SIGKILLed at random moments while Triton polls.

One kill is placed for certain in the most dangerous moment: a test-only launcher
(`python -m tests.export_faults pause`) stops it with model.onnx written in its
staging directory; Triton polls three times before the SIGKILL.

Triton must never see a partial version: its repository index never lists a version that
failed to load, every version directory on disk is complete (model.onnx that ONNX Runtime
opens, labels.txt, export.json), and inference keeps answering throughout. Afterwards a
normal export still publishes and goes live (leftover staging directories are harmless).

CI form: the staged kill and 1 random kill. Full form (`-m slow`): 10 random kills.
RELIABILITY_EXPORT_KILLS overrides the count, RELIABILITY_SEED the random moments (printed
with the figures).
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient

from local_triton import TritonServer
from tests.export_support import PausedExport, fault_command
from tests.fixtures.models import REPO_ROOT, SMALL_MODEL_ARGS, run_export
from tests.reliability_support import (
    env_int,
    report,
    wait_for,
)

pytestmark = pytest.mark.e2e

MODEL = "mobilenet_v3_small"
CALL_TIMEOUT_S = 10.0
VERSION_FILES = ("model.onnx", "labels.txt", "export.json")


@dataclass
class Watcher:
    """A thread that reads Triton's repository index and infers every 0.2 s."""

    server: TritonServer
    states: set[tuple[str, str, str]] = field(default_factory=set)  # version, state, reason
    failures: list[str] = field(default_factory=list)
    inferences: int = 0
    stop_event: threading.Event = field(default_factory=threading.Event)
    max_seconds: float = 600.0

    def run(self) -> None:
        """Sample until stopped (bounded by max_seconds)."""
        client = grpcclient.InferenceServerClient(self.server.grpc_url)
        pixels = np.zeros((1, 3, 224, 224), dtype=np.float32)
        deadline = time.monotonic() + self.max_seconds
        while not self.stop_event.wait(0.2) and time.monotonic() < deadline:
            try:
                index = client.get_model_repository_index(
                    as_json=True, client_timeout=CALL_TIMEOUT_S
                )
                for entry in index.get("models", []):
                    if entry.get("name") == MODEL and entry.get("version"):
                        self.states.add(
                            (entry["version"], entry.get("state", ""), entry.get("reason", ""))
                        )
                tensor = grpcclient.InferInput("input", [1, 3, 224, 224], "FP32")
                tensor.set_data_from_numpy(pixels)
                client.infer(MODEL, [tensor], client_timeout=CALL_TIMEOUT_S)
                self.inferences += 1
            except Exception as exc:  # any failure is a finding, recorded for the assertion
                self.failures.append(repr(exc))


def failed_loads(states: set[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
    """Index entries of versions Triton tried and could not load (not mere unloads)."""
    return [
        (version, state, reason)
        for version, state, reason in states
        if state == "UNAVAILABLE" and reason.strip().lower() != "unloaded"
    ]


def check_complete(version_dir: Path) -> None:
    """Every file of a published version is there and model.onnx opens in ONNX Runtime."""
    for name in VERSION_FILES:
        assert (version_dir / name).is_file(), f"{version_dir} lacks {name}"
    ort.InferenceSession(str(version_dir / "model.onnx"), providers=["CPUExecutionProvider"])


def publish_args(repository: Path) -> list[str]:
    """The CLI arguments that publish into ``repository`` without progress output."""
    return ["--repository", str(repository), "--quiet"]


def timed_export(repository: Path) -> float:
    """Publish the next version with the CLI; return how long it took."""
    started = time.monotonic()
    result = run_export(*SMALL_MODEL_ARGS, *publish_args(repository))
    assert result.returncode == 0, result.stdout + result.stderr
    return time.monotonic() - started


def kill_exports(
    repository: Path, kills: int, rng: random.Random, export_s: float
) -> list[tuple[float, str]]:
    """Start the export CLI ``kills`` times and SIGKILL it after a random delay each time.

    The delays are spread over the whole run of an export (``export_s`` as measured):
    kill i falls at random within the i-th of ``kills`` equal slices, from the imports to
    about the final rename (the machine's load moves that moment a little either way).
    """
    moments: list[tuple[float, str]] = []
    start, end = 0.15 * export_s, 0.95 * export_s
    width = (end - start) / kills
    for index in range(kills):
        delay = rng.uniform(start + index * width, start + (index + 1) * width)
        process = subprocess.Popen(
            fault_command("pause", *SMALL_MODEL_ARGS, *publish_args(repository)),
            cwd=REPO_ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            process.wait(timeout=delay)
            outcome = f"finished first ({process.returncode})"
        except subprocess.TimeoutExpired:
            # Staging directories are named .staging-<pid>-<random>: this run's, not leftovers.
            mine = f".staging-{process.pid}-"
            staging = any(p.name.startswith(mine) for p in (repository / MODEL).iterdir())
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
            outcome = "killed while staging" if staging else "killed"
        moments.append((round(delay, 2), outcome))
    return moments


def kill_in_staging(repository: Path, hold_s: float) -> Path:
    """Run an export that pauses with model.onnx written in staging (the export's own test
    hook), leave it there for ``hold_s`` while Triton polls, then SIGKILL it."""
    export = PausedExport(repository, *SMALL_MODEL_ARGS, "--quiet", new_session=True)
    try:
        onnx_path = export.wait_for_pause()
        time.sleep(hold_s)
        return onnx_path
    finally:
        # The group is gone already when the pause was never reached (PausedExport killed it).
        with contextlib.suppress(ProcessLookupError):
            os.killpg(export.process.pid, signal.SIGKILL)
        export.process.wait(timeout=30)


def run_export_faults(repository_v1: Path, tmp_path: Path, start_triton: Any, kills: int) -> None:
    """Kill exports while Triton polls; then check the index, the disk and a clean publish."""
    seed = env_int("RELIABILITY_SEED", int(time.time()))
    rng = random.Random(seed)
    repository = tmp_path / "model_repository"
    shutil.copytree(repository_v1, repository)
    triton = start_triton(repository, mode="poll", poll_seconds=1)
    watcher = Watcher(triton)
    thread = threading.Thread(target=watcher.run, daemon=True)
    thread.start()
    try:
        export_s = timed_export(repository)  # also: a clean publish under polling
        staged = kill_in_staging(repository, hold_s=3.0)  # three polls see a staged model
        assert staged.parent.name.startswith(".") and staged.parent.parent == repository / MODEL
        moments = kill_exports(repository, kills, rng, export_s)
        time.sleep(3.0)  # a few polls after the last kill
        timed_export(repository)  # leftovers of killed runs do not stop the next publish
        newest = max(int(p.name) for p in (repository / MODEL).iterdir() if p.name.isdigit())
        wait_for(
            f"version {newest} to be READY",
            lambda: (str(newest), "READY", "") in watcher.states,
            60.0,
        )
        time.sleep(1.0)
    finally:
        watcher.stop_event.set()
        thread.join(timeout=CALL_TIMEOUT_S * 2 + 5)
    versions = sorted(p.name for p in (repository / MODEL).iterdir() if p.name.isdigit())
    leftovers = sorted(p.name for p in (repository / MODEL).iterdir() if p.name.startswith("."))
    report(
        f"export SIGKILLed {kills} times while Triton polls (seed {seed})",
        f"an unkilled export takes {export_s:.1f} s; one kill held 3 s in staging "
        f"({staged.parent.name}); random kill moments (s), outcomes: {moments}",
        f"versions on disk {versions}; hidden leftovers {len(leftovers)}; "
        f"index states seen {sorted(watcher.states)}",
        f"{watcher.inferences} inferences during the run, {len(watcher.failures)} failures",
    )
    assert not failed_loads(watcher.states), failed_loads(watcher.states)
    for version in versions:
        check_complete(repository / MODEL / version)
    ready = {version for version, state, _ in watcher.states if state == "READY"}
    assert ready <= set(versions)
    assert not watcher.failures, watcher.failures[:3]
    assert watcher.inferences > 0


def test_killed_exports_never_expose_a_partial_version(
    small_repository_v1: Path,
    tmp_path: Path,
    start_triton: Any,
) -> None:
    """CI form: 1 export killed at a random moment (beside the staged one); Triton keeps
    serving complete versions."""
    run_export_faults(
        small_repository_v1, tmp_path, start_triton, env_int("RELIABILITY_EXPORT_KILLS", 1)
    )


@pytest.mark.slow
def test_killed_exports_never_expose_a_partial_version_full(
    small_repository_v1: Path,
    tmp_path: Path,
    start_triton: Any,
) -> None:
    """Full form: 10 exports killed at random moments."""
    run_export_faults(
        small_repository_v1, tmp_path, start_triton, env_int("RELIABILITY_EXPORT_KILLS", 10)
    )
