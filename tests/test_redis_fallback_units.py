"""Redis as shared state that is never needed to answer: the breaker, the fallbacks, the settings.

RedisLink's down/up state on a fake clock, KeyRateLimiter and RedisCache on a link to a
closed local port (connection refused: fast, no server needed) or on tests/fakes_redis,
and the new GATEWAY_* settings. A real redis-server is exercised elsewhere.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import pytest

from gateway.cache import REDIS_PREFIX, AnswerCache, CachedAnswer, RedisCache
from gateway.classifier import Classification, Prediction
from gateway.config import ConfigError, Settings
from gateway.errors import TooManyRequests
from gateway.images import ImageFacts
from gateway.ratelimit import KeyRateLimiter, parse_rate_limit, shared_salt
from gateway.redis_link import RedisLink
from tests.fakes_gateway import data_url, encode_image
from tests.fakes_redis import FakeClock, FakeLink, FakeRedis, closed_port_url
from tests.fixtures.gateway import UNIT_KEYS, MakeApp

PASSWORD = "s3cret"
TIMEOUT_S = 0.2
ANSWER = CachedAnswer(
    Classification("resnet50", "1", [Prediction("cat", 99.0)]), ImageFacts("PNG", 4, 4, 80)
)


def dead_link(
    clock: FakeClock | None = None, *, retry_after_s: float = 1.0, password: str | None = None
) -> RedisLink:
    """A RedisLink to a port nothing listens on (connection refused at once)."""
    return RedisLink(
        closed_port_url(password),
        TIMEOUT_S,
        retry_after_s=retry_after_s,
        clock=clock if clock is not None else time.monotonic,
    )


def redis_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The messages gateway.redis logged at WARNING or above."""
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == "gateway.redis" and record.levelno >= logging.WARNING
    ]


# -- RedisLink: the breaker ----------------------------------------------------------------------


def test_a_failure_skips_redis_until_retry_after_passes() -> None:
    """failed() makes available() False until retry_after_s has passed on the clock."""
    clock = FakeClock()
    link = RedisLink("redis://cache:6379/0", TIMEOUT_S, retry_after_s=2.0, clock=clock)
    assert link.available()
    link.failed("cache", ConnectionError("refused"))
    assert not link.available()
    clock.advance(1.9)
    assert not link.available()
    clock.advance(0.1)
    assert link.available()
    link.failed("rate_limit", ConnectionError("refused again"))  # the retry failed too
    assert not link.available()
    clock.advance(2.0)
    assert link.available()


def test_success_restores_and_on_state_reports_each_change_once() -> None:
    """on_state gets False at the first failure and True at the first success, nothing more."""
    clock = FakeClock()
    states: list[bool] = []
    link = RedisLink("redis://cache:6379/0", TIMEOUT_S, on_state=states.append, clock=clock)
    link.succeeded()  # up and staying up: no report
    for _ in range(3):
        link.failed("cache", TimeoutError("slow"))
    assert states == [False]
    link.succeeded()
    link.succeeded()
    assert states == [False, True]
    assert link.available()
    link.failed("cache", TimeoutError("slow"))
    assert states == [False, True, False]


def test_an_outage_is_logged_once_not_per_call(caplog: pytest.LogCaptureFixture) -> None:
    """One warning when Redis fails, none for the calls that fail after, one when it is back."""
    caplog.set_level(logging.WARNING, logger="gateway.redis")
    clock = FakeClock()
    link = RedisLink("redis://cache:6379/0", TIMEOUT_S, clock=clock)
    for _ in range(20):
        link.failed("rate_limit", ConnectionError("refused"))
        clock.advance(5)  # every retry happens, and fails again
    warnings = redis_warnings(caplog)
    assert len(warnings) == 1
    assert "cache:6379" in warnings[0] and "rate_limit" in warnings[0]
    link.succeeded()
    link.succeeded()
    assert len(redis_warnings(caplog)) == 2 and "again" in redis_warnings(caplog)[1]
    link.failed("cache", ConnectionError("refused"))  # a second outage is logged again
    assert len(redis_warnings(caplog)) == 3


def test_the_password_is_never_shown(caplog: pytest.LogCaptureFixture) -> None:
    """A URL's password appears neither in ``where`` nor in the logs of a real failed call."""
    caplog.set_level(logging.DEBUG, logger="gateway")
    link = RedisLink(f"redis://:{PASSWORD}@cache.internal:6379/0", TIMEOUT_S)
    assert link.where == "cache.internal:6379"
    assert RedisLink(f"redis://user:{PASSWORD}@cache.internal/2", TIMEOUT_S).where == (
        "cache.internal:6379"
    )
    assert RedisLink("unix:///run/redis.sock", TIMEOUT_S).where == "/run/redis.sock"
    link.failed("cache", ConnectionError(f"auth failed for :{PASSWORD}@cache.internal"))
    dead = dead_link(password=PASSWORD)
    limiter = KeyRateLimiter(parse_rate_limit("5/minute"), redis=dead, salt=b"s" * 32)
    limiter.hit("some-key")
    assert RedisCache(dead, 60).get("k") is None
    assert PASSWORD not in dead.where
    assert redis_warnings(caplog)  # the failures were logged...
    assert PASSWORD not in caplog.text  # ...without the password


def test_client_is_created_lazily_once_per_process() -> None:
    """No connection is made by the link's constructor; client() is memoised with the bounds."""
    link = RedisLink(closed_port_url(), TIMEOUT_S)
    client = link.client()
    assert link.client() is client
    assert link.timeout_s == TIMEOUT_S
    options = client.connection_pool.connection_kwargs
    assert options["socket_timeout"] == TIMEOUT_S
    assert options["socket_connect_timeout"] == TIMEOUT_S


# -- KeyRateLimiter on a dead Redis --------------------------------------------------------------


def test_rate_limiter_falls_back_to_the_local_limit() -> None:
    """Redis refusing: hit() counts locally (on_fallback each time) and still enforces 3/minute."""
    fallbacks: list[None] = []
    link = dead_link()
    limiter = KeyRateLimiter(
        parse_rate_limit("3/minute"),
        redis=link,
        salt=shared_salt(UNIT_KEYS, "rate-limit"),
        on_fallback=lambda: fallbacks.append(None),
    )
    assert limiter.shared
    for _ in range(3):
        limiter.hit(UNIT_KEYS[0])
    with pytest.raises(TooManyRequests) as refused:
        limiter.hit(UNIT_KEYS[0])
    assert refused.value.status == 429 and refused.value.retry_after_s is not None
    assert len(fallbacks) == 4
    assert not link.available()
    limiter.hit(UNIT_KEYS[1])  # another key has its own local window
    with pytest.raises(TooManyRequests, match="at most 3"):
        limiter.hit(UNIT_KEYS[1], cost=4)


def test_rate_limiter_never_raises_anything_but_too_many_requests() -> None:
    """Whatever Redis does, hit() either returns or raises TooManyRequests (with costs too)."""
    clock = FakeClock()
    limiter = KeyRateLimiter(
        parse_rate_limit("5/second;20/minute"), redis=dead_link(clock, retry_after_s=0.5)
    )
    outcomes: dict[str, int] = {"ok": 0, "limited": 0}
    for round_ in range(30):
        clock.advance(0.3)  # some calls retry Redis, the others skip it
        try:
            limiter.hit("key", cost=1 + round_ % 3)
        except TooManyRequests:
            outcomes["limited"] += 1
        else:
            outcomes["ok"] += 1
    assert outcomes["ok"] > 0 and outcomes["limited"] > 0


class CountingLink(RedisLink):
    """A RedisLink that counts the calls that reached Redis and failed."""

    tries = 0

    def failed(self, use: str, error: Exception) -> None:
        """Count, then record the failure as usual."""
        self.tries += 1
        super().failed(use, error)


def test_hits_while_redis_is_down_do_not_each_connect() -> None:
    """50 hits on a dead Redis take far less than 50 timeouts: the link is skipped meanwhile."""
    clock = FakeClock()
    link = CountingLink(closed_port_url(), TIMEOUT_S, retry_after_s=1.0, clock=clock)
    limiter = KeyRateLimiter(parse_rate_limit("1000/minute"), redis=link)
    started = time.perf_counter()
    for _ in range(50):
        limiter.hit("key")
    assert time.perf_counter() - started < 1.0  # well under 50 x 0.2 s
    assert link.tries == 1  # only the first hit went to Redis
    clock.advance(1.0)  # retry_after_s later, the next hit tries Redis again (and fails)
    limiter.hit("key")
    limiter.hit("key")
    assert link.tries == 2


def test_rate_limiter_without_redis_never_falls_back() -> None:
    """Without a link the limiter is local and on_fallback is never called."""
    fallbacks: list[None] = []
    limiter = KeyRateLimiter(
        parse_rate_limit("2/minute"), on_fallback=lambda: fallbacks.append(None)
    )
    assert not limiter.shared
    limiter.hit("k")
    limiter.hit("k")
    with pytest.raises(TooManyRequests):
        limiter.hit("k")
    assert fallbacks == []


def test_shared_salt_is_the_same_for_every_replica() -> None:
    """shared_salt depends on the key set (not its order) and the purpose only."""
    assert shared_salt(["a", "b"], "cache") == shared_salt(["b", "a"], "cache")
    assert shared_salt(["a", "b"], "cache") != shared_salt(["a", "b"], "rate-limit")
    assert shared_salt(["a", "b"], "cache") != shared_salt(["a", "c"], "cache")
    assert len(shared_salt(["a"], "cache")) == 32


# -- RedisCache ----------------------------------------------------------------------------------


def test_redis_cache_on_a_dead_link_is_a_miss() -> None:
    """get is None, put raises nothing, and each skipped lookup is counted as a fallback."""
    fallbacks: list[None] = []
    link = dead_link()
    cache = RedisCache(link, 60, on_fallback=lambda: fallbacks.append(None))
    started = time.perf_counter()
    assert cache.get("key") is None  # tries Redis, fails
    cache.put("key", ANSWER.encode())  # skipped: the link is down
    assert cache.get("key") is None  # skipped
    assert time.perf_counter() - started < 1.0
    assert len(fallbacks) == 2
    assert not link.available()
    answers = AnswerCache(cache, owner_salt=None)
    assert answers.get("key") is None
    answers.put("key", ANSWER)


def test_redis_cache_stores_with_the_ttl_and_prefix() -> None:
    """On a working (fake) Redis: SET with PX = the TTL under the prefix, GET returns it."""
    clock = FakeClock()
    fake = FakeRedis(clock=clock)
    cache = RedisCache(FakeLink(fake, clock=clock), 2.5)
    cache.put("k", b"value")
    assert set(fake.data) == {REDIS_PREFIX + "k"}
    assert fake.data[REDIS_PREFIX + "k"][0] == pytest.approx(clock() + 2.5)
    assert cache.get("k") == b"value"
    clock.advance(2.5)
    assert cache.get("k") is None


def test_redis_cache_recovers_by_itself(caplog: pytest.LogCaptureFixture) -> None:
    """Down: misses and fallbacks, no calls while skipped; back: hits again, on_state True."""
    caplog.set_level(logging.WARNING, logger="gateway.redis")
    clock = FakeClock()
    fake = FakeRedis(clock=clock)
    states: list[bool] = []
    fallbacks: list[None] = []
    link = FakeLink(fake, on_state=states.append, clock=clock, retry_after_s=1.0)
    cache = RedisCache(link, 60, on_fallback=lambda: fallbacks.append(None))
    cache.put("k", b"v")
    fake.down = True
    assert cache.get("k") is None
    calls = fake.calls
    for _ in range(10):
        assert cache.get("k") is None
        cache.put("other", b"x")
    assert fake.calls == calls  # skipped while down
    assert len(fallbacks) == 11 and states == [False]
    fake.down = False
    clock.advance(1.0)
    assert cache.get("k") == b"v"
    assert states == [False, True] and link.available()
    assert len(redis_warnings(caplog)) == 2


# -- through the app -----------------------------------------------------------------------------


def test_gateway_answers_with_redis_down(make_gateway_app: MakeApp) -> None:
    """A dead GATEWAY_REDIS_URL: /analyze still answers, limits count locally, metrics say so."""
    client = make_gateway_app(
        GATEWAY_REDIS_URL=closed_port_url(PASSWORD),
        GATEWAY_REDIS_TIMEOUT_S="0.2",
        GATEWAY_RATE_LIMIT="3/minute",
    ).test_client()
    body = {"image": data_url(encode_image(np.zeros((8, 8, 3), np.uint8)))}
    headers = {"X-API-Key": UNIT_KEYS[0]}
    statuses = [client.post("/analyze", json=body, headers=headers).status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    metrics = client.get("/metrics").get_data(as_text=True)
    assert "gateway_redis_up 0.0" in metrics
    assert 'gateway_redis_fallbacks_total{use="rate_limit"} 4.0' in metrics
    assert 'gateway_redis_fallbacks_total{use="cache"} 3.0' in metrics
    assert 'gateway_cache_requests_total{backend="redis",result="miss"} 3.0' in metrics
    assert PASSWORD not in metrics


# -- settings ------------------------------------------------------------------------------------


def settings(**env: str) -> Settings:
    """Settings from GATEWAY_* ``env`` (names without the prefix) with one API key."""
    return Settings.from_env(
        {"GATEWAY_API_KEYS": "k", **{f"GATEWAY_{k}": v for k, v in env.items()}}
    )


def test_new_settings_defaults() -> None:
    """Batch limits from the model, 32 MiB batch bodies, no Redis, a 1 h / 64 MiB per-key cache."""
    defaults = settings()
    assert defaults.max_batch_images == 0
    assert defaults.max_batch_body_bytes == 32 * 1024 * 1024
    assert defaults.redis_url == ""
    assert defaults.redis_timeout_s == 0.25
    assert defaults.cache_enabled is True
    assert defaults.cache_ttl_s == 3600.0
    assert defaults.cache_max_bytes == 64 * 1024 * 1024
    assert defaults.cache_shared is False


def test_new_settings_are_read() -> None:
    """Each new variable is read into its setting."""
    read = settings(
        MAX_BATCH_IMAGES="8",
        MAX_BATCH_BODY_BYTES="1048576",
        REDIS_URL=f"redis://:{PASSWORD}@cache:6379/1",
        REDIS_TIMEOUT_S="0.5",
        CACHE="off",
        CACHE_TTL_S="60",
        CACHE_MAX_BYTES="0",
        CACHE_SCOPE="Shared",
    )
    assert (read.max_batch_images, read.max_batch_body_bytes) == (8, 1048576)
    assert read.redis_url == f"redis://:{PASSWORD}@cache:6379/1"
    assert read.redis_timeout_s == 0.5
    assert (read.cache_enabled, read.cache_ttl_s, read.cache_max_bytes) == (False, 60.0, 0)
    assert read.cache_shared is True
    assert PASSWORD not in repr(read)
    assert settings(REDIS_URL="unix:///run/redis.sock").redis_url == "unix:///run/redis.sock"
    assert settings(REDIS_URL="rediss://cache:6380/0").redis_url == "rediss://cache:6380/0"


@pytest.mark.parametrize(
    "url",
    [
        "http://x",
        f"http://:{PASSWORD}@cache:6379",
        "redis:/cache:6379",
        "cache:6379",
        "redis://a b",
    ],
)
def test_a_bad_redis_url_names_the_variable_not_the_value(url: str) -> None:
    """A GATEWAY_REDIS_URL that is not redis://, rediss:// or unix:// is refused, value hidden."""
    with pytest.raises(ConfigError, match="GATEWAY_REDIS_URL") as refused:
        settings(REDIS_URL=url)
    assert url not in str(refused.value)
    assert PASSWORD not in str(refused.value)


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"CACHE_SCOPE": "bogus"}, "GATEWAY_CACHE_SCOPE"),
        ({"REDIS_URL": "redis://"}, "GATEWAY_REDIS_URL"),
        ({"CACHE": "maybe"}, "GATEWAY_CACHE"),
        ({"CACHE_TTL_S": "0"}, "GATEWAY_CACHE_TTL_S"),
        ({"CACHE_MAX_BYTES": "-1"}, "GATEWAY_CACHE_MAX_BYTES"),
        ({"REDIS_TIMEOUT_S": "11"}, "GATEWAY_REDIS_TIMEOUT_S"),
        ({"MAX_BATCH_IMAGES": "257"}, "GATEWAY_MAX_BATCH_IMAGES"),
        ({"MAX_BATCH_BODY_BYTES": "10"}, "GATEWAY_MAX_BATCH_BODY_BYTES"),
    ],
)
def test_invalid_new_settings_are_config_errors(env: dict[str, str], variable: str) -> None:
    """An out-of-range or unknown value is a ConfigError naming its variable."""
    with pytest.raises(ConfigError, match=variable):
        settings(**env)


def test_a_refusal_by_a_recovered_redis_marks_it_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 429 answered by Redis after an outage is an answer: the link is up again."""
    from limits.storage import MemoryStorage
    from limits.strategies import MovingWindowRateLimiter

    clock = FakeClock()
    states: list[bool] = []
    link = RedisLink("redis://cache:6379/0", 0.2, on_state=states.append, clock=clock)
    limiter = KeyRateLimiter(parse_rate_limit("1/minute"), redis=link, salt=b"s" * 32)
    answering = MovingWindowRateLimiter(MemoryStorage())  # stands in for a Redis that answers
    monkeypatch.setattr(limiter, "_shared_limiter", lambda _link: answering)
    limiter.hit("k")
    link.failed("rate_limit", ConnectionError("down"))
    clock.advance(5)
    with pytest.raises(TooManyRequests):
        limiter.hit("k")
    assert states == [False, True] and link.available()
