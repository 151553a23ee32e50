"""Hot swap with the real Triton: a new version published by `python -m export` while serving.

A client thread keeps inferring during every swap; no request may fail.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from local_triton import TritonServer
from tests.fixtures.models import SMALL_MODEL_ARGS, run_export
from tests.fixtures.triton import StartTriton, grpc_client, infer_once, onnxruntime_reference

MODEL = "mobilenet_v3_small"
POLL_SECONDS = 1
SWAP_TIMEOUT_S = 90.0  # poll interval + ONNX load time on 2 busy cores, with a wide margin


def publish(repository: Path) -> None:
    """Publish the next version of the small untrained model with the export CLI."""
    result = run_export(*SMALL_MODEL_ARGS, "--repository", str(repository), "--quiet")
    assert result.returncode == 0, f"export failed:\n{result.stdout}\n{result.stderr}"


@dataclass
class Traffic:
    """A thread that infers in a loop and records which version answered, and any failure."""

    server: TritonServer
    versions: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    stop_event: threading.Event = field(default_factory=threading.Event)
    max_seconds: float = 300.0

    def __post_init__(self) -> None:
        """Prepare the input once; reads of `versions` and `failures` are thread-safe appends."""
        self.array = np.random.default_rng(0).normal(size=(1, 3, 224, 224)).astype(np.float32)
        self.thread = threading.Thread(target=self._run, name="traffic", daemon=True)

    def _run(self) -> None:
        """Infer until stopped (bounded by max_seconds)."""
        client = grpc_client(self.server)
        deadline = time.monotonic() + self.max_seconds
        while not self.stop_event.is_set() and time.monotonic() < deadline:
            try:
                _, version = infer_once(client, MODEL, self.array)
                self.versions.append(version)
            except InferenceServerException as error:
                self.failures.append(str(error))
            time.sleep(0.02)

    def __enter__(self) -> Traffic:
        """Start the thread and wait (bounded) for its first answer."""
        self.thread.start()
        self.wait_for_version("1", timeout=30)
        return self

    def __exit__(self, *exc: object) -> None:
        """Stop the thread."""
        self.stop_event.set()
        self.thread.join(30)

    def wait_for_version(self, version: str, timeout: float) -> float:
        """Seconds until `version` answered (bounded); fails the test after `timeout`."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if self.versions and self.versions[-1] == version:
                return time.monotonic() - start
            assert not self.failures, f"requests failed: {self.failures[:3]}"
            time.sleep(0.1)
        pytest.fail(f"version {version} never answered in {timeout} s; saw {self.versions[-5:]}")

    def answered_since(self, mark: int) -> list[str]:
        """Versions that answered after position `mark`."""
        return self.versions[mark:]


def assert_serves_version(server: TritonServer, repository: Path, version: str) -> None:
    """An explicit request gets `version`'s output, equal to ONNX Runtime's on that file."""
    array = np.random.default_rng(5).normal(size=(1, 3, 224, 224)).astype(np.float32)
    logits, answered = infer_once(grpc_client(server), MODEL, array)
    expected = onnxruntime_reference(repository / MODEL / version / "model.onnx", {"input": array})
    assert answered == version
    assert float(np.max(np.abs(logits - expected[0]))) <= 1e-4


def publish_broken(repository: Path, version: int) -> None:
    """Publish a version whose model.onnx is garbage (atomic rename, like export)."""
    staging = repository / MODEL / f".staging-broken-{version}"
    staging.mkdir()
    (staging / "model.onnx").write_bytes(b"\x00garbage, not an ONNX protobuf\xff" * 64)
    staging.rename(repository / MODEL / str(version))


def test_poll_mode_serves_a_newly_published_version_without_failures(
    tmp_path: Path, start_triton: StartTriton
) -> None:
    """Poll mode: export v2 while traffic runs; v2 answers soon after, no request fails."""
    publish(tmp_path)
    server = start_triton(tmp_path, mode="poll", poll_seconds=POLL_SECONDS)
    with Traffic(server) as traffic:
        publish(tmp_path)
        mark = len(traffic.versions)
        traffic.wait_for_version("2", SWAP_TIMEOUT_S)
        time.sleep(1.0)  # keep traffic going across the old version's unload
    assert not traffic.failures, traffic.failures[:3]
    after = traffic.answered_since(mark)
    first_two = after.index("2")
    assert set(after[:first_two]) <= {"1"} and set(after[first_two:]) == {"2"}, after
    assert_serves_version(server, tmp_path, "2")
    client = grpc_client(server)
    assert not client.is_model_ready(MODEL, "1", client_timeout=10)


def test_explicit_mode_swaps_on_load_and_keeps_serving_past_a_broken_version(
    tmp_path: Path, start_triton: StartTriton
) -> None:
    """Explicit mode: v2 only after a load call; a broken v3 fails to load, v2 keeps serving."""
    publish(tmp_path)
    server = start_triton(tmp_path, mode="explicit", load_models=[MODEL])
    client = grpc_client(server)
    with Traffic(server) as traffic:
        publish(tmp_path)
        time.sleep(2 * POLL_SECONDS + 1)  # nothing polls in explicit mode: still version 1
        assert traffic.versions[-1] == "1"
        mark = len(traffic.versions)
        client.load_model(MODEL, client_timeout=120)
        traffic.wait_for_version("2", SWAP_TIMEOUT_S)
        after = traffic.answered_since(mark)
        first_two = after.index("2")
        assert set(after[first_two:]) == {"2"}, after

        publish_broken(tmp_path, 3)
        with pytest.raises(InferenceServerException, match="ONNX Runtime cannot load"):
            client.load_model(MODEL, client_timeout=120)
        mark = len(traffic.versions)
        time.sleep(1.0)
        assert set(traffic.answered_since(mark)) == {"2"}
    assert not traffic.failures, traffic.failures[:3]
    assert client.is_model_ready(MODEL, "2", client_timeout=10)
    assert not client.is_model_ready(MODEL, "3", client_timeout=10)
    assert_serves_version(server, tmp_path, "2")
