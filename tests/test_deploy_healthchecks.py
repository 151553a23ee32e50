"""The containers' health-check commands, run here against real servers.

deploy/healthcheck.py (the gateway image's HEALTHCHECK) is run against a local HTTP server
that answers what a test chooses, and against the real gateway; the curl command that
docker-compose.yml gives Triton is run against the real local Triton.
"""

from __future__ import annotations

import http.server
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from local_triton import free_port
from tests.fixtures.models import published_model

REPO = Path(__file__).resolve().parent.parent
HEALTHCHECK = REPO / "deploy" / "healthcheck.py"
COMPOSE_TRITON_READY = "http://localhost:8000/v2/health/ready"
HEALTHCHECK_RETRIES = 10


class StatusServer(http.server.ThreadingHTTPServer):
    """A threaded HTTP server whose handler answers with `status`."""

    status = 200


class _StatusHandler(http.server.BaseHTTPRequestHandler):
    """Answers every GET with the status stored on the server."""

    def do_GET(self) -> None:
        """Answer with the configured status and a short body."""
        assert isinstance(self.server, StatusServer)
        status = self.server.status
        body = b'{"ready": true}' if status == 200 else b'{"ready": false}'
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Keep test output quiet."""


@pytest.fixture
def status_server() -> Iterator[StatusServer]:
    """A real HTTP server on 127.0.0.1 whose answer status a test sets via `.status`."""
    server = StatusServer(("127.0.0.1", 0), _StatusHandler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1})
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def run_healthcheck(*args: str) -> subprocess.CompletedProcess[str]:
    """Run deploy/healthcheck.py as the image does (python, stdlib only, isolated mode)."""
    return subprocess.run(
        [sys.executable, "-I", str(HEALTHCHECK), *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def server_url(server: StatusServer, path: str = "/ready") -> str:
    """The URL of a path on the local test server."""
    host, port = server.server_address[:2]
    return f"http://{host!s}:{port}{path}"


def test_healthcheck_passes_when_ready_answers_200(
    status_server: StatusServer,
) -> None:
    """A 200 from /ready is healthy: exit status 0."""
    status_server.status = 200
    result = run_healthcheck(server_url(status_server), "--timeout", "3")
    assert result.returncode == 0, result.stderr
    assert "HTTP 200" in result.stdout


def test_healthcheck_fails_when_ready_answers_503(
    status_server: StatusServer,
) -> None:
    """A 503 (gateway up, Triton or the model not ready) is unhealthy, said in one line."""
    status_server.status = 503
    result = run_healthcheck(server_url(status_server), "--timeout", "3")
    assert result.returncode == 1
    assert "HTTP 503" in result.stderr
    assert "Traceback" not in result.stderr


def test_healthcheck_fails_when_nothing_listens() -> None:
    """A closed port is unhealthy, reported as unreachable, without a traceback."""
    result = run_healthcheck(f"http://127.0.0.1:{free_port()}/ready", "--timeout", "3")
    assert result.returncode == 1
    assert "unreachable" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [(["ftp://127.0.0.1/ready"], "must start with http"), (["--timeout", "0"], "--timeout")],
)
def test_healthcheck_rejects_bad_arguments_clearly(args: list[str], message: str) -> None:
    """Bad arguments give a usage error (exit 2) that names the problem."""
    result = run_healthcheck(*args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def compose_triton_healthcheck() -> list[str]:
    """The Triton health-check argv from docker-compose.yml (without the CMD marker)."""
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text(encoding="utf-8"))
    test: list[str] = compose["services"]["triton"]["healthcheck"]["test"]
    assert test[0] == "CMD" and COMPOSE_TRITON_READY in test
    if shutil.which(test[1]) is None:
        pytest.fail(
            f"{test[1]} is needed to run Triton's health check here: apt-get install -y curl"
        )
    return test[1:]


@pytest.mark.e2e
def test_compose_triton_healthcheck_passes_on_a_ready_triton(triton_server: Any) -> None:
    """The compose file's curl check, pointed at the real local Triton, exits 0."""
    local = f"http://{triton_server.http_url}/v2/health/ready"
    argv = [local if arg == COMPOSE_TRITON_READY else arg for arg in compose_triton_healthcheck()]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stderr


def test_compose_triton_healthcheck_fails_without_triton() -> None:
    """The same curl check fails when no Triton answers (the check can fail)."""
    dead = f"http://127.0.0.1:{free_port()}/v2/health/ready"
    argv = [dead if arg == COMPOSE_TRITON_READY else arg for arg in compose_triton_healthcheck()]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode != 0


@pytest.mark.e2e
def test_gateway_healthcheck_passes_on_the_real_gateway(
    triton_server: Any, model_repository: Path, start_gateway: Any
) -> None:
    """deploy/healthcheck.py against the real gateway's /ready (Triton up) exits 0, and
    exits 1 once the gateway has stopped."""
    model = published_model(model_repository)
    gateway = start_gateway(triton_server.grpc_url, model_repository, GATEWAY_DEFAULT_MODEL=model)
    try:
        # Like Docker's HEALTHCHECK retries: a few tries, one second apart, all bounded.
        attempts = [run_healthcheck(f"{gateway.url}/ready", "--timeout", "10")]
        while attempts[-1].returncode != 0 and len(attempts) < HEALTHCHECK_RETRIES:
            time.sleep(1)
            attempts.append(run_healthcheck(f"{gateway.url}/ready", "--timeout", "10"))
        assert attempts[-1].returncode == 0, [a.stderr for a in attempts]
    finally:
        gateway.stop()
    stopped = run_healthcheck(f"{gateway.url}/ready", "--timeout", "3")
    assert stopped.returncode == 1
    assert "unreachable" in stopped.stderr
