"""Windowed per-version request counters, kept by every process and summed through files.

The rollout controller runs in one gunicorn worker, but the requests it judges a candidate on
are served by all of them (and by any other gateway process sharing the rollout directory).
Rather than a shared-memory segment or a socket to the controller, each process counts in
memory and publishes its counts as one small JSON file; a reader sums every file:

- **Recording is a dict update under a lock.** `WorkerStats.record_request` and
  `record_comparison` find the current time bucket and bump integers; no I/O ever happens on
  the request path, and nothing there raises.
- **Buckets of wall-clock time.** A count lands in the bucket starting at
  ``floor(t / bucket_s) * bucket_s``. Wall-clock (not monotonic) time, because files written
  by different processes (and machines sharing the directory) are compared with each other.
  A file holds the buckets of the last ``keep_s`` seconds; `read_health` sums the buckets
  whose start lies in ``[now - window_s, now]``, so the window is bucket-granular.
- **One file per process, replaced atomically.** A daemon thread, started on the first record
  in the current process, writes ``<directory>/<host>-<pid>.json`` every ``flush_s`` seconds
  when something changed: a temporary file (name starting with '.') in the same directory,
  then ``os.replace``. A reader sees the previous snapshot or the new one, never a mix. There
  is no fsync: the counts are only worth anything for minutes, so surviving a power cut is
  not worth a disk sync per worker per second. Each process only ever writes its own file,
  so no lock between processes is needed.
- **Fork-safe.** gunicorn forks its workers from a master that may have built (and even
  used) the object. In the child, `os.register_at_fork` (and, as a fallback, a pid check on
  every record) gives the object a fresh lock, empty counters and no thread: the child's
  file holds the child's requests only, never a copy of the parent's unflushed counts.
- **Never in the way.** A directory that cannot be created or written is logged once per
  process and the counts are kept in memory (still trimmed to ``keep_s``); a reader skips
  files it cannot read or parse (half-written, foreign, truncated) silently.
- **Latency as a fixed histogram** (`LATENCY_BOUNDS_MS`), so summing across processes is
  exact: a percentile is the upper bound of the bucket where the cumulative count reaches
  the fraction. A percentile in the open-ended last bucket is reported as twice the largest
  finite bound (`OVERFLOW_MS`) rather than None: None means "no requests", and the
  controller's latency rule must still see (and act on) a candidate whose requests all took
  longer than the largest bound.
"""

from __future__ import annotations

import atexit
import bisect
import contextlib
import json
import logging
import math
import os
import re
import socket
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

log = logging.getLogger("gateway.rollout")

Outcome = Literal["ok", "error", "timeout"]

STATS_FORMAT = 1
STATS_SUFFIX = ".json"
_TEMP_PREFIX = ".tmp-"
#: Upper bounds of the latency histogram, in milliseconds; the last bucket is open-ended.
LATENCY_BOUNDS_MS: tuple[float, ...] = (
    2, 5, 10, 20, 30, 50, 75, 100, 150, 200, 300, 500, 750, 1000, 2000, 5000, 10000, math.inf,
)  # fmt: skip
#: What a percentile that falls in the open-ended last bucket is reported as.
OVERFLOW_MS = 2 * LATENCY_BOUNDS_MS[-2]
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9_.-]")


@dataclass(frozen=True)
class VersionHealth:
    """What one model version's requests looked like over a window, summed over processes."""

    requests: int = 0
    errors: int = 0  # server-side failures (5xx), timeouts excluded
    timeouts: int = 0
    p50_ms: float | None = None  # upper bound of the histogram bucket; None: no requests
    p95_ms: float | None = None
    compared: int = 0  # shadow comparisons of this version against stable
    agreed: int = 0  # ... whose top-1 label matched stable's
    mean_confidence_shift: float | None = None  # mean (this - stable) top-1 confidence, points

    @property
    def failures(self) -> int:
        """Errors and timeouts together."""
        return self.errors + self.timeouts

    @property
    def error_rate(self) -> float | None:
        """Failures per request; None without requests."""
        return self.failures / self.requests if self.requests else None

    @property
    def agreement(self) -> float | None:
        """Share of comparisons whose top-1 label matched stable's; None without any."""
        return self.agreed / self.compared if self.compared else None

    def as_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict of the fields and the derived figures."""
        record = asdict(self)
        record.update(failures=self.failures, error_rate=self.error_rate, agreement=self.agreement)
        return record


class _Series:
    """The mutable counts of one model version in one time bucket."""

    __slots__ = ("agreed", "compared", "errors", "latency", "requests", "shift_sum", "timeouts")

    def __init__(self) -> None:
        self.requests = 0
        self.errors = 0
        self.timeouts = 0
        self.latency = [0] * len(LATENCY_BOUNDS_MS)
        self.compared = 0
        self.agreed = 0
        self.shift_sum = 0.0

    def as_json(self) -> dict[str, Any]:
        """The series as written to the file."""
        return {
            "requests": self.requests,
            "errors": self.errors,
            "timeouts": self.timeouts,
            "latency": list(self.latency),
            "compared": self.compared,
            "agreed": self.agreed,
            "shift_sum": self.shift_sum,
        }

    def add(self, other: _Series) -> None:
        """Add another series' counts to this one."""
        self.requests += other.requests
        self.errors += other.errors
        self.timeouts += other.timeouts
        self.latency = [
            mine + theirs for mine, theirs in zip(self.latency, other.latency, strict=True)
        ]
        self.compared += other.compared
        self.agreed += other.agreed
        self.shift_sum += other.shift_sum

    @classmethod
    def from_json(cls, record: Mapping[str, Any]) -> _Series:
        """A series read from a file; ValueError (or KeyError, TypeError) when it is not one."""
        series = cls()
        series.requests, series.errors, series.timeouts, series.compared, series.agreed = (
            _count(record[key]) for key in ("requests", "errors", "timeouts", "compared", "agreed")
        )
        latency = record["latency"]
        if not isinstance(latency, list) or len(latency) != len(series.latency):
            raise ValueError("latency histogram of another shape")
        series.latency = [_count(value) for value in latency]
        shift = record["shift_sum"]
        if isinstance(shift, bool) or not isinstance(shift, int | float):
            raise ValueError("shift_sum is not a number")
        if not math.isfinite(shift):
            raise ValueError("shift_sum is not finite")
        series.shift_sum = float(shift)
        return series


# Every live WorkerStats, for the fork and exit hooks (weak: the hooks must not keep one alive).
_INSTANCES: weakref.WeakSet[WorkerStats] = weakref.WeakSet()


class WorkerStats:
    """This process's windowed counters, flushed to `<directory>/<host>-<pid>.json`."""

    def __init__(
        self,
        directory: Path,
        *,
        bucket_s: float = 5.0,
        keep_s: float = 600.0,
        flush_s: float = 0.5,
        clock: Callable[[], float] = time.time,
        name: str | None = None,
    ) -> None:
        """Count in memory, write under `directory`.

        `name` replaces the ``<host>-<pid>`` file stem (two objects in one process can then
        stand for two processes, as the tests do); in a child forked from the creating
        process the child's pid is appended, so the child still writes its own file.
        """
        if not (bucket_s > 0 and keep_s > 0 and flush_s > 0):
            raise ValueError("bucket_s, keep_s and flush_s must be positive")
        self.directory = directory
        self.bucket_s = float(bucket_s)
        self.keep_s = float(keep_s)
        self.flush_s = float(flush_s)
        self._clock = clock
        self._name = name
        self._creator_pid = os.getpid()
        self._fresh_process_state()
        _INSTANCES.add(self)

    def _fresh_process_state(self) -> None:
        """Everything that belongs to one process: locks, counts, the flusher thread."""
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()  # orders snapshots: a newer one is never overwritten
        self._buckets: dict[float, dict[str, _Series]] = {}
        self._dirty = False
        self._recorded = False
        self._warned = False
        self._closed = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def path(self) -> Path:
        """The file this process writes."""
        if self._name is None:
            stem = f"{socket.gethostname()}-{os.getpid()}"
        elif os.getpid() != self._creator_pid:
            stem = f"{self._name}-{os.getpid()}"
        else:
            stem = self._name
        return self.directory / f"{_safe_name(stem)}{STATS_SUFFIX}"

    # -- the request path: a dict update under a lock, no I/O ----------------------------------

    def record_request(self, model: str, version: str, outcome: Outcome, seconds: float) -> None:
        """Count one answered request of `model` `version` and its latency in seconds."""
        index = bisect.bisect_left(LATENCY_BOUNDS_MS, seconds * 1000.0)  # NaN lands in the first
        self._ensure_process()
        with self._lock:
            series = self._current(model, version)
            series.requests += 1
            if outcome == "timeout":
                series.timeouts += 1
            elif outcome != "ok":
                # Anything but "ok" and "timeout" is a failure: a wrong word must not hide one.
                series.errors += 1
            series.latency[min(index, len(series.latency) - 1)] += 1
        self._ensure_flusher()

    def record_comparison(
        self, model: str, version: str, agreed: bool, confidence_shift: float
    ) -> None:
        """Count one shadow comparison of `version` against stable (shift in percent points)."""
        self._ensure_process()
        with self._lock:
            series = self._current(model, version)
            series.compared += 1
            series.agreed += 1 if agreed else 0
            # A NaN would poison the sum (and the strict JSON file) for the whole window.
            if math.isfinite(confidence_shift):
                series.shift_sum += confidence_shift
        self._ensure_flusher()

    def _ensure_process(self) -> None:
        """Make sure this object's state belongs to the current process (module docstring)."""
        if self._pid != os.getpid():
            # Normally done by the at-fork hook already; this covers a fork it did not see.
            self._fresh_process_state()

    def _current(self, model: str, version: str) -> _Series:
        """The series of `model` `version` in the current bucket, marked changed (lock held)."""
        start = math.floor(self._clock() / self.bucket_s) * self.bucket_s
        bucket = self._buckets.get(start)
        if bucket is None:
            bucket = self._buckets[start] = {}
        key = f"{model}/{version}"
        series = bucket.get(key)
        if series is None:
            series = bucket[key] = _Series()
        self._dirty = self._recorded = True
        return series

    def _ensure_flusher(self) -> None:
        """Start this process's flusher thread on its first record."""
        if self._thread is not None or self._closed:
            return
        with self._lock:
            if self._thread is not None or self._closed:
                return
            thread = threading.Thread(target=self._flush_loop, name="rollout-stats", daemon=True)
            self._thread = thread
        thread.start()

    # -- writing ---------------------------------------------------------------------------------

    def _flush_loop(self) -> None:
        """The flusher thread: write every flush_s while something changed, until closed."""
        stop = self._stop
        while not stop.wait(self.flush_s):
            self._flush(only_if_changed=True)

    def flush(self) -> None:
        """Write this process's file now (never raises; a failure is logged once)."""
        self._ensure_process()  # used first after a fork: must not write the parent's counts
        self._flush(only_if_changed=False)

    def close(self) -> None:
        """Stop the flusher thread and flush once."""
        self._ensure_process()  # first, or a late reset after a fork would undo the close
        self._closed = True
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread() and thread.is_alive():
            thread.join(timeout=5)
        self.flush()

    def _flush(self, *, only_if_changed: bool) -> None:
        # A flush stuck on a slow disk must not stall the exit hook forever.
        if not self._flush_lock.acquire(timeout=10):
            return
        try:
            with self._lock:
                horizon = self._clock() - self.keep_s
                expired = [start for start in self._buckets if start < horizon]
                for start in expired:
                    del self._buckets[start]
                if only_if_changed and not (self._dirty or expired):
                    return
                snapshot = [
                    {"start": start, "series": {k: s.as_json() for k, s in bucket.items()}}
                    for start, bucket in sorted(self._buckets.items())
                ]
                self._dirty = False
            document = {
                "format": STATS_FORMAT,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "written_at": self._clock(),
                "bucket_s": self.bucket_s,
                "bounds_ms": [_bound_json(bound) for bound in LATENCY_BOUNDS_MS],
                "buckets": snapshot,
            }
            try:
                self._write(json.dumps(document, allow_nan=False, separators=(",", ":")))
            except (OSError, ValueError) as error:
                with self._lock:
                    self._dirty = True  # try again on the next tick
                if not self._warned:
                    self._warned = True
                    log.warning(
                        "rollout stats: cannot write %s (%s); counting in memory only",
                        self.path,
                        error,
                    )
        finally:
            self._flush_lock.release()

    def _write(self, text: str) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        handle, temp = tempfile.mkstemp(prefix=_TEMP_PREFIX, suffix=".part", dir=self.directory)
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as out:
                out.write(text)
            os.chmod(temp, 0o644)
            os.replace(temp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise

    # -- process hooks ---------------------------------------------------------------------------

    def _after_fork_in_child(self) -> None:
        """In a forked child: the parent's counts, locks and thread are not ours."""
        self._fresh_process_state()

    def _flush_at_exit(self) -> None:
        """Best-effort last flush when the interpreter exits, if this process counted."""
        if self._pid == os.getpid() and self._recorded:
            self._stop.set()
            self._flush(only_if_changed=True)


def _reset_in_child() -> None:
    # Runs in the child right after fork, while it has a single thread: the safe moment to
    # replace locks that another parent thread may have held at the time of the fork.
    for stats in list(_INSTANCES):
        stats._after_fork_in_child()


def _flush_all_at_exit() -> None:
    for stats in list(_INSTANCES):
        with contextlib.suppress(Exception):  # exiting: nothing left to report an error to
            stats._flush_at_exit()


os.register_at_fork(after_in_child=_reset_in_child)
atexit.register(_flush_all_at_exit)


# -- reading ---------------------------------------------------------------------------------------


def read_health(
    directory: Path, model: str, version: str, *, window_s: float, now: float | None = None
) -> VersionHealth:
    """`model` `version`'s counts over ``[now - window_s, now]``, summed over every file."""
    now = time.time() if now is None else now
    since = now - window_s
    key = f"{model}/{version}"
    total = _Series()
    for path in _stats_files(directory):
        found = _Series()
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(document, dict) or document.get("format") != STATS_FORMAT:
                continue
            if document.get("bounds_ms") != [_bound_json(b) for b in LATENCY_BOUNDS_MS]:
                continue  # another histogram: its counts cannot be added to ours
            buckets = document["buckets"]
            if not isinstance(buckets, list):
                continue
            for bucket in buckets:
                start = bucket["start"]
                if isinstance(start, bool) or not isinstance(start, int | float):
                    raise ValueError("bucket start is not a number")
                if since <= start <= now and key in bucket["series"]:
                    found.add(_Series.from_json(bucket["series"][key]))
        except (OSError, ValueError, TypeError, KeyError, AttributeError, RecursionError):
            # Half-written, truncated or foreign: skip the whole file, never a part of it.
            continue
        total.add(found)
    return _health(total)


def prune(directory: Path, *, older_than_s: float = 3600.0, now: float | None = None) -> int:
    """Delete stats files (and stray temporary files) not written for `older_than_s`."""
    now = time.time() if now is None else now
    removed = 0
    try:
        entries = list(directory.iterdir())
    except OSError:
        return 0
    for path in entries:
        name = path.name
        if not (name.endswith(STATS_SUFFIX) or name.startswith(_TEMP_PREFIX)):
            continue
        try:
            if not path.is_file() or path.stat().st_mtime >= now - older_than_s:
                continue
            path.unlink()
        except OSError:  # gone already, or not ours to delete
            continue
        removed += 1
    return removed


def _stats_files(directory: Path) -> list[Path]:
    try:
        return sorted(
            path
            for path in directory.glob(f"*{STATS_SUFFIX}")
            if not path.name.startswith(".")  # temporary files being written
        )
    except OSError:
        return []


def _health(series: _Series) -> VersionHealth:
    return VersionHealth(
        requests=series.requests,
        errors=series.errors,
        timeouts=series.timeouts,
        p50_ms=_percentile(series.latency, 0.50),
        p95_ms=_percentile(series.latency, 0.95),
        compared=series.compared,
        agreed=series.agreed,
        mean_confidence_shift=series.shift_sum / series.compared if series.compared else None,
    )


def _percentile(counts: list[int], fraction: float) -> float | None:
    """The upper bound of the bucket where the cumulative count reaches `fraction`."""
    total = sum(counts)
    if total == 0:
        return None
    rank = max(1, math.ceil(fraction * total - 1e-9))  # 1e-9: 0.95 * 100 is 95.00000000000001
    cumulative = 0
    for bound, count in zip(LATENCY_BOUNDS_MS, counts, strict=True):
        cumulative += count
        if cumulative >= rank:
            return bound if math.isfinite(bound) else OVERFLOW_MS
    return OVERFLOW_MS  # not reached: the last bucket completes the count


def _count(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"not a count: {value!r}")
    return value


def _bound_json(bound: float) -> float | None:
    return bound if math.isfinite(bound) else None  # strict JSON has no Infinity


def _safe_name(stem: str) -> str:
    # A leading '.' would make the file look like a temporary one, which readers skip.
    return _UNSAFE_NAME.sub("_", stem).lstrip(".") or "stats"
