"""The real tritonserver with our onnxruntime backend, on tiny hand-made ONNX models."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from local_triton import TritonServer
from local_triton.server import SHM_DIR
from tests.fixtures.models import REPO_ROOT
from tests.fixtures.triton import (
    TINY_SIZE,
    StartTriton,
    grpc_client,
    infer_once,
    metric_value,
    model_statistics,
    onnxruntime_reference,
    scrape_metrics,
    settled_statistics,
    write_tiny_model,
)
from tests.fixtures.triton import group_alive as _group_alive


def images(batch: int, seed: int, size: int = TINY_SIZE) -> npt.NDArray[np.float32]:
    """Random NCHW float32 input for the tiny models."""
    return np.random.default_rng(seed).normal(size=(batch, 3, size, size)).astype(np.float32)


def reference(repository: Path, model: str, array: npt.NDArray[np.float32]) -> Any:
    """ONNX Runtime's own logits for `model` version 1 of `repository`."""
    return onnxruntime_reference(repository / model / "1" / "model.onnx", {"input": array})[0]


def test_server_is_ready_and_reports_config_names(tiny_triton: TritonServer) -> None:
    """Ready within the fixture's bounded wait; metadata carries the config's names and dims."""
    client = grpc_client(tiny_triton)
    assert client.is_server_ready(client_timeout=10)
    assert client.is_model_ready("tiny", "1", client_timeout=10)
    metadata = client.get_model_metadata("tiny", as_json=True, client_timeout=10)
    assert [(i["name"], i["datatype"], i["shape"]) for i in metadata["inputs"]] == [
        ("input", "FP32", ["-1", "3", "8", "8"])
    ]
    assert [o["name"] for o in metadata["outputs"]] == ["logits"]
    config = client.get_model_config("tiny", as_json=True, client_timeout=10)["config"]
    assert config["backend"] == "onnxruntime"


@pytest.mark.parametrize("batch", [1, 5])
def test_grpc_infer_matches_onnxruntime(
    tiny_triton: TritonServer, tiny_model_repository: Path, batch: int
) -> None:
    """Triton's answer equals ONNX Runtime's on the same model and input (max abs diff 1e-4)."""
    array = images(batch, seed=batch)
    logits, version = infer_once(grpc_client(tiny_triton), "tiny", array)
    expected = reference(tiny_model_repository, "tiny", array)
    assert version == "1"
    assert logits.shape == (batch, 5)
    assert float(np.max(np.abs(logits - expected))) <= 1e-4


def test_concurrent_requests_are_merged_into_fewer_onnxruntime_runs(
    tiny_triton: TritonServer, tiny_model_repository: Path
) -> None:
    """Concurrent requests share executions and ONNX Runtime calls; each gets its own rows."""
    model, count = "tiny_slow_queue", 8
    before_stats = model_statistics(tiny_triton, model, "1")
    before = scrape_metrics(tiny_triton)
    mark = tiny_triton.log_mark()
    clients = [grpc_client(tiny_triton) for _ in range(count)]
    arrays = [images(1 + i % 3, seed=100 + i) for i in range(count)]
    with ThreadPoolExecutor(count) as pool:
        results = list(pool.map(lambda i: infer_once(clients[i], model, arrays[i]), range(count)))
    for array, (logits, _) in zip(arrays, results, strict=True):
        expected = reference(tiny_model_repository, model, array)
        assert float(np.max(np.abs(logits - expected))) <= 1e-4

    items = sum(a.shape[0] for a in arrays)
    after_stats = settled_statistics(
        tiny_triton,
        model,
        "1",
        lambda e: e["inference_count"] >= before_stats["inference_count"] + items,
    )
    after = scrape_metrics(tiny_triton)
    executions = after_stats["execution_count"] - before_stats["execution_count"]
    assert after_stats["inference_count"] - before_stats["inference_count"] == items
    assert 1 <= executions < count, f"{count} requests took {executions} executions: no merging"
    labels = {"model": model, "version": "1"}
    for name, expected_delta in [
        ("nv_inference_request_success", count),
        ("nv_inference_count", items),
        ("nv_inference_exec_count", executions),
    ]:
        delta = metric_value(after, name, **labels) - metric_value(before, name, **labels)
        assert delta == expected_delta, f"{name} grew by {delta}, expected {expected_delta}"

    # The backend's verbose line per execute(): all requests of one execute in one ORT call.
    pattern = re.compile(
        rf"{model}:1: (\d+) requests, (\d+) valid, in (\d+) ONNX Runtime runs of \[(\d+)\]"
    )
    assert tiny_triton.wait_for_log(pattern.pattern, 10, after=mark) is not None
    runs = [m.groups() for line in tiny_triton.log_lines(after=mark) if (m := pattern.search(line))]
    assert len(runs) == executions, runs
    assert sum(int(r[0]) for r in runs) == count
    assert sum(int(r[3]) for r in runs) == items
    assert any(int(r[0]) > 1 and r[2] == "1" for r in runs), f"no merged ONNX Runtime run: {runs}"


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (np.zeros((1, 3, 9, 9), np.float32), "unexpected shape"),
        (np.zeros((1, 3, 8, 8), np.float64), "expects 'FP32'"),
    ],
)
def test_request_triton_rejects_fails_alone(
    tiny_triton: TritonServer, bad: npt.NDArray[Any], message: str
) -> None:
    """Wrong shape/dtype for a fixed config: that request errors, a concurrent one succeeds."""
    good = images(1, seed=7)
    with ThreadPoolExecutor(2) as pool:
        bad_future = pool.submit(infer_once, grpc_client(tiny_triton), "tiny_slow_queue", bad)
        good_future = pool.submit(infer_once, grpc_client(tiny_triton), "tiny_slow_queue", good)
        logits, _ = good_future.result(timeout=60)
        with pytest.raises(InferenceServerException, match=message):
            bad_future.result(timeout=60)
    assert logits.shape == (1, 5)


@pytest.mark.parametrize(
    ("model", "message"),
    [
        # Config allows any HxW, the graph needs 8x8: the backend's own check rejects it.
        ("tiny_config_only", r"has shape \[1, 3, 9, 9\], expected \[batch,3,8,8\]"),
        # Config and graph allow any HxW: ONNX Runtime fails, for that request only.
        ("tiny_dynamic", "ONNX Runtime failed"),
    ],
)
def test_request_the_backend_cannot_run_fails_alone_in_a_shared_batch(
    tiny_triton: TritonServer, tiny_model_repository: Path, model: str, message: str
) -> None:
    """A bad and a good request in one execute(): the bad one gets an error, the good its answer."""
    before = model_statistics(tiny_triton, model, "1")
    good = images(2, seed=11)
    bad = images(1, seed=12, size=9)
    with ThreadPoolExecutor(2) as pool:
        bad_future = pool.submit(infer_once, grpc_client(tiny_triton), model, bad)
        good_future = pool.submit(infer_once, grpc_client(tiny_triton), model, good)
        logits, _ = good_future.result(timeout=60)
        with pytest.raises(InferenceServerException, match=message) as error:
            bad_future.result(timeout=60)
    assert "INVALID_ARGUMENT" in str(error.value)
    expected = reference(tiny_model_repository, model, good)
    assert float(np.max(np.abs(logits - expected))) <= 1e-4
    after = settled_statistics(
        tiny_triton, model, "1", lambda e: e["execution_count"] > before["execution_count"]
    )
    # Both requests reached the backend in the same batch window (200 ms queue delay).
    assert int(after["execution_count"]) - int(before["execution_count"]) == 1


def test_thread_counts_reach_onnxruntime(tmp_path: Path, start_triton: StartTriton) -> None:
    """intra_op_thread_count from config.pbtxt, else LOCAL_TRITON_ORT_THREADS, sets the session."""
    write_tiny_model(tmp_path, "configured", 1, parameters={"intra_op_thread_count": "2"})
    write_tiny_model(tmp_path, "from_env", 1)
    server = start_triton(
        tmp_path, mode="explicit", load_all=True, extra_env={"LOCAL_TRITON_ORT_THREADS": "1"}
    )
    configured = server.wait_for_log(r"configured/1/model\.onnx .*intra_op_threads=2", 5)
    from_env = server.wait_for_log(r"from_env/1/model\.onnx .*intra_op_threads=1", 5)
    assert configured is not None and from_env is not None, server.logs(last=30)
    # The stub imports the venv's numpy, not the base interpreter's.
    assert str(Path(np.__file__).parent) in configured


def test_invalid_onnx_fails_the_load_with_a_clear_error(
    tmp_path: Path, start_triton: StartTriton
) -> None:
    """Garbage in model.onnx fails initialize(): load_model raises, the model is not ready."""
    write_tiny_model(tmp_path, "tiny", 1)
    server = start_triton(tmp_path, mode="explicit")
    broken = tmp_path / "broken"
    write_tiny_model(tmp_path, "broken", 1)
    (broken / "1" / "model.onnx").write_bytes(b"this is not an ONNX model")
    client = grpc_client(server)
    with pytest.raises(InferenceServerException, match="ONNX Runtime cannot load"):
        client.load_model("broken", client_timeout=60)
    assert not client.is_model_ready("broken", client_timeout=10)
    client.load_model("tiny", client_timeout=60)
    assert client.is_model_ready("tiny", "1", client_timeout=10)


def test_stop_kill_and_restart_on_the_same_ports(
    tiny_model_repository: Path, start_triton: StartTriton
) -> None:
    """stop() ends Triton cleanly; kill() ends it and its stubs; restart() serves on same ports."""
    server = start_triton(tiny_model_repository, mode="explicit", load_models=["tiny"])
    ports = server.ports
    pid = server.pid
    assert pid is not None
    assert server.stop() == 0
    assert not server.is_running() and not _group_alive(pid)

    server.restart()
    assert server.ports == ports
    logits, _ = infer_once(grpc_client(server), "tiny", images(1, seed=3))
    assert logits.shape == (1, 5)

    pid = server.pid
    assert pid is not None
    server.kill()
    assert server.returncode == -signal.SIGKILL
    assert not _group_alive(pid), "stubs outlived a killed server"
    assert not list(SHM_DIR.glob(f"{server.shm_prefix}*")), "shared memory left behind"

    server.restart()
    assert infer_once(grpc_client(server), "tiny", images(1, seed=4))[0].shape == (1, 5)


def test_start_failure_raises_with_the_log(tmp_path: Path) -> None:
    """A model that cannot load at start (poll mode) makes wait_ready raise with Triton's log."""
    write_tiny_model(tmp_path, "broken", 1)
    (tmp_path / "broken" / "1" / "model.onnx").write_bytes(b"garbage")
    server = TritonServer(tmp_path, model_control_mode="poll")
    server.start()
    try:
        with pytest.raises(Exception, match="ONNX Runtime cannot load") as error:
            server.wait_ready(60)
        assert type(error.value).__name__ == "TritonServerError"
    finally:
        server.stop()


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM])
def test_cli_serves_until_signalled(tiny_model_repository: Path, stop_signal: int) -> None:
    """`python -m local_triton` prints where it listens, serves, and exits 0 on SIGINT/SIGTERM."""
    command = [
        sys.executable, "-m", "local_triton",
        "--model-repository", str(tiny_model_repository),
        "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0",
        "--model-control-mode", "explicit", "--load-model", "tiny",
    ]  # fmt: skip
    process = subprocess.Popen(
        command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert process.stderr is not None
        ready_line = ""
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            line = process.stderr.readline()
            if "ready." in line:
                ready_line = line
                break
        assert "gRPC 127.0.0.1:" in ready_line, "the CLI never said where it listens"
        grpc_url = ready_line.split("gRPC ", 1)[1].split(",", 1)[0]
        client = grpcclient.InferenceServerClient(grpc_url)
        assert client.is_model_ready("tiny", client_timeout=10)
        process.send_signal(stop_signal)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=10)
    assert process.returncode == 0, err
    assert "stopping Triton" in err and "Triton stopped (exit status 0)" in err
    assert "Started GRPCInferenceService" in out  # Triton's own log is forwarded
