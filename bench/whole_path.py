"""The HTTP stages: the gateway (gunicorn + local Triton), with its analysis history off and on,
with rollout routing on, and the seed-style baseline.

All are measured identically: the same JSON bodies (base64 JPEG data URLs, built before
any clock starts), the same API-key header, the same load generator, one checked request
before the timed windows (the answer must parse and carry a label), then a warm-up and a
fixed window per concurrency level. The `gateway` stage runs with the history off (set off
explicitly, whatever this environment says); `gateway_history` is the same gateway storing
every answer in a new SQLite file of the run's temporary folder (migrated first), as
`make run` does by default. `gateway_rollout` is the history-off gateway with
GATEWAY_ROLLOUT_DIR set to a new folder: measured only once its controller has adopted the
model (the record names a stable version), so every timed request is routed by the record.
`gateway_two_tritons` (bench/gateway_two_tritons.py) runs a gateway whose GATEWAY_TRITON_URL
lists this Triton and a second one on the same repository (`second_triton_gateway`).

Every gateway runs with the answer cache off (GATEWAY_CACHE=off) unless a stage asks for it:
the bodies cycle through a few photos, so with the cache on (the gateway's default) the
windows would measure cache hits, not the path. Only `gateway_cache` turns it on.
"""

from __future__ import annotations

import http.client
import json
import os
import secrets
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from bench import gateway_metrics
from bench.cpu_time import with_server_cpu
from bench.loadgen import HttpTarget, Measurement, sweep
from bench.repository import PublishedModel
from bench.servers import ServerError, running
from bench.triton_stats import with_triton_breakdown
from local_stack.gateway_server import GatewayServer
from local_triton import TritonServer, free_port, serving

HOST = "127.0.0.1"
TRITON_READY_TIMEOUT_S = 240.0
GATEWAY_READY_TIMEOUT_S = 120.0
SEED_READY_TIMEOUT_S = 180.0
CHECK_TIMEOUT_S = 60.0
MIGRATE_TIMEOUT_S = 30.0
ADOPT_TIMEOUT_S = 30.0  # the controller adopts on its first cycle, a second or two after boot
ADOPT_POLL_S = 0.1
STATS_FLUSH_WAIT_S = 2.0  # each worker writes its counts every second (rollout/stats.py)
HISTORY_WRITES = "gateway_history_writes"  # the counter family (samples end in _total)


def local_triton(
    model: PublishedModel, log_dir: Path, name: str = "triton"
) -> AbstractContextManager[TritonServer]:
    """Run the real Triton on the model's repository (poll mode), logged to `<name>`.log."""
    return serving(triton_server(model, log_dir, name), TRITON_READY_TIMEOUT_S)


def triton_server(model: PublishedModel, log_dir: Path, name: str = "triton") -> TritonServer:
    """The real Triton on the model's repository (poll mode, free ports), not started."""
    return TritonServer(
        model.repository,
        model_control_mode="poll",
        # What `python -m local_triton` defaults to, which the bench ran before.
        poll_seconds=5,
        exit_timeout_seconds=5,
        log_file=log_dir / f"{name}.log",
    )


@contextmanager
def second_triton_gateway(
    model: PublishedModel, first: TritonServer, api_key: str, log_dir: Path
) -> Iterator[tuple[TritonServer, GatewayServer]]:
    """A second Triton (triton-2.log) on the same repository, and a gateway over both.

    Both start side by side (the gateway needs one ready server to be ready); both are
    ready before this yields them, and both are stopped on the way out, the gateway first.
    """
    second = triton_server(model, log_dir, "triton-2")
    server = gateway_server(
        model, f"{first.grpc_url},{second.grpc_url}", api_key, log_dir, name="gateway-two-tritons"
    )
    second.start()
    try:
        with serving(server, GATEWAY_READY_TIMEOUT_S) as gateway_process:
            second.wait_ready(TRITON_READY_TIMEOUT_S)
            yield second, gateway_process
    finally:
        second.stop()


def gateway(
    model: PublishedModel,
    triton: TritonServer,
    api_key: str,
    log_dir: Path,
    history: Mapping[str, str] | None = None,
    rollout: Mapping[str, str] | None = None,
    cache: bool = False,
) -> AbstractContextManager[GatewayServer]:
    """Run the gateway under gunicorn (its own gunicorn.conf.py) until /ready answers 200.

    The arguments are gateway_server's.
    """
    server = gateway_server(model, triton.grpc_url, api_key, log_dir, history, rollout, cache=cache)
    return serving(server, GATEWAY_READY_TIMEOUT_S)


def gateway_server(
    model: PublishedModel,
    triton_url: str,
    api_key: str,
    log_dir: Path,
    history: Mapping[str, str] | None = None,
    rollout: Mapping[str, str] | None = None,
    *,
    cache: bool = False,
    name: str | None = None,
) -> GatewayServer:
    """The gateway's server, not started: its settings, log file and metrics folder.

    `triton_url`: GATEWAY_TRITON_URL, one host:port or a comma-separated list of them.
    `history`: GATEWAY_HISTORY_* settings (history_database's); None: history off.
    `rollout`: GATEWAY_ROLLOUT_* settings (rollout_directory's); None: rollout off.
    `cache`: the answer cache on, in each worker's memory; off by default (see the module).
    `name`: of its log and metrics folder; by default named after what is on.
    """
    if name is None:
        name = "gateway"
        if history:
            name = "gateway-history"
        elif rollout:
            name = "gateway-rollout"
        elif cache:
            name = "gateway-cache"
    # Each gateway gets an empty multiprocess folder: no other run's worker files in its sums.
    metrics = metrics_dir(log_dir, name)
    metrics.mkdir(parents=True, exist_ok=True)
    return GatewayServer(
        {
            "GATEWAY_TRITON_URL": triton_url,
            "GATEWAY_DEFAULT_MODEL": model.name,
            "GATEWAY_MODEL_REPOSITORY": str(model.repository),
            "GATEWAY_API_KEYS": api_key,
            "PROMETHEUS_MULTIPROC_DIR": str(metrics),
            # Off unless asked for: a GATEWAY_HISTORY_URL in our environment must not leak in.
            "GATEWAY_HISTORY_URL": "",
            "GATEWAY_ROLLOUT_DIR": "",
            # Off unless asked for: the bodies repeat a few photos, so a cache would answer
            # most timed requests without decoding them or calling Triton.
            "GATEWAY_CACHE": "on" if cache else "off",
            # No Redis (the cache stays in each worker's memory) and no rate limit: neither
            # from this environment may change what is measured.
            "GATEWAY_REDIS_URL": "",
            "GATEWAY_RATE_LIMIT": "",
            **(history or {}),
            **(rollout or {}),
        },
        host=HOST,
        log_path=log_dir / f"{name}.log",
        ready_path="/ready",
    )


def metrics_dir(log_dir: Path, name: str) -> Path:
    """The prometheus_client multiprocess folder of the gateway named `name`."""
    return log_dir / f"{name}-prometheus"


def history_database(directory: Path) -> dict[str, str]:
    """Create and migrate a new SQLite history in `directory`; return the gateway's settings.

    The database is what `make run` uses by default; the secret is a fresh random one.
    """
    from gateway.history.store import HistoryStore, HistoryUnavailable  # SQLAlchemy: only here

    directory.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{directory / 'history.sqlite'}"
    store = HistoryStore(url, MIGRATE_TIMEOUT_S)
    try:
        store.upgrade()
    except HistoryUnavailable as error:
        raise ServerError(f"the history database {url} could not be migrated: {error}") from None
    finally:
        store.dispose()
    return {"GATEWAY_HISTORY_URL": url, "GATEWAY_HISTORY_SECRET": secrets.token_urlsafe(32)}


def rollout_directory(directory: Path) -> dict[str, str]:
    """Create a new, empty rollout folder; return the gateway's settings for it.

    The controller is set on and the refresh interval to the gateway's default explicitly, so
    neither a value in this environment nor a record of another run changes what is measured.
    """
    from gateway.config import Settings

    directory.mkdir(parents=True, exist_ok=False)
    return {
        "GATEWAY_ROLLOUT_DIR": str(directory),
        "GATEWAY_ROLLOUT_CONTROLLER": "on",
        "GATEWAY_ROLLOUT_REFRESH_S": str(Settings.rollout_refresh_s),
    }


def wait_for_adoption(
    directory: Path,
    model: str,
    timeout_s: float = ADOPT_TIMEOUT_S,
    poll_s: float = ADOPT_POLL_S,
) -> str:
    """Wait until `<directory>/<model>.json` names a stable version; return it.

    ServerError after `timeout_s`: the controller did not adopt the model (its log says why).
    """
    from gateway.rollout.state import RolloutError, RolloutStore

    store = RolloutStore(directory)
    deadline = time.monotonic() + timeout_s
    problem = "no record yet"
    while True:
        try:
            state = store.read(model)
        except (RolloutError, OSError) as error:  # records are replaced atomically: unexpected
            state, problem = None, str(error)
        if state is not None and state.stable is not None:
            return state.stable
        if state is not None:
            problem = f"the record has no stable version (phase {state.phase})"
        if time.monotonic() >= deadline:
            raise ServerError(
                f"the rollout controller did not adopt {model} within {timeout_s:.0f} s "
                f"({store.path(model)}: {problem}); see the gateway's log"
            )
        time.sleep(poll_s)


def rollout_routed(directory: Path, model: str, version: str) -> dict[str, int]:
    """The routed answers the workers counted for `model` `version` (requests, errors,
    timeouts), from their stats files; waits for one flush first."""
    from gateway.rollout.controller import STATS_DIR
    from gateway.rollout.stats import read_health

    # The counts live in the workers' memory until their flusher writes them, every second.
    time.sleep(STATS_FLUSH_WAIT_S)
    # The whole stage (check, warm-ups, windows) fits well inside the stats' 600 s memory.
    health = read_health(directory / STATS_DIR, model, version, window_s=3600.0)
    return {"requests": health.requests, "errors": health.errors, "timeouts": health.timeouts}


def history_writes(port: int) -> dict[str, int]:
    """The gateway's history writes so far, by outcome ("stored", "failed"), all workers;
    empty when /metrics cannot be read."""
    text = gateway_metrics.exposition(port)
    return parse_history_writes(text) if text is not None else {}


def parse_history_writes(text: str) -> dict[str, int]:
    """Sum gateway_history_writes_total by outcome in a Prometheus exposition."""
    return gateway_metrics.counter_by_label(text, HISTORY_WRITES, "outcome")


@contextmanager
def seed_baseline(model: PublishedModel, log_dir: Path) -> Iterator[int]:
    """Run the seed-style Flask baseline on the same weights and preprocessing; yield its port."""
    port = free_port()
    params = model.preprocess
    command = [
        sys.executable,
        "-m",
        "bench.seed_server",
        "--arch",
        model.arch,
        "--labels",
        str(model.labels_path),
        "--port",
        str(port),
        "--host",
        HOST,
        "--resize",
        str(params.resize_size),
        "--crop",
        str(params.crop_size),
        "--mean",
        ",".join(map(str, params.mean)),
        "--std",
        ",".join(map(str, params.std)),
        "--interpolation",
        params.interpolation,
    ]
    if model.state_dict is not None:
        command += ["--state-dict", str(model.state_dict)]
    with running(
        "seed baseline",
        command,
        os.environ,
        log_dir / "seed_server.log",
        f"http://{HOST}:{port}/health",
        SEED_READY_TIMEOUT_S,
    ):
        yield port


def new_api_key() -> str:
    """Return a fresh random API key for this run."""
    return secrets.token_urlsafe(24)


def check_answer(port: int, body: bytes, headers: dict[str, str], require_id: bool = False) -> str:
    """Send one request outside the timed window; return its label or raise ServerError.

    With `require_id`, the answer must carry the id of its stored history row.
    """
    connection = http.client.HTTPConnection(HOST, port, timeout=CHECK_TIMEOUT_S)
    try:
        connection.request("POST", "/analyze", body=body, headers=headers)
        response = connection.getresponse()
        text = response.read()
    except (OSError, http.client.HTTPException) as error:
        raise ServerError(f"the check request to port {port} failed: {error}") from None
    finally:
        connection.close()
    if response.status != 200:
        raise ServerError(f"the check request got HTTP {response.status}: {text[:300]!r}")
    try:
        answer = json.loads(text)
        label = str(answer["label"])
    except (ValueError, KeyError, TypeError):
        raise ServerError(f"the check request's answer has no label: {text[:300]!r}") from None
    if require_id and not answer.get("id"):
        raise ServerError(f"history is on but the check answer was not stored: {text[:300]!r}")
    return label


def _with_gateway_breakdown(
    port: int,
    progress: Callable[[str], None],
    inner: Callable[[Callable[[], Measurement]], Measurement] | None = None,
) -> Callable[[Callable[[], Measurement]], Measurement]:
    def around(window: Callable[[], Measurement]) -> Measurement:
        before = gateway_metrics.scrape(port)
        measurement = inner(window) if inner is not None else window()
        measurement.server_breakdown_ms = gateway_metrics.breakdown(
            before, gateway_metrics.scrape(port)
        )
        if measurement.server_breakdown_ms:
            progress(
                "    gateway mean ms/request: "
                + ", ".join(
                    f"{phase} {ms:.1f}" for phase, ms in measurement.server_breakdown_ms.items()
                )
            )
        return measurement

    return around


def measure_http(
    port: int,
    bodies: Sequence[bytes],
    api_key: str,
    levels: Sequence[int],
    warmup_s: float,
    duration_s: float,
    progress: Callable[[str], None] = print,
    gateway_phases: bool = False,
    triton: tuple[str, str] | None = None,
    require_id: bool = False,
    cpu_groups: Mapping[str, int] | None = None,
) -> list[Measurement]:
    """Check one answer, then sweep the concurrency levels against POST /analyze on `port`.

    With `gateway_phases`, each window also records the gateway's own per-phase mean times;
    with `triton` (gRPC URL, model name), Triton's per-phase mean times as well; with
    `require_id`, the check answer must have been stored in the history; with `cpu_groups`
    (name -> process group), the servers' CPU per image (bench.cpu_time).
    """
    headers = json_headers(api_key)
    label = check_answer(port, bodies[0], headers, require_id)
    progress(f"  check request answered label {label!r}")
    target = HttpTarget(
        host=HOST, port=port, path="/analyze", bodies=tuple(bodies), headers=tuple(headers.items())
    )
    return sweep_gateway(
        target, levels, warmup_s, duration_s, progress, gateway_phases, triton, cpu_groups
    )


def json_headers(api_key: str) -> dict[str, str]:
    """The headers of every JSON request to the gateway."""
    return {"Content-Type": "application/json", "X-API-Key": api_key}


def sweep_gateway(
    target: HttpTarget,
    levels: Sequence[int],
    warmup_s: float,
    duration_s: float,
    progress: Callable[[str], None],
    gateway_phases: bool,
    triton: tuple[str, str] | None,
    cpu_groups: Mapping[str, int] | None,
) -> list[Measurement]:
    """Sweep `target` at each level, each window wrapped in the snapshots asked for.

    The CPU snapshots (`cpu_groups`: name -> process group) sit innermost, so the metrics
    scrapes and statistics calls of the other wrappers stay outside what they count.
    """
    around = with_server_cpu(cpu_groups, progress) if cpu_groups else None
    if gateway_phases:
        around = _with_gateway_breakdown(target.port, progress, around)
    if triton is not None:
        around = with_triton_breakdown(*triton, progress, around)
    return sweep(target, levels, warmup_s, duration_s, progress, around)
