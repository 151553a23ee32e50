"""Analysis history over real HTTP: gunicorn (2 workers), Triton, a SQLite file or PostgreSQL.

- Concurrency: 8 clients send 1000 images (full form, `-m slow`: 16 x 1000 each); every 200
  carries an id, ids are unique, and the database holds exactly those rows, written by both
  workers (SQLite: two processes writing one WAL file under the busy timeout).
- PostgreSQL SIGKILL under load, then restart: no 5xx, answers during the outage are 200 with
  ``"id": null``, every id an answer carried is stored, writes resume by themselves.
- Isolation: key B cannot list, read, count or delete key A's rows (404 on A's ids).
- Migrations from the command line, and the gateway's refusal to start on an unmigrated
  database (one line naming the command).

Sizes are overridable with RELIABILITY_HISTORY_* variables (`RunSize.from_env`).
Figures are printed with `report(...)` (pytest -s).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from prometheus_client.mmap_dict import MmapedDict
from sqlalchemy import select
from sqlalchemy.engine import make_url

from gateway.history.migrations import UPGRADE_COMMAND, head_revision
from gateway.history.schema import analyses
from gateway.history.store import HistoryStore, owner_of
from local_triton import TritonServer
from tests.fakes_gateway import encode_image
from tests.fixtures.gateway import GatewayProcess, StartGateway
from tests.fixtures.models import REPO_ROOT
from tests.fixtures.postgres import PostgresServer, fresh_database
from tests.reliability_runs_support import RunSize, ci_and_full, suite_gateway
from tests.reliability_support import (
    FAST_MODEL,
    LoadRun,
    Outcome,
    Send,
    env_int,
    report,
    run_clients,
    summary,
    wait_for,
    wait_for_workers,
    worker_pids,
)

pytestmark = pytest.mark.e2e

SECRET = "history-reliability-secret-" + secrets.token_urlsafe(12)
HTTP_TIMEOUT_S = 30.0
PATIENT_TIMEOUT_S = "20"  # closed-loop clients may queue: this is load, not overload
CLI_TIMEOUT_S = 60.0
START_TIMEOUT_S = 60.0
IMAGE_COUNT = 32
#: The breaker pauses at most 8 s between tries: writes resume well within this after restart.
RESUME_BOUND_S = 30.0
#: Answers in a window this long, all after the restart, must all carry ids ("resumed").
RESUMED_WINDOW_S = 2.0
TAIL_S = 2.0
WRITES_METRIC = "gateway_history_writes_total"


# -- sizes ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Volume:
    """How many clients send how many requests each."""

    clients: int
    requests_per_client: int

    def from_env(self, prefix: str) -> tuple[int, int]:
        """(clients, requests each), overridden by ``{prefix}_CLIENTS`` / ``{prefix}_REQUESTS``."""
        return (
            env_int(f"{prefix}_CLIENTS", self.clients),
            env_int(f"{prefix}_REQUESTS", self.requests_per_client),
        )


# -- helpers -------------------------------------------------------------------------------------


def images(count: int = IMAGE_COUNT) -> list[bytes]:
    """`count` distinct small PNGs (noise, 48x32)."""
    rng = np.random.default_rng(14)
    return [
        encode_image(rng.integers(0, 256, (32, 48, 3), dtype=np.uint8), "PNG") for _ in range(count)
    ]


def analyze_sender(gateway: GatewayProcess, payloads: list[bytes]) -> Send:
    """POST image `index % len(payloads)` as raw PNG, on a new connection each time.

    A new connection per request lets both workers' accept loops take their share, so both
    write to the database (keep-alive sessions could all stick to one worker).
    """

    def send(_: requests.Session, index: int) -> requests.Response:
        return requests.post(
            f"{gateway.url}/analyze",
            data=payloads[index % len(payloads)],
            headers={**gateway.headers, "Content-Type": "image/png"},
            timeout=HTTP_TIMEOUT_S,
        )

    return send


def answer_id(outcome: Outcome) -> str | None:
    """The id a 200 answer carried (None: none, or not a 200)."""
    if outcome.status != 200 or outcome.body is None:
        return None
    value = outcome.body.get("id")
    return value if isinstance(value, str) else None


def stored_rows(url: str) -> list[tuple[str, str, str]]:
    """(id, owner, image_sha256) of every row, read directly from the database."""
    store = HistoryStore(url, 10.0)
    try:
        with store.engine().connect() as connection:
            query = select(analyses.c.id, analyses.c.owner, analyses.c.image_sha256)
            return [(row.id, row.owner, row.image_sha256) for row in connection.execute(query)]
    finally:
        store.dispose()


def migrate(url: str) -> None:
    """Bring the database to the gateway's schema (as `python -m gateway.history upgrade`)."""
    store = HistoryStore(url, 10.0)
    try:
        store.upgrade()
    finally:
        store.dispose()


def stored_per_worker(metrics_dir: Path) -> dict[int, float]:
    """gateway_history_writes_total{outcome="stored"} of each process, from its metrics file."""
    counts: dict[int, float] = {}
    for path in metrics_dir.glob("counter_*.db"):
        pid = int(path.stem.split("_")[1])
        values = MmapedDict.read_all_values_from_file(str(path))  # type: ignore[no-untyped-call]
        for key, value, _timestamp, _position in values:
            _metric, name, labels, _help = json.loads(key)
            if name == WRITES_METRIC and labels == {"outcome": "stored"}:
                counts[pid] = counts.get(pid, 0.0) + float(value)
    return counts


def write_failures(gateway: GatewayProcess) -> list[str]:
    """The gateway's "history write failed" log lines (why an answer went without an id)."""
    return [line for line in gateway.logs().splitlines() if "history write failed" in line]


def history_gateway(
    start_gateway: StartGateway,
    triton: TritonServer,
    repository: Path,
    url: str,
    **env: str,
) -> GatewayProcess:
    """The suite's gateway on the fast model with history in `url`, both workers forked."""
    gateway = suite_gateway(
        start_gateway,
        triton,
        repository,
        FAST_MODEL,
        GATEWAY_HISTORY_URL=url,
        GATEWAY_HISTORY_SECRET=SECRET,
        GATEWAY_TRITON_TIMEOUT_S=PATIENT_TIMEOUT_S,
        GATEWAY_QUEUE_TIMEOUT_S=PATIENT_TIMEOUT_S,
        **env,
    )
    wait_for_workers(gateway.process.pid, int(gateway.env["GATEWAY_WORKERS"]))
    return gateway


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without GATEWAY_* settings, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    return {**env, **extra}


def history_cli(*args: str, url: str | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m gateway.history *args`` as a real process (the URL, if any, in its env)."""
    env = clean_env(GATEWAY_HISTORY_URL=url) if url is not None else clean_env()
    return subprocess.run(
        [sys.executable, "-m", "gateway.history", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        check=False,
    )


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty history database (never migrated): a SQLite file, or a fresh PostgreSQL one."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'history.sqlite'}"
    else:
        yield str(request.getfixturevalue("postgres_database"))


@pytest.fixture
def history_database(empty_database: str) -> str:
    """A migrated, empty history database (SQLite file or PostgreSQL)."""
    migrate(empty_database)
    return empty_database


# -- 1. concurrency --------------------------------------------------------------------------------


@pytest.mark.parametrize("size", ci_and_full(Volume(8, 125), Volume(16, 1000)))
def test_every_answer_is_one_stored_row_under_concurrency(
    size: Volume,
    history_database: str,
    fast_triton: TritonServer,
    fast_repository: Path,
    start_gateway: StartGateway,
) -> None:
    """8 clients x 125 images through 2 workers: one row per 200, ids unique, none lost."""
    clients, each = size.from_env("RELIABILITY_HISTORY_LOAD")
    gateway = history_gateway(start_gateway, fast_triton, fast_repository, history_database)
    payloads = images()
    run = run_clients(
        clients,
        analyze_sender(gateway, payloads),
        duration_s=max(120.0, each * clients * 0.5),  # a bound only: the count ends the run
        max_requests_per_client=each,
    )
    workers = worker_pids(gateway.process.pid)
    per_worker = stored_per_worker(Path(gateway.env["PROMETHEUS_MULTIPROC_DIR"]))
    gateway.stop()  # every answer is in; nothing writes any more
    failures = write_failures(gateway)
    rows = stored_rows(history_database)

    answered = [o for o in run.outcomes if o.status == 200]
    ids = [answer_id(o) for o in answered]
    carried = [i for i in ids if i is not None]
    row_ids = {row_id for row_id, _, _ in rows}
    report(
        f"history concurrency ({history_database.split(':')[0]}): {clients} clients x {each}",
        summary(run),
        f"200 answers {len(answered)}, with id {len(carried)}, rows {len(rows)}",
        f"rows stored per worker {dict(sorted(per_worker.items()))}",
        f"history write failures logged {len(failures)}{': ' + failures[0] if failures else ''}",
    )
    assert len(run.outcomes) == clients * each, "the run ended before every request was sent"
    assert run.statuses() == {200: clients * each}, run.statuses()
    missing = sorted(round(o.seconds, 2) for o in answered if answer_id(o) is None)
    assert not missing, (
        f"a healthy database left {len(missing)} answers without an id "
        f"(they took {missing} s): {failures}"
    )
    assert all(len(i) == 26 for i in carried)
    assert len(set(carried)) == len(carried), "an id was given twice"
    assert len(rows) == len(row_ids) == len(carried), "rows and answers differ in number"
    assert row_ids == set(carried), "an id an answer carried is missing from the database"
    assert {owner for _, owner, _ in rows} == {owner_of(SECRET.encode(), gateway.api_key)}
    assert {sha for _, _, sha in rows} <= {hashlib.sha256(p).hexdigest() for p in payloads}
    # Both workers wrote (the SQLite file had two writer processes), and nobody else did.
    assert set(per_worker) == set(workers) and len(workers) == 2, (per_worker, workers)
    assert all(count > 0 for count in per_worker.values()), per_worker
    assert sum(per_worker.values()) == len(rows)


# -- 2. PostgreSQL SIGKILL under load --------------------------------------------------------------


def _after(run: LoadRun, moment: float) -> list[Outcome]:
    """A snapshot of the outcomes of requests that started at or after `moment` (monotonic)."""
    return [o for o in list(run.outcomes) if o.started >= moment]


def _all_carry_ids_lately(run: LoadRun, since: float, clients: int) -> bool:
    """True when the answers of the last RESUMED_WINDOW_S, all begun after `since`, carry ids."""
    window_start = time.monotonic() - RESUMED_WINDOW_S
    if window_start < since:
        return False
    recent = _after(run, window_start)
    return len(recent) >= clients and all(answer_id(o) is not None for o in recent)


@pytest.mark.parametrize("size", ci_and_full(RunSize(8, 20.0), RunSize(16, 60.0)))
def test_postgres_sigkill_under_load_costs_only_ids(
    size: RunSize,
    postgres_server: PostgresServer,
    fast_triton: TritonServer,
    fast_repository: Path,
    start_gateway: StartGateway,
) -> None:
    """PostgreSQL SIGKILLed then restarted under load: no 5xx, no id lost, writes resume."""
    clients, seconds = size.from_env("RELIABILITY_HISTORY_OUTAGE")
    kill_after_s, outage_s = 0.2 * seconds, 0.2 * seconds
    run, stop = LoadRun(), threading.Event()
    marks: dict[str, float] = {}
    during: dict[str, Any] = {}
    try:
        with fresh_database(postgres_server) as url:
            migrate(url)
            gateway = history_gateway(start_gateway, fast_triton, fast_repository, url)
            workers_before = set(worker_pids(gateway.process.pid))
            load = threading.Thread(
                target=run_clients,
                args=(clients, analyze_sender(gateway, images())),
                kwargs={"duration_s": seconds + 3 * RESUME_BOUND_S, "stop": stop, "into": run},
                daemon=True,
            )
            marks["start"] = time.monotonic()
            load.start()
            try:
                time.sleep(kill_after_s)
                postgres_server.kill()
                marks["killed"] = time.monotonic()
                wait_for(
                    "an answer without an id while PostgreSQL is down",
                    lambda: any(answer_id(o) is None for o in _after(run, marks["killed"])),
                    RESUME_BOUND_S,
                )
                ready = requests.get(f"{gateway.url}/ready", timeout=HTTP_TIMEOUT_S)
                listing = requests.get(
                    f"{gateway.url}/analyses", headers=gateway.headers, timeout=HTTP_TIMEOUT_S
                )
                during["ready"] = (ready.status_code, ready.json().get("history"))
                during["listing"] = (listing.status_code, listing.headers.get("Retry-After"))
                time.sleep(max(0.0, marks["killed"] + outage_s - time.monotonic()))
                postgres_server.start()
                marks["restarted"] = time.monotonic()
                wait_for(
                    "an answer with an id after the restart",
                    lambda: any(answer_id(o) for o in _after(run, marks["restarted"])),
                    RESUME_BOUND_S,
                )
                marks["first_id"] = time.monotonic()
                wait_for(
                    "every answer to carry an id again",
                    lambda: _all_carry_ids_lately(run, marks["restarted"], clients),
                    RESUME_BOUND_S,
                )
                marks["resumed"] = time.monotonic() - RESUMED_WINDOW_S
                time.sleep(max(TAIL_S, marks["start"] + seconds - time.monotonic()))
                ready_after = requests.get(f"{gateway.url}/ready", timeout=HTTP_TIMEOUT_S)
                during["ready_after"] = ready_after.json().get("history")
            finally:
                stop.set()
                load.join(timeout=HTTP_TIMEOUT_S + 10)
            workers_after = set(worker_pids(gateway.process.pid))
            gateway.stop()  # before the database is dropped
            rows = {row_id for row_id, _, _ in stored_rows(url)}
    finally:
        if not postgres_server.is_running():  # the session's other tests need it
            postgres_server.start()

    answered = [o for o in run.outcomes if o.status == 200]
    carried = [i for i in (answer_id(o) for o in answered) if i is not None]
    nulls = [o for o in answered if answer_id(o) is None]
    late = _after(run, marks["resumed"])
    report(
        f"history PostgreSQL SIGKILL: {clients} clients x {run.wall_s:.0f} s",
        summary(run),
        f"down {marks['restarted'] - marks['killed']:.1f} s (kill to ready after restart); "
        f"answers with id null {len(nulls)} of {len(answered)}",
        f"writes resumed {marks['first_id'] - marks['restarted']:.1f} s after the restart "
        f"(first id), every answer with an id {marks['resumed'] - marks['restarted']:.1f} s after",
        f"rows {len(rows)}, ids answered {len(carried)}, "
        f"rows committed whose answer had no id {len(rows - set(carried))}",
        f"during the outage /ready {during['ready']}, GET /analyses {during['listing']}",
    )
    server_errors = [o for o in run.outcomes if o.status is None or o.status >= 500]
    assert not server_errors, f"{len(server_errors)} failed answers, e.g. {server_errors[0]}"
    assert run.statuses() == {200: len(run.outcomes)}, run.statuses()
    assert nulls, "no answer went without an id: the outage was not seen"
    unexplained = [o for o in nulls if "History is unavailable" not in str(o.body)]
    assert not unexplained, f"an answer without an id does not say why: {unexplained[0]}"
    assert len(set(carried)) == len(carried)
    assert set(carried) <= rows, f"{len(set(carried) - rows)} ids answered are not stored"
    assert len(rows) <= len(answered)
    assert late and all(answer_id(o) is not None for o in late), "writes stopped again"
    assert workers_after == workers_before, "a worker was replaced: writes resumed by restart"
    assert during["ready"] == (200, "unavailable")
    assert during["listing"][0] == 503 and during["listing"][1]
    assert during["ready_after"] == "ok"


# -- 3. isolation over HTTP ------------------------------------------------------------------------


def test_another_keys_rows_do_not_exist_over_http(
    history_database: str,
    fast_triton: TritonServer,
    fast_repository: Path,
    start_gateway: StartGateway,
) -> None:
    """Key B cannot list, read, count or delete key A's rows: 404 on A's ids, A's rows stay."""
    key_a, key_b = (f"history-{name}-{secrets.token_urlsafe(16)}" for name in ("a", "b"))
    gateway = history_gateway(
        start_gateway,
        fast_triton,
        fast_repository,
        history_database,
        GATEWAY_API_KEYS=f"{key_a},{key_b}",
    )
    a, b = {"X-API-Key": key_a}, {"X-API-Key": key_b}
    payloads = images(4)

    def get(path: str, headers: dict[str, str]) -> requests.Response:
        return requests.get(f"{gateway.url}{path}", headers=headers, timeout=HTTP_TIMEOUT_S)

    def delete(path: str, headers: dict[str, str]) -> requests.Response:
        return requests.delete(f"{gateway.url}{path}", headers=headers, timeout=HTTP_TIMEOUT_S)

    def analyze(headers: dict[str, str], data: bytes) -> str:
        response = requests.post(
            f"{gateway.url}/analyze",
            data=data,
            headers={**headers, "Content-Type": "image/png"},
            timeout=HTTP_TIMEOUT_S,
        )
        assert response.status_code == 200, response.text
        analysis_id = response.json()["id"]
        assert isinstance(analysis_id, str)
        return analysis_id

    mine = [analyze(a, data) for data in payloads[:3]]
    theirs = analyze(b, payloads[3])

    def listed(headers: dict[str, str], query: str = "") -> set[str]:
        response = get(f"/analyses?limit=100{query}", headers)
        assert response.status_code == 200, response.text
        return {row["id"] for row in response.json()["analyses"]}

    assert listed(b) == {theirs}
    assert listed(b, f"&model={FAST_MODEL}") == {theirs}
    assert listed(b, f"&before={max(mine)}") <= {theirs}
    for analysis_id in mine:
        read = get(f"/analyses/{analysis_id}", b)
        assert read.status_code == 404 and read.json()["error"] == "analysis_not_found"
        removed = delete(f"/analyses/{analysis_id}", b)
        assert removed.status_code == 404 and removed.json()["error"] == "analysis_not_found"
    assert get("/analyses/summary?days=1", b).json()["total"] == 1
    assert get(f"/analyses/{mine[0]}", {}).status_code == 401
    assert get(f"/analyses/{mine[0]}", {"X-API-Key": "not-a-key"}).status_code == 401
    assert delete("/analyses", b).json() == {"deleted": 1}
    assert listed(b) == set()

    # A's rows are all still there, and only A's.
    assert listed(a) == set(mine)
    assert all(get(f"/analyses/{i}", a).json()["id"] == i for i in mine)
    assert get("/analyses/summary?days=1", a).json()["total"] == 3
    assert get(f"/analyses/{theirs}", a).status_code == 404
    assert delete(f"/analyses/{mine[0]}", a).status_code == 204
    assert listed(a) == set(mine[1:])


# -- 4. migrations from the command line -----------------------------------------------------------


def test_migrations_from_the_command_line(
    empty_database: str,
    fast_triton: TritonServer,
    fast_repository: Path,
    start_gateway: StartGateway,
) -> None:
    """check fails naming upgrade; the gateway refuses to start; upgrade, then a no-op."""
    head = head_revision()
    password = make_url(empty_database).password  # None for SQLite

    check = history_cli("check", url=empty_database)
    assert check.returncode == 1, check.stdout + check.stderr
    assert UPGRADE_COMMAND in check.stderr and "not migrated" in check.stderr

    gateway = start_gateway(
        fast_triton.grpc_url,
        fast_repository,
        wait=False,
        GATEWAY_DEFAULT_MODEL=FAST_MODEL,
        GATEWAY_HISTORY_URL=empty_database,
        GATEWAY_HISTORY_SECRET=SECRET,
    )
    wait_for("the gateway to exit", lambda: not gateway.is_running(), START_TIMEOUT_S)
    logs = gateway.logs()
    refusals = {line.strip() for line in logs.splitlines() if UPGRADE_COMMAND in line}
    # 3: gunicorn stops when a worker fails to boot; 1: the master refused before forking.
    assert gateway.returncode in (1, 3), (gateway.returncode, logs)
    assert len(refusals) == 1, logs  # each worker may say it, but it is one sentence
    assert next(iter(refusals)).startswith("gateway: configuration error: "), logs
    assert "Traceback" not in logs, logs

    upgrade = history_cli("upgrade", url=empty_database)
    assert upgrade.returncode == 0, upgrade.stdout + upgrade.stderr
    assert f"upgraded from empty to {head}" in upgrade.stdout
    again = history_cli("upgrade", "--url", empty_database)  # --url instead of the variable
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"already at revision {head}" in again.stdout
    current = history_cli("check", url=empty_database)
    assert current.returncode == 0 and "schema is current" in current.stdout, current.stderr
    assert stored_rows(empty_database) == []

    # The database's password (PostgreSQL) is never printed.
    if password:
        for text in (check.stderr, logs, upgrade.stdout, again.stdout, current.stdout):
            assert str(password) not in text
