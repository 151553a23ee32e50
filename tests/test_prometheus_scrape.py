"""A real Prometheus scrapes the real Triton and the real gateway (under gunicorn).

The scrape config is deploy/prometheus.yml itself, with only the targets moved to the local
servers and the intervals shortened, so the job names, metrics paths and alert rules the
deployment uses are the ones exercised. Prometheus is Debian's `/usr/bin/prometheus`; a
missing binary fails the test with the command that installs it.
"""

from __future__ import annotations

import base64
import io
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
import yaml
from PIL import Image
from skimage import data as skimage_data

from local_triton import free_port
from tests.fixtures.models import published_model

REPO = Path(__file__).resolve().parent.parent
DEPLOY_CONFIG = REPO / "deploy" / "prometheus.yml"
ALERT_RULES = REPO / "deploy" / "alerts.yml"
INSTALL_HINT = (
    "prometheus not found: install Debian's prometheus package "
    "(`apt-get install -y --no-install-recommends prometheus`, or `make system-deps`)"
)
HTTP_TIMEOUT_S = 5.0
START_TIMEOUT_S = 60.0
SCRAPE_TIMEOUT_S = 60.0
REQUESTS_SENT = 3
ANALYZE_TIMEOUT_S = 60.0

pytestmark = pytest.mark.e2e


@dataclass
class PrometheusServer:
    """A running Prometheus on 127.0.0.1 and the means to query it."""

    process: subprocess.Popen[bytes]
    url: str
    log_path: Path

    def log_tail(self) -> str:
        """The last lines Prometheus logged, for failure messages."""
        if not self.log_path.exists():
            return "<no log>"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-30:])

    def get(self, path: str, **params: str) -> dict[str, Any]:
        """GET an API path and return its `data`, failing on an error answer."""
        response = requests.get(f"{self.url}{path}", params=params, timeout=HTTP_TIMEOUT_S)
        response.raise_for_status()
        body = response.json()
        assert body["status"] == "success", body
        data: dict[str, Any] = body["data"]
        return data

    def query(self, promql: str) -> list[dict[str, Any]]:
        """Run an instant PromQL query and return its vector of results."""
        data = self.get("/api/v1/query", query=promql)
        assert data["resultType"] == "vector", data
        result: list[dict[str, Any]] = data["result"]
        return result

    def wait_for(
        self, promql: str, accept: Callable[[list[dict[str, Any]]], bool], what: str
    ) -> list[dict[str, Any]]:
        """Re-run a query until `accept` holds on its result, for at most SCRAPE_TIMEOUT_S."""
        deadline = time.monotonic() + SCRAPE_TIMEOUT_S
        result: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"Prometheus exited:\n{self.log_tail()}"
            result = self.query(promql)
            if accept(result):
                return result
            time.sleep(0.5)
        pytest.fail(f"{what}: `{promql}` gave {result} after {SCRAPE_TIMEOUT_S:.0f} s")


def host_port(url: str) -> str:
    """Return the host:port part of an http URL."""
    netloc = urlsplit(url).netloc
    assert netloc, f"not a URL: {url!r}"
    return netloc


def local_scrape_config(triton_metrics_url: str, gateway_url: str) -> dict[str, Any]:
    """deploy/prometheus.yml with local targets, 1 s intervals and an absolute rules path."""
    config: dict[str, Any] = yaml.safe_load(DEPLOY_CONFIG.read_text(encoding="utf-8"))
    config["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    config["rule_files"] = [str(ALERT_RULES)]
    targets = {"triton": host_port(triton_metrics_url), "gateway": host_port(gateway_url)}
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == set(targets), f"deploy config jobs changed: {sorted(jobs)}"
    assert jobs["triton"]["metrics_path"] == urlsplit(triton_metrics_url).path
    for name, target in targets.items():
        jobs[name]["static_configs"] = [{"targets": [target]}]
    return config


def start_prometheus(config: dict[str, Any], workdir: Path) -> PrometheusServer:
    """Start /usr/bin/prometheus on a free loopback port and wait until it is ready."""
    binary = shutil.which("prometheus") or (
        "/usr/bin/prometheus" if Path("/usr/bin/prometheus").exists() else None
    )
    if binary is None:
        pytest.fail(INSTALL_HINT)
    config_path = workdir / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
    address = f"127.0.0.1:{free_port()}"
    log_path = workdir / "prometheus.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={config_path}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address={address}",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    server = PrometheusServer(process, f"http://{address}", log_path)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"Prometheus exited with {process.returncode}:\n{server.log_tail()}")
        try:
            if requests.get(f"{server.url}/-/ready", timeout=HTTP_TIMEOUT_S).status_code == 200:
                return server
        except requests.RequestException:
            pass
        time.sleep(0.25)
    stop_process(process)
    pytest.fail(f"Prometheus not ready after {START_TIMEOUT_S:.0f} s:\n{server.log_tail()}")


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """Terminate a process, killing it when it does not exit within a bounded wait."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


def photo_base64(name: str) -> str:
    """Return one of scikit-image's bundled RGB photos (chelsea, coffee...) as base64 JPEG."""
    loader: Callable[[], Any] = getattr(skimage_data, name)
    buffer = io.BytesIO()
    Image.fromarray(loader()).save(buffer, format="JPEG", quality=90)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def analyze(gateway: Any, payload: dict[str, Any]) -> requests.Response:
    """POST ``payload`` to the gateway's /analyze with its API key."""
    return requests.post(
        f"{gateway.url}/analyze",
        json=payload,
        headers={"X-API-Key": gateway.api_key},
        timeout=ANALYZE_TIMEOUT_S,
    )


def value_of(result: list[dict[str, Any]]) -> float:
    """The value of a one-sample instant vector, 0 when the vector is empty."""
    assert len(result) <= 1, f"expected at most one series, got {result}"
    return float(result[0]["value"][1]) if result else 0.0


@pytest.fixture
def gateway(triton_server: Any, model_repository: Path, start_gateway: Any) -> Iterator[Any]:
    """A fresh gateway under gunicorn on the session Triton, so its counters start at zero."""
    model = published_model(model_repository)
    server = start_gateway(triton_server.grpc_url, model_repository, GATEWAY_DEFAULT_MODEL=model)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def prometheus(triton_server: Any, gateway: Any, tmp_path: Path) -> Iterator[PrometheusServer]:
    """Prometheus scraping the session Triton and the test's gateway every second."""
    server = start_prometheus(local_scrape_config(triton_server.metrics_url, gateway.url), tmp_path)
    try:
        yield server
    finally:
        stop_process(server.process)


def test_prometheus_sees_inference_counters_rise_with_gateway_traffic(
    prometheus: PrometheusServer, gateway: Any, model_repository: Path
) -> None:
    """After real /analyze calls, Prometheus's own API shows Triton's and the gateway's counters
    grown by at least the number of calls."""
    model = published_model(model_repository)
    triton_query = f'sum(nv_inference_request_success{{job="triton", model="{model}"}})'
    gateway_query = (
        f'sum(gateway_requests_total{{job="gateway", route="/analyze", status="200", '
        f'model="{model}"}})'
    )
    for job in ("triton", "gateway"):
        prometheus.wait_for(
            f'up{{job="{job}"}}', lambda r: value_of(r) == 1.0, f"{job} scraped and up"
        )
    # Triton's counters survive across tests in this session: measure from what is there now.
    triton_before = value_of(prometheus.query(triton_query))
    assert value_of(prometheus.query(gateway_query)) == 0.0

    payload: dict[str, Any] = {"image": photo_base64("chelsea"), "model": model, "top_k": 3}
    for _ in range(REQUESTS_SENT):
        response = analyze(gateway, payload)
        assert response.status_code == 200, response.text
        assert response.json()["model"]["name"] == model

    prometheus.wait_for(
        gateway_query, lambda r: value_of(r) == REQUESTS_SENT, "gateway request counter"
    )
    prometheus.wait_for(
        triton_query,
        lambda r: value_of(r) >= triton_before + REQUESTS_SENT,
        "Triton success counter",
    )


def test_alert_expressions_match_the_real_metric_labels(
    prometheus: PrometheusServer, gateway: Any, model_repository: Path
) -> None:
    """The alert rules load without errors and the label names they group by exist on the
    metrics Triton and the gateway really export."""
    model = published_model(model_repository)
    payload: dict[str, Any] = {"image": photo_base64("coffee"), "model": model}
    response = analyze(gateway, payload)
    assert response.status_code == 200, response.text

    # The alerts' denominators, exactly as deploy/alerts.yml groups them.
    by_model = prometheus.wait_for(
        "sum by (model) (rate(nv_inference_request_success[5m]))",
        lambda r: any(s["metric"].get("model") == model for s in r),
        "Triton success rate by model",
    )
    assert all("model" in series["metric"] for series in by_model)
    prometheus.wait_for(
        'sum by (route) (rate(gateway_requests_total{route!~"/(ready|health|metrics)"}[5m]))',
        lambda r: any(s["metric"].get("route") == "/analyze" for s in r),
        "gateway request rate by route",
    )

    def rules_evaluated(groups: list[dict[str, Any]]) -> bool:
        rules = [rule for group in groups for rule in group["rules"]]
        # A rule's health stays "unknown" until its first evaluation.
        return bool(rules) and all(rule["health"] != "unknown" for rule in rules)

    deadline = time.monotonic() + SCRAPE_TIMEOUT_S
    groups: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        groups = prometheus.get("/api/v1/rules")["groups"]
        if rules_evaluated(groups):
            break
        time.sleep(0.5)
    assert rules_evaluated(groups), f"rules not evaluated within {SCRAPE_TIMEOUT_S:.0f} s: {groups}"
    rules = {rule["name"]: rule for group in groups for rule in group["rules"]}
    assert set(rules) == {
        "TritonDown",
        "GatewayDown",
        "TritonInferenceFailures",
        "GatewayServerErrors",
        "VisionAIRolloutAutomaticRollback",
        "VisionAICandidateVerificationFailed",
    }
    unhealthy = {
        name: rule.get("lastError") for name, rule in rules.items() if rule["health"] != "ok"
    }
    assert not unhealthy, unhealthy
    # Both servers are up and answering: no availability alert may be firing or pending.
    assert rules["TritonDown"]["state"] == "inactive"
    assert rules["GatewayDown"]["state"] == "inactive"
