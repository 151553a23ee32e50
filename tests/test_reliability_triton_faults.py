"""Triton faults: SIGKILL under load, restart on the same ports, and a model that hangs.

Every request in flight or arriving while Triton is dead gets 503 or 504 within the
configured timeout (none hangs, none gets a 500); /ready turns 503; once Triton is back the
gateway answers again within 10 s, from the same gunicorn master. A model that sleeps
past GATEWAY_TRITON_TIMEOUT_S gives 504 at the timeout.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from local_triton import TritonServer
from tests.fixtures.gateway import GatewayProcess, StartGateway
from tests.reliability_runs_support import suite_gateway
from tests.reliability_support import (
    FAST_MODEL,
    HUNG_MODEL,
    env_int,
    report,
    run_clients,
    summary,
    wait_for,
    write_test_models,
)

pytestmark = pytest.mark.e2e

TRITON_TIMEOUT_S = 2.0
QUEUE_TIMEOUT_S = 2.0
# Admission wait, then model facts and inference (two Triton calls), then 3 s of slack.
CLIENT_TIMEOUT_S = QUEUE_TIMEOUT_S + 2 * TRITON_TIMEOUT_S + 3.0
RECOVERY_LIMIT_S = 10.0
TINY_PNG_SIZE = 16


def tiny_png() -> bytes:
    """A small real PNG (the fast model's preprocessing crops to 8x8)."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (TINY_PNG_SIZE, TINY_PNG_SIZE), (200, 30, 90)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture
def fault_repository(tmp_path: Path) -> Path:
    """A private repository with the suite's Python-backend models."""
    return write_test_models(tmp_path / "model_repository")


def fault_gateway(
    start_gateway: StartGateway, triton: TritonServer, repository: Path
) -> GatewayProcess:
    """The gateway with a short Triton timeout."""
    return suite_gateway(
        start_gateway,
        triton,
        repository,
        FAST_MODEL,
        GATEWAY_TRITON_TIMEOUT_S=str(TRITON_TIMEOUT_S),
        GATEWAY_QUEUE_TIMEOUT_S=str(QUEUE_TIMEOUT_S),
        GATEWAY_READY_TIMEOUT_S="1",
    )


def post_image(
    session: requests.Session | Any, gateway: GatewayProcess, model: str = FAST_MODEL
) -> requests.Response:
    """POST a tiny PNG to /analyze, naming ``model``."""
    return session.post(
        f"{gateway.url}/analyze?model={model}&top_k=1",
        data=tiny_png(),
        headers={**gateway.headers, "Content-Type": "image/png"},
        timeout=CLIENT_TIMEOUT_S,
    )


def ready_status(gateway: GatewayProcess) -> int:
    """The status of /ready."""
    return requests.get(f"{gateway.url}/ready", timeout=5).status_code


def test_sigkill_under_load_gives_503_or_504_then_recovers_without_restart(
    fault_repository: Path, start_triton: Any, start_gateway: StartGateway
) -> None:
    """SIGKILL Triton with 8 clients running; restart it on the same ports; measure recovery."""
    clients = env_int("RELIABILITY_FAULT_CLIENTS", 8)
    triton = start_triton(fault_repository, mode="explicit", load_models=(FAST_MODEL,))
    gateway = fault_gateway(start_gateway, triton, fault_repository)
    master_pid = gateway.process.pid
    assert post_image(requests, gateway).status_code == 200

    stop = threading.Event()
    box: dict[str, Any] = {}

    def send(session: requests.Session, _: int) -> requests.Response:
        return post_image(session, gateway)

    def load() -> None:
        box["run"] = run_clients(clients, send, duration_s=120.0, stop=stop, think_s=0.01)

    loader = threading.Thread(target=load, daemon=True)
    loader.start()
    try:
        time.sleep(2.0)
        killed_at = time.monotonic()
        triton.kill()  # SIGKILL to Triton and its Python stubs
        not_ready_s = wait_for("/ready to turn 503", lambda: ready_status(gateway) == 503, 10.0)
        time.sleep(3.0)  # the outage: requests keep arriving
        restart_at = time.monotonic()
        triton.start()  # same ports
        triton.wait_ready(180)
        back_at = time.monotonic()
        recovery_s = wait_for(
            "a 200 after Triton restarted",
            lambda: post_image(requests, gateway).status_code == 200,
            RECOVERY_LIMIT_S,
        )
        ready_again_s = wait_for("/ready to be 200", lambda: ready_status(gateway) == 200, 10.0)
        time.sleep(2.0)
    finally:
        stop.set()
        loader.join(timeout=CLIENT_TIMEOUT_S + 70)
    run = box["run"]
    # Requests sent while Triton was dead (answered before it was started again).
    during = [
        o for o in run.outcomes if killed_at <= o.started and o.started + o.seconds < restart_at
    ]
    slowest = max((o.seconds for o in during), default=0.0)
    report(
        f"Triton SIGKILL under load: {clients} clients, restart on the same ports",
        summary(run),
        f"outage window: {len(during)} requests, statuses "
        f"{sorted({o.status for o in during}, key=str)}, slowest {slowest:.2f} s",
        f"/ready 503 after {not_ready_s:.2f} s; Triton ready {back_at - restart_at:.1f} s after "
        f"start; first 200 {recovery_s:.2f} s after Triton ready; "
        f"/ready 200 after {ready_again_s:.2f} s more",
    )
    unanswered = [o for o in run.outcomes if o.status is None]
    assert not unanswered, f"{len(unanswered)} requests got no answer: {unanswered[0].error}"
    assert set(run.statuses()) <= {200, 503, 504}, run.statuses()
    assert len(during) > clients
    assert all(o.status in (503, 504) for o in during if o.started > killed_at + 0.5), during
    assert slowest <= CLIENT_TIMEOUT_S
    for outcome in run.outcomes:
        if outcome.status != 200:
            assert outcome.body is not None and outcome.body["error"] in (
                "upstream_unavailable",
                "upstream_timeout",
                "model_not_ready",
            ), outcome
    assert recovery_s <= RECOVERY_LIMIT_S
    assert gateway.process.pid == master_pid and gateway.is_running()


def test_hung_model_gives_504_at_the_timeout(
    fault_repository: Path, start_triton: Any, start_gateway: StartGateway
) -> None:
    """A model that sleeps 60 s: 4 concurrent requests all get 504 within the timeout."""
    triton = start_triton(fault_repository, mode="explicit", load_models=(FAST_MODEL, HUNG_MODEL))
    gateway = fault_gateway(start_gateway, triton, fault_repository)
    assert post_image(requests, gateway, HUNG_MODEL).status_code == 504  # model facts now cached
    results: list[tuple[int, float, dict[str, Any]]] = []
    lock = threading.Lock()

    def one() -> None:
        started = time.monotonic()
        response = post_image(requests, gateway, HUNG_MODEL)
        with lock:
            results.append((response.status_code, time.monotonic() - started, response.json()))

    threads = [threading.Thread(target=one, daemon=True) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=CLIENT_TIMEOUT_S + 5)
    report(
        "hung model (sleeps 60 s), GATEWAY_TRITON_TIMEOUT_S=2",
        f"statuses {[r[0] for r in results]}, seconds {[round(r[1], 2) for r in results]}",
    )
    assert len(results) == 4
    for status, seconds, body in results:
        assert status == 504 and body["error"] == "upstream_timeout"
        assert seconds < TRITON_TIMEOUT_S + 2.0  # model facts are cached: one Triton call
    # Other models on the same Triton are unaffected, and /health answers.
    assert post_image(requests, gateway, FAST_MODEL).status_code == 200
    assert requests.get(f"{gateway.url}/health", timeout=5).status_code == 200
