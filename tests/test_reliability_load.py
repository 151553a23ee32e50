"""Load: concurrent clients send real photos through gunicorn to EfficientNet-Lite0 on Triton.

CI form: 8 clients for 10 s. Full form (`-m slow`): 16 clients for 60 s. Both sizes can be
changed with RELIABILITY_LOAD_CLIENTS / RELIABILITY_LOAD_SECONDS. Figures: requests,
errors (must be 0), p50/p99, and the RSS of the gunicorn workers at start and end
(growth under 10 %).
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.fixtures.gateway import GatewayProcess, StartGateway
from tests.reliability_runs_support import RunSize, ci_and_full, patient_gateway
from tests.reliability_support import (
    percentile,
    photo_payloads,
    report,
    run_clients,
    summary,
    wait_for_workers,
    worker_rss,
)

pytestmark = pytest.mark.e2e

HTTP_TIMEOUT_S = 30.0
MODEL = "efficientnet_lite0"
MAX_RSS_GROWTH = 0.10


def run_load(gateway: GatewayProcess, clients: int, duration_s: float) -> None:
    """Warm up, then ``clients`` clients for ``duration_s``; assert 0 errors and bounded RSS."""
    payloads = photo_payloads()
    cycle = itertools.cycle(range(len(payloads)))

    def send(session: requests.Session, _: int) -> requests.Response:
        return session.post(
            f"{gateway.url}/analyze",
            json=payloads[next(cycle)],
            headers=gateway.headers,
            timeout=HTTP_TIMEOUT_S,
        )

    def send_on_new_connection(_: requests.Session, index: int) -> requests.Response:
        return requests.post(
            f"{gateway.url}/analyze",
            json=payloads[index % len(payloads)],
            headers=gateway.headers,
            timeout=HTTP_TIMEOUT_S,
        )

    wait_for_workers(gateway.process.pid, int(gateway.env["GATEWAY_WORKERS"]))
    # Warm-up, a new connection per request so that every worker gets its share: each
    # imports, connects, caches model facts and grows its thread arenas before RSS is taken.
    warm = run_clients(clients, send_on_new_connection, duration_s=max(3.0, 0.2 * duration_s))
    assert warm.statuses().get(200, 0) == len(warm.outcomes), warm.statuses()
    rss_start = worker_rss(gateway.process.pid)
    run = run_clients(clients, send, duration_s=duration_s)
    rss_end = worker_rss(gateway.process.pid)

    start_total, end_total = sum(rss_start.values()), sum(rss_end.values())
    growth = (end_total - start_total) / start_total if start_total else float("inf")
    ok = run.latencies(200)
    errors = [o for o in run.outcomes if o.status != 200]
    report(
        f"load: {clients} clients x {duration_s:.0f} s, {MODEL}, 4 real photos",
        summary(run),
        f"errors {len(errors)}; p50 {percentile(ok, 0.5) * 1000:.0f} ms, "
        f"p99 {percentile(ok, 0.99) * 1000:.0f} ms",
        f"worker RSS start {start_total / 2**20:.1f} MiB {sorted(rss_start.values())}, "
        f"end {end_total / 2**20:.1f} MiB, growth {growth * 100:+.1f} %",
    )
    assert len(run.outcomes) > clients
    assert not errors, f"{len(errors)} errors, e.g. {errors[0]}"
    for outcome in run.outcomes:
        assert outcome.body is not None and outcome.body["model"]["name"] == MODEL
    assert set(rss_start) == set(rss_end), "a worker was replaced during the run"
    assert len(rss_start) == 2 and start_total > 0
    assert growth < MAX_RSS_GROWTH


@pytest.mark.parametrize("size", ci_and_full(RunSize(8, 10.0), RunSize(16, 60.0)))
def test_load_has_no_errors_and_bounded_worker_memory(
    size: RunSize, triton_server: Any, model_repository: Path, start_gateway: StartGateway
) -> None:
    """8 clients for 10 s (full: 16 for 60 s) on real photos: 0 errors, RSS growth under 10 %."""
    # Closed-loop clients queue by design here: this is load, not overload.
    gateway = patient_gateway(start_gateway, triton_server, model_repository, MODEL)
    run_load(gateway, *size.from_env("RELIABILITY_LOAD"))
