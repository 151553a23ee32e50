"""Keep-alive through gunicorn when the gateway answers before reading a large body.

Auth (401) and the admission gate (503) answer without reading the request body. gunicorn
then drains at most 64 KiB of it and closes the connection. Without
``gateway.gunicorn_worker.close_when_body_unread`` the response still announced keep-alive,
and the client's next request on that connection failed with ``RemoteDisconnected``.
"""

from __future__ import annotations

import http.client
import json
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from gateway.gunicorn_worker import DRAIN_LIMIT_BYTES
from tests.fixtures.gateway import GatewayProcess, StartGateway

HTTP_TIMEOUT_S = 10.0
UNREACHABLE_TRITON = "127.0.0.1:1"  # nothing here needs Triton: auth answers first


@pytest.fixture
def gateway(start_gateway: StartGateway, tmp_path: Path) -> GatewayProcess:
    """A gunicorn gateway (one worker, so every request meets the same process)."""
    return start_gateway(UNREACHABLE_TRITON, tmp_path, GATEWAY_WORKERS="1")


def _connection(gateway: GatewayProcess) -> http.client.HTTPConnection:
    address = urlsplit(gateway.url)
    assert address.hostname is not None and address.port is not None
    return http.client.HTTPConnection(address.hostname, address.port, timeout=HTTP_TIMEOUT_S)


def _unauthenticated_analyze(
    connection: http.client.HTTPConnection, body_bytes: int
) -> http.client.HTTPResponse:
    body = json.dumps({"image": "A" * body_bytes}).encode("ascii")
    connection.request(
        "POST",
        "/analyze",
        body=body,
        headers={"Content-Type": "application/json", "X-API-Key": "wrong-key"},
    )
    response = connection.getresponse()
    response.read()
    return response


def test_early_answer_to_a_large_body_closes_and_the_next_request_works(
    gateway: GatewayProcess,
) -> None:
    """A 401 with 4x gunicorn's drain limit unread says Connection: close; the next call works."""
    connection = _connection(gateway)
    try:
        refused = _unauthenticated_analyze(connection, 4 * DRAIN_LIMIT_BYTES)
        assert refused.status == 401
        assert (refused.getheader("Connection") or "").lower() == "close"
        # http.client reopens after a "close" response; with keep-alive announced it would
        # reuse the socket gunicorn closed and fail with RemoteDisconnected.
        connection.request("GET", "/health")
        health = connection.getresponse()
        health.read()
        assert health.status == 200
    finally:
        connection.close()


def test_early_answer_to_a_small_body_keeps_the_connection(gateway: GatewayProcess) -> None:
    """Below the drain limit gunicorn reads the rest itself, so the connection is reused."""
    connection = _connection(gateway)
    try:
        refused = _unauthenticated_analyze(connection, 1024)
        assert refused.status == 401
        assert (refused.getheader("Connection") or "").lower() != "close"
        first_socket = connection.sock
        connection.request("GET", "/health")
        health = connection.getresponse()
        health.read()
        assert health.status == 200
        assert connection.sock is first_socket
    finally:
        connection.close()
