"""The tree stays lint-clean, formatted and type-checked (strict mypy), tests included."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.fixtures.models import PRODUCT_PACKAGES, REPO_ROOT, export_python

TYPED_PACKAGES = (*PRODUCT_PACKAGES, "tests")


def _tool(name: str) -> str:
    """The venv's copy of a dev tool (ruff, mypy)."""
    return str(Path(export_python()).parent / name)


@pytest.mark.parametrize(
    "command",
    [
        ("ruff", "check", "."),
        ("ruff", "format", "--check", "."),
        ("mypy", *TYPED_PACKAGES),
    ],
    ids=["ruff-check", "ruff-format", "mypy"],
)
def test_tool_passes(command: tuple[str, ...]) -> None:
    """ruff check, ruff format --check and mypy --strict report nothing over the whole tree."""
    result = subprocess.run(
        [_tool(command[0]), *command[1:]],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
