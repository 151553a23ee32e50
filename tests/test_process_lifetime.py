"""A runner SIGKILLed (by a supervisor or the OOM killer) takes the servers it started with it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from local_triton import free_port
from tests.fixtures.models import REPO_ROOT
from tests.fixtures.triton import process_alive as _alive

UP_TIMEOUT_S = 240.0
# Triton drains for --exit-timeout-secs (5 s), gunicorn for its graceful_timeout (30 s) at most.
GONE_TIMEOUT_S = 45.0


def _children(pid: int) -> set[int]:
    """Direct children of `pid`, from /proc."""
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found |= {int(child) for child in (task / "children").read_text().split()}
        except OSError:
            continue
    return found


def _descendants(pid: int) -> set[int]:
    """Every process below `pid`."""
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in _children(todo.pop()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _port_free(port: int) -> bool:
    """True when nothing listens on 127.0.0.1:port."""
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


def _wait_http_ok(url: str, process: subprocess.Popen[bytes]) -> None:
    """Poll `url` until it answers 200 (bounded); fail if the process exits first."""
    deadline = time.monotonic() + UP_TIMEOUT_S
    while time.monotonic() < deadline:
        assert process.poll() is None, f"the runner exited with {process.returncode}"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    pytest.fail(f"{url} did not answer 200 within {UP_TIMEOUT_S:.0f} s")


def _kill_and_expect_nothing_left(process: subprocess.Popen[bytes], ports: list[int]) -> None:
    """SIGKILL the runner; within GONE_TIMEOUT_S every process it started is gone, ports free."""
    started = _descendants(process.pid)
    assert started, "the runner started no processes"
    process.kill()
    process.wait(timeout=10)
    killed_at = time.monotonic()
    deadline = killed_at + GONE_TIMEOUT_S
    while time.monotonic() < deadline:
        left = {pid for pid in started if _alive(pid)}
        if not left and all(_port_free(port) for port in ports):
            gone_s = time.monotonic() - killed_at
            print(f"{len(started)} processes gone {gone_s:.1f} s after SIGKILL")
            return
        time.sleep(0.2)
    for pid in started:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
    pytest.fail(f"still running {GONE_TIMEOUT_S:.0f} s after SIGKILL of the runner: {sorted(left)}")


def test_sigkill_of_local_triton_stops_tritonserver(tmp_path: Path) -> None:
    """`python -m local_triton` SIGKILLed: tritonserver and its stubs exit, its ports free."""
    http, grpc, metrics = free_port(), free_port(), free_port()
    repository = tmp_path / "repository"
    repository.mkdir()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "local_triton",
            "--model-repository",
            str(repository),
            "--http-port",
            str(http),
            "--grpc-port",
            str(grpc),
            "--metrics-port",
            str(metrics),
        ],
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_http_ok(f"http://127.0.0.1:{http}/v2/health/ready", process)
        _kill_and_expect_nothing_left(process, [http, grpc, metrics])
    finally:
        if process.poll() is None:
            process.kill()


@pytest.mark.e2e
def test_sigkill_of_local_stack_stops_triton_and_the_gateway(
    fresh_model_repository: Path, tmp_path: Path
) -> None:
    """`python -m local_stack` SIGKILLed: Triton, gunicorn and its workers exit, ports free."""
    port, http, grpc, metrics = free_port(), free_port(), free_port(), free_port()
    environment = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    environment["GATEWAY_API_KEYS"] = "lifetime-test-key"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "local_stack",
            "--model",
            "efficientnet_lite0",
            "--repository",
            str(fresh_model_repository),
            "--port",
            str(port),
            "--triton-http-port",
            str(http),
            "--triton-grpc-port",
            str(grpc),
            "--triton-metrics-port",
            str(metrics),
            "--rollout-dir",
            str(tmp_path / "rollout"),
            "--triton-log",
            str(fresh_model_repository.parent / "triton.log"),
        ],
        cwd=REPO_ROOT,
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_http_ok(f"http://127.0.0.1:{port}/ready", process)
        _kill_and_expect_nothing_left(process, [port, http, grpc, metrics])
    finally:
        if process.poll() is None:
            process.kill()
