"""A fake Redis client and link for the gateway's unit tests (never the proof that Redis works).

``FakeRedis`` keeps GET/SET ... PX in a dict on an injectable clock and can be switched to
fail like an unreachable server; ``FakeLink`` is a gateway.redis_link.RedisLink whose
client is that fake, so the breaker, the logging and the users' fallbacks are the real ones.
A real redis-server covers the rest (limits' Lua scripts, pools, reconnects).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

import redis

from gateway.redis_link import RETRY_AFTER_S, RedisLink


@dataclass
class FakeClock:
    """A monotonic clock that only moves when told to."""

    now: float = 1000.0

    def __call__(self) -> float:
        """The current time."""
        return self.now

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds``."""
        self.now += seconds


@dataclass
class FakeRedis:
    """The two commands the answer cache uses, with expiry; ``down`` makes every call fail."""

    clock: Callable[[], float] = field(default_factory=FakeClock)
    down: bool = False
    data: dict[str, tuple[float, bytes]] = field(default_factory=dict)
    calls: int = 0

    def get(self, key: str) -> bytes | None:
        """The value if present and not expired (redis-py's GET returns bytes)."""
        self._call()
        entry = self.data.get(key)
        if entry is None or entry[0] <= self.clock():
            return None
        return entry[1]

    def set(self, key: str, value: bytes, *, px: int) -> bool:
        """SET key value PX px."""
        self._call()
        self.data[key] = (self.clock() + px / 1000, value)
        return True

    def _call(self) -> None:
        self.calls += 1
        if self.down:
            raise redis.ConnectionError("Error 111 connecting to fake:6379. Connection refused.")


class FakeLink(RedisLink):
    """A RedisLink (real breaker, logs and callbacks) whose client is a FakeRedis."""

    def __init__(
        self,
        fake: FakeRedis,
        url: str = "redis://fake:6379/0",
        *,
        retry_after_s: float = RETRY_AFTER_S,
        on_state: Callable[[bool], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(url, 0.2, retry_after_s=retry_after_s, on_state=on_state, clock=clock)
        self.fake = fake

    def client(self) -> redis.Redis:
        """The fake, typed as the real client its users expect."""
        return cast(redis.Redis, self.fake)


def closed_port_url(password: str | None = None) -> str:
    """A redis:// URL on 127.0.0.1 at a port nothing listens on (bound, then closed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    auth = f":{password}@" if password else ""
    return f"redis://{auth}127.0.0.1:{port}/0"
