"""Read a child process's output by line: keep recent lines, forward them, wait for patterns."""

from __future__ import annotations

import collections
import re
import threading
import time
from collections.abc import Callable
from typing import IO

LogSink = Callable[[str], None]

# A line Triton's logger writes: level letter, MMDD hh:mm:ss.micro, thread id, file:line].
TRITON_RECORD = re.compile(r"^([IWEF])\d{4} \d{2}:\d{2}:\d{2}\.\d+ +\d+ \S+:\d+\]")
# Emitted on every start on a machine without a GPU (local_triton is CPU only): not actionable.
EXPECTED_WITHOUT_GPU = (
    "CudaDriverHelper has not been initialized",
    "Failed to initialize NVML",
    "DCGM unable to start",
)


class WarningsOnly:
    """A log sink that forwards only Triton's warnings and errors to another sink.

    Triton's records start with a level letter (I, W, E, F); an info record's table rows and
    blank lines, which carry no prefix, are dropped with it. Other unprefixed lines (Python stub
    output, messages of libraries Triton loads) are kept: their level is unknown, and a stub's
    traceback must not vanish. The GPU-absence messages in EXPECTED_WITHOUT_GPU are dropped.
    """

    def __init__(self, sink: LogSink) -> None:
        """Forward the lines that pass to `sink`."""
        self._sink = sink
        self._record_shown = True  # whether the record that continuation lines belong to is shown

    def __call__(self, line: str) -> None:
        """Forward `line` if it is (part of) a warning or error, or of unknown origin."""
        record = TRITON_RECORD.match(line)
        if record is not None:
            self._record_shown = record.group(1) != "I" and not _expected_without_gpu(line)
            shown = self._record_shown
        elif not line.strip() or line.startswith(("+", "|")):
            shown = self._record_shown
        else:
            shown = not _expected_without_gpu(line)
        if shown:
            self._sink(line)


def _expected_without_gpu(line: str) -> bool:
    """True for the messages a CPU-only Triton prints on every start."""
    return any(message in line for message in EXPECTED_WITHOUT_GPU)


class LogPump:
    """A daemon thread that drains a byte stream into a bounded line buffer and optional sinks."""

    def __init__(self, stream: IO[bytes], sinks: list[LogSink], max_lines: int = 20000) -> None:
        """Start reading `stream` now; each decoded line (without newline) goes to every sink."""
        self._stream = stream
        self._sinks = sinks
        self._lines: collections.deque[tuple[int, str]] = collections.deque(maxlen=max_lines)
        self._count = 0
        self._condition = threading.Condition()
        self._thread = threading.Thread(target=self._drain, name="triton-log", daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        """Read until end of stream; sinks that fail are dropped rather than stopping the pump."""
        for raw in iter(self._stream.readline, b""):
            line = raw.decode("utf-8", errors="replace").rstrip("\n")
            with self._condition:
                self._lines.append((self._count, line))
                self._count += 1
                self._condition.notify_all()
            for sink in list(self._sinks):
                try:
                    sink(line)
                except Exception:  # a broken sink (closed file) must not stop draining the pipe
                    self._sinks.remove(sink)
        self._stream.close()
        with self._condition:
            self._condition.notify_all()

    @property
    def mark(self) -> int:
        """Number of lines read so far; pass it as `after` to only match later lines."""
        with self._condition:
            return self._count

    def text(self, last: int | None = None) -> str:
        """The buffered lines (the last `last` of them, if given) joined by newlines."""
        with self._condition:
            lines = [line for _, line in self._lines]
        return "\n".join(lines if last is None else lines[-last:])

    def lines_after(self, after: int) -> list[str]:
        """Buffered lines whose index is at least `after`."""
        with self._condition:
            return [line for index, line in self._lines if index >= after]

    def wait_for(self, pattern: str, timeout: float, after: int = 0) -> str | None:
        """The first line (index >= after) matching regex `pattern`, or None after `timeout` s."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        checked = after
        with self._condition:
            while True:
                for index, line in self._lines:
                    if index >= checked and regex.search(line):
                        return line
                checked = max(checked, self._count)
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._thread.is_alive():
                    return None
                self._condition.wait(min(remaining, 0.5))

    def join(self, timeout: float) -> None:
        """Wait up to `timeout` seconds for the stream to end."""
        self._thread.join(timeout)
