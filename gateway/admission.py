"""Admission control: a per-worker bound on /analyze requests in flight, with a short queue.

gunicorn's gthread worker hands every accepted connection to a thread pool whose queue is
unbounded, so without a bound of our own an overload piles up there and requests time out
in the client instead of being told to come back. The gate keeps at most ``max_inflight``
requests working (decoding, preprocessing, waiting on Triton) per worker; up to
``max_queue`` more wait at most ``queue_timeout_s`` for a slot, and everything beyond is
refused at once with 503 ``overloaded`` and ``Retry-After``. For the refusal to be fast,
the worker needs threads to spare beyond ``max_inflight + max_queue`` (GATEWAY_THREADS is
sized so by default: gateway.config.ServerSettings).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from gateway.errors import Overloaded

_AT_CAPACITY = "The gateway is at capacity; retry after the indicated delay."


class AdmissionGate:
    """A counting semaphore with a bounded, time-limited waiting line; a batch weighs more."""

    def __init__(self, max_inflight: int, max_queue: int, queue_timeout_s: float) -> None:
        if max_inflight < 1 or max_queue < 0 or queue_timeout_s < 0:
            raise ValueError("max_inflight >= 1, max_queue >= 0 and queue_timeout_s >= 0")
        self.max_inflight = max_inflight
        self.max_queue = max_queue
        self.queue_timeout_s = queue_timeout_s
        self._free = threading.Condition()
        self._in_use = 0
        self._waiting = 0

    @property
    def waiting(self) -> int:
        """Requests currently waiting for a slot."""
        return self._waiting

    @property
    def in_use(self) -> int:
        """Slots held now."""
        return self._in_use

    @contextmanager
    def admit(self, weight: int = 1) -> Iterator[None]:
        """Hold ``weight`` slots (an image each, at most all of them) for the ``with`` block.

        Raises Overloaded (503) at once when the line is full, or after ``queue_timeout_s``
        when the slots do not free up.
        """
        weight = max(1, min(weight, self.max_inflight))
        with self._free:
            if self._in_use + weight > self.max_inflight:
                if self._waiting >= self.max_queue:
                    raise Overloaded(_AT_CAPACITY)
                self._waiting += 1
                try:
                    fits = self._free.wait_for(
                        lambda: self._in_use + weight <= self.max_inflight, self.queue_timeout_s
                    )
                finally:
                    self._waiting -= 1
                if not fits:
                    raise Overloaded(_AT_CAPACITY)
            self._in_use += weight
        try:
            yield
        finally:
            with self._free:
                self._in_use -= weight
                self._free.notify_all()
