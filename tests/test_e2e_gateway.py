"""End to end: gunicorn (2 workers) over HTTP, gRPC to a real Triton, models published by export.

The contract tests share the session Triton (efficientnet_lite0 with ImageNet weights and
an untrained resnet50). The outage and hot-swap tests run their own Triton in poll mode on
a private repository holding a small model the export CLI publishes.
"""

from __future__ import annotations

import base64
import io
import os
import signal
import struct
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from tests.fixtures.gateway import GatewayProcess, StartGateway
from tests.fixtures.models import SMALL_MODEL_ARGS, copy_repository, run_export

pytestmark = pytest.mark.e2e
skdata = pytest.importorskip("skimage.data")

HTTP_TIMEOUT_S = 60
IMAGENET_CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
SMALL_MODEL = "mobilenet_v3_small"
TRITON_TIMEOUT_S = 3.0


def jpeg_data_url(pixels: Any) -> str:
    """The front end's encoding: a JPEG data URL."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=92)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


CHELSEA = jpeg_data_url(skdata.chelsea())


def front_end_post(gateway: GatewayProcess, payload: Any, **headers: str) -> requests.Response:
    """POST /analyze exactly as the VisionAI front end does (JSON, X-API-Key)."""
    return requests.post(
        f"{gateway.url}/analyze",
        json=payload,
        headers={"X-API-Key": gateway.api_key, **headers},
        timeout=HTTP_TIMEOUT_S,
    )


def wait_until(what: str, check: Callable[[], bool], timeout_s: float = 90.0) -> None:
    """Poll ``check`` every 0.5 s, bounded in time and count."""
    deadline = time.monotonic() + timeout_s
    for _ in range(int(timeout_s / 0.5) + 1):
        if check():
            return
        if time.monotonic() > deadline:
            break
        time.sleep(0.5)
    pytest.fail(f"timed out after {timeout_s} s waiting for {what}")


def bomb_png(width: int, height: int) -> bytes:
    """A valid 8-bit grayscale PNG of width x height zeros (compresses ~1000:1)."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (
            struct.pack(">I", len(payload))
            + kind
            + payload
            + struct.pack(">I", zlib.crc32(kind + payload))
        )

    compressor = zlib.compressobj(9)
    row = b"\0" * (width + 1)  # filter byte + pixels
    parts = [compressor.compress(row) for _ in range(height)]
    data = b"".join(parts) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")
    )


# -- the contract on the session Triton ---------------------------------------------------------


@pytest.fixture
def gateway(
    triton_server: Any, model_repository: Path, start_gateway: StartGateway
) -> GatewayProcess:
    """The gateway under gunicorn on the session Triton, EfficientNet-Lite0 by default."""
    return start_gateway(
        triton_server.grpc_url, model_repository, GATEWAY_DEFAULT_MODEL="efficientnet_lite0"
    )


def test_front_end_request_names_a_cat_for_chelsea(
    gateway: GatewayProcess, model_repository: Path
) -> None:
    """The front end's exact request gets the contract, and EfficientNet-Lite0 sees a cat."""
    response = front_end_post(gateway, {"image": CHELSEA})
    assert response.status_code == 200, response.text
    body = response.json()
    labels = (model_repository / "efficientnet_lite0" / "1" / "labels.txt").read_text().splitlines()
    assert body["label"] in {labels[i] for i in IMAGENET_CATS}, body
    assert body["mode"] == "real"
    assert body["model"] == {"name": "efficientnet_lite0", "version": "1"}
    assert "efficientnet_lite0" in body["message"]
    assert 0 < body["confidence"] <= 100
    assert len(body["predictions"]) == 5
    assert body["predictions"][0] == {"label": body["label"], "confidence": body["confidence"]}
    assert response.headers["X-Request-ID"]


def test_other_model_version_and_shapes(gateway: GatewayProcess) -> None:
    """model/version/top_k choose what answers; multipart and raw bodies work over HTTP."""
    pinned = front_end_post(
        gateway, {"image": CHELSEA, "model": "resnet50", "version": "1", "top_k": 3}
    )
    assert pinned.status_code == 200, pinned.text
    assert pinned.json()["model"] == {"name": "resnet50", "version": "1"}
    assert len(pinned.json()["predictions"]) == 3
    jpeg = base64.b64decode(CHELSEA.split(",", 1)[1])
    multipart = requests.post(
        f"{gateway.url}/analyze",
        files={"image": ("chelsea.jpg", jpeg, "image/jpeg")},
        headers=gateway.headers,
        timeout=HTTP_TIMEOUT_S,
    )
    raw = requests.post(
        f"{gateway.url}/analyze?top_k=1",
        data=jpeg,
        headers={**gateway.headers, "Content-Type": "image/jpeg"},
        timeout=HTTP_TIMEOUT_S,
    )
    assert multipart.status_code == raw.status_code == 200
    assert multipart.json()["label"] == raw.json()["label"]
    assert len(raw.json()["predictions"]) == 1
    assert front_end_post(gateway, {"image": CHELSEA, "model": "nope"}).status_code == 404
    assert front_end_post(gateway, {"image": CHELSEA, "version": "9"}).status_code == 404


def test_bad_requests_over_http(gateway: GatewayProcess) -> None:
    """No key 401, invalid base64 400, a 20000x20000 PNG 413, a 50 MB body 413, all JSON."""
    no_key = requests.post(
        f"{gateway.url}/analyze", json={"image": CHELSEA}, timeout=HTTP_TIMEOUT_S
    )
    assert no_key.status_code == 401 and no_key.json()["error"] == "unauthorized"
    assert "WWW-Authenticate" in no_key.headers

    invalid = front_end_post(gateway, {"image": "data:image/jpeg;base64,@@not-base64@@"})
    assert invalid.status_code == 400 and invalid.json()["error"] == "bad_request"

    bomb = bomb_png(20000, 20000)
    assert len(bomb) < 2_000_000
    huge = front_end_post(gateway, {"image": base64.b64encode(bomb).decode("ascii")})
    assert huge.status_code in (400, 413), huge.text
    assert set(huge.json()) == {"error", "message"}

    too_big = requests.post(
        f"{gateway.url}/analyze",
        data=b"A" * (50 * 1024 * 1024),
        headers={**gateway.headers, "Content-Type": "application/json"},
        timeout=HTTP_TIMEOUT_S,
    )
    assert too_big.status_code == 413 and too_big.json()["error"] == "payload_too_large"

    wrong_method = requests.get(f"{gateway.url}/analyze", timeout=HTTP_TIMEOUT_S)
    assert wrong_method.status_code == 405 and wrong_method.json()["error"]
    # The gateway is still serving after all that.
    assert front_end_post(gateway, {"image": CHELSEA}).status_code == 200


def test_operations_endpoints(gateway: GatewayProcess) -> None:
    """/health and /ready are open and 200; /models lists Triton's repository with states."""
    health = requests.get(f"{gateway.url}/health", timeout=HTTP_TIMEOUT_S)
    assert health.json() == {"status": "healthy", "model": "efficientnet_lite0"}
    assert requests.get(f"{gateway.url}/ready", timeout=HTTP_TIMEOUT_S).status_code == 200
    models = requests.get(f"{gateway.url}/models", headers=gateway.headers, timeout=HTTP_TIMEOUT_S)
    assert models.status_code == 200
    states = {
        (m["name"], v["version"]): v["state"]
        for m in models.json()["models"]
        for v in m["versions"]
    }
    assert states[("efficientnet_lite0", "1")] == "READY"
    assert states[("resnet50", "1")] == "READY"


def test_metrics_sum_over_both_workers(gateway: GatewayProcess) -> None:
    """Requests spread over 2 gunicorn workers are all counted in one /metrics answer."""
    sent = 8
    for _ in range(sent):
        assert front_end_post(gateway, {"image": CHELSEA, "top_k": 1}).status_code == 200
    text = requests.get(f"{gateway.url}/metrics", timeout=HTTP_TIMEOUT_S).text
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if (
                sample.name == "gateway_requests_total"
                and labels.get("route") == "/analyze"
                and labels.get("status") == "200"
                and labels.get("model") == "efficientnet_lite0"
            ):
                total += sample.value
    assert total == sent
    assert "gateway_triton_duration_seconds_bucket" in text
    assert "gateway_requests_in_flight" in text
    assert gateway.api_key not in text
    assert gateway.api_key not in gateway.logs()


# -- outages and hot swaps on a private Triton ----------------------------------------------------


@pytest.fixture
def small_repository(small_repository_v1: Path, tmp_path: Path) -> Path:
    """A private copy of the session's small repository (mobilenet_v3_small v1, untrained)."""
    return copy_repository(small_repository_v1, tmp_path)


def test_triton_outage_gives_503_and_504_then_recovers_without_restart(
    small_repository: Path, start_triton: Any, start_gateway: StartGateway
) -> None:
    """Triton stopped -> 503 (Retry-After) and /ready 503; Triton hung -> 504 within the
    timeout; Triton back -> answers again from the same gunicorn master."""
    triton = start_triton(small_repository, mode="poll", poll_seconds=1)
    # One worker: with two, the hung request below may land on a worker whose channel is still
    # reconnecting after the restart; that connection attempt then fails (503), not times out.
    gateway = start_gateway(
        triton.grpc_url,
        small_repository,
        GATEWAY_DEFAULT_MODEL=SMALL_MODEL,
        GATEWAY_TRITON_TIMEOUT_S=str(TRITON_TIMEOUT_S),
        GATEWAY_WORKERS="1",
    )
    master_pid = gateway.process.pid
    assert front_end_post(gateway, {"image": CHELSEA}).status_code == 200

    triton.stop()
    started = time.monotonic()
    down = front_end_post(gateway, {"image": CHELSEA})
    elapsed = time.monotonic() - started
    assert down.status_code == 503, down.text
    assert down.json()["error"] == "upstream_unavailable"
    assert int(down.headers["Retry-After"]) > 0
    assert elapsed < TRITON_TIMEOUT_S + 2  # bounded by the configured timeout, not hanging
    assert requests.get(f"{gateway.url}/ready", timeout=HTTP_TIMEOUT_S).status_code == 503
    assert requests.get(f"{gateway.url}/health", timeout=HTTP_TIMEOUT_S).status_code == 200

    triton.start()
    triton.wait_ready(180)
    wait_until(
        "the gateway to answer again",
        lambda: front_end_post(gateway, {"image": CHELSEA}).status_code == 200,
    )
    wait_until(
        "/ready to answer 200 again",
        lambda: requests.get(f"{gateway.url}/ready", timeout=HTTP_TIMEOUT_S).status_code == 200,
    )

    # A Triton that accepts connections but never answers: the call times out as a 504.
    assert triton.pid is not None
    os.kill(triton.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        hung = front_end_post(gateway, {"image": CHELSEA})
        elapsed = time.monotonic() - started
    finally:
        os.kill(triton.pid, signal.SIGCONT)
    assert hung.status_code == 504, hung.text
    assert hung.json()["error"] == "upstream_timeout"
    assert elapsed < TRITON_TIMEOUT_S * 2 + 3  # model facts may be fetched first: two calls
    wait_until(
        "answers after Triton resumes",
        lambda: front_end_post(gateway, {"image": CHELSEA}).status_code == 200,
    )
    assert gateway.process.pid == master_pid and gateway.is_running()


def test_hot_swap_to_version_2_with_other_labels(
    small_repository: Path, start_triton: Any, start_gateway: StartGateway, tmp_path: Path
) -> None:
    """Publishing version 2 (other classes) switches answers to version 2 and its labels,
    without restarting the gateway."""
    triton = start_triton(small_repository, mode="poll", poll_seconds=1)
    gateway = start_gateway(triton.grpc_url, small_repository, GATEWAY_DEFAULT_MODEL=SMALL_MODEL)
    first = front_end_post(gateway, {"image": CHELSEA})
    assert first.status_code == 200, first.text
    assert first.json()["model"]["version"] == "1"
    imagenet = (small_repository / SMALL_MODEL / "1" / "labels.txt").read_text().splitlines()
    assert first.json()["label"] in imagenet

    new_labels = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot"]
    labels_file = tmp_path / "labels.txt"
    labels_file.write_text("\n".join(new_labels) + "\n")
    result = run_export(
        *SMALL_MODEL_ARGS,
        "--labels",
        str(labels_file),
        "--repository",
        str(small_repository),
        "--quiet",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (small_repository / SMALL_MODEL / "2").is_dir()

    answers: list[dict[str, Any]] = []

    def answered_by_version_2() -> bool:
        response = front_end_post(gateway, {"image": CHELSEA, "top_k": 20})
        if response.status_code == 200:
            answers.append(response.json())
            return bool(response.json()["model"]["version"] == "2")
        return False

    wait_until("version 2 to answer", answered_by_version_2)
    latest = answers[-1]
    assert latest["model"] == {"name": SMALL_MODEL, "version": "2"}
    assert latest["label"] in new_labels
    assert sorted(p["label"] for p in latest["predictions"]) == sorted(new_labels)
    # No answer mixed a version with the other version's labels.
    for answer in answers:
        names = {p["label"] for p in answer["predictions"]}
        expected = set(new_labels) if answer["model"]["version"] == "2" else set(imagenet)
        assert names <= expected
