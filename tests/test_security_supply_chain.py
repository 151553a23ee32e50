"""Supply chain: `pip-audit` on the gateway's pinned dependencies (gateway/requirements.txt).

Accepted findings live in gateway/pip-audit-accepted.txt, each with its reason, and are
passed to --ignore-vuln. pip-audit needs PyPI's JSON API or OSV to know about
vulnerabilities; where it cannot reach them it does not fail but marks every package
"could not be audited" and reports "No known vulnerabilities found". This test reads
its JSON report and refuses to call that a pass: it skips, saying so, or fails when
RELIABILITY_REQUIRE_AUDIT=1 (set it in CI, which has the network).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.models import REPO_ROOT

REQUIREMENTS = REPO_ROOT / "gateway" / "requirements.txt"
ACCEPTED = REPO_ROOT / "gateway" / "pip-audit-accepted.txt"
AUDIT_TIMEOUT_S = 600
_ADVISORY = re.compile(r"^(GHSA-[\w-]+|PYSEC-\d{4}-\d+|CVE-\d{4}-\d+|OSV-[\w-]+)$")


def accepted_findings() -> dict[str, str]:
    """Advisory id -> reason, from gateway/pip-audit-accepted.txt."""
    accepted: dict[str, str] = {}
    for number, line in enumerate(ACCEPTED.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        advisory, _, reason = line.partition("#")
        advisory = advisory.strip()
        assert _ADVISORY.fullmatch(advisory), f"{ACCEPTED.name}:{number}: not an advisory id"
        assert reason.strip(), f"{ACCEPTED.name}:{number}: {advisory} has no reason"
        accepted[advisory] = reason.strip()
    return accepted


def pip_audit_command() -> list[str]:
    """pip-audit from the interpreter running the tests (the project venv)."""
    executable = Path(sys.executable).parent / "pip-audit"
    if not executable.exists():
        pytest.fail(
            "pip-audit is not installed in the test environment: it belongs in the dev extra "
            "(pip-audit==2.10.1)",
            pytrace=False,
        )
    return [str(executable)]


def run_audit(accepted: dict[str, str]) -> tuple[subprocess.CompletedProcess[str], Any]:
    """Run pip-audit on the requirements file; return the process and its JSON report."""
    command = [
        *pip_audit_command(),
        "--requirement",
        str(REQUIREMENTS),
        "--format",
        "json",
        "--progress-spinner",
        "off",
    ]
    for advisory in accepted:
        command += ["--ignore-vuln", advisory]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=AUDIT_TIMEOUT_S, check=False
    )
    try:
        report = json.loads(result.stdout)
    except ValueError:
        report = None
    return result, report


def test_accepted_findings_have_reasons() -> None:
    """Every accepted advisory is a well-formed id with a written reason."""
    accepted_findings()


def test_gateway_requirements_are_all_pinned() -> None:
    """pip-audit audits exact versions: every requirement is pinned with ==."""
    for line in REQUIREMENTS.read_text(encoding="utf-8").splitlines():
        requirement = line.split("#", 1)[0].strip()
        if requirement:
            assert "==" in requirement, f"not pinned: {requirement}"


def test_pip_audit_finds_no_unaccepted_vulnerability() -> None:
    """pip-audit -r gateway/requirements.txt: no vulnerability beyond the accepted ones."""
    result, report = run_audit(accepted_findings())
    if report is None:
        message = (
            f"pip-audit produced no report (exit {result.returncode}); it could not resolve "
            f"the requirements or reach its vulnerability source:\n{result.stderr[-2000:]}"
        )
        _unaudited(message)
        return
    dependencies = report.get("dependencies", [])
    skipped = [d for d in dependencies if d.get("skip_reason")]
    if skipped:
        _unaudited(
            f"pip-audit could NOT reach its vulnerability source (PyPI JSON API / OSV): "
            f"{len(skipped)} of {len(dependencies)} dependencies were not audited, e.g. "
            f"{skipped[0]['skip_reason']!r}. This is not a pass."
        )
        return
    findings = [
        f"{d['name']} {d['version']}: {v['id']} (fixed in: {', '.join(v.get('fix_versions', []))})"
        for d in dependencies
        for v in d.get("vulns", [])
    ]
    assert not findings, "vulnerable gateway dependencies:\n" + "\n".join(findings)
    assert result.returncode == 0, result.stderr[-2000:]


def _unaudited(message: str) -> None:
    if os.environ.get("RELIABILITY_REQUIRE_AUDIT", "") == "1":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)
