"""Admission control: the per-worker in-flight limit and its bounded, time-limited queue.

Unit tests of gateway.admission.AdmissionGate and of the app's use of it on the fake
backend (a model whose inference blocks until the test releases it). The behaviour over
HTTP under real overload is in tests/test_reliability_overload.py.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest

from gateway.admission import AdmissionGate
from gateway.config import ConfigError, Settings
from gateway.errors import Overloaded
from tests.fakes_gateway import FakeBackend, FakeVersion, data_url, encode_image
from tests.fixtures.gateway import UNIT_KEYS, MakeApp

JOIN_TIMEOUT_S = 10.0


@contextmanager
def holding(gate: AdmissionGate, count: int) -> Iterator[threading.Event]:
    """Occupy ``count`` slots from other threads until the yielded event is set."""
    release = threading.Event()
    entered = threading.Semaphore(0)

    def hold() -> None:
        with gate.admit():
            entered.release()
            release.wait(JOIN_TIMEOUT_S)

    threads = [threading.Thread(target=hold, daemon=True) for _ in range(count)]
    for thread in threads:
        thread.start()
    for _ in range(count):
        assert entered.acquire(timeout=JOIN_TIMEOUT_S)
    try:
        yield release
    finally:
        release.set()
        for thread in threads:
            thread.join(JOIN_TIMEOUT_S)


def test_full_gate_with_no_queue_refuses_at_once() -> None:
    """max_queue=0: the request beyond max_inflight is refused without waiting."""
    gate = AdmissionGate(max_inflight=2, max_queue=0, queue_timeout_s=5.0)
    with holding(gate, 2):
        started = time.monotonic()
        with pytest.raises(Overloaded) as info, gate.admit():
            pass
        assert time.monotonic() - started < 1.0
    assert info.value.status == 503 and info.value.code == "overloaded"
    assert info.value.retry_after_s == 1


def test_waiting_request_gets_a_slot_that_frees_in_time() -> None:
    """A queued request proceeds as soon as a slot is released within the queue timeout."""
    gate = AdmissionGate(max_inflight=1, max_queue=1, queue_timeout_s=5.0)
    with holding(gate, 1) as release:
        threading.Timer(0.2, release.set).start()
        with gate.admit():
            assert gate.waiting == 0
    with gate.admit():  # every slot came back
        pass


def test_queue_is_bounded_and_waits_are_time_limited() -> None:
    """One waiter allowed: a second is refused at once; the waiter is refused at its timeout."""
    gate = AdmissionGate(max_inflight=1, max_queue=1, queue_timeout_s=0.5)
    outcome: dict[str, Any] = {}

    def wait_in_queue() -> None:
        started = time.monotonic()
        try:
            with gate.admit():
                outcome["result"] = "admitted"
        except Overloaded:
            outcome["result"] = "refused"
        outcome["seconds"] = time.monotonic() - started

    with holding(gate, 1):
        waiter = threading.Thread(target=wait_in_queue, daemon=True)
        waiter.start()
        deadline = time.monotonic() + JOIN_TIMEOUT_S
        while gate.waiting == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert gate.waiting == 1
        with pytest.raises(Overloaded), gate.admit():
            pass
        waiter.join(JOIN_TIMEOUT_S)
    assert outcome["result"] == "refused"
    assert 0.4 < outcome["seconds"] < 3.0
    assert gate.waiting == 0


def test_slot_is_released_when_the_request_fails() -> None:
    """An exception inside the admitted block gives the slot back."""
    gate = AdmissionGate(max_inflight=1, max_queue=0, queue_timeout_s=1.0)
    with pytest.raises(RuntimeError), gate.admit():
        raise RuntimeError("inference failed")
    with gate.admit():
        pass


def blocking_backend(release: threading.Event, entered: threading.Event) -> FakeBackend:
    """A fake backend whose inference blocks until ``release`` is set."""

    def compute(batch: Any) -> Any:
        entered.set()
        release.wait(JOIN_TIMEOUT_S)
        return FakeVersion().compute(batch)

    backend = FakeBackend()
    backend.add("resnet50", "1", FakeVersion(logits=compute))
    return backend


def test_app_answers_503_overloaded_with_retry_after_and_keeps_health_open(
    make_gateway_app: MakeApp,
) -> None:
    """One slot, no queue: a second /analyze gets 503 + Retry-After; /health, 401s unaffected."""
    release, entered = threading.Event(), threading.Event()
    app = make_gateway_app(
        blocking_backend(release, entered), GATEWAY_MAX_INFLIGHT="1", GATEWAY_MAX_QUEUE="0"
    )
    body = {"image": data_url(encode_image(np.zeros((40, 40, 3), np.uint8)))}
    headers = {"X-API-Key": UNIT_KEYS[0]}
    first: dict[str, Any] = {}

    def occupy() -> None:
        first["response"] = app.test_client().post("/analyze", json=body, headers=headers)

    thread = threading.Thread(target=occupy, daemon=True)
    thread.start()
    try:
        assert entered.wait(JOIN_TIMEOUT_S)
        client = app.test_client()
        refused = client.post("/analyze", json=body, headers=headers)
        assert refused.status_code == 503
        assert refused.get_json()["error"] == "overloaded"
        assert refused.headers["Retry-After"] == "1"
        assert client.post("/analyze", json=body).status_code == 401  # auth comes first
        assert client.get("/health").status_code == 200
        assert client.get("/metrics").status_code == 200
    finally:
        release.set()
        thread.join(JOIN_TIMEOUT_S)
    assert first["response"].status_code == 200
    assert app.test_client().post("/analyze", json=body, headers=headers).status_code == 200


def test_admission_settings_defaults_and_validation() -> None:
    """Defaults 8 in flight, 16 waiting, 5 s; zero or junk values are start-up errors."""
    settings = Settings.from_env({"GATEWAY_API_KEYS": "k"})
    assert (settings.max_inflight, settings.max_queue, settings.queue_timeout_s) == (8, 16, 5.0)
    custom = Settings.from_env(
        {
            "GATEWAY_API_KEYS": "k",
            "GATEWAY_MAX_INFLIGHT": "3",
            "GATEWAY_MAX_QUEUE": "0",
            "GATEWAY_QUEUE_TIMEOUT_S": "0.25",
        }
    )
    assert (custom.max_inflight, custom.max_queue, custom.queue_timeout_s) == (3, 0, 0.25)
    for name, value in [
        ("GATEWAY_MAX_INFLIGHT", "0"),
        ("GATEWAY_MAX_INFLIGHT", "many"),
        ("GATEWAY_MAX_QUEUE", "-1"),
        ("GATEWAY_QUEUE_TIMEOUT_S", "0"),
        ("GATEWAY_QUEUE_TIMEOUT_S", "nan"),
    ]:
        with pytest.raises(ConfigError, match=name):
            Settings.from_env({"GATEWAY_API_KEYS": "k", name: value})
