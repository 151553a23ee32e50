"""The answer cache: entries, keys, the in-process LRU, scopes, and /analyze through it.

Unit tests on the fake backend (tests/fakes_gateway.FakeBackend); the cache is on by default
in ``make_gateway_app``. Redis as the store is in tests/test_redis_fallback_units.py.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest
from flask.testing import FlaskClient

from gateway.cache import (
    ENTRY_OVERHEAD_BYTES,
    AnswerCache,
    CachedAnswer,
    MemoryCache,
    answer_key,
    image_digest,
)
from gateway.classifier import Classification, Prediction
from gateway.images import ImageFacts
from tests.fakes_gateway import FakeBackend, data_url, encode_image
from tests.fakes_redis import FakeClock
from tests.fixtures.gateway import UNIT_KEYS, MakeApp

FIRST = {"X-API-Key": UNIT_KEYS[0]}
SECOND = {"X-API-Key": UNIT_KEYS[1]}
PHOTO = encode_image(np.random.default_rng(7).integers(0, 256, (48, 64, 3), np.uint8), "PNG")
OTHER_PHOTO = encode_image(np.random.default_rng(8).integers(0, 256, (48, 64, 3), np.uint8), "PNG")
ANSWER = CachedAnswer(
    Classification("resnet50", "3", [Prediction("cat", 91.5), Prediction("dog", 8.25)]),
    ImageFacts("JPEG", 640, 480, 12345),
)
KEY_PARTS: dict[str, Any] = {
    "model": "resnet50",
    "version": "1",
    "top_k": 5,
    "draft": True,
    "scope": "s" * 32,
}


def analyze(client: FlaskClient, body: dict[str, Any], headers: dict[str, str] = FIRST) -> Any:
    """POST /analyze with JSON ``body``; asserts a 200 and returns the JSON answer."""
    response = client.post("/analyze", json=body, headers=headers)
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()


def image(data: bytes = PHOTO, **options: Any) -> dict[str, Any]:
    """An /analyze JSON body for ``data`` with ``options`` (top_k, version...)."""
    return {"image": data_url(data), **options}


# -- entries and keys ---------------------------------------------------------------------------


def test_cached_answer_round_trips() -> None:
    """encode() then decode() gives back the same classification and image facts."""
    decoded = CachedAnswer.decode(ANSWER.encode())
    assert decoded == ANSWER
    assert decoded is not None and decoded.classification.predictions[0] == ("cat", 91.5)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xff\xfe\x00junk",
        b"not json at all",
        b"[]",
        b"42",
        b'"text"',
        b"{}",
        b'{"m":"resnet50","v":"1","p":[["cat",1.0]]}',  # no image facts
        b'{"m":"resnet50","v":"1","p":"cat","i":["PNG",1,1,1]}',
        b'{"m":"resnet50","v":"1","p":[["cat"]],"i":["PNG",1,1,1]}',
        b'{"m":"resnet50","v":"1","p":[["cat","x"]],"i":["PNG",1,1,1]}',
        b'{"m":"resnet50","v":"1","p":[],"i":["PNG",1,1]}',
        b'{"m":"resnet50","v":"1","p":[],"i":["PNG","wide",1,1]}',
        b'{"m":"resnet50","v":"1","p":null,"i":["PNG",1,1,1]}',
        pytest.param(b"[" * 100_000, id="deeply-nested"),
    ],
)
def test_decode_of_anything_else_is_none(data: bytes) -> None:
    """Junk bytes or JSON of the wrong shape decode to None instead of raising."""
    assert CachedAnswer.decode(data) is None


def test_image_digest_is_the_sha256_of_the_bytes() -> None:
    """The digest is stable per content, hex, and differs between images."""
    assert image_digest(PHOTO) == image_digest(bytes(PHOTO))
    assert image_digest(PHOTO) != image_digest(OTHER_PHOTO)
    assert len(image_digest(PHOTO)) == 64 and int(image_digest(PHOTO), 16) >= 0


@pytest.mark.parametrize(
    ("part", "other"),
    [
        ("model", "efficientnet"),
        ("version", "2"),
        ("top_k", 3),
        ("draft", False),
        ("scope", "t" * 32),
    ],
)
def test_answer_key_differs_in_every_part(part: str, other: object) -> None:
    """Changing the model, version, top_k, decode mode or scope changes the key."""
    digest = image_digest(PHOTO)
    assert answer_key(digest, **KEY_PARTS) == answer_key(digest, **KEY_PARTS)
    assert answer_key(digest, **KEY_PARTS) != answer_key(digest, **{**KEY_PARTS, part: other})


def test_answer_key_differs_per_image() -> None:
    """Two images' keys differ when everything else is equal."""
    first = answer_key(image_digest(PHOTO), **KEY_PARTS)
    assert first != answer_key(image_digest(OTHER_PHOTO), **KEY_PARTS)


# -- MemoryCache ---------------------------------------------------------------------------------


def cost(key: str, value: bytes) -> int:
    """What one entry costs in the cache's byte bound."""
    return len(key) + len(value) + ENTRY_OVERHEAD_BYTES


def test_memory_cache_evicts_the_least_recently_used() -> None:
    """At the bound the oldest entry goes, and a get refreshes an entry's recency."""
    value = b"v" * 100
    cache = MemoryCache(3 * cost("a", value), ttl_s=60)
    for key in "abc":
        cache.put(key, value)
    assert cache.get("a") == value  # "a" is now the most recent; "b" the oldest
    cache.put("d", value)
    assert cache.get("b") is None
    assert [cache.get(key) for key in "acd"] == [value] * 3
    assert len(cache) == 3


def test_memory_cache_byte_bound_holds_and_evictions_are_counted() -> None:
    """After many puts of varied sizes the bytes stay within max_bytes; on_evict sums up."""
    evicted: list[int] = []
    sizes: list[int] = []
    cache = MemoryCache(
        10_000, ttl_s=60, on_evict=evicted.append, on_size=sizes.append, clock=FakeClock()
    )
    rng = np.random.default_rng(3)
    for index in range(500):
        cache.put(f"key-{index}", b"x" * int(rng.integers(0, 900)))
        assert cache.size_bytes <= cache.max_bytes
    assert sum(evicted) == 500 - len(cache)
    assert all(count >= 1 for count in evicted)
    assert sizes[-1] == cache.size_bytes
    assert max(sizes) <= cache.max_bytes
    held = [f"key-{index}" for index in range(500) if cache.get(f"key-{index}") is not None]
    assert len(held) == len(cache)
    assert held == [f"key-{index}" for index in range(500 - len(held), 500)]  # the newest ones


def test_memory_cache_reports_its_size() -> None:
    """on_size gets the bytes held after each put and after an expired entry is dropped."""
    sizes: list[int] = []
    clock = FakeClock()
    cache = MemoryCache(10_000, ttl_s=5, on_size=sizes.append, clock=clock)
    cache.put("a", b"1234")
    cache.put("bb", b"56")
    assert sizes == [cost("a", b"1234"), cost("a", b"1234") + cost("bb", b"56")]
    clock.advance(5)
    assert cache.get("a") is None
    assert sizes[-1] == cost("bb", b"56") == cache.size_bytes


def test_memory_cache_entries_expire_after_the_ttl() -> None:
    """An entry is served until its TTL has passed on the injected clock, then dropped."""
    clock = FakeClock()
    cache = MemoryCache(10_000, ttl_s=10, clock=clock)
    cache.put("a", b"value")
    clock.advance(9.9)
    assert cache.get("a") == b"value"
    clock.advance(0.1)
    assert cache.get("a") is None
    assert len(cache) == 0 and cache.size_bytes == 0
    cache.put("a", b"again")  # a fresh put starts a new TTL
    clock.advance(9)
    assert cache.get("a") == b"again"


def test_memory_cache_does_not_store_a_value_larger_than_itself() -> None:
    """A value whose entry exceeds max_bytes is skipped, and evicts nothing."""
    evicted: list[int] = []
    cache = MemoryCache(1_000, ttl_s=60, on_evict=evicted.append)
    cache.put("small", b"s")
    cache.put("huge", b"h" * 1_000)
    assert cache.get("huge") is None
    assert cache.get("small") == b"s"
    assert evicted == [] and cache.size_bytes == cost("small", b"s")
    assert MemoryCache(0, ttl_s=60).get("x") is None  # GATEWAY_CACHE_MAX_BYTES=0 holds nothing


def test_memory_cache_replacing_a_key_does_not_leak_bytes() -> None:
    """Putting a key again replaces its value and its cost; nothing counts twice."""
    cache = MemoryCache(100_000, ttl_s=60)
    for size in (10, 500, 3, 3, 800, 1):
        cache.put("same", b"x" * size)
        assert cache.size_bytes == cost("same", b"x" * size)
    assert len(cache) == 1 and cache.get("same") == b"x"


def test_memory_cache_is_thread_safe() -> None:
    """Threads putting and getting at once leave a cache whose byte count matches its entries."""
    cache = MemoryCache(50_000, ttl_s=60)
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def work(worker: int) -> None:
        try:
            start.wait()
            for index in range(400):
                key = f"k{(worker * 7 + index) % 150}"
                cache.put(key, key.encode() * (index % 9 + 1))
                cache.get(f"k{index % 150}")
        except BaseException as error:  # reported by the main thread
            errors.append(error)

    threads = [threading.Thread(target=work, args=(worker,)) for worker in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert not errors
    held = {f"k{i}": cache.get(f"k{i}") for i in range(150)}
    expected = sum(cost(key, value) for key, value in held.items() if value is not None)
    assert cache.size_bytes == expected <= cache.max_bytes
    assert len(cache) == sum(value is not None for value in held.values())


# -- AnswerCache ---------------------------------------------------------------------------------


def test_per_key_scopes_differ_and_never_contain_the_key() -> None:
    """With an owner salt each API key has its own scope, a keyed hash that hides the key."""
    cache = AnswerCache(MemoryCache(10_000, ttl_s=60), owner_salt=b"salt" * 8)
    first, second = (cache.scope(key) for key in UNIT_KEYS)
    assert first != second
    assert first == cache.scope(UNIT_KEYS[0])
    for key, scope in zip(UNIT_KEYS, (first, second), strict=True):
        assert key not in scope and len(scope) == 32
    other_salt = AnswerCache(MemoryCache(10_000, ttl_s=60), owner_salt=b"pepper" * 6)
    assert other_salt.scope(UNIT_KEYS[0]) != first


def test_shared_scope_is_one_for_every_key() -> None:
    """Without an owner salt (GATEWAY_CACHE_SCOPE=shared) every key has the same scope."""
    cache = AnswerCache(MemoryCache(10_000, ttl_s=60), owner_salt=None)
    assert {cache.scope(UNIT_KEYS[0]), cache.scope(UNIT_KEYS[1]), cache.scope(None)} == {"shared"}


def test_answer_cache_reports_hits_and_misses() -> None:
    """on_result gets "miss" for an absent or undecodable entry and "hit" for a stored answer."""
    results: list[str] = []
    store = MemoryCache(10_000, ttl_s=60)
    cache = AnswerCache(store, owner_salt=None, on_result=results.append)
    assert cache.get("k") is None
    cache.put("k", ANSWER)
    assert cache.get("k") == ANSWER
    store.put("junk", b"{not an answer")
    assert cache.get("junk") is None
    assert results == ["miss", "hit", "miss"]


# -- /analyze through the cache ------------------------------------------------------------------


def test_second_identical_request_is_answered_from_the_cache(
    make_gateway_app: MakeApp, fake_backend: FakeBackend
) -> None:
    """The repeat is cached: true, otherwise the same answer, and Triton saw one batch only."""
    client = make_gateway_app().test_client()
    first = analyze(client, image())
    second = analyze(client, image())
    assert first["cached"] is False and second["cached"] is True
    ignored = {"cached", "message"}
    assert {k: v for k, v in second.items() if k not in ignored} == {
        k: v for k, v in first.items() if k not in ignored
    }
    assert second["message"].startswith(first["message"])
    assert "cache" in second["message"]
    assert len(fake_backend.batches) == 1
    assert "id" not in first and "id" not in second  # the history is off


def test_a_different_top_k_misses(make_gateway_app: MakeApp, fake_backend: FakeBackend) -> None:
    """top_k is part of the key: the same image with another top_k goes to Triton."""
    client = make_gateway_app().test_client()
    analyze(client, image(top_k=5))
    other = analyze(client, image(top_k=3))
    assert other["cached"] is False and len(other["predictions"]) == 3
    assert analyze(client, image(top_k=3))["cached"] is True
    assert len(fake_backend.batches) == 2


def test_a_different_image_misses(make_gateway_app: MakeApp, fake_backend: FakeBackend) -> None:
    """Another image is another key."""
    client = make_gateway_app().test_client()
    analyze(client, image(PHOTO))
    assert analyze(client, image(OTHER_PHOTO))["cached"] is False
    assert len(fake_backend.batches) == 2


def test_another_api_key_misses_by_default(
    make_gateway_app: MakeApp, fake_backend: FakeBackend
) -> None:
    """GATEWAY_CACHE_SCOPE=key (the default): one key's answers are not another's hits."""
    client = make_gateway_app().test_client()
    analyze(client, image(), FIRST)
    assert analyze(client, image(), SECOND)["cached"] is False
    assert analyze(client, image(), SECOND)["cached"] is True
    assert len(fake_backend.batches) == 2


def test_shared_scope_hits_across_api_keys(
    make_gateway_app: MakeApp, fake_backend: FakeBackend
) -> None:
    """GATEWAY_CACHE_SCOPE=shared: the second key is answered from the first key's entry."""
    client = make_gateway_app(GATEWAY_CACHE_SCOPE="shared").test_client()
    analyze(client, image(), FIRST)
    assert analyze(client, image(), SECOND)["cached"] is True
    assert len(fake_backend.batches) == 1


def test_cache_off_sends_every_request_to_the_backend(
    make_gateway_app: MakeApp, fake_backend: FakeBackend
) -> None:
    """GATEWAY_CACHE=off: nothing is cached and each request reaches Triton."""
    client = make_gateway_app(GATEWAY_CACHE="off").test_client()
    answers = [analyze(client, image()) for _ in range(3)]
    assert [answer["cached"] for answer in answers] == [False] * 3
    assert len(fake_backend.batches) == 3
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'gateway_cache_requests_total{backend="memory"' not in metrics


def test_a_new_version_is_never_answered_from_the_old_ones_cache(
    make_gateway_app: MakeApp, fake_backend: FakeBackend
) -> None:
    """After version 2 is published the same image is answered by v2; a pin to v1 hits v1's."""
    client = make_gateway_app().test_client()
    assert analyze(client, image())["model"]["version"] == "1"
    fake_backend.add("resnet50", "2")
    fresh = analyze(client, image())
    assert fresh["model"] == {"name": "resnet50", "version": "2"}
    assert fresh["cached"] is False
    assert len(fake_backend.batches) == 2
    pinned = analyze(client, image(version="1"))
    assert pinned["model"]["version"] == "1" and pinned["cached"] is True
    again = analyze(client, image())
    assert again["model"]["version"] == "2" and again["cached"] is True
    assert len(fake_backend.batches) == 2


def test_metrics_count_memory_hits_and_misses(make_gateway_app: MakeApp) -> None:
    """/metrics has gateway_cache_requests_total by backend="memory" and result."""
    client = make_gateway_app().test_client()
    for _ in range(3):
        analyze(client, image())
    analyze(client, image(OTHER_PHOTO))
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'gateway_cache_requests_total{backend="memory",result="hit"} 2.0' in metrics
    assert 'gateway_cache_requests_total{backend="memory",result="miss"} 2.0' in metrics
    assert "gateway_cache_bytes " in metrics
    assert "gateway_cache_bytes 0.0" not in metrics
    for key in UNIT_KEYS:
        assert key not in metrics


def test_memory_cache_an_oversized_replacement_drops_the_old_value() -> None:
    """A key put again with a value too large to hold no longer answers with its old value."""
    cache = MemoryCache(1000, ttl_s=60)
    cache.put("k", b"old")
    cache.put("k", b"n" * 2000)
    assert cache.get("k") is None and cache.size_bytes == 0
