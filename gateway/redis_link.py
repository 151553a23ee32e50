"""The gateway's one way to Redis (GATEWAY_REDIS_URL): a lazy client per process and a breaker.

Redis is shared state (rate-limit windows, the answer cache), never the only way to answer:
when a call fails, its user falls back (per-worker counting, no cache) and the link stays
*down* for ``retry_after_s``, so requests do not each wait out a timeout; the first call
after that tries Redis again and, if it answers, everything is back by itself. A change of
state is logged once (not once per request) and reported to ``on_state``.

Every call is bounded: ``socket_connect_timeout`` and ``socket_timeout`` are the configured
timeout, and a command whose connection failed is retried once (a pooled connection that a
Redis restart closed fails once, then a fresh one is opened); a timeout is not retried.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from urllib.parse import urlsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

log = logging.getLogger("gateway.redis")
#: How long a failed Redis stays skipped before the next call tries it again.
RETRY_AFTER_S = 1.0


class RedisLink:
    """A Redis client per process, created on first use, with a down/up state shared by users."""

    def __init__(
        self,
        url: str,
        timeout_s: float,
        *,
        retry_after_s: float = RETRY_AFTER_S,
        on_state: Callable[[bool], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._url = url
        self._timeout_s = timeout_s
        self._retry_after_s = retry_after_s
        self._on_state = on_state
        self._clock = clock
        self._lock = threading.Lock()
        self._client: redis.Redis | None = None
        self._client_pid = -1
        self._down_until = 0.0
        self._down = False

    @property
    def where(self) -> str:
        """host:port (or the socket path) of the server, never the password."""
        parts = urlsplit(self._url)
        if parts.scheme == "unix":
            return parts.path
        return f"{parts.hostname}:{parts.port or 6379}"

    @property
    def timeout_s(self) -> float:
        """The bound of every call."""
        return self._timeout_s

    def client(self) -> redis.Redis:
        """This process's client (sockets do not survive fork: one per pid, created lazily)."""
        pid = os.getpid()
        client = self._client
        if client is not None and self._client_pid == pid:
            return client
        with self._lock:
            if self._client is None or self._client_pid != pid:
                self._client = redis.Redis.from_url(
                    self._url,
                    socket_timeout=self._timeout_s,
                    socket_connect_timeout=self._timeout_s,
                    # Only a refused or dropped connection is retried, never a timeout.
                    retry=Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
                    health_check_interval=30,
                )
                self._client_pid = pid
            return self._client

    def available(self) -> bool:
        """False while a recent failure says to skip Redis; True when it is to be tried."""
        return not self._down or self._clock() >= self._down_until

    def failed(self, use: str, error: Exception) -> None:
        """Record a failed call by ``use`` (rate_limit, cache): skip Redis for a while."""
        with self._lock:
            was_down = self._down
            self._down = True
            self._down_until = self._clock() + self._retry_after_s
        if not was_down:
            log.warning(
                "Redis at %s failed (%s: %s): rate limits count per worker and the answer "
                "cache is skipped until it is reachable again",
                self.where,
                use,
                type(error).__name__,
            )
            if self._on_state is not None:
                self._on_state(False)

    def succeeded(self) -> None:
        """Record a call that Redis answered: back to normal if it was down."""
        if not self._down:
            return
        with self._lock:
            was_down, self._down = self._down, False
        if was_down:
            log.warning(
                "Redis at %s answers again: shared rate limits and cache are back", self.where
            )
            if self._on_state is not None:
                self._on_state(True)
