"""deploy/prometheus.yml and its alert rules, checked by the real `promtool`.

promtool comes with Debian's `prometheus` package; a missing promtool fails these tests with
the command that installs it.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
PROMETHEUS_CONFIG = DEPLOY / "prometheus.yml"
INSTALL_HINT = (
    "promtool not found: install Debian's prometheus package "
    "(`apt-get install -y --no-install-recommends prometheus`, or `make system-deps`)"
)


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    """Run promtool with the given arguments, failing the test when it is not installed."""
    binary = shutil.which("promtool")
    if binary is None:
        pytest.fail(INSTALL_HINT)
    return subprocess.run(
        [binary, *args], capture_output=True, text=True, timeout=60, check=False, cwd=REPO
    )


def scrape_jobs() -> dict[str, dict[str, Any]]:
    """Return the scrape configs of deploy/prometheus.yml by job name."""
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text(encoding="utf-8"))
    return {job["job_name"]: job for job in config["scrape_configs"]}


def test_promtool_accepts_the_deploy_config() -> None:
    """`promtool check config deploy/prometheus.yml` passes, rule files included."""
    result = promtool("check", "config", str(PROMETHEUS_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
    assert "1 rule files found" in result.stdout


def test_promtool_rejects_a_broken_config(tmp_path: Path) -> None:
    """The check can fail: the same config with two jobs of one name is rejected."""
    broken = tmp_path / "prometheus.yml"
    text = PROMETHEUS_CONFIG.read_text(encoding="utf-8").replace(
        "job_name: gateway", "job_name: triton"
    )
    broken.write_text(text, encoding="utf-8")
    (tmp_path / "alerts.yml").write_bytes((DEPLOY / "alerts.yml").read_bytes())
    result = promtool("check", "config", str(broken))
    assert result.returncode != 0
    assert "triton" in result.stdout + result.stderr


def test_alert_rules_are_valid_and_pass_their_unit_tests() -> None:
    """The alert rules parse and behave as deploy/alerts.test.yml specifies."""
    checked = promtool("check", "rules", str(DEPLOY / "alerts.yml"))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = promtool("test", "rules", str(DEPLOY / "alerts.test.yml"))
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_every_alert_has_unit_tests_and_the_rollout_alerts_exist() -> None:
    """Each alert in deploy/alerts.yml is evaluated by deploy/alerts.test.yml, the rollout
    alerts included: an automatic rollback (warning) and a failed verification (info)."""
    groups = yaml.safe_load((DEPLOY / "alerts.yml").read_text(encoding="utf-8"))["groups"]
    rules = {rule["alert"]: rule for group in groups for rule in group["rules"]}
    tests = yaml.safe_load((DEPLOY / "alerts.test.yml").read_text(encoding="utf-8"))["tests"]
    tested = {case["alertname"] for test in tests for case in test["alert_rule_test"]}
    assert set(rules) <= tested, f"alerts without a unit test: {sorted(set(rules) - tested)}"
    expected = {
        "VisionAIRolloutAutomaticRollback": ("rollback-automatic", "warning"),
        "VisionAICandidateVerificationFailed": ("verify-failed", "info"),
    }
    for name, (action, severity) in expected.items():
        rule = rules[name]
        assert f'gateway_rollout_events_total{{action="{action}"}}' in rule["expr"], name
        assert rule["labels"]["severity"] == severity
        assert "python -m rollout status {{ $labels.model }}" in rule["annotations"]["description"]


def test_config_scrapes_the_compose_services_metrics_ports() -> None:
    """Prometheus scrapes Triton's metrics port and the gateway's /metrics, by service name."""
    jobs = scrape_jobs()
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text(encoding="utf-8"))
    services = compose["services"]
    expected = {"triton": "triton:8002", "gateway": "gateway:8080"}
    for job_name, target in expected.items():
        job = jobs[job_name]
        assert job.get("metrics_path", "/metrics") == "/metrics"
        targets = [t for group in job["static_configs"] for t in group["targets"]]
        assert targets == [target]
        assert target.split(":")[0] in services
    # Triton's command does not move its metrics port off the default 8002.
    assert not any("--metrics-port" in str(arg) for arg in services["triton"]["command"])
