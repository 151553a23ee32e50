"""Retention: rows older than GATEWAY_HISTORY_RETENTION_DAYS are deleted in small batches.

Each worker runs one daemon thread that wakes every few minutes (the first time after a random
part of the interval, so workers do not purge in step) and deletes the oldest rows a batch at a
time with a pause in between: a short statement at a time, never a long lock that would hold
requests' writes up.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from gateway.history.store import HistoryStore, HistoryUnavailable

log = logging.getLogger("gateway.history")
INTERVAL_S = 300.0
BATCH = 500
PAUSE_S = 0.05


@dataclass
class RetentionPurger:
    """Deletes the store's rows older than `days`, batch by batch, until stopped."""

    store: HistoryStore
    days: int
    interval_s: float = INTERVAL_S
    batch: int = BATCH
    pause_s: float = PAUSE_S
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    _stop: threading.Event = field(default_factory=threading.Event, init=False)
    _thread: threading.Thread | None = field(default=None, init=False)

    def purge_once(self) -> int:
        """Delete every row past retention now, a batch at a time; return how many."""
        cutoff = self.clock() - timedelta(days=self.days)
        total = 0
        while not self._stop.is_set():
            deleted = self.store.purge(cutoff, self.batch)
            total += deleted
            if deleted < self.batch:
                break
            self._stop.wait(self.pause_s)
        return total

    def start(self) -> None:
        """Run purge_once every interval in a daemon thread (once per process)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="history-retention", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Ask the thread to finish and wait briefly for it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        """Wake, purge, sleep; a database that is down is tried again next time."""
        delay = random.uniform(0, self.interval_s)
        while not self._stop.wait(delay):
            try:
                deleted = self.purge_once()
            except HistoryUnavailable as error:
                log.warning("history retention skipped: %s", error)
            else:
                if deleted:
                    log.info(
                        "history retention deleted %d rows older than %d days", deleted, self.days
                    )
            delay = self.interval_s
