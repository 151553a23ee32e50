"""The package layering of docs/architecture.md holds: imports point down to the contract."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.fixtures.models import PRODUCT_PACKAGES, REPO_ROOT

#: Each product package and the first-party packages it may import (docs/architecture.md).
ALLOWED_IMPORTS: dict[str, set[str]] = {
    "model_contract": set(),
    "export": {"model_contract"},
    "gateway": {"model_contract"},
    "rollout": {"model_contract", "gateway"},
    "local_triton": {"model_contract"},
    "local_stack": {"model_contract", "local_triton", "export"},
    "eval": {"model_contract"},
    "bench": {"model_contract", "export", "gateway", "local_triton", "local_stack"},
}
CONTRACT_FACTS = {
    "parses config.pbtxt text": re.compile(r"\btext_format\b"),
    "normalises pixels (/255)": re.compile(r"/\s*(?:np\.float32\()?255\b"),
    "names a preprocess_* parameter": re.compile(
        r"[\"']preprocess_(?:resize|crop|mean|std|interp)"
    ),
}


def _sources(package: str) -> list[Path]:
    """The package's Python files."""
    return sorted((REPO_ROOT / package).rglob("*.py"))


def _imported_packages(path: Path) -> set[str]:
    """First-party top-level packages a file imports, lazily inside functions included."""
    imported: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.add(node.module.split(".")[0])
    return imported & set(ALLOWED_IMPORTS)


def test_the_layering_covers_every_package() -> None:
    """Every first-party package is in the layering, and pyproject installs exactly those."""
    assert set(ALLOWED_IMPORTS) == set(PRODUCT_PACKAGES)
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    included = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    assert sorted(included) == sorted(f"{package}*" for package in PRODUCT_PACKAGES)


@pytest.mark.parametrize("package", sorted(ALLOWED_IMPORTS))
def test_imports_point_down_to_the_contract(package: str) -> None:
    """No package imports one above it or beside it; the contract imports none."""
    wrong = {
        str(path.relative_to(REPO_ROOT)): sorted(found)
        for path in _sources(package)
        if (found := _imported_packages(path) - ALLOWED_IMPORTS[package] - {package})
    }
    assert not wrong, f"imports outside {package}'s allowed {sorted(ALLOWED_IMPORTS[package])}"


@pytest.mark.parametrize("fact", sorted(CONTRACT_FACTS))
def test_only_the_contract_implements_its_facts(fact: str) -> None:
    """One config.pbtxt parser, one preprocessing implementation, one set of parameter names."""
    pattern = CONTRACT_FACTS[fact]
    elsewhere = [
        f"{path.relative_to(REPO_ROOT)}:{number}"
        for package in sorted(set(ALLOWED_IMPORTS) - {"model_contract"})
        for path in _sources(package)
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
        if pattern.search(line)
    ]
    assert not elsewhere, f"outside model_contract, code that {fact}: {elsewhere}"
    assert any(pattern.search(path.read_text()) for path in _sources("model_contract"))


def test_only_gateway_triton_knows_tritonclient() -> None:
    """Within the gateway, tritonclient stays behind the InferenceBackend seam."""
    users = [
        path.name
        for path in _sources("gateway")
        if re.search(r"^\s*(?:from|import) tritonclient", path.read_text(), re.MULTILINE)
    ]
    assert users == ["triton.py"]


def test_the_contract_is_torch_free() -> None:
    """Importing every contract module loads neither torch nor onnxruntime."""
    modules = ", ".join(f"model_contract.{path.stem}" for path in _sources("model_contract"))
    code = f"import sys, {modules}; print(sorted({{'torch', 'onnxruntime'}} & set(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert result.stdout.strip() == "[]"


def test_the_architecture_page_names_every_package() -> None:
    """docs/architecture.md describes each package this test knows about."""
    page = (REPO_ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    missing = [package for package in ALLOWED_IMPORTS if f"`{package}/`" not in page]
    assert not missing, f"docs/architecture.md does not describe {missing}"
