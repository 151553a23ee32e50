"""The answer cache: a repeated image is answered without decoding it or calling Triton.

An entry's key is the SHA-256 of the raw image bytes together with everything that changes
the answer: the model, the version that answers (after rollout routing, or the version
Triton serves), ``top_k``, the decode mode (JPEG draft on/off), and the caller's key
fingerprint unless GATEWAY_CACHE_SCOPE=shared. Because the version is part of the key, an
answer of another version is never returned after a hot swap, promotion or rollback: it is
simply not looked up any more, and expires.

Two stores with one shape: ``MemoryCache`` (per worker, an LRU bounded in bytes, the
default) and ``RedisCache`` (shared by every worker and replica, GATEWAY_REDIS_URL). A Redis
failure is a miss (and the put is skipped), never an error: ``gateway.redis_link`` logs it
once and retries Redis by itself.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import redis

from gateway.classifier import Classification, Prediction
from gateway.images import ImageFacts
from gateway.redis_link import RedisLink

REDIS_PREFIX = "visionai:answer:v1:"
#: Bytes of bookkeeping an in-process entry costs beyond its value (key, node, object headers).
ENTRY_OVERHEAD_BYTES = 200


@dataclass(frozen=True)
class CachedAnswer:
    """What a hit needs to answer as the first request was answered (and to record it)."""

    classification: Classification
    image: ImageFacts

    def encode(self) -> bytes:
        """The compact JSON an entry is stored as."""
        result = self.classification
        return json.dumps(
            {
                "m": result.model,
                "v": result.version,
                "p": [[p.label, p.confidence] for p in result.predictions],
                "i": [self.image.format, self.image.width, self.image.height, self.image.bytes],
            },
            separators=(",", ":"),
        ).encode("utf-8")

    @classmethod
    def decode(cls, data: bytes) -> CachedAnswer | None:
        """An entry back from its bytes; None for anything that is not one (never raises)."""
        try:
            document = json.loads(data)
            predictions = [Prediction(str(label), float(conf)) for label, conf in document["p"]]
            image_format, width, height, size = document["i"]
            return cls(
                Classification(str(document["m"]), str(document["v"]), predictions),
                ImageFacts(str(image_format), int(width), int(height), int(size)),
            )
        except (ValueError, KeyError, TypeError, RecursionError):
            return None


def image_digest(data: bytes) -> str:
    """The SHA-256 of the raw image bytes, in hex: the image's part of a cache key."""
    return hashlib.sha256(data).hexdigest()


def answer_key(
    digest: str, *, model: str, version: str, top_k: int, draft: bool, scope: str
) -> str:
    """The cache key of an image's answer by ``model`` ``version`` for one caller scope."""
    mode = "draft" if draft else "exact"
    return f"{scope}:{model}:{version}:{top_k}:{mode}:{digest}"


class AnswerStore(Protocol):
    """Where cached answers live; a failing store behaves as an empty one."""

    kind: str  # "memory" or "redis": the metrics' backend label

    def get(self, key: str) -> bytes | None:
        """The stored bytes, or None (absent, expired, or the store failed)."""
        ...

    def put(self, key: str, value: bytes) -> None:
        """Store ``value`` under ``key`` for the store's TTL (best effort)."""
        ...


class MemoryCache:
    """A per-process LRU bounded in bytes, with a TTL; thread-safe."""

    kind = "memory"

    def __init__(
        self,
        max_bytes: int,
        ttl_s: float,
        *,
        on_evict: Callable[[int], None] | None = None,
        on_size: Callable[[int], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_bytes = max_bytes
        self._ttl_s = ttl_s
        self._on_evict = on_evict
        self._on_size = on_size
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._bytes = 0

    @property
    def size_bytes(self) -> int:
        """The bytes held now (values, keys and the per-entry overhead)."""
        return self._bytes

    def __len__(self) -> int:
        """The number of entries held."""
        return len(self._entries)

    def get(self, key: str) -> bytes | None:
        """The value if present and fresh (and mark it recently used)."""
        now = self._clock()
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            expires_at, value = entry
            if expires_at <= now:
                self._drop(key)
                self._report()
                return None
            self._entries.move_to_end(key)
            return value

    def put(self, key: str, value: bytes) -> None:
        """Store ``value``, evicting the least recently used entries beyond the bound."""
        cost = _cost(key, value)
        evicted = 0
        with self._lock:
            if key in self._entries:
                self._drop(key)
            if cost > self.max_bytes:
                self._report()
                return  # larger than the whole cache: not worth holding
            self._entries[key] = (self._clock() + self._ttl_s, value)
            self._bytes += cost
            while self._bytes > self.max_bytes:
                oldest = next(iter(self._entries))
                self._drop(oldest)
                evicted += 1
            self._report()
        if evicted and self._on_evict is not None:
            self._on_evict(evicted)

    def _drop(self, key: str) -> None:
        _, value = self._entries.pop(key)
        self._bytes -= _cost(key, value)

    def _report(self) -> None:
        if self._on_size is not None:
            self._on_size(self._bytes)


def _cost(key: str, value: bytes) -> int:
    return len(key) + len(value) + ENTRY_OVERHEAD_BYTES


class RedisCache:
    """Answers in Redis (``SET ... PX``), shared by every worker and replica."""

    kind = "redis"

    def __init__(
        self, link: RedisLink, ttl_s: float, *, on_fallback: Callable[[], None] | None = None
    ) -> None:
        self._link = link
        self._ttl_ms = max(1, int(ttl_s * 1000))
        self._on_fallback = on_fallback

    def get(self, key: str) -> bytes | None:
        """The stored bytes, or None when absent or when Redis fails or is skipped."""
        if not self._link.available():
            self._fell_back()
            return None
        try:
            value = self._link.client().get(REDIS_PREFIX + key)
        except redis.RedisError as error:
            self._link.failed("cache", error)
            self._fell_back()
            return None
        self._link.succeeded()
        return value if isinstance(value, bytes) else None

    def put(self, key: str, value: bytes) -> None:
        """Store ``value`` with the TTL; a failure only means the next request misses."""
        if not self._link.available():
            return
        try:
            self._link.client().set(REDIS_PREFIX + key, value, px=self._ttl_ms)
        except redis.RedisError as error:
            self._link.failed("cache", error)
            return
        self._link.succeeded()

    def _fell_back(self) -> None:
        if self._on_fallback is not None:
            self._on_fallback()


class AnswerCache:
    """Looks answers up and stores them, counting hits and misses for the metrics."""

    def __init__(
        self,
        store: AnswerStore,
        *,
        owner_salt: bytes | None,
        on_result: Callable[[str], None] | None = None,
    ) -> None:
        self.store = store
        self._owner_salt = owner_salt  # None: one scope for every key (GATEWAY_CACHE_SCOPE)
        self._on_result = on_result

    def scope(self, api_key: str | None) -> str:
        """The part of the key that says whose answers these are (a keyed hash, never the key)."""
        if self._owner_salt is None:
            return "shared"
        digest = hmac.new(self._owner_salt, (api_key or "").encode("utf-8", "replace"), "sha256")
        return digest.hexdigest()[:32]

    def get(self, key: str) -> CachedAnswer | None:
        """The cached answer for ``key`` (a hit), or None (a miss)."""
        data = self.store.get(key)
        answer = CachedAnswer.decode(data) if data is not None else None
        if self._on_result is not None:
            self._on_result("hit" if answer is not None else "miss")
        return answer

    def put(self, key: str, answer: CachedAnswer) -> None:
        """Remember ``answer`` under ``key``."""
        self.store.put(key, answer.encode())
