"""Several Tritons behind one gateway: round-robin over both, failover, and rejoin.

Two real Triton processes on different ports and one real gunicorn gateway whose
GATEWAY_TRITON_URL lists both. Both serve (each server's own statistics count inferences);
one is SIGKILLed under 8 clients for 20 s and no request fails (the retry goes to the
survivor, which carries all); restarted on the same ports, it serves again within 10 s.
"""

from __future__ import annotations

import itertools
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from local_triton import TritonServer
from tests.fixtures.gateway import GatewayProcess, StartGateway
from tests.fixtures.triton import StartTriton, model_statistics
from tests.reliability_runs_support import suite_gateway
from tests.reliability_support import (
    FAST_MODEL,
    LoadRun,
    env_float,
    env_int,
    report,
    run_clients,
    summary,
    wait_for,
    write_test_models,
)
from tests.test_reliability_triton_faults import CLIENT_TIMEOUT_S, post_image

pytestmark = pytest.mark.e2e

REJOIN_LIMIT_S = 10.0


def inferences(server: TritonServer) -> int:
    """How many inferences `server` has run for the fast model (its own statistics)."""
    return int(model_statistics(server, FAST_MODEL)["inference_count"])


def metric_total(gateway: GatewayProcess, name: str) -> float:
    """The sum of every sample of one metric family on the gateway's /metrics."""
    text = requests.get(f"{gateway.url}/metrics", timeout=5).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name) and not line.startswith("#")
    )


@pytest.fixture
def two_tritons(tmp_path: Path, start_triton: StartTriton) -> tuple[TritonServer, TritonServer]:
    """Two Tritons in explicit mode on one repository, on their own free ports."""
    repository = write_test_models(tmp_path / "model_repository")
    first = start_triton(repository, mode="explicit", load_models=(FAST_MODEL,))
    second = start_triton(repository, mode="explicit", load_models=(FAST_MODEL,))
    return first, second


def balanced_gateway(
    start_gateway: StartGateway, servers: tuple[TritonServer, TritonServer]
) -> GatewayProcess:
    """One gateway whose GATEWAY_TRITON_URL lists both servers."""
    first, second = servers
    gateway = suite_gateway(
        start_gateway,
        first,
        first.model_repository,
        FAST_MODEL,
        GATEWAY_TRITON_URL=f"{first.grpc_url},{second.grpc_url}",
        GATEWAY_TRITON_TIMEOUT_S="2",
        GATEWAY_READY_TIMEOUT_S="1",
    )
    return gateway


def test_sigkill_of_one_server_under_load_fails_no_request_and_it_rejoins(
    two_tritons: tuple[TritonServer, TritonServer], start_gateway: StartGateway
) -> None:
    """Both serve; one SIGKILLed under 8 clients for 20 s: all 200s; restarted, it serves again."""
    clients = env_int("SCALE_OUT_CLIENTS", 8)
    outage_s = env_float("SCALE_OUT_OUTAGE_S", 20.0)
    victim, survivor = two_tritons
    gateway = balanced_gateway(start_gateway, two_tritons)
    # Round-robin: 40 sequential requests, each server's own statistics count a share.
    before = [inferences(server) for server in two_tritons]
    with requests.Session() as session:
        statuses = [post_image(session, gateway).status_code for _ in range(40)]
    shares = [inferences(server) - start for server, start in zip(two_tritons, before, strict=True)]
    report("round_robin over 2 Tritons, 40 sequential requests", f"per server: {shares}")
    assert statuses == [200] * 40 and sum(shares) == 40
    # Each gateway worker has its own channel alternating over ready connections: near
    # even, not exact.
    assert min(shares) >= 10, shares

    stop = threading.Event()
    run = LoadRun()

    def send(session: requests.Session, _: int) -> requests.Response:
        return post_image(session, gateway)

    loader = threading.Thread(
        target=run_clients,
        args=(clients, send),
        kwargs={"duration_s": outage_s + 120.0, "stop": stop, "think_s": 0.01, "into": run},
        daemon=True,
    )
    loader.start()
    ready_statuses: list[int] = []
    try:
        time.sleep(2.0)
        survivor_before = inferences(survivor)
        killed_at = time.monotonic()
        victim.kill()  # SIGKILL to Triton and its Python stubs
        while time.monotonic() - killed_at < outage_s:
            ready_statuses.append(requests.get(f"{gateway.url}/ready", timeout=5).status_code)
            time.sleep(0.5)
        restart_at = time.monotonic()
        survivor_during = inferences(survivor) - survivor_before
        victim.start()  # the same ports
        victim.wait_ready(180)
        back_at = time.monotonic()
        victim_before = inferences(victim)
        rejoin_s = wait_for(
            "the restarted server to serve again",
            lambda: inferences(victim) > victim_before,
            REJOIN_LIMIT_S,
        )
        time.sleep(1.0)
    finally:
        stop.set()
        loader.join(timeout=CLIENT_TIMEOUT_S + 70)
    during = [o for o in run.outcomes if killed_at <= o.started < restart_at]
    answered_during = [o for o in during if o.status == 200]
    answers = sorted(o.started + o.seconds for o in answered_during)
    gaps = [later - earlier for earlier, later in itertools.pairwise(answers)]
    retries = metric_total(gateway, "gateway_triton_retries_total")
    report(
        f"2 Tritons, one SIGKILLed under {clients} clients for {outage_s:.0f} s",
        summary(run),
        f"outage: {len(during)} requests, statuses {sorted({o.status for o in during}, key=str)}, "
        f"survivor ran {survivor_during} inferences; retries {retries:.0f}; "
        f"slowest {max((o.seconds for o in during), default=0.0):.3f} s; "
        f"longest gap between answers {max(gaps, default=0.0):.3f} s",
        f"restarted server ready {back_at - restart_at:.1f} s after start, "
        f"serving {rejoin_s:.2f} s after ready",
    )
    failed = [o for o in run.outcomes if o.status != 200]
    assert not failed, f"{len(failed)} failed requests, e.g. {failed[0]}"
    assert len(during) > clients * 10
    # The survivor carried every answer of the outage (the victim was dead).
    assert survivor_during >= len(answered_during) - clients
    assert set(ready_statuses) == {200}, ready_statuses
    assert rejoin_s <= REJOIN_LIMIT_S


def test_ready_is_503_only_when_no_server_has_the_model(
    two_tritons: tuple[TritonServer, TritonServer], start_gateway: StartGateway
) -> None:
    """/ready stays 200 with one of two servers dead, and turns 503 with both dead."""
    first, second = two_tritons
    gateway = balanced_gateway(start_gateway, two_tritons)

    def ready() -> int:
        return requests.get(f"{gateway.url}/ready", timeout=5).status_code

    assert ready() == 200
    second.kill()
    assert ready() == 200
    first.kill()
    wait_for("/ready to turn 503", lambda: ready() == 503, 10.0)
    response = post_image(requests, gateway)
    body: dict[str, Any] = response.json()
    assert response.status_code == 503 and body["error"] == "upstream_unavailable", body
    second.start()
    second.wait_ready(180)
    wait_for("/ready to be 200 again", lambda: ready() == 200, REJOIN_LIMIT_S)
    wait_for(
        "an answer again", lambda: post_image(requests, gateway).status_code == 200, REJOIN_LIMIT_S
    )
