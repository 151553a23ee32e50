"""The two Dockerfiles in deploy/, checked without a Docker engine.

What can be checked for real here: every file they COPY exists in the build context, the
gateway image installs only its pinned, torch-free requirements and those cover every
third-party module the gateway imports, the code each image copies imports no first-party
package left out of it, and the process runs as an unprivileged user with the right command.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import pytest

from tests.fixtures.models import PRODUCT_PACKAGES

REPO = Path(__file__).resolve().parent.parent
GATEWAY_DOCKERFILE = REPO / "deploy" / "gateway.Dockerfile"
EXPORT_DOCKERFILE = REPO / "deploy" / "export.Dockerfile"
GATEWAY_REQUIREMENTS = REPO / "gateway" / "requirements.txt"
#: The torch-free package every image copies beside its own (docs/architecture.md).
CONTRACT = "model_contract"
FIRST_PARTY = {*PRODUCT_PACKAGES, "tests"}
HEAVY_DISTRIBUTIONS = {
    "torch",
    "torchvision",
    "onnx",
    "onnxruntime",
    "onnxscript",
    "nvidia-pytriton",
}


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction: its upper-case keyword and the rest of the (joined) line."""

    keyword: str
    arguments: str


def parse_dockerfile(path: Path) -> list[Instruction]:
    """Split a Dockerfile into instructions, joining continuations and dropping comments."""
    instructions: list[Instruction] = []
    pending = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not pending):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        pending += line
        keyword, _, arguments = pending.strip().partition(" ")
        instructions.append(Instruction(keyword.upper(), arguments.strip()))
        pending = ""
    assert not pending, f"{path.name} ends inside a continued line"
    return instructions


def only(instructions: list[Instruction], keyword: str) -> list[Instruction]:
    """Return the instructions with the given keyword, in order."""
    return [instruction for instruction in instructions if instruction.keyword == keyword]


def exec_form(arguments: str) -> list[str]:
    """Parse a JSON (exec form) argument list, failing when the shell form was used."""
    parsed = json.loads(arguments)
    assert isinstance(parsed, list) and all(isinstance(part, str) for part in parsed), arguments
    return parsed


def copy_sources(instructions: list[Instruction]) -> list[str]:
    """Return the build-context paths that COPY/ADD instructions read."""
    sources: list[str] = []
    for instruction in only(instructions, "COPY") + only(instructions, "ADD"):
        words = [word for word in shlex.split(instruction.arguments) if not word.startswith("--")]
        assert len(words) >= 2, f"malformed {instruction}"
        sources.extend(words[:-1])
    return sources


def imported_top_modules_of_file(path: Path) -> set[str]:
    """Return the top-level names of every absolute import in one module."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def imported_top_modules(package: Path) -> set[str]:
    """Return the top-level names of every absolute import in a package's modules."""
    names: set[str] = set()
    for source in package.rglob("*.py"):
        names |= imported_top_modules_of_file(source)
    return names


def normalize(distribution: str) -> str:
    """Normalize a distribution name as PEP 503 does (case, runs of -_. to one dash)."""
    return re.sub(r"[-_.]+", "-", distribution).lower()


def pinned_requirements(path: Path) -> dict[str, str]:
    """Return {normalized name: version} of a requirements file, failing on any unpinned line."""
    pins: dict[str, str] = {}
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(
            r"([A-Za-z0-9][A-Za-z0-9._-]*)(\[[A-Za-z0-9_,.-]+\])?==([^\s;=]+)", line
        )
        assert match is not None, f"{path.name}: {line!r} is not pinned as name==version"
        pins[normalize(match.group(1))] = match.group(3)
    return pins


@pytest.fixture(scope="module")
def gateway_image() -> list[Instruction]:
    """The parsed gateway Dockerfile."""
    return parse_dockerfile(GATEWAY_DOCKERFILE)


@pytest.fixture(scope="module")
def export_image() -> list[Instruction]:
    """The parsed export Dockerfile."""
    return parse_dockerfile(EXPORT_DOCKERFILE)


@pytest.mark.parametrize(
    "dockerfile", [GATEWAY_DOCKERFILE, EXPORT_DOCKERFILE], ids=lambda p: p.name
)
def test_every_copied_path_exists_in_the_build_context(dockerfile: Path) -> None:
    """Each COPY source exists in the repository (compose builds with the repository as context)."""
    sources = copy_sources(parse_dockerfile(dockerfile))
    assert sources
    missing = [source for source in sources if not (REPO / source).exists()]
    assert not missing, f"{dockerfile.name} copies paths that do not exist: {missing}"


def test_gateway_image_is_slim_python_311_as_a_non_root_user(
    gateway_image: list[Instruction],
) -> None:
    """The gateway runs on python:3.11-slim as a dedicated unprivileged user."""
    assert [i.arguments for i in only(gateway_image, "FROM")] == ["python:3.11-slim"]
    users = only(gateway_image, "USER")
    assert users, "no USER: the gateway would run as root"
    user = users[-1].arguments.split(":")[0]
    assert user not in {"root", "0"}
    created = " ".join(i.arguments for i in only(gateway_image, "RUN"))
    assert re.search(rf"useradd\b.*\b{re.escape(user)}\b", created), f"user {user} never created"


def test_gateway_image_installs_only_the_pinned_requirements(
    gateway_image: list[Instruction],
) -> None:
    """One pip install, of gateway/requirements.txt only, which pins everything and has no torch."""
    installs = [i for i in only(gateway_image, "RUN") if "pip install" in i.arguments]
    assert len(installs) == 1
    words = shlex.split(installs[0].arguments.split("pip install", 1)[1])
    requirement_files = [words[i + 1] for i, word in enumerate(words) if word == "-r"]
    assert [Path(f).name for f in requirement_files] == ["requirements.txt"]
    positional = [w for i, w in enumerate(words) if not w.startswith("-") and words[i - 1] != "-r"]
    assert not positional, f"installs more than the requirements file: {positional}"
    pins = pinned_requirements(GATEWAY_REQUIREMENTS)
    assert not HEAVY_DISTRIBUTIONS & set(pins), "the gateway image must not pull in torch/ONNX"


def test_gateway_requirements_cover_every_third_party_import() -> None:
    """Every non-stdlib module the gateway image's code imports comes from a pinned requirement."""
    pins = set(pinned_requirements(GATEWAY_REQUIREMENTS))
    imported = imported_top_modules(REPO / "gateway") | imported_top_modules(REPO / CONTRACT)
    third_party = imported - set(sys.stdlib_module_names) - FIRST_PARTY
    providers = metadata.packages_distributions()
    uncovered = {
        module: providers.get(module, ["<not installed>"])
        for module in third_party
        if not {normalize(d) for d in providers.get(module, [])} & pins
    }
    assert not uncovered, f"imported by gateway/ but not in gateway/requirements.txt: {uncovered}"


@pytest.mark.parametrize("package", ["gateway", "export"])
def test_image_code_imports_no_package_left_out_of_the_image(package: str) -> None:
    """Each image copies its package and the contract; they import no other first-party one."""
    if not (REPO / package).is_dir():
        pytest.fail(f"{package}/ is missing from the repository")
    foreign = (imported_top_modules(REPO / package) & FIRST_PARTY) - {package, CONTRACT}
    assert not foreign, f"{package}/ imports {sorted(foreign)}, which its image does not contain"
    dockerfile = {"gateway": GATEWAY_DOCKERFILE, "export": EXPORT_DOCKERFILE}[package]
    copied = {source.rstrip("/") for source in copy_sources(parse_dockerfile(dockerfile))}
    assert {package, CONTRACT} <= copied, f"{dockerfile.name} copies only {sorted(copied)}"
    contract_imports = imported_top_modules(REPO / CONTRACT) & FIRST_PARTY - {CONTRACT}
    assert not contract_imports, f"{CONTRACT}/ imports {sorted(contract_imports)}"


def test_gateway_image_runs_gunicorn_with_the_gateway_config(
    gateway_image: list[Instruction],
) -> None:
    """CMD is gunicorn with gateway/gunicorn.conf.py on gateway.wsgi:app, run from /app."""
    command = exec_form(only(gateway_image, "CMD")[-1].arguments)
    assert command == ["gunicorn", "-c", "gateway/gunicorn.conf.py", "gateway.wsgi:app"]
    assert only(gateway_image, "WORKDIR")[-1].arguments == "/app"
    assert (REPO / "gateway" / "gunicorn.conf.py").is_file()
    wsgi = ast.parse((REPO / "gateway" / "wsgi.py").read_text(encoding="utf-8"))
    assigned = {
        target.id
        for node in ast.walk(wsgi)
        if isinstance(node, ast.Assign | ast.AnnAssign)
        for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
        if isinstance(target, ast.Name)
    }
    assert "app" in assigned, "gateway/wsgi.py defines no module-level `app`"
    assert "0.0.0.0:8080" in " ".join(i.arguments for i in only(gateway_image, "ENV"))
    assert only(gateway_image, "EXPOSE")[-1].arguments == "8080"


def test_gateway_healthcheck_probes_ready_with_the_stdlib_script(
    gateway_image: list[Instruction],
) -> None:
    """HEALTHCHECK runs deploy/healthcheck.py (stdlib only: slim has no curl) against /ready."""
    healthcheck = only(gateway_image, "HEALTHCHECK")[-1].arguments
    options, _, command = healthcheck.partition("CMD ")
    assert "--timeout=" in options and "--interval=" in options
    argv = exec_form(command)
    assert argv[:2] == ["python", "/app/healthcheck.py"]
    assert argv[2] == "http://127.0.0.1:8080/ready"
    assert "deploy/healthcheck.py" in copy_sources(gateway_image)
    script_imports = imported_top_modules_of_file(REPO / "deploy" / "healthcheck.py")
    assert script_imports <= set(sys.stdlib_module_names) | {"__future__"}


def test_export_image_installs_the_export_extra(export_image: list[Instruction]) -> None:
    """The exporter image is Python 3.11 with `pip install .[export]` and publishes into /models."""
    assert only(export_image, "FROM")[0].arguments.startswith("python:3.11")
    installs = " ".join(
        i.arguments for i in only(export_image, "RUN") if "pip install" in i.arguments
    )
    assert re.search(r"""["']?\.\[export\]["']?""", installs)
    entrypoint = exec_form(only(export_image, "ENTRYPOINT")[-1].arguments)
    assert entrypoint == ["python", "-m", "export", "--repository", "/models"]
    users = only(export_image, "USER")
    assert users and users[-1].arguments.split(":")[0] not in {"root", "0"}


# Run in a child interpreter: only a copy of gateway/ on the path (what the image copies to
# /app), the heavy and first-party packages blocked, then report every loaded distribution.
IMAGE_IMPORT_PROBE = """
import importlib.abc, json, sys
from importlib import metadata
sys.path.insert(0, sys.argv[1])
BLOCKED = set(sys.argv[2].split(","))

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is not in the gateway image")
        return None

sys.meta_path.insert(0, Block())
before = set(sys.modules)  # site start-up (.pth hooks) is not the gateway's doing
import gateway.wsgi
assert gateway.wsgi.app is not None
providers = metadata.packages_distributions()
# The gateway and the contract are the image's own code, not distributions (an editable
# install of this project would otherwise map them to visionai-serving).
loaded = {name.split(".")[0] for name in set(sys.modules) - before} - {"gateway", "model_contract"}
print(json.dumps(sorted({d for m in loaded for d in providers.get(m, [])})))
"""


def requirement_closure(pins: dict[str, str]) -> set[str]:
    """Return the normalized names of the pinned distributions and all they depend on here."""
    from packaging.requirements import Requirement

    wanted: list[tuple[str, frozenset[str]]] = []
    for line in GATEWAY_REQUIREMENTS.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            requirement = Requirement(line)
            wanted.append((normalize(requirement.name), frozenset(requirement.extras)))
    assert {name for name, _ in wanted} == set(pins)
    closure: set[str] = set()
    seen: set[tuple[str, frozenset[str]]] = set()
    while wanted:
        name, extras = wanted.pop()
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        closure.add(name)
        for spec in metadata.requires(name) or []:
            requirement = Requirement(spec)
            marker = requirement.marker
            environments = [{"extra": extra} for extra in extras] or [{"extra": ""}]
            if marker is None or any(marker.evaluate(env) for env in environments):
                wanted.append((normalize(requirement.name), frozenset(requirement.extras)))
    return closure


def test_gateway_app_loads_from_what_the_image_contains(tmp_path: Path) -> None:
    """gateway.wsgi:app imports from copies of gateway/ and the contract alone, with torch/ONNX and
    other first-party code blocked; every distribution it loads is a pinned requirement or one of
    their dependencies."""
    app_dir = tmp_path / "app"
    for package in ("gateway", CONTRACT):
        shutil.copytree(REPO / package, app_dir / package)
    blocked = {"torch", "torchvision", "onnx", "onnxruntime", "onnxscript"}
    # Optional imports of the image's requirements that the dev tools install here (redis-py
    # imports cryptography when present; trustme brings it): absent from the image as here.
    blocked |= {"cryptography"}
    blocked |= FIRST_PARTY - {"gateway", CONTRACT}
    environment = {
        "PATH": os.environ.get("PATH", ""),
        "GATEWAY_API_KEYS": "image-probe-key",
        "GATEWAY_MODEL_REPOSITORY": str(tmp_path / "models"),
    }
    result = subprocess.run(
        [sys.executable, "-I", "-c", IMAGE_IMPORT_PROBE, str(app_dir), ",".join(sorted(blocked))],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = {normalize(name) for name in json.loads(result.stdout.strip().splitlines()[-1])}
    closure = requirement_closure(pinned_requirements(GATEWAY_REQUIREMENTS))
    assert loaded, "the probe saw no third-party distribution at all"
    assert loaded <= closure, f"loaded but not installed by the image: {sorted(loaded - closure)}"
