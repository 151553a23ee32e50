"""`python -m local_stack` (what `make run` runs): from an empty repository to answered requests."""

from __future__ import annotations

import base64
import io
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image
from skimage import data as skimage_data

from local_triton import free_port

REPO_ROOT = Path(__file__).resolve().parents[1]
UP_TIMEOUT_S = 300.0
CAT_CLASSES = {"tabby", "tiger cat", "Egyptian cat"}


def _chelsea_data_url() -> str:
    buffer = io.BytesIO()
    Image.fromarray(skimage_data.chelsea()).save(buffer, format="JPEG", quality=90)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


@pytest.fixture
def running_stack(
    tmp_path: Path,
) -> Iterator[tuple[str, str, list[str], subprocess.Popen[str]]]:
    """Start the stack on free ports with an empty repository; yield url, key, output, process."""
    api_key = "stack-test-key"
    port = free_port()
    environment = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    environment.update(GATEWAY_API_KEYS=api_key, PYTHONUNBUFFERED="1")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "local_stack",
            "--model",
            "efficientnet_lite0",
            "--repository",
            str(tmp_path / "repository"),
            "--port",
            str(port),
            "--triton-http-port",
            str(free_port()),
            "--triton-grpc-port",
            str(free_port()),
            "--triton-metrics-port",
            str(free_port()),
        ],
        cwd=REPO_ROOT,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    stack_lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            if line.startswith("[stack]"):
                stack_lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    try:
        deadline = time.monotonic() + UP_TIMEOUT_S
        while True:
            remaining = deadline - time.monotonic()
            assert remaining > 0, "the stack did not come up:\n" + "".join(lines[-40:])
            assert process.poll() is None, "the stack exited:\n" + "".join(lines[-40:])
            try:
                if "is up" in stack_lines.get(timeout=min(remaining, 1.0)):
                    break
            except queue.Empty:
                continue
        yield f"http://127.0.0.1:{port}", api_key, lines, process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


@pytest.mark.e2e
def test_run_command_exports_then_serves_analyze_and_stops_cleanly(
    running_stack: tuple[str, str, list[str], subprocess.Popen[str]], tmp_path: Path
) -> None:
    """An empty repository gets the model exported, /analyze names the cat, SIGTERM stops all."""
    url, api_key, lines, process = running_stack
    assert (tmp_path / "repository" / "efficientnet_lite0" / "1" / "model.onnx").is_file()
    output = "".join(lines)
    assert "exporting it first" in output
    assert "curl" in output and api_key not in output, "a configured key must not be echoed"

    request = urllib.request.Request(
        f"{url}/analyze",
        data=json.dumps({"image": _chelsea_data_url()}).encode(),
        headers={"Content-Type": "application/json", "X-API-Key": api_key},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        answer = json.load(response)
    assert answer["mode"] == "real"
    assert answer["label"] in CAT_CLASSES
    assert answer["model"] == {"name": "efficientnet_lite0", "version": "1"}

    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0
    deadline = time.monotonic() + 10  # the reader thread drains the last lines
    while "Triton stopped" not in "".join(lines) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "[stack] stopping" in "".join(lines)
    assert "Triton stopped" in "".join(lines)
