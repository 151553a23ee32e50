"""HTTPS at the gateway: real TLS to gunicorn with a throwaway CA (trustme), and HSTS.

GATEWAY_TLS_CERT_FILE / GATEWAY_TLS_KEY_FILE make gunicorn serve TLS only. A client that
trusts the CA gets answers with HSTS, through the whole path to a real Triton; one that does
not trust it fails verification; plain HTTP to the TLS port fails at once and leaves the
workers serving; the container health check speaks TLS to it. Without TLS no HSTS is sent.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
import trustme

from gateway.config import ConfigError, ServerSettings
from local_triton import TritonServer
from tests.fixtures.gateway import GatewayProcess, MakeApp, StartGateway
from tests.reliability_support import FAST_MODEL
from tests.test_reliability_triton_faults import tiny_png

REPO = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class TlsFiles:
    """A throwaway CA's certificate, and a server certificate and key it signed for 127.0.0.1."""

    ca_pem: Path
    cert_pem: Path
    key_pem: Path


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """trustme's CA and a server certificate for 127.0.0.1 and localhost, as PEM files."""
    directory = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    files = TlsFiles(directory / "ca.pem", directory / "cert.pem", directory / "key.pem")
    ca.cert_pem.write_to_path(str(files.ca_pem))
    server.private_key_pem.write_to_path(str(files.key_pem))
    with files.cert_pem.open("wb") as chain:
        for blob in server.cert_chain_pems:
            chain.write(blob.bytes())
    files.key_pem.chmod(0o600)
    return files


def https_url(gateway: GatewayProcess) -> str:
    """The gateway's base URL over HTTPS."""
    return f"https://{gateway.host}:{gateway.port}"


@pytest.fixture
def tls_gateway(
    tls_files: TlsFiles, fast_triton: TritonServer, start_gateway: StartGateway
) -> Iterator[GatewayProcess]:
    """A gunicorn gateway serving TLS on the fast model of the session's Triton."""
    # Not suite_gateway's wait: start_gateway polls over plain HTTP, which this port refuses.
    gateway = start_gateway(
        fast_triton.grpc_url,
        fast_triton.model_repository,
        wait=False,
        GATEWAY_DEFAULT_MODEL=FAST_MODEL,
        GATEWAY_ACCESS_LOG="off",
        GATEWAY_TLS_CERT_FILE=str(tls_files.cert_pem),
        GATEWAY_TLS_KEY_FILE=str(tls_files.key_pem),
    )
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        assert gateway.is_running(), gateway.logs(last=40)
        try:
            response = requests.get(
                f"{https_url(gateway)}/ready", verify=str(tls_files.ca_pem), timeout=3
            )
            if response.status_code == 200:
                break
        except requests.RequestException:
            pass
        assert time.monotonic() < deadline, f"no HTTPS answer: {gateway.logs(last=40)}"
        time.sleep(0.3)
    yield gateway


@pytest.mark.e2e
def test_https_with_a_trusted_ca_classifies_and_sends_hsts(
    tls_gateway: GatewayProcess, tls_files: TlsFiles
) -> None:
    """A client trusting the CA: /analyze answers over TLS 1.2+, with HSTS on every answer."""
    # verify= on each call: requests lets REQUESTS_CA_BUNDLE override a session's verify.
    ca = str(tls_files.ca_pem)
    with requests.Session() as session:
        response = session.post(
            f"{https_url(tls_gateway)}/analyze",
            json={"image": base64.b64encode(tiny_png()).decode(), "top_k": 1},
            headers=tls_gateway.headers,
            verify=ca,
            timeout=10,
        )
        refused = session.post(f"{https_url(tls_gateway)}/analyze", json={}, verify=ca, timeout=10)
    assert response.status_code == 200, response.text
    assert response.json()["model"]["name"] == FAST_MODEL
    for answer in (response, refused):
        assert answer.headers["Strict-Transport-Security"] == "max-age=31536000"
    assert refused.status_code == 401


@pytest.mark.e2e
def test_a_client_that_does_not_trust_the_ca_fails_verification(
    tls_gateway: GatewayProcess,
) -> None:
    """The system's CA store does not know the throwaway CA: certificate verification fails."""
    with pytest.raises(requests.exceptions.SSLError, match="CERTIFICATE_VERIFY_FAILED"):
        requests.get(f"{https_url(tls_gateway)}/health", timeout=10)


@pytest.mark.e2e
def test_plain_http_to_the_tls_port_fails_at_once_and_workers_keep_serving(
    tls_gateway: GatewayProcess, tls_files: TlsFiles
) -> None:
    """Plain HTTP gets no HTTP answer (the connection ends at once), and a log line, no trace."""
    for _ in range(3):
        started = time.monotonic()
        with pytest.raises(requests.exceptions.ConnectionError):
            requests.get(f"{tls_gateway.url}/health", timeout=10)
        assert time.monotonic() - started < 5.0
    response = requests.get(
        f"{https_url(tls_gateway)}/health", verify=str(tls_files.ca_pem), timeout=10
    )
    assert response.status_code == 200
    assert tls_gateway.is_running()
    # One warning line per attempt in gunicorn's log, no traceback.
    logs = tls_gateway.logs()
    assert "SSL: HTTP_REQUEST" in logs and "Traceback" not in logs, logs[-2000:]


@pytest.mark.e2e
def test_the_container_health_check_speaks_tls_when_the_gateway_does(
    tls_gateway: GatewayProcess, tls_files: TlsFiles
) -> None:
    """deploy/healthcheck.py with GATEWAY_TLS_CERT_FILE set turns its http:// URL into https."""
    env = {**os.environ, "GATEWAY_TLS_CERT_FILE": str(tls_files.cert_pem)}
    command = [sys.executable, "-I", str(REPO / "deploy" / "healthcheck.py")]
    url = f"{tls_gateway.url}/ready"
    result = subprocess.run(
        [*command, url], env=env, capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "https://" in result.stdout
    plain_env = {k: v for k, v in env.items() if k != "GATEWAY_TLS_CERT_FILE"}
    plain = subprocess.run(
        [*command, url], env=plain_env, capture_output=True, text=True, timeout=30, check=False
    )
    assert plain.returncode == 1


def test_hsts_is_sent_only_over_https(make_gateway_app: MakeApp) -> None:
    """The app adds HSTS to requests that came over HTTPS, never to plain HTTP ones."""
    client = make_gateway_app().test_client()
    secure = client.get("/health", base_url="https://gateway.example")
    plain = client.get("/health", base_url="http://gateway.example")
    assert secure.headers["Strict-Transport-Security"] == "max-age=31536000"
    assert "Strict-Transport-Security" not in plain.headers


def test_tls_settings_go_together_and_must_be_readable(tls_files: TlsFiles) -> None:
    """One of the two files alone, or a missing file, is refused naming the variable."""
    with pytest.raises(ConfigError, match="set GATEWAY_TLS_KEY_FILE too"):
        ServerSettings.from_env({"GATEWAY_TLS_CERT_FILE": str(tls_files.cert_pem)})
    with pytest.raises(ConfigError, match="set GATEWAY_TLS_CERT_FILE too"):
        ServerSettings.from_env({"GATEWAY_TLS_KEY_FILE": str(tls_files.key_pem)})
    missing = tls_files.key_pem.with_name("absent.pem")
    with pytest.raises(ConfigError, match=r"GATEWAY_TLS_KEY_FILE=.*cannot be read"):
        ServerSettings.from_env(
            {"GATEWAY_TLS_CERT_FILE": str(tls_files.cert_pem), "GATEWAY_TLS_KEY_FILE": str(missing)}
        )
    settings = ServerSettings.from_env(
        {
            "GATEWAY_TLS_CERT_FILE": str(tls_files.cert_pem),
            "GATEWAY_TLS_KEY_FILE": str(tls_files.key_pem),
        }
    )
    assert settings.tls_cert_file == tls_files.cert_pem
    assert settings.tls_key_file == tls_files.key_pem


@pytest.mark.e2e
def test_hsts_behind_a_trusted_tls_proxy(
    fast_triton: TritonServer, start_gateway: StartGateway
) -> None:
    """Plain gunicorn: HSTS only when the trusted proxy (127.0.0.1) says X-Forwarded-Proto."""
    gateway = start_gateway(
        fast_triton.grpc_url,
        fast_triton.model_repository,
        GATEWAY_DEFAULT_MODEL=FAST_MODEL,
        GATEWAY_ACCESS_LOG="off",
        GATEWAY_FORWARDED_ALLOW_IPS="127.0.0.1",
    )
    proxied = requests.get(
        f"{gateway.url}/health", headers={"X-Forwarded-Proto": "https"}, timeout=10
    )
    direct = requests.get(f"{gateway.url}/health", timeout=10)
    assert proxied.headers["Strict-Transport-Security"] == "max-age=31536000"
    assert "Strict-Transport-Security" not in direct.headers
