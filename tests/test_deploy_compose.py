"""docker-compose.yml, checked through a real Compose implementation's `config` (no engine needed).

`config` validates the file against the Compose schema, interpolates variables, merges the GPU
override and prints the normalized model; these tests read that output, not the raw YAML, so
they see what an engine would be given. Docker Compose v1 (Debian's `docker-compose` package)
and v2 (`docker compose`) normalize a few fields differently; the helpers accept both.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
COMPOSE_FILE = REPO / "docker-compose.yml"
GPU_OVERRIDE = REPO / "deploy" / "docker-compose.gpu.yml"
ENV_EXAMPLE = REPO / "deploy" / "gateway.env.example"
TRITON_IMAGE = "nvcr.io/nvidia/tritonserver:24.10-py3"
INSTALL_HINT = (
    "no Compose implementation found: install Debian's docker-compose "
    "(`apt-get install -y --no-install-recommends docker-compose`, or `make system-deps`), "
    "or set COMPOSE_COMMAND to one (e.g. COMPOSE_COMMAND='docker compose')"
)
TEST_API_KEYS = "deploy-test-key-1,deploy-test-key-2"


def compose_command() -> list[str]:
    """Return the argv prefix of a working Compose implementation, failing with what to install."""
    configured = os.environ.get("COMPOSE_COMMAND", "").strip()
    if configured:
        return shlex.split(configured)
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker"):
        probe = subprocess.run(
            ["docker", "compose", "version"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if probe.returncode == 0:
            return ["docker", "compose"]
    pytest.fail(INSTALL_HINT)


def run_config(
    tmp_path: Path,
    *files: Path,
    env: Mapping[str, str] | None = None,
    env_file: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run `<compose> -f FILE... config` in the repository with a controlled environment."""
    # An empty --env-file keeps a developer's own .env from changing what the tests see.
    if env_file is None:
        env_file = tmp_path / "empty.env"
        env_file.write_text("", encoding="utf-8")
    argv = [*compose_command(), "--env-file", str(env_file), "--profile", "export"]
    for file in files or (COMPOSE_FILE,):
        argv += ["-f", str(file)]
    argv.append("config")
    clean_env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("GATEWAY_", "COMPOSE_", "TRITON_", "PROMETHEUS_", "EXPORT_"))
    }
    clean_env.update(env or {})
    return subprocess.run(
        argv, cwd=REPO, env=clean_env, capture_output=True, text=True, timeout=120, check=False
    )


def load_config(tmp_path: Path, *files: Path) -> dict[str, Any]:
    """Return the normalized model that `config` prints, with the test API keys set."""
    result = run_config(tmp_path, *files, env={"GATEWAY_API_KEYS": TEST_API_KEYS})
    assert result.returncode == 0, f"compose config failed:\n{result.stderr}"
    model = yaml.safe_load(result.stdout)
    assert isinstance(model, dict) and isinstance(model.get("services"), dict), result.stdout
    return model


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The normalized compose model of docker-compose.yml alone."""
    return load_config(tmp_path_factory.mktemp("compose"))


@pytest.fixture(scope="module")
def gpu_config(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The normalized compose model of docker-compose.yml merged with the GPU override."""
    return load_config(tmp_path_factory.mktemp("compose-gpu"), COMPOSE_FILE, GPU_OVERRIDE)


def published_ports(service: Mapping[str, Any]) -> dict[int, tuple[str, int]]:
    """Map container port -> (host ip, host port) for a service, in v1 or v2 normal form."""
    ports: dict[int, tuple[str, int]] = {}
    for entry in service.get("ports", []):
        if isinstance(entry, dict):
            host_ip = entry.get("host_ip", "0.0.0.0")
            ports[int(entry["target"])] = (host_ip, int(entry["published"]))
            continue
        match = re.fullmatch(r"(?:(.+):)?(\d+):(\d+)(?:/\w+)?", str(entry))
        assert match is not None, f"unexpected port syntax {entry!r}"
        ports[int(match.group(3))] = (match.group(1) or "0.0.0.0", int(match.group(2)))
    return ports


def mounts(service: Mapping[str, Any]) -> dict[str, tuple[str, bool]]:
    """Map container path -> (source, read_only) for a service's volumes, in v1 or v2 form."""
    result: dict[str, tuple[str, bool]] = {}
    for entry in service.get("volumes", []):
        if isinstance(entry, dict):
            result[entry["target"]] = (str(entry["source"]), bool(entry.get("read_only", False)))
            continue
        parts = str(entry).split(":")
        mode = parts[2] if len(parts) > 2 else "rw"
        result[parts[1]] = (parts[0], "ro" in mode.split(","))
    return result


def tmpfs_paths(service: Mapping[str, Any]) -> set[str]:
    """Return the container paths of a service's tmpfs mounts (short or long syntax)."""
    entries = service.get("tmpfs", [])
    paths = {
        str(entry).split(":")[0] for entry in ([entries] if isinstance(entries, str) else entries)
    }
    for entry in service.get("volumes", []):
        if isinstance(entry, dict) and entry.get("type") == "tmpfs":
            paths.add(entry["target"])
    return paths


def command_argv(service: Mapping[str, Any]) -> list[str]:
    """Return a service's command as an argv list."""
    command = service.get("command", [])
    return shlex.split(command) if isinstance(command, str) else [str(part) for part in command]


def dockerfile_of(service: Mapping[str, Any]) -> Path:
    """Return the absolute path of the Dockerfile a service builds from."""
    build = service["build"]
    context = Path(str(build["context"]))
    return (context / str(build.get("dockerfile", "Dockerfile"))).resolve()


def test_config_names_the_four_services(config: dict[str, Any]) -> None:
    """`config` accepts the file and it defines triton, gateway, prometheus and export."""
    assert set(config["services"]) == {"triton", "gateway", "prometheus", "export"}


def test_triton_service_runs_ngc_triton_in_poll_mode(config: dict[str, Any]) -> None:
    """Triton: the NGC 24.10 image, poll mode every 5 s, strict readiness, the repo at /models."""
    triton = config["services"]["triton"]
    assert triton["image"] == TRITON_IMAGE
    argv = command_argv(triton)
    assert argv[0] == "tritonserver"
    assert set(argv[1:]) == {
        "--model-repository=/models",
        "--model-control-mode=poll",
        "--repository-poll-secs=5",
        "--strict-readiness=true",
    }
    assert triton["restart"] in {"unless-stopped", "always"}


def test_triton_mounts_the_repository_read_only(config: dict[str, Any]) -> None:
    """Triton sees ./model_repository at /models, read-only (export is the only writer)."""
    source, read_only = mounts(config["services"]["triton"])["/models"]
    assert Path(source).resolve() == (REPO / "model_repository").resolve()
    assert read_only


def test_triton_ports_are_published_on_loopback(config: dict[str, Any]) -> None:
    """HTTP, gRPC and metrics (8000-8002) are published, on 127.0.0.1 only: Triton has no auth."""
    ports = published_ports(config["services"]["triton"])
    assert ports == {port: ("127.0.0.1", port) for port in (8000, 8001, 8002)}


def test_triton_healthcheck_polls_ready_endpoint(config: dict[str, Any]) -> None:
    """Triton's health check curls /v2/health/ready on its HTTP port, failing on non-2xx."""
    check = config["services"]["triton"]["healthcheck"]
    test = check["test"]
    assert test[0] == "CMD" and test[1] == "curl"
    assert "-f" in test or any(re.fullmatch(r"-[a-zA-Z]*f[a-zA-Z]*", arg) for arg in test[2:])
    assert test[-1] == "http://localhost:8000/v2/health/ready"
    assert {"interval", "timeout", "retries", "start_period"} <= set(check)


def test_gateway_service_environment(config: dict[str, Any]) -> None:
    """The gateway talks gRPC to triton:8001, reads labels from /models, gets the API keys."""
    environment = config["services"]["gateway"]["environment"]
    assert environment["GATEWAY_TRITON_URL"] == "triton:8001"
    assert environment["GATEWAY_MODEL_REPOSITORY"] == "/models"
    assert environment["GATEWAY_API_KEYS"] == TEST_API_KEYS


def test_gateway_metrics_dir_is_a_tmpfs(config: dict[str, Any]) -> None:
    """PROMETHEUS_MULTIPROC_DIR is a tmpfs, so every start begins with no stale worker files."""
    gateway = config["services"]["gateway"]
    assert gateway["environment"]["PROMETHEUS_MULTIPROC_DIR"] in tmpfs_paths(gateway)


def test_gateway_mounts_the_same_repository_read_only(config: dict[str, Any]) -> None:
    """The gateway mounts the very repository Triton serves, read-only, at the same path."""
    services = config["services"]
    assert mounts(services["gateway"])["/models"] == mounts(services["triton"])["/models"]
    assert mounts(services["gateway"])["/models"][1]


def test_gateway_waits_for_healthy_triton_and_serves_8080(config: dict[str, Any]) -> None:
    """The gateway starts only once Triton is healthy, restarts on failure, listens on 8080."""
    gateway = config["services"]["gateway"]
    assert gateway["depends_on"]["triton"]["condition"] == "service_healthy"
    assert published_ports(gateway)[8080][1] == 8080
    assert gateway["restart"] in {"unless-stopped", "always"}


def test_gateway_builds_from_its_dockerfile(config: dict[str, Any]) -> None:
    """The gateway image builds from deploy/gateway.Dockerfile with the repository as context."""
    gateway = config["services"]["gateway"]
    assert Path(gateway["build"]["context"]).resolve() == REPO
    assert dockerfile_of(gateway) == REPO / "deploy" / "gateway.Dockerfile"
    assert dockerfile_of(gateway).is_file()


def test_prometheus_service_mounts_the_checked_config(config: dict[str, Any]) -> None:
    """Prometheus: a pinned prom/prometheus image, deploy/prometheus.yml and its alert rules."""
    prometheus = config["services"]["prometheus"]
    image, _, tag = prometheus["image"].partition(":")
    assert image == "prom/prometheus" and tag not in {"", "latest"}
    volumes = mounts(prometheus)
    source, read_only = volumes["/etc/prometheus/prometheus.yml"]
    assert Path(source).resolve() == REPO / "deploy" / "prometheus.yml" and read_only
    alerts_source, _ = volumes["/etc/prometheus/alerts.yml"]
    assert Path(alerts_source).resolve() == REPO / "deploy" / "alerts.yml"
    assert "--config.file=/etc/prometheus/prometheus.yml" in command_argv(prometheus)
    assert published_ports(prometheus)[9090] == ("127.0.0.1", 9090)


def test_export_service_is_an_on_demand_profile(config: dict[str, Any]) -> None:
    """export runs only under its profile and writes into the same repository, read-write."""
    export = config["services"]["export"]
    assert export["profiles"] == ["export"]
    assert dockerfile_of(export) == REPO / "deploy" / "export.Dockerfile"
    assert dockerfile_of(export).is_file()
    source, read_only = mounts(export)["/models"]
    assert source == mounts(config["services"]["triton"])["/models"][0]
    assert not read_only


def test_base_file_reserves_no_gpu(config: dict[str, Any]) -> None:
    """Without the override nothing asks for a GPU, so the stack starts on CPU-only hosts."""
    assert "deploy" not in config["services"]["triton"]


def test_gpu_override_reserves_nvidia_gpus_for_triton(gpu_config: dict[str, Any]) -> None:
    """deploy/docker-compose.gpu.yml merges an NVIDIA GPU reservation into triton only."""
    devices = gpu_config["services"]["triton"]["deploy"]["resources"]["reservations"]["devices"]
    assert len(devices) == 1
    assert devices[0]["driver"] == "nvidia"
    assert devices[0]["capabilities"] == ["gpu"]
    for name in ("gateway", "prometheus", "export"):
        assert "deploy" not in gpu_config["services"][name]
    # The merge keeps everything else of the base file.
    assert gpu_config["services"]["triton"]["image"] == TRITON_IMAGE


def test_missing_api_keys_stop_compose_with_a_clear_message(tmp_path: Path) -> None:
    """Without GATEWAY_API_KEYS compose refuses to start and says which variable to set."""
    result = run_config(tmp_path)
    assert result.returncode != 0
    assert "GATEWAY_API_KEYS" in result.stderr
    assert "gateway.env.example" in result.stderr


def read_env_file(path: Path) -> dict[str, str]:
    """Return the NAME=value settings of an env file, skipping comments and blank lines."""
    settings: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            settings[name.strip()] = value.strip()
    return settings


def test_env_example_ships_no_usable_api_key(tmp_path: Path) -> None:
    """The example leaves GATEWAY_API_KEYS empty, so a copied-as-is file cannot start the stack."""
    assert read_env_file(ENV_EXAMPLE)["GATEWAY_API_KEYS"] == ""
    result = run_config(tmp_path, env_file=ENV_EXAMPLE)
    assert result.returncode != 0
    assert "GATEWAY_API_KEYS" in result.stderr


def test_env_example_settings_reach_the_services(tmp_path: Path) -> None:
    """With keys filled in, the example's settings are what the gateway and ports get."""
    filled = tmp_path / "gateway.env"
    text = ENV_EXAMPLE.read_text(encoding="utf-8")
    filled.write_text(
        text.replace("GATEWAY_API_KEYS=\n", f"GATEWAY_API_KEYS={TEST_API_KEYS}\n")
        .replace("GATEWAY_DEFAULT_MODEL=resnet50", "GATEWAY_DEFAULT_MODEL=efficientnet_lite0")
        .replace("GATEWAY_PORT=8080", "GATEWAY_PORT=18080"),
        encoding="utf-8",
    )
    result = run_config(tmp_path, env_file=filled)
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    environment = services["gateway"]["environment"]
    assert environment["GATEWAY_API_KEYS"] == TEST_API_KEYS
    assert environment["GATEWAY_DEFAULT_MODEL"] == "efficientnet_lite0"
    assert published_ports(services["gateway"])[8080] == ("0.0.0.0", 18080)
    assert services["export"]["user"] == "1000:1000"


def test_env_example_names_only_variables_compose_reads() -> None:
    """Every variable in the example is one docker-compose.yml interpolates (no dead settings)."""
    compose_text = COMPOSE_FILE.read_text(encoding="utf-8")
    read = set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", compose_text))
    names = set(read_env_file(ENV_EXAMPLE))
    assert names, "the example sets nothing"
    assert names <= read, f"not read by docker-compose.yml: {sorted(names - read)}"
