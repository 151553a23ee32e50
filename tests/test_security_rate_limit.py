"""Per-API-key rate limit: 429 with Retry-After, keys never in logs, metrics or limiter keys.

In-process tests on the fake backend for the rules, and one over HTTP through gunicorn
(one worker: the limit is counted per worker, see docs/reliability.md) on the fast model.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from gateway.config import ConfigError, Settings
from gateway.errors import TooManyRequests
from gateway.ratelimit import ANONYMOUS, KeyRateLimiter, parse_rate_limit
from local_triton import TritonServer
from tests.fakes_gateway import data_url, encode_image
from tests.fixtures.gateway import UNIT_KEYS, MakeApp, StartGateway
from tests.reliability_support import (
    FAST_MODEL,
)

IMAGE = {"image": data_url(encode_image(np.zeros((40, 40, 3), np.uint8)))}


def test_limit_per_key_gives_429_with_retry_after(
    make_gateway_app: MakeApp, caplog: pytest.LogCaptureFixture
) -> None:
    """3/minute: the 4th request of a key is 429 with Retry-After; another key is unaffected."""
    caplog.set_level(logging.DEBUG)
    client = make_gateway_app(GATEWAY_RATE_LIMIT="3/minute").test_client()
    first, second = ({"X-API-Key": key} for key in UNIT_KEYS)
    for _ in range(3):
        assert client.post("/analyze", json=IMAGE, headers=first).status_code == 200
    limited = client.post("/analyze", json=IMAGE, headers=first)
    assert limited.status_code == 429
    assert limited.get_json()["error"] == "rate_limited"
    assert 1 <= int(limited.headers["Retry-After"]) <= 60
    assert client.get("/models", headers=first).status_code == 429  # the same budget
    assert client.post("/analyze", json=IMAGE, headers=second).status_code == 200
    # Bearer tokens count against the same key.
    bearer = {"Authorization": f"Bearer {UNIT_KEYS[0]}"}
    assert client.post("/analyze", json=IMAGE, headers=bearer).status_code == 429
    # Open routes are not limited; unauthenticated requests are refused before counting.
    assert all(client.get("/health").status_code == 200 for _ in range(5))
    assert client.post("/analyze", json=IMAGE).status_code == 401
    metrics = client.get("/metrics").get_data(as_text=True)
    for key in UNIT_KEYS:
        assert key not in caplog.text
        assert key not in metrics


def test_rate_limit_is_off_by_default(make_gateway_app: MakeApp) -> None:
    """Without GATEWAY_RATE_LIMIT nothing is limited."""
    client = make_gateway_app().test_client()
    headers = {"X-API-Key": UNIT_KEYS[0]}
    assert all(
        client.post("/analyze", json=IMAGE, headers=headers).status_code == 200 for _ in range(30)
    )


def test_fingerprint_is_salted_and_hides_the_key() -> None:
    """The limiter's identifier is an HMAC: stable per limiter, different across salts."""
    items = parse_rate_limit("10/second")
    one, other = KeyRateLimiter(items), KeyRateLimiter(items)
    key = "secret-key-123456"
    assert one.fingerprint(key) == one.fingerprint(key)
    assert one.fingerprint(key) != other.fingerprint(key)
    assert key not in one.fingerprint(key) and len(one.fingerprint(key)) == 32
    assert one.fingerprint(None) == ANONYMOUS


def test_retry_after_follows_the_window() -> None:
    """Retry-After is the time until the oldest counted request leaves the moving window."""
    limiter = KeyRateLimiter(parse_rate_limit("2/minute"))
    limiter.hit("k")
    limiter.hit("k")
    with pytest.raises(TooManyRequests) as info:
        limiter.hit("k")
    assert info.value.status == 429
    assert info.value.retry_after_s is not None and 55 <= info.value.retry_after_s <= 60


def test_rate_limit_setting_is_validated() -> None:
    """A malformed GATEWAY_RATE_LIMIT is a start-up error; off/empty disable it."""
    assert (
        Settings.from_env({"GATEWAY_API_KEYS": "k", "GATEWAY_RATE_LIMIT": "off"}).rate_limit == ""
    )
    combined = "10/second;500/hour"
    assert (
        Settings.from_env({"GATEWAY_API_KEYS": "k", "GATEWAY_RATE_LIMIT": combined}).rate_limit
        == combined
    )
    for bad in ("fast", "10/fortnight", "-1/minute"):
        with pytest.raises(ConfigError, match="GATEWAY_RATE_LIMIT"):
            Settings.from_env({"GATEWAY_API_KEYS": "k", "GATEWAY_RATE_LIMIT": bad})


@pytest.mark.e2e
def test_rate_limit_over_http_and_no_key_in_logs_or_metrics(
    fast_triton: TritonServer,
    fast_repository: Path,
    start_gateway: StartGateway,
) -> None:
    """gunicorn, one worker, 5/minute: 5 answers, then 429 + Retry-After; the key is nowhere."""
    gateway = start_gateway(
        fast_triton.grpc_url,
        fast_repository,
        GATEWAY_DEFAULT_MODEL=FAST_MODEL,
        GATEWAY_WORKERS="1",
        GATEWAY_RATE_LIMIT="5/minute",
        GATEWAY_LOG_LEVEL="DEBUG",
    )
    statuses: list[tuple[int, Any]] = []
    for _ in range(7):
        response = requests.post(
            f"{gateway.url}/analyze", json=IMAGE, headers=gateway.headers, timeout=30
        )
        statuses.append((response.status_code, response.headers.get("Retry-After")))
    assert [s for s, _ in statuses] == [200] * 5 + [429] * 2, statuses
    assert all(int(retry) >= 1 for status, retry in statuses if status == 429)
    metrics = requests.get(f"{gateway.url}/metrics", timeout=10).text
    assert 'status="429"' in metrics
    assert 'gateway_rejected_requests_total{reason="rate_limited"} 2.0' in metrics
    assert gateway.api_key not in metrics
    assert gateway.api_key not in gateway.logs()
