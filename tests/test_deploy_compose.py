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
from urllib.parse import urlsplit

import pytest
import yaml

from tests.fixtures.redis import fresh_redis

REPO = Path(__file__).resolve().parent.parent
COMPOSE_FILE = REPO / "docker-compose.yml"
GPU_OVERRIDE = REPO / "deploy" / "docker-compose.gpu.yml"
ENV_EXAMPLE = REPO / "deploy" / "gateway.env.example"
TRITON_IMAGE = "nvcr.io/nvidia/tritonserver:24.10-py3"
# An official PostgreSQL image pinned to one exact release on Debian bookworm.
POSTGRES_IMAGE = re.compile(r"postgres:(\d+)\.(\d+)-bookworm")
POSTGRES_DATA = "/var/lib/postgresql/data"
INSTALL_HINT = (
    "no Compose implementation found: install Debian's docker-compose "
    "(`apt-get install -y --no-install-recommends docker-compose`, or `make system-deps`), "
    "or set COMPOSE_COMMAND to one (e.g. COMPOSE_COMMAND='docker compose')"
)
TEST_API_KEYS = "deploy-test-key-1,deploy-test-key-2"
TEST_PASSWORD = "0123456789abcdef0123456789abcdef"
TEST_SECRET = "deploy-test-history-secret"
#: What compose cannot start without (each `${NAME:?message}` in the file), with test values.
REQUIRED = {
    "GATEWAY_API_KEYS": TEST_API_KEYS,
    "POSTGRES_PASSWORD": TEST_PASSWORD,
    "GATEWAY_HISTORY_SECRET": TEST_SECRET,
}
SERVICES = {"triton", "postgres", "redis", "history-migrate", "gateway", "prometheus", "export"}
# The official Redis image pinned to one exact release (major.minor.patch) on Alpine.
REDIS_IMAGE = re.compile(r"redis:(\d+)\.(\d+)\.(\d+)-alpine")
REDIS_URL = "redis://redis:6379/0"
MIGRATE_COMMAND = ["python", "-m", "gateway.history", "upgrade"]
ROLLOUT_DIR = "/var/lib/visionai/rollout"
ROLLOUT_VOLUME = "rollout"
GATEWAY_DOCKERFILE = REPO / "deploy" / "gateway.Dockerfile"


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
        if not key.startswith(
            ("GATEWAY_", "COMPOSE_", "TRITON_", "PROMETHEUS_", "EXPORT_", "POSTGRES_")
        )
    }
    clean_env.update(env or {})
    return subprocess.run(
        argv, cwd=REPO, env=clean_env, capture_output=True, text=True, timeout=120, check=False
    )


def load_config(tmp_path: Path, *files: Path) -> dict[str, Any]:
    """Return the normalized model that `config` prints, with the required settings set."""
    result = run_config(tmp_path, *files, env=REQUIRED)
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


def network_names(service: Mapping[str, Any]) -> set[str]:
    """Return the networks a service joins (list or mapping form; none named: `default`)."""
    networks = service.get("networks")
    return set(networks) if networks else {"default"}


def healthcheck_disabled(service: Mapping[str, Any]) -> bool:
    """Tell whether a service turns its image's HEALTHCHECK off (v2: disable, v1: NONE)."""
    check = service.get("healthcheck", {})
    return bool(check.get("disable")) or list(check.get("test", [])) == ["NONE"]


def command_argv(service: Mapping[str, Any]) -> list[str]:
    """Return a service's command as an argv list."""
    command = service.get("command", [])
    return shlex.split(command) if isinstance(command, str) else [str(part) for part in command]


def dockerfile_of(service: Mapping[str, Any]) -> Path:
    """Return the absolute path of the Dockerfile a service builds from."""
    build = service["build"]
    context = Path(str(build["context"]))
    return (context / str(build.get("dockerfile", "Dockerfile"))).resolve()


def test_config_names_the_seven_services(config: dict[str, Any]) -> None:
    """`config` accepts the file: triton, postgres, redis, history-migrate, gateway, prometheus,
    export."""
    assert set(config["services"]) == SERVICES


def test_triton_service_runs_ngc_triton_in_explicit_mode(config: dict[str, Any]) -> None:
    """Triton: the NGC 24.10 image, explicit model control with every model loaded at start
    (rollout loads the versions it routes to; poll mode would swap them unchecked), strict
    readiness, the repo at /models."""
    triton = config["services"]["triton"]
    assert triton["image"] == TRITON_IMAGE
    argv = command_argv(triton)
    assert argv[0] == "tritonserver"
    assert set(argv[1:]) == {
        "--model-repository=/models",
        "--model-control-mode=explicit",
        "--load-model=*",
        "--strict-readiness=true",
    }
    assert not any("poll" in arg for arg in argv)
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
    assert environment["GATEWAY_ROLLOUT_DIR"] == ROLLOUT_DIR


def test_gateway_keeps_rollout_records_on_a_named_read_write_volume(
    config: dict[str, Any],
) -> None:
    """GATEWAY_ROLLOUT_DIR is the named volume `rollout`, read-write, declared at the top level,
    outside /models (Triton would see it), mounted by no other service."""
    services = config["services"]
    assert mounts(services["gateway"])[ROLLOUT_DIR] == (ROLLOUT_VOLUME, False)
    assert ROLLOUT_VOLUME in config["volumes"]
    assert not ROLLOUT_DIR.startswith("/models/")
    for name, service in services.items():
        if name != "gateway":
            sources = {source for source, _ in mounts(service).values()}
            assert ROLLOUT_VOLUME not in sources, f"{name} mounts the rollout records"


def test_gateway_rollout_settings_are_ones_the_gateway_accepts(config: dict[str, Any]) -> None:
    """The rendered gateway environment parses (gateway.config.Settings): rollout on, records on
    the volume, refreshed every 0.5 s, the controller on; the repository read-only beside it."""
    from gateway.config import Settings

    environment = config["services"]["gateway"]["environment"]
    settings = Settings.from_env({key: str(value) for key, value in environment.items()})
    assert settings.rollout_dir == Path(ROLLOUT_DIR)
    assert settings.rollout_refresh_s == 0.5 and settings.rollout_controller
    assert mounts(config["services"]["gateway"])["/models"][1], "the repository stays read-only"


def test_gateway_image_owns_the_rollout_mount_point() -> None:
    """The image creates GATEWAY_ROLLOUT_DIR and gives it to its unprivileged user before USER:
    a new named volume takes that directory's owner, else root's and the gateway cannot write."""
    text = GATEWAY_DOCKERFILE.read_text(encoding="utf-8").replace("\\\n", " ")
    before_user = text.split("\nUSER gateway", 1)[0]
    runs = [line for line in before_user.splitlines() if line.startswith("RUN ")]
    assert any(
        f"mkdir -p {ROLLOUT_DIR}" in run
        and re.search(rf"chown\s+(-R\s+)?(gateway|10001)(:\S+)?\s+{ROLLOUT_DIR}", run)
        for run in runs
    ), (
        f"deploy/gateway.Dockerfile must create {ROLLOUT_DIR} for the gateway user before "
        f"`USER gateway`: RUN mkdir -p {ROLLOUT_DIR} && chown gateway:gateway {ROLLOUT_DIR}"
    )


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


def test_postgres_service_runs_a_pinned_official_image(config: dict[str, Any]) -> None:
    """PostgreSQL: the official image at one exact release (major.minor) on bookworm."""
    postgres = config["services"]["postgres"]
    assert POSTGRES_IMAGE.fullmatch(postgres["image"]), postgres["image"]
    assert postgres["restart"] in {"unless-stopped", "always"}
    assert "build" not in postgres


def test_postgres_keeps_its_data_in_a_named_volume(config: dict[str, Any]) -> None:
    """The data directory is the named volume `postgres-data`, declared at the top level."""
    source, read_only = mounts(config["services"]["postgres"])[POSTGRES_DATA]
    assert source == "postgres-data" and not read_only
    assert "postgres-data" in config["volumes"]


def test_postgres_healthcheck_runs_pg_isready_on_its_database(config: dict[str, Any]) -> None:
    """The health check is pg_isready for the configured role and database, over TCP."""
    postgres = config["services"]["postgres"]
    check = postgres["healthcheck"]
    test = [str(part) for part in check["test"]]
    assert test[0] == "CMD" and test[1] == "pg_isready", test
    environment = postgres["environment"]
    assert test[test.index("-U") + 1] == environment["POSTGRES_USER"] == "visionai"
    assert test[test.index("-d") + 1] == environment["POSTGRES_DB"] == "visionai"
    # The socket-only server of the image's first-start initialisation must not look ready.
    assert test[test.index("-h") + 1] == "127.0.0.1"
    assert {"interval", "timeout", "retries", "start_period"} <= set(check)


def test_postgres_is_reachable_only_on_an_internal_network(config: dict[str, Any]) -> None:
    """No published port; only on `history`, an internal network shared with the gateway and
    the migration, not with Triton, Prometheus or the exporter."""
    services = config["services"]
    assert "ports" not in services["postgres"]
    assert network_names(services["postgres"]) == {"history"}
    assert config["networks"]["history"]["internal"] is True
    joined = {name for name, service in services.items() if "history" in network_names(service)}
    assert joined == {"postgres", "history-migrate", "gateway"}
    assert "default" in network_names(services["gateway"]), "Triton and the published port"


def test_redis_service_runs_a_pinned_official_image_without_persistence(
    config: dict[str, Any],
) -> None:
    """Redis: the official image at one exact release, restarted like the others, with no RDB,
    no AOF and no volume (a cache and counters), its memory bounded with LRU eviction."""
    redis = config["services"]["redis"]
    assert REDIS_IMAGE.fullmatch(redis["image"]), redis["image"]
    assert redis["restart"] in {"unless-stopped", "always"}
    assert "build" not in redis and "volumes" not in redis
    argv = command_argv(redis)
    assert argv[0] == "redis-server"
    options = dict(zip(argv[1::2], argv[2::2], strict=True))
    assert options["--save"] == "" and options["--appendonly"] == "no"
    assert re.fullmatch(r"\d+mb", options["--maxmemory"]), options["--maxmemory"]
    assert options["--maxmemory-policy"] == "allkeys-lru"


def test_redis_healthcheck_wants_a_pong(config: dict[str, Any]) -> None:
    """The health check is `redis-cli ping` that only a PONG passes (redis-cli exits 0 on an
    error reply such as NOAUTH), with the usual timing settings."""
    check = config["services"]["redis"]["healthcheck"]
    test = [str(part) for part in check["test"]]
    assert test[0] == "CMD-SHELL" and len(test) == 2, test
    assert test[1].startswith("redis-cli ping |") and "PONG" in test[1], test
    assert {"interval", "timeout", "retries", "start_period"} <= set(check)


def redis_healthcheck_on(port: int) -> subprocess.CompletedProcess[str]:
    """Run the compose file's Redis health check here, against 127.0.0.1:port."""
    raw = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))["services"]["redis"]
    kind, command = raw["healthcheck"]["test"]
    assert kind == "CMD-SHELL" and command.startswith("redis-cli "), command
    if shutil.which("redis-cli") is None:
        pytest.fail(
            "redis-cli is needed to run Redis's health check here: run "
            "`bash scripts/install-system-deps.sh` (Debian's redis-server brings redis-tools)"
        )
    # In the container it reaches the default 127.0.0.1:6379; here, the fixture's port.
    local = command.replace("redis-cli ", f"redis-cli -p {port} ", 1)
    return subprocess.run(
        ["sh", "-c", local], capture_output=True, text=True, timeout=30, check=False
    )


def test_redis_healthcheck_passes_on_a_live_redis_only() -> None:
    """Run for real: the check passes on a running Redis, fails once a password is required
    (NOAUTH, not PONG) and fails when nothing listens."""
    with fresh_redis() as server:
        assert redis_healthcheck_on(server.port).returncode == 0
        client = server.client()
        try:
            client.config_set("requirepass", "not-given-to-the-check")
        finally:
            client.close()
        assert redis_healthcheck_on(server.port).returncode != 0
        server.kill()
        assert redis_healthcheck_on(server.port).returncode != 0


def test_redis_is_reachable_only_on_an_internal_network(config: dict[str, Any]) -> None:
    """No published port; only on `cache`, an internal network it shares with the gateway
    alone (not Triton, PostgreSQL, Prometheus or the exporter)."""
    services = config["services"]
    assert "ports" not in services["redis"]
    assert network_names(services["redis"]) == {"cache"}
    assert config["networks"]["cache"]["internal"] is True
    joined = {name for name, service in services.items() if "cache" in network_names(service)}
    assert joined == {"redis", "gateway"}


def test_gateway_waits_for_a_healthy_redis_and_gets_its_url(config: dict[str, Any]) -> None:
    """The gateway starts only once Redis is healthy and gets GATEWAY_REDIS_URL naming the
    redis service (database 0), a URL the gateway's settings accept."""
    from gateway.config import Settings

    gateway = config["services"]["gateway"]
    assert gateway["depends_on"]["redis"]["condition"] == "service_healthy"
    url = gateway["environment"]["GATEWAY_REDIS_URL"]
    assert url == REDIS_URL
    parts = urlsplit(url)
    assert parts.hostname in config["services"] and parts.port == 6379 and parts.path == "/0"
    environment = {key: str(value) for key, value in gateway["environment"].items()}
    assert Settings.from_env(environment).redis_url == REDIS_URL


def test_compose_file_holds_no_password_or_secret(config: dict[str, Any]) -> None:
    """The file itself interpolates every password and secret (`${NAME:?...}`, from the env
    file); the rendered services get the values given, in the right places."""
    raw = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))["services"]
    for name, service in raw.items():
        for key, value in dict(service.get("environment", {})).items():
            if "PASSWORD" in key or "SECRET" in key:
                assert str(value).startswith(f"${{{key}:?"), (name, key, value)
    for name in ("history-migrate", "gateway"):
        url = raw[name]["environment"]["GATEWAY_HISTORY_URL"]
        assert ":${POSTGRES_PASSWORD:?" in url and "@postgres:5432/" in url, (name, url)
    text = COMPOSE_FILE.read_text(encoding="utf-8")
    assert "POSTGRES_PASSWORD:" in text and TEST_PASSWORD not in text and TEST_SECRET not in text

    services = config["services"]
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"] == TEST_PASSWORD
    expected = f"postgresql+psycopg://visionai:{TEST_PASSWORD}@postgres:5432/visionai"
    assert services["gateway"]["environment"]["GATEWAY_HISTORY_URL"] == expected
    assert services["history-migrate"]["environment"]["GATEWAY_HISTORY_URL"] == expected
    assert services["gateway"]["environment"]["GATEWAY_HISTORY_SECRET"] == TEST_SECRET
    assert "GATEWAY_HISTORY_SECRET" not in services["history-migrate"]["environment"]


def test_history_url_is_one_the_gateway_accepts(config: dict[str, Any]) -> None:
    """The URL compose builds parses as a PostgreSQL (psycopg 3) history URL."""
    from gateway.history.store import history_url

    url = history_url(config["services"]["gateway"]["environment"]["GATEWAY_HISTORY_URL"])
    assert url.drivername == "postgresql+psycopg"
    assert (url.host, url.port, url.username, url.database) == (
        "postgres",
        5432,
        "visionai",
        "visionai",
    )
    assert url.password == TEST_PASSWORD


def test_history_migrate_is_a_one_shot_upgrade_from_the_gateway_image(
    config: dict[str, Any],
) -> None:
    """history-migrate runs `python -m gateway.history upgrade` from the gateway's own image,
    once PostgreSQL is healthy, then exits: no restart, no port, no /ready health check."""
    services = config["services"]
    migrate, gateway = services["history-migrate"], services["gateway"]
    assert command_argv(migrate) == MIGRATE_COMMAND
    assert migrate["image"] == gateway["image"]
    assert dockerfile_of(migrate) == dockerfile_of(gateway)
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert migrate["restart"] == "no"
    assert "ports" not in migrate and "profiles" not in migrate, "it runs on every `up`"
    assert healthcheck_disabled(migrate)


def test_gateway_waits_for_postgres_and_a_successful_migration(config: dict[str, Any]) -> None:
    """The gateway starts only once PostgreSQL is healthy and the migration exited 0 (it
    refuses to start on a schema that is behind)."""
    depends_on = config["services"]["gateway"]["depends_on"]
    assert depends_on["postgres"]["condition"] == "service_healthy"
    assert depends_on["history-migrate"]["condition"] == "service_completed_successfully"
    assert config["services"]["gateway"]["environment"]["GATEWAY_HISTORY_RETENTION_DAYS"] == "90"


def test_base_file_reserves_no_gpu(config: dict[str, Any]) -> None:
    """Without the override nothing asks for a GPU, so the stack starts on CPU-only hosts."""
    assert "deploy" not in config["services"]["triton"]


def test_gpu_override_reserves_nvidia_gpus_for_triton(gpu_config: dict[str, Any]) -> None:
    """deploy/docker-compose.gpu.yml merges an NVIDIA GPU reservation into triton only."""
    devices = gpu_config["services"]["triton"]["deploy"]["resources"]["reservations"]["devices"]
    assert len(devices) == 1
    assert devices[0]["driver"] == "nvidia"
    assert devices[0]["capabilities"] == ["gpu"]
    for name in SERVICES - {"triton"}:
        assert "deploy" not in gpu_config["services"][name]
    # The merge keeps everything else of the base file.
    assert gpu_config["services"]["triton"]["image"] == TRITON_IMAGE


@pytest.mark.parametrize("missing", sorted(REQUIRED))
def test_missing_required_setting_stops_compose_with_a_clear_message(
    tmp_path: Path, missing: str
) -> None:
    """Without the API keys, the database password or the history secret, compose refuses to
    start and says which variable to set and where."""
    result = run_config(tmp_path, env={k: v for k, v in REQUIRED.items() if k != missing})
    assert result.returncode != 0
    assert missing in result.stderr
    assert "gateway.env.example" in result.stderr
    assert run_config(tmp_path).returncode != 0, "with none of them set either"


def read_env_file(path: Path) -> dict[str, str]:
    """Return the NAME=value settings of an env file, skipping comments and blank lines."""
    settings: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            settings[name.strip()] = value.strip()
    return settings


def test_env_example_ships_no_usable_secret(tmp_path: Path) -> None:
    """The example leaves the API keys, the database password and the history secret empty,
    so a copied-as-is file cannot start the stack."""
    settings = read_env_file(ENV_EXAMPLE)
    assert {name: settings[name] for name in REQUIRED} == dict.fromkeys(REQUIRED, "")
    result = run_config(tmp_path, env_file=ENV_EXAMPLE)
    assert result.returncode != 0
    assert any(name in result.stderr for name in REQUIRED)
    # How to make the password and the secret is written next to them.
    assert ENV_EXAMPLE.read_text(encoding="utf-8").count("openssl rand -hex 32") >= 3


def test_env_example_settings_reach_the_services(tmp_path: Path) -> None:
    """With keys filled in, the example's settings are what the gateway and ports get."""
    filled = tmp_path / "gateway.env"
    text = ENV_EXAMPLE.read_text(encoding="utf-8")
    for name, value in REQUIRED.items():
        text = text.replace(f"\n{name}=\n", f"\n{name}={value}\n")
    filled.write_text(
        text.replace("GATEWAY_DEFAULT_MODEL=resnet50", "GATEWAY_DEFAULT_MODEL=efficientnet_lite0")
        .replace("GATEWAY_PORT=8080", "GATEWAY_PORT=18080")
        .replace("GATEWAY_ROLLOUT_CONTROLLER=on", "GATEWAY_ROLLOUT_CONTROLLER=off")
        .replace("GATEWAY_ROLLOUT_REFRESH_S=0.5", "GATEWAY_ROLLOUT_REFRESH_S=1")
        .replace("POSTGRES_DB=visionai", "POSTGRES_DB=history"),
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
    assert environment["GATEWAY_HISTORY_SECRET"] == TEST_SECRET
    assert services["postgres"]["environment"]["POSTGRES_DB"] == "history"
    assert environment["GATEWAY_HISTORY_URL"].endswith(f":{TEST_PASSWORD}@postgres:5432/history")
    assert environment["GATEWAY_ROLLOUT_CONTROLLER"] == "off"
    assert environment["GATEWAY_ROLLOUT_REFRESH_S"] == "1"
    assert environment["GATEWAY_ROLLOUT_DIR"] == ROLLOUT_DIR, "fixed to the volume"


def test_env_example_documents_the_rollout_settings() -> None:
    """The example sets the rollout's refresh and controller switch and explains why the
    directory is not among its settings."""
    settings = read_env_file(ENV_EXAMPLE)
    assert settings["GATEWAY_ROLLOUT_REFRESH_S"] == "0.5"
    assert settings["GATEWAY_ROLLOUT_CONTROLLER"] == "on"
    assert "GATEWAY_ROLLOUT_DIR" not in settings
    text = ENV_EXAMPLE.read_text(encoding="utf-8")
    assert "GATEWAY_ROLLOUT_DIR, where the records live" in text and ROLLOUT_DIR in text


def test_env_example_names_only_variables_compose_reads() -> None:
    """Every variable in the example is one docker-compose.yml interpolates (no dead settings)."""
    compose_text = COMPOSE_FILE.read_text(encoding="utf-8")
    read = set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", compose_text))
    names = set(read_env_file(ENV_EXAMPLE))
    assert names, "the example sets nothing"
    assert names <= read, f"not read by docker-compose.yml: {sorted(names - read)}"
