"""Plain progress lines on stderr, stamped with the seconds elapsed since the export started."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO


class Progress:
    """Prints '[  12.3s] message' lines; long steps get a heartbeat every `heartbeat_s`."""

    def __init__(
        self, stream: TextIO | None = None, heartbeat_s: float = 10.0, enabled: bool = True
    ) -> None:
        """Write to `stream` (stderr by default); `enabled=False` silences everything."""
        self._stream = stream if stream is not None else sys.stderr
        self._heartbeat_s = heartbeat_s
        self._enabled = enabled
        self._started = time.monotonic()
        self._lock = threading.Lock()

    def elapsed(self) -> float:
        """Seconds since this Progress was created."""
        return time.monotonic() - self._started

    def info(self, message: str) -> None:
        """Print one stamped line."""
        if not self._enabled:
            return
        with self._lock:
            self._stream.write(f"[{self.elapsed():7.1f}s] {message}\n")
            self._stream.flush()

    @contextmanager
    def step(self, title: str) -> Iterator[None]:
        """Announce a step, keep saying it is alive while it runs, and report its duration."""
        self.info(f"{title} ...")
        started = time.monotonic()
        finished = threading.Event()

        def heartbeat() -> None:
            """Print a 'still ...' line every heartbeat_s until the step ends."""
            # Event.wait bounds every iteration; the loop ends as soon as the step does.
            while not finished.wait(self._heartbeat_s):
                self.info(
                    f"  still {title[:1].lower() + title[1:]} ({time.monotonic() - started:.0f}s)"
                )

        thread = threading.Thread(target=heartbeat, name="export-progress", daemon=True)
        thread.start()
        try:
            yield
        except BaseException:
            finished.set()
            thread.join(timeout=1.0)
            self.info(f"{title}: failed after {time.monotonic() - started:.1f}s")
            raise
        finished.set()
        thread.join(timeout=1.0)
        self.info(f"{title}: done in {time.monotonic() - started:.1f}s")
