"""End to end: rate limits and the answer cache kept in a real Redis, and what happens when it dies.

Gateways run under gunicorn (2 workers unless said) on the session Triton (efficientnet_lite0).
Tests that share a Redis between gateway processes use the session server (`redis_url`, emptied
per test); tests that kill Redis use a server of their own (`fresh_redis()`).
"""

from __future__ import annotations

import functools
import itertools
import json
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
from prometheus_client.parser import text_string_to_metric_families

from local_triton import TritonServer
from tests.fakes_gateway import data_url
from tests.fixtures.gateway import GatewayProcess, StartGateway
from tests.fixtures.redis import RedisServer, fresh_redis
from tests.reliability_support import LoadRun, Outcome, photo_jpeg, run_clients, summary

pytestmark = pytest.mark.e2e

HTTP_TIMEOUT_S = 30
MODEL = "efficientnet_lite0"
WORKERS = 2
RATE_LIMIT_PREFIX = "visionai:ratelimit"
ANSWER_PREFIX = "visionai:answer:v1:"
FAILED_LINE = "failed ("  # "Redis at HOST:PORT failed (use: Error): ..."
RECOVERED_LINE = "answers again: "


@functools.cache
def images() -> tuple[str, ...]:
    """Four different real photos as the front end sends them (JPEG data URLs)."""
    return tuple(
        data_url(photo_jpeg(name), "image/jpeg")
        for name in ("chelsea", "coffee", "rocket", "astronaut")
    )


def shared_key() -> str:
    """A fresh API key for gateways that must count (and cache) under the same key."""
    return "e2e-shared-" + secrets.token_urlsafe(24)


def post_analyze(gateway: GatewayProcess, image: str) -> requests.Response:
    """POST /analyze as the front end does, on a new connection (any worker may take it)."""
    return requests.post(
        f"{gateway.url}/analyze",
        json={"image": image},
        headers={**gateway.headers, "Connection": "close"},
        timeout=HTTP_TIMEOUT_S,
    )


def post_batch(gateway: GatewayProcess, batch: list[str]) -> requests.Response:
    """POST /analyze/batch with a JSON list of data URLs, on a new connection."""
    return requests.post(
        f"{gateway.url}/analyze/batch",
        json={"images": batch},
        headers={**gateway.headers, "Connection": "close"},
        timeout=HTTP_TIMEOUT_S,
    )


def assert_rate_limited(response: requests.Response) -> None:
    """A 429 with Retry-After (whole seconds) and the JSON error code rate_limited."""
    assert response.status_code == 429, response.text
    assert int(response.headers["Retry-After"]) >= 1, response.headers
    assert response.json()["error"] == "rate_limited", response.text


def log_records(gateway: GatewayProcess) -> list[dict[str, Any]]:
    """The gateway's JSON log lines (gunicorn's own lines are skipped)."""
    records: list[dict[str, Any]] = []
    for line in gateway.logs(None).splitlines():
        if line.startswith("{"):
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                records.append(record)
    return records


def answering_pids(gateway: GatewayProcess, route: str = "/analyze") -> dict[str, int]:
    """request id -> pid of the worker that answered it, from the access log, for ``route``."""
    return {
        str(record["request_id"]): int(record["pid"])
        for record in log_records(gateway)
        if record.get("logger") == "gateway.access" and record.get("route") == route
    }


def redis_messages(gateway: GatewayProcess, text: str) -> list[str]:
    """The gateway.redis log messages containing ``text``."""
    return [
        str(record["message"])
        for record in log_records(gateway)
        if record.get("logger") == "gateway.redis" and text in str(record.get("message"))
    ]


def wait_for_workers(gateway: GatewayProcess, count: int = WORKERS, timeout_s: float = 20) -> None:
    """Probe /health on new connections until ``count`` workers have answered (bounded)."""
    deadline = time.monotonic() + timeout_s
    for _ in range(int(timeout_s / 0.05) + 1):
        requests.get(f"{gateway.url}/health", headers={"Connection": "close"}, timeout=5)
        if len(set(answering_pids(gateway, "/health").values())) >= count:
            return
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    pytest.fail(f"{count} workers of {gateway.url} did not answer /health in {timeout_s} s")


def redis_metrics(gateway: GatewayProcess) -> tuple[float | None, dict[str, float]]:
    """gateway_redis_up (lowest live worker) and gateway_redis_fallbacks_total by use."""
    text = requests.get(f"{gateway.url}/metrics", timeout=HTTP_TIMEOUT_S).text
    up: float | None = None
    fallbacks = {"rate_limit": 0.0, "cache": 0.0}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "gateway_redis_up":
                up = sample.value if up is None else min(up, sample.value)
            elif sample.name == "gateway_redis_fallbacks_total":
                fallbacks[sample.labels["use"]] += sample.value
    return up, fallbacks


def redis_keys(server: RedisServer, prefix: str) -> list[bytes]:
    """The keys of ``server`` that start with ``prefix``."""
    client = server.client()
    try:
        return list(client.scan_iter(match=prefix + "*", count=1000))
    finally:
        client.close()


def redis_keys_of(url: str) -> list[bytes]:
    """Every key of the Redis at ``url``."""
    client = redis.Redis.from_url(url, socket_timeout=2.0)
    try:
        return list(client.scan_iter(count=1000))
    finally:
        client.close()


def wait_until(what: str, check: Callable[[], bool], timeout_s: float) -> float:
    """Poll ``check`` every 0.1 s (bounded in time and count); the seconds it took."""
    started = time.monotonic()
    for _ in range(int(timeout_s / 0.1) + 2):
        if check():
            return time.monotonic() - started
        if time.monotonic() - started > timeout_s:
            break
        time.sleep(0.1)
    pytest.fail(f"timed out after {timeout_s} s waiting for {what}")


StartPair = Callable[..., tuple[GatewayProcess, GatewayProcess]]


@pytest.fixture
def start_shared_pair(
    triton_server: TritonServer, model_repository: Path, start_gateway: StartGateway
) -> Iterator[StartPair]:
    """Factory: two gateway processes (2 workers each) with the same settings and API key."""
    started: list[GatewayProcess] = []

    def start(**env: str) -> tuple[GatewayProcess, GatewayProcess]:
        settings = {"GATEWAY_DEFAULT_MODEL": MODEL, "GATEWAY_API_KEYS": shared_key(), **env}
        a, b = (
            start_gateway(triton_server.grpc_url, model_repository, wait=False, **settings)
            for _ in range(2)
        )
        started.extend((a, b))
        for gateway in (a, b):
            gateway.wait_ready()
            wait_for_workers(gateway)
        return a, b

    yield start
    # Both drain at once (start_gateway's own teardown then finds them stopped).
    with ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(lambda gateway: gateway.stop(), started))


def send_alternating(
    gateways: tuple[GatewayProcess, GatewayProcess], count: int, clients: int
) -> list[tuple[int, requests.Response]]:
    """``count`` /analyze requests from ``clients`` threads, request i to gateway i % 2."""
    photo = images()[0]
    with ThreadPoolExecutor(max_workers=clients) as pool:
        responses = list(pool.map(lambda i: post_analyze(gateways[i % 2], photo), range(count)))
    return [(i % 2, response) for i, response in enumerate(responses)]


# -- one limit across processes ----------------------------------------------------------------


def test_rate_limit_is_exact_across_two_gateway_processes(
    redis_url: str, start_shared_pair: StartPair
) -> None:
    """30/minute through one Redis: 40 requests over 2 processes x 2 workers get 30 x 200."""
    pair = start_shared_pair(GATEWAY_REDIS_URL=redis_url, GATEWAY_RATE_LIMIT="30/minute")
    started = time.monotonic()
    sent = send_alternating(pair, 40, clients=8)
    elapsed = time.monotonic() - started

    statuses = [response.status_code for _, response in sent]
    assert statuses.count(200) == 30 and statuses.count(429) == 10, statuses
    for _, response in sent:
        if response.status_code == 429:
            assert_rate_limited(response)
        else:
            assert response.json()["label"], response.text

    # Both processes answered, each with both of its workers.
    workers: list[set[int]] = []
    for index, gateway in enumerate(pair):
        pids = answering_pids(gateway)
        ids = [r.headers["X-Request-ID"] for i, r in sent if i == index]
        assert all(request_id in pids for request_id in ids)
        by_worker = Counter(pids[request_id] for request_id in ids)
        workers.append(set(by_worker))
        ok = sum(1 for i, r in sent if i == index and r.status_code == 200)
        print(f"\ngateway {'AB'[index]}: {ok} x 200 of {len(ids)}, requests by worker {by_worker}")
    assert all(len(pids) == WORKERS for pids in workers), workers
    keys = redis_keys_of(redis_url)
    assert any(key.startswith(RATE_LIMIT_PREFIX.encode()) for key in keys), keys
    ok, refused = statuses.count(200), statuses.count(429)
    print(f"40 requests in {elapsed:.2f} s: {ok} x 200, {refused} x 429")


def test_without_redis_two_gateways_allow_more_than_the_limit(
    start_shared_pair: StartPair,
) -> None:
    """The control: without Redis each of the 4 workers counts alone, so 40 get past 30/minute."""
    pair = start_shared_pair(GATEWAY_RATE_LIMIT="30/minute", GATEWAY_CACHE="on")
    sent = send_alternating(pair, 40, clients=8)
    statuses = [response.status_code for _, response in sent]
    print(f"\nwithout Redis: {statuses.count(200)} x 200, {statuses.count(429)} x 429 of 40")
    assert statuses.count(200) > 30, statuses
    assert set(statuses) <= {200, 429}, statuses


def test_a_batch_counts_its_images_across_processes(
    redis_url: str, start_shared_pair: StartPair
) -> None:
    """20/minute shared: a batch of 16 on A leaves 4 /analyze on B; the 5th on B is a 429."""
    a, b = start_shared_pair(GATEWAY_REDIS_URL=redis_url, GATEWAY_RATE_LIMIT="20/minute")
    batch = post_batch(a, [images()[i % 4] for i in range(16)])
    assert batch.status_code == 200, batch.text
    assert len(batch.json()["results"]) == 16
    photo = images()[1]
    singles = [post_analyze(b, photo) for _ in range(4)]
    assert [r.status_code for r in singles] == [200] * 4, [r.text for r in singles]
    refused = post_analyze(b, photo)
    assert_rate_limited(refused)
    print(f"\nbatch of 16 on A, 4 x 200 on B, then {refused.status_code}: {refused.json()}")


def test_the_answer_cache_is_shared_across_processes(
    redis_url: str, start_shared_pair: StartPair
) -> None:
    """Image X answered by gateway A (not cached) is answered by gateway B from Redis."""
    a, b = start_shared_pair(GATEWAY_REDIS_URL=redis_url, GATEWAY_CACHE="on")
    photo = images()[2]
    first = post_analyze(a, photo)
    assert first.status_code == 200, first.text
    second = post_analyze(b, photo)
    assert second.status_code == 200, second.text
    one, two = first.json(), second.json()
    assert one["cached"] is False and two["cached"] is True, (one, two)
    for field in ("label", "confidence", "predictions", "model", "mode"):
        assert one[field] == two[field], field
    keys = redis_keys_of(redis_url)
    assert any(key.startswith(ANSWER_PREFIX.encode()) for key in keys), keys
    print(f"\nA: {one['label']} (cached false); B: {two['label']} (cached true); keys {len(keys)}")


# -- Redis dies ----------------------------------------------------------------------------------


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    """A Redis of this test's own, to kill and restart."""
    with fresh_redis() as server:
        yield server


def successes_gap(outcomes: list[Outcome], start: float, end: float) -> float:
    """The longest time without a 200 answer completing within [start, end]."""
    done = sorted(o.started + o.seconds for o in outcomes if o.status == 200)
    marks = [start, *(t for t in done if start < t < end), end]
    return max(later - earlier for earlier, later in itertools.pairwise(marks))


def rate(outcomes: list[Outcome], start: float, end: float) -> float:
    """Requests started per second in [start, end)."""
    count = sum(1 for o in outcomes if start <= o.started < end)
    return count / (end - start) if end > start else 0.0


def test_redis_killed_under_load_is_never_a_5xx_and_recovers_by_itself(
    private_redis: RedisServer,
    triton_server: TritonServer,
    model_repository: Path,
    start_gateway: StartGateway,
) -> None:
    """8 clients while Redis is killed and restarted: no 5xx, fallbacks counted, back to Redis."""
    gateway = start_gateway(
        triton_server.grpc_url,
        model_repository,
        GATEWAY_DEFAULT_MODEL=MODEL,
        GATEWAY_REDIS_URL=private_redis.url,
        GATEWAY_RATE_LIMIT="100000/minute",
        GATEWAY_CACHE="on",
    )
    wait_for_workers(gateway)
    photos = images()

    def send(session: requests.Session, index: int) -> requests.Response:
        return session.post(
            f"{gateway.url}/analyze",
            json={"image": photos[index % len(photos)]},
            headers={**gateway.headers, "Connection": "close"},
            timeout=HTTP_TIMEOUT_S,
        )

    run = LoadRun()
    stop = threading.Event()
    load = threading.Thread(
        target=run_clients, args=(8, send), kwargs={"duration_s": 40, "stop": stop, "into": run}
    )
    t0 = time.monotonic()
    load.start()
    try:
        time.sleep(3.0)
        assert private_redis.is_running() and redis_keys(private_redis, ANSWER_PREFIX)
        killed = time.monotonic()
        private_redis.kill()
        time.sleep(1.5)
        up_1, during_1 = redis_metrics(gateway)
        time.sleep(1.5)
        up_2, during_2 = redis_metrics(gateway)
        time.sleep(max(0.0, t0 + 7.0 - time.monotonic()))
        private_redis.restart()
        restarted = time.monotonic()
        recovery_s = wait_until(
            "gateway_redis_up 1 again", lambda: redis_metrics(gateway)[0] == 1.0, 10.0
        )
        wait_until(
            "rate-limit and answer keys in the restarted Redis",
            lambda: (
                bool(redis_keys(private_redis, RATE_LIMIT_PREFIX))
                and bool(redis_keys(private_redis, ANSWER_PREFIX))
            ),
            10.0,
        )
        time.sleep(max(0.0, t0 + 12.0 - time.monotonic()))
    finally:
        stop.set()
        load.join(timeout=HTTP_TIMEOUT_S + 5)
    ended = time.monotonic()
    up_after, after = redis_metrics(gateway)

    statuses = run.statuses()
    gap_s = successes_gap(run.outcomes, killed, restarted)
    print(
        f"\n{summary(run)}\n"
        f"rates: before {rate(run.outcomes, t0, killed):.1f}/s, "
        f"outage {rate(run.outcomes, killed, restarted):.1f}/s, "
        f"after {rate(run.outcomes, restarted, ended):.1f}/s; "
        f"longest gap between 200s during the outage {gap_s * 1000:.0f} ms; "
        f"gateway_redis_up 1 again {recovery_s:.2f} s after the restart\n"
        f"redis_up during {up_1}, {up_2}, after {up_after}; fallbacks "
        f"{during_1} -> {during_2} -> {after}"
    )
    errors = [o.error for o in run.outcomes if o.status is None]
    assert not errors, errors[:5]
    assert all(status is not None and status < 500 for status in statuses), statuses
    assert statuses.get(200, 0) == len(run.outcomes), statuses
    assert up_1 == up_2 == 0.0
    for use in ("rate_limit", "cache"):
        assert 0 < during_1[use] < during_2[use] <= after[use], (use, during_1, during_2)
    assert up_after == 1.0
    failed = redis_messages(gateway, FAILED_LINE)
    recovered = redis_messages(gateway, RECOVERED_LINE)
    print(f"log: {len(failed)} failure warning(s), {len(recovered)} recovery line(s)")
    assert 1 <= len(failed) <= WORKERS * 2, failed
    assert recovered, recovered
    assert gap_s < 3.0, gap_s
    assert "unhandled error" not in gateway.logs(None)


def test_rate_limit_falls_back_per_worker_and_returns_to_redis(
    private_redis: RedisServer,
    triton_server: TritonServer,
    model_repository: Path,
    start_gateway: StartGateway,
) -> None:
    """Redis down: 5/minute still holds per worker (5 x 200, a 429); restarted, Redis counts."""
    private_redis.kill()
    gateway = start_gateway(
        triton_server.grpc_url,
        model_repository,
        GATEWAY_DEFAULT_MODEL=MODEL,
        GATEWAY_WORKERS="1",
        GATEWAY_REDIS_URL=private_redis.url,
        GATEWAY_RATE_LIMIT="5/minute",
    )
    photo = images()[3]
    down = [post_analyze(gateway, photo) for _ in range(6)]
    assert [r.status_code for r in down] == [200] * 5 + [429], [r.text for r in down]
    assert_rate_limited(down[-1])
    up, fallbacks = redis_metrics(gateway)
    assert up == 0.0 and fallbacks["rate_limit"] >= 6, (up, fallbacks)

    private_redis.restart()
    time.sleep(1.5)
    # The worker's own window is full; Redis's is empty: 5 more pass only if Redis counts them.
    back = [post_analyze(gateway, photo) for _ in range(6)]
    assert [r.status_code for r in back] == [200] * 5 + [429], [r.text for r in back]
    assert_rate_limited(back[-1])
    assert redis_keys(private_redis, RATE_LIMIT_PREFIX)
    up_after, after = redis_metrics(gateway)
    assert up_after == 1.0 and after["rate_limit"] == fallbacks["rate_limit"], after
    assert len(redis_messages(gateway, FAILED_LINE)) == 1
    assert len(redis_messages(gateway, RECOVERED_LINE)) == 1
    print(f"\nRedis down: 5 x 200 + 429 ({fallbacks}); restarted: 5 x 200 + 429 counted in Redis")
