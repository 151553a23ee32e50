"""Per-API-key rate limiting with the ``limits`` library (Flask-Limiter's engine).

Requests, or a batch's images, are counted under a *fingerprint* of the key: an HMAC-SHA256
of the key, truncated. The key itself is never a storage key, a log field or a metric label.

- With GATEWAY_REDIS_URL the windows live in Redis (limits' Redis storage, a moving window
  kept by a Lua script, atomic): one key's limit is exact across every worker and replica.
  The fingerprint's HMAC key is then derived from the whole configured key set, which every
  replica shares; reading Redis does not reveal a key without knowing all of them.
- Without it, or while Redis fails (gateway.redis_link), each worker counts on its own with a
  salt drawn at start: a key gets up to GATEWAY_WORKERS times its limit per replica until
  Redis answers again. A rate limiter is never a reason to refuse a request it cannot count.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
import secrets
import threading
import time
from collections.abc import Callable, Sequence

from limits import RateLimitItem, parse_many
from limits.errors import StorageError
from limits.storage import MemoryStorage, RedisStorage
from limits.strategies import MovingWindowRateLimiter

from gateway.errors import TooManyRequests
from gateway.redis_link import RedisLink

ANONYMOUS = "anonymous"
REDIS_PREFIX = "visionai:ratelimit"


class RateLimitSyntaxError(ValueError):
    """The rate limit text is not understood (e.g. "100/minute" or "10/second;500/hour")."""


def parse_rate_limit(text: str) -> tuple[RateLimitItem, ...]:
    """Parse "N/period" items separated by ';' (limits' notation), or raise RateLimitSyntaxError."""
    try:
        items = tuple(parse_many(text))
    except ValueError as exc:
        raise RateLimitSyntaxError(str(exc)) from None
    if not items:
        raise RateLimitSyntaxError(f"no rate limit in {text!r}")
    return items


def shared_salt(api_keys: Sequence[str], purpose: str) -> bytes:
    """A fingerprint key every replica derives alike from the configured API keys, per purpose."""
    material = "\n".join([f"visionai {purpose} fingerprint", *sorted(api_keys)]).encode("utf-8")
    return hashlib.sha256(material).digest()


class KeyRateLimiter:
    """Counts each API key's requests in a moving window; raises TooManyRequests (429)."""

    def __init__(
        self,
        items: Sequence[RateLimitItem],
        *,
        redis: RedisLink | None = None,
        salt: bytes | None = None,
        on_fallback: Callable[[], None] | None = None,
    ) -> None:
        self._items = tuple(items)
        # Per process unless given: local fingerprints mean nothing elsewhere.
        self._salt = salt if salt is not None else secrets.token_bytes(32)
        self._local = MovingWindowRateLimiter(MemoryStorage())
        self._redis = redis
        self._on_fallback = on_fallback
        self._lock = threading.Lock()
        self._shared: MovingWindowRateLimiter | None = None
        self._shared_pid = -1

    @property
    def shared(self) -> bool:
        """True when the windows are kept in Redis (while it answers)."""
        return self._redis is not None

    def fingerprint(self, key: str | None) -> str:
        """A keyed, truncated HMAC of ``key``: the only name a key has in storage."""
        if key is None:
            return ANONYMOUS
        digest = hmac.new(self._salt, key.encode("utf-8", "replace"), hashlib.sha256)
        return digest.hexdigest()[:32]

    def hit(self, key: str | None, cost: int = 1) -> None:
        """Count ``cost`` requests (images) for ``key``; TooManyRequests when a window is full."""
        fingerprint = self.fingerprint(key)
        link = self._redis
        if link is not None and link.available():
            try:
                self._hit(self._shared_limiter(link), fingerprint, cost)
            except StorageError as error:
                link.failed("rate_limit", error)
                if self._on_fallback is not None:
                    self._on_fallback()
            except TooManyRequests:
                link.succeeded()  # Redis answered: a refusal is an answer too
                raise
            else:
                link.succeeded()
                return
        elif link is not None and self._on_fallback is not None:
            self._on_fallback()
        self._hit(self._local, fingerprint, cost)

    def _shared_limiter(self, link: RedisLink) -> MovingWindowRateLimiter:
        # One per process, on the link's connection pool (sockets do not survive fork).
        pid = os.getpid()
        limiter = self._shared
        if limiter is not None and self._shared_pid == pid:
            return limiter
        with self._lock:
            if self._shared is None or self._shared_pid != pid:
                storage = RedisStorage(
                    "redis://",
                    connection_pool=link.client().connection_pool,
                    key_prefix=REDIS_PREFIX,
                    wrap_exceptions=True,
                )
                self._shared = MovingWindowRateLimiter(storage)
                self._shared_pid = pid
            return self._shared

    def _hit(self, limiter: MovingWindowRateLimiter, fingerprint: str, cost: int) -> None:
        for item in self._items:
            if cost > item.amount:
                raise TooManyRequests(
                    f"This request has {cost} images but the rate limit is {item} per API key; "
                    f"send at most {item.amount} images at a time.",
                    retry_after_s=max(1, item.get_expiry()),
                )
            if not limiter.hit(item, fingerprint, cost=cost):
                stats = limiter.get_window_stats(item, fingerprint)
                wait_s = max(1, math.ceil(stats.reset_time - time.time()))
                needs = f"; {stats.remaining} left, this request needs {cost}" if cost > 1 else ""
                raise TooManyRequests(
                    f"Rate limit of {item} per API key exceeded{needs}; retry in {wait_s} s.",
                    retry_after_s=wait_s,
                )
