"""Stages 3 and 4 over HTTP: the gateway (gunicorn + local Triton) and the seed-style baseline.

Both are measured identically: the same JSON bodies (base64 JPEG data URLs, built before
any clock starts), the same API-key header, the same load generator, one checked request
before the timed windows (the answer must parse and carry a label), then a warm-up and a
fixed window per concurrency level.
"""

from __future__ import annotations

import http.client
import json
import os
import secrets
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench import gateway_metrics
from bench.loadgen import HttpTarget, Measurement, sweep
from bench.repository import PublishedModel
from bench.servers import ServerError, free_port, running
from bench.triton_stats import with_triton_breakdown

HOST = "127.0.0.1"
TRITON_READY_TIMEOUT_S = 240.0
GATEWAY_READY_TIMEOUT_S = 120.0
SEED_READY_TIMEOUT_S = 180.0
CHECK_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class TritonEndpoints:
    """Where the local Triton listens."""

    http_port: int
    grpc_port: int

    @property
    def grpc_url(self) -> str:
        """host:port of the gRPC endpoint."""
        return f"{HOST}:{self.grpc_port}"


@contextmanager
def local_triton(model: PublishedModel, log_dir: Path) -> Iterator[TritonEndpoints]:
    """Run the real Triton (`python -m local_triton`) on the model's repository until exit."""
    http_port, grpc_port, metrics_port = free_port(), free_port(), free_port()
    command = [
        sys.executable,
        "-m",
        "local_triton",
        "--model-repository",
        str(model.repository),
        "--model-control-mode",
        "poll",
        "--http-port",
        str(http_port),
        "--grpc-port",
        str(grpc_port),
        "--metrics-port",
        str(metrics_port),
    ]
    ready = f"http://{HOST}:{http_port}/v2/models/{model.name}/ready"
    with running(
        "Triton", command, os.environ, log_dir / "triton.log", ready, TRITON_READY_TIMEOUT_S
    ):
        yield TritonEndpoints(http_port, grpc_port)


@contextmanager
def gateway(
    model: PublishedModel, triton: TritonEndpoints, api_key: str, log_dir: Path
) -> Iterator[int]:
    """Run the gateway under gunicorn (its own gunicorn.conf.py) and yield its port."""
    port = free_port()
    metrics_dir = log_dir / "gateway-prometheus"
    metrics_dir.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "GATEWAY_TRITON_URL": triton.grpc_url,
        "GATEWAY_DEFAULT_MODEL": model.name,
        "GATEWAY_MODEL_REPOSITORY": str(model.repository),
        "GATEWAY_API_KEYS": api_key,
        "GATEWAY_BIND": f"{HOST}:{port}",
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
    }
    command = [
        sys.executable,
        "-m",
        "gunicorn",
        "-c",
        "gateway/gunicorn.conf.py",
        "-b",
        f"{HOST}:{port}",
        "gateway.wsgi:app",
    ]
    with running(
        "gateway",
        command,
        env,
        log_dir / "gateway.log",
        f"http://{HOST}:{port}/ready",
        GATEWAY_READY_TIMEOUT_S,
    ):
        yield port


@contextmanager
def seed_baseline(model: PublishedModel, log_dir: Path) -> Iterator[int]:
    """Run the seed-style Flask baseline on the same weights and preprocessing; yield its port."""
    port = free_port()
    params = model.preprocess
    command = [
        sys.executable,
        "-m",
        "bench.seed_server",
        "--arch",
        model.arch,
        "--labels",
        str(model.labels_path),
        "--port",
        str(port),
        "--host",
        HOST,
        "--resize",
        str(params.resize_size),
        "--crop",
        str(params.crop_size),
        "--mean",
        ",".join(map(str, params.mean)),
        "--std",
        ",".join(map(str, params.std)),
        "--interpolation",
        params.interpolation,
    ]
    if model.state_dict is not None:
        command += ["--state-dict", str(model.state_dict)]
    with running(
        "seed baseline",
        command,
        os.environ,
        log_dir / "seed_server.log",
        f"http://{HOST}:{port}/health",
        SEED_READY_TIMEOUT_S,
    ):
        yield port


def new_api_key() -> str:
    """Return a fresh random API key for this run."""
    return secrets.token_urlsafe(24)


def check_answer(port: int, body: bytes, headers: dict[str, str]) -> str:
    """Send one request outside the timed window; return its label or raise ServerError."""
    connection = http.client.HTTPConnection(HOST, port, timeout=CHECK_TIMEOUT_S)
    try:
        connection.request("POST", "/analyze", body=body, headers=headers)
        response = connection.getresponse()
        text = response.read()
    except (OSError, http.client.HTTPException) as error:
        raise ServerError(f"the check request to port {port} failed: {error}") from None
    finally:
        connection.close()
    if response.status != 200:
        raise ServerError(f"the check request got HTTP {response.status}: {text[:300]!r}")
    try:
        answer = json.loads(text)
        return str(answer["label"])
    except (ValueError, KeyError, TypeError):
        raise ServerError(f"the check request's answer has no label: {text[:300]!r}") from None


def _with_gateway_breakdown(
    port: int, progress: Callable[[str], None]
) -> Callable[[Callable[[], Measurement]], Measurement]:
    def around(window: Callable[[], Measurement]) -> Measurement:
        before = gateway_metrics.scrape(port)
        measurement = window()
        measurement.server_breakdown_ms = gateway_metrics.breakdown(
            before, gateway_metrics.scrape(port)
        )
        if measurement.server_breakdown_ms:
            progress(
                "    gateway mean ms/request: "
                + ", ".join(
                    f"{phase} {ms:.1f}" for phase, ms in measurement.server_breakdown_ms.items()
                )
            )
        return measurement

    return around


def measure_http(
    port: int,
    bodies: Sequence[bytes],
    api_key: str,
    levels: Sequence[int],
    warmup_s: float,
    duration_s: float,
    progress: Callable[[str], None] = print,
    gateway_phases: bool = False,
    triton: tuple[str, str] | None = None,
) -> list[Measurement]:
    """Check one answer, then sweep the concurrency levels against POST /analyze on `port`.

    With `gateway_phases`, each window also records the gateway's own per-phase mean times;
    with `triton` (gRPC URL, model name), Triton's per-phase mean times as well.
    """
    headers = {"Content-Type": "application/json", "X-API-Key": api_key}
    label = check_answer(port, bodies[0], headers)
    progress(f"  check request answered label {label!r}")
    target = HttpTarget(
        host=HOST, port=port, path="/analyze", bodies=tuple(bodies), headers=tuple(headers.items())
    )
    around = _with_gateway_breakdown(port, progress) if gateway_phases else None
    if triton is not None:
        around = with_triton_breakdown(*triton, progress, around)
    return sweep(target, levels, warmup_s, duration_s, progress, around)
