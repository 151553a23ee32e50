"""Overload: far more clients than capacity get fast 503s with Retry-After, never a pile-up.

The `slow` model answers one request per 0.1 s (capacity 10/s); the gateway admits 2
requests per worker with 2 waiting at most 1 s. Every request must get an HTTP answer
within its timeout: 200, or 503 `overloaded` with Retry-After; /health stays responsive.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from local_triton import TritonServer
from tests.fixtures.gateway import GatewayProcess, StartGateway
from tests.reliability_runs_support import RunSize, ci_and_full, suite_gateway
from tests.reliability_support import (
    SLOW_MODEL,
    LoadRun,
    env_int,
    median,
    percentile,
    photo_jpeg,
    report,
    run_clients,
    summary,
)

pytestmark = pytest.mark.e2e

MAX_INFLIGHT = 2
MAX_QUEUE = 2
QUEUE_TIMEOUT_S = 1.0
TRITON_TIMEOUT_S = 5.0
# A request may wait for a slot, then for Triton (model facts and inference): then 5 s slack.
CLIENT_TIMEOUT_S = QUEUE_TIMEOUT_S + 2 * TRITON_TIMEOUT_S + 5.0


def overload_gateway(
    start_gateway: StartGateway, triton: TritonServer, repository: Any
) -> GatewayProcess:
    """The gateway with a small admission limit in front of the slow model.

    RELIABILITY_OVERLOAD_MAX_INFLIGHT / _THREADS change the limit and the thread count, to
    measure other designs (docs/reliability.md: with no limit the test fails, as it should).
    """
    max_inflight = env_int("RELIABILITY_OVERLOAD_MAX_INFLIGHT", MAX_INFLIGHT)
    # The default (in flight + queue + 4 spare), spelled out: the fixture sets 4.
    threads = env_int("RELIABILITY_OVERLOAD_THREADS", max_inflight + MAX_QUEUE + 4)
    return suite_gateway(
        start_gateway,
        triton,
        repository,
        SLOW_MODEL,
        GATEWAY_MAX_INFLIGHT=str(max_inflight),
        GATEWAY_MAX_QUEUE=str(MAX_QUEUE),
        GATEWAY_QUEUE_TIMEOUT_S=str(QUEUE_TIMEOUT_S),
        GATEWAY_TRITON_TIMEOUT_S=str(TRITON_TIMEOUT_S),
        GATEWAY_THREADS=str(threads),
    )


def run_overload(gateway: GatewayProcess, clients: int, duration_s: float) -> tuple[Any, list[Any]]:
    """``clients`` closed-loop clients on /analyze, plus /health probes while they run."""
    jpeg = photo_jpeg("chelsea", quality=80)
    headers = {**gateway.headers, "Content-Type": "image/jpeg"}
    health: list[tuple[int | None, float]] = []
    stop = threading.Event()

    def send(session: requests.Session, _: int) -> requests.Response:
        return session.post(
            f"{gateway.url}/analyze?top_k=1", data=jpeg, headers=headers, timeout=CLIENT_TIMEOUT_S
        )

    def probe_health() -> None:
        for _ in range(int(duration_s / 0.5) + 1):
            if stop.wait(0.5):
                return
            started = time.monotonic()
            try:
                status: int | None = requests.get(f"{gateway.url}/health", timeout=10).status_code
            except requests.RequestException:
                status = None
            health.append((status, time.monotonic() - started))

    prober = threading.Thread(target=probe_health, daemon=True)
    prober.start()
    run = run_clients(clients, send, duration_s=duration_s, stop=stop)
    stop.set()
    prober.join(timeout=15)
    return run, health


def rejected_overloaded(metrics: str) -> float:
    """gateway_rejected_requests_total{reason="overloaded"} from a /metrics text."""
    for family in text_string_to_metric_families(metrics):
        for sample in family.samples:
            if sample.name == "gateway_rejected_requests_total" and sample.labels == {
                "reason": "overloaded"
            }:
                return float(sample.value)
    return 0.0


def check_overload(
    gateway: GatewayProcess, run: LoadRun, health: list[Any], clients: int, duration_s: float
) -> None:
    """Report the figures; every request answered in time, 200 or 503 + Retry-After."""
    shed = run.latencies(503)
    report(
        f"overload: {clients} clients x {duration_s:.0f} s on a 10/s model, "
        f"{gateway.env['GATEWAY_MAX_INFLIGHT']} in flight + {MAX_QUEUE} waiting "
        f"({QUEUE_TIMEOUT_S} s) per worker, {gateway.env['GATEWAY_THREADS']} threads",
        summary(run),
        f"503 latency p50 {median(shed) * 1000:.0f} ms, p99 {percentile(shed, 0.99) * 1000:.0f} ms",
        f"/health during overload: {len(health)} probes, "
        f"slowest {max((s for _, s in health), default=0) * 1000:.0f} ms",
    )

    unanswered = [o for o in run.outcomes if o.status is None]
    report("requests without an answer (client timeout or connection error)", str(len(unanswered)))
    assert not unanswered, f"{len(unanswered)} requests got no answer, e.g. {unanswered[0].error}"
    assert set(run.statuses()) <= {200, 503}, run.statuses()
    assert run.statuses().get(200, 0) > 0
    assert run.statuses().get(503, 0) > 0, "nothing was shed: the test did not overload"
    for outcome in run.outcomes:
        if outcome.status == 503:
            assert outcome.body is not None and outcome.body["error"] == "overloaded"
            assert outcome.retry_after is not None and int(outcome.retry_after) >= 1
    # Shed requests are refused once the short wait for a slot is over, not after a pile-up.
    assert median(shed) < QUEUE_TIMEOUT_S + 1.0
    assert health and all(status == 200 for status, _ in health), health
    # Each shed request is counted once, summed over the workers, and not logged one by one.
    metrics = requests.get(f"{gateway.url}/metrics", timeout=10).text
    assert rejected_overloaded(metrics) == run.statuses()[503]
    assert "overloaded" not in gateway.logs()
    assert gateway.is_running()


@pytest.mark.parametrize("size", ci_and_full(RunSize(48, 8.0), RunSize(200, 30.0)))
def test_overload_is_shed_with_fast_503_and_retry_after(
    size: RunSize,
    fast_triton: TritonServer,
    fast_repository: Any,
    start_gateway: StartGateway,
) -> None:
    """Far more clients than capacity (48 x 8 s; full 200 x 30 s): all answered, 200 or 503."""
    clients, duration_s = size.from_env("RELIABILITY_OVERLOAD")
    gateway = overload_gateway(start_gateway, fast_triton, fast_repository)
    run, health = run_overload(gateway, clients, duration_s)
    check_overload(gateway, run, health, clients, duration_s)
