"""Per-API-key rate limiting with the ``limits`` library (Flask-Limiter's engine), in memory.

Requests are counted under a *fingerprint* of the key: an HMAC-SHA256 of the key with a
salt drawn at start-up, truncated. The key itself is never a storage key, a log field
or a metric label. Storage is in-process: every gunicorn worker counts on its own, so the
effective limit of one key is up to GATEWAY_WORKERS times the configured one (documented
in docs/reliability.md); a shared store (Redis) would be the way to an exact global limit.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
import time
from collections.abc import Sequence

from limits import RateLimitItem, parse_many
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from gateway.errors import TooManyRequests

ANONYMOUS = "anonymous"


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


class KeyRateLimiter:
    """Counts each API key's requests in a moving window; raises TooManyRequests (429)."""

    def __init__(self, items: Sequence[RateLimitItem]) -> None:
        self._items = tuple(items)
        self._salt = secrets.token_bytes(32)  # per process: fingerprints mean nothing elsewhere
        self._limiter = MovingWindowRateLimiter(MemoryStorage())

    def fingerprint(self, key: str | None) -> str:
        """A salted, truncated HMAC of ``key``: stable in this process, useless elsewhere."""
        if key is None:
            return ANONYMOUS
        digest = hmac.new(self._salt, key.encode("utf-8", "replace"), hashlib.sha256)
        return digest.hexdigest()[:32]

    def hit(self, key: str | None) -> None:
        """Count one request for ``key``; raise TooManyRequests when any window is full."""
        fingerprint = self.fingerprint(key)
        for item in self._items:
            if not self._limiter.hit(item, fingerprint):
                stats = self._limiter.get_window_stats(item, fingerprint)
                wait_s = max(1, math.ceil(stats.reset_time - time.time()))
                raise TooManyRequests(
                    f"Rate limit of {item} per API key exceeded; retry in {wait_s} s.",
                    retry_after_s=wait_s,
                )
