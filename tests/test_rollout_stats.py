"""gateway/rollout/stats.py: windowed per-process counters, summed by readers through files."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from gateway.rollout.stats import (
    LATENCY_BOUNDS_MS,
    OVERFLOW_MS,
    VersionHealth,
    WorkerStats,
    prune,
    read_health,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
T0 = 1_000_000.0  # a bucket boundary for every bucket_s used here


class Clock:
    """A settable wall clock for the bucket arithmetic."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        """The current (injected) time."""
        return self.now


def _stats(
    directory: Path, clock: Clock, *, name: str, bucket_s: float = 5.0, keep_s: float = 600.0
) -> WorkerStats:
    """A named WorkerStats whose flusher never fires during a test (flushes are explicit)."""
    return WorkerStats(
        directory, bucket_s=bucket_s, keep_s=keep_s, flush_s=3600.0, clock=clock, name=name
    )


def test_counts_error_rate_timeouts_and_percentiles(tmp_path: Path) -> None:
    """Known outcomes and latencies give the exact counts, rates and histogram percentiles."""
    clock = Clock()
    stats = _stats(tmp_path, clock, name="w")
    for _ in range(50):
        stats.record_request("resnet", "2", "ok", 0.004)  # bucket <= 5 ms
    for _ in range(40):
        stats.record_request("resnet", "2", "ok", 0.040)  # bucket <= 50 ms
    for _ in range(3):
        stats.record_request("resnet", "2", "error", 0.045)
    for _ in range(2):
        stats.record_request("resnet", "2", "timeout", 0.050)
    for _ in range(5):
        stats.record_request("resnet", "2", "ok", 0.9)  # bucket <= 1000 ms
    for agreed, shift in ((True, 1.0), (True, 2.0), (True, 3.0), (False, -2.0)):
        stats.record_comparison("resnet", "2", agreed, shift)
    stats.record_request("resnet", "1", "ok", 0.001)  # another version: counted apart
    stats.close()

    health = read_health(tmp_path, "resnet", "2", window_s=60, now=T0)
    assert (health.requests, health.errors, health.timeouts, health.failures) == (100, 3, 2, 5)
    assert health.error_rate == pytest.approx(0.05)
    assert (health.p50_ms, health.p95_ms) == (5, 50)
    assert (health.compared, health.agreed, health.agreement) == (4, 3, 0.75)
    assert health.mean_confidence_shift == pytest.approx(1.0)
    record = health.as_dict()
    assert record["failures"] == 5 and record["error_rate"] == pytest.approx(0.05)
    assert json.loads(json.dumps(record)) == record
    other = read_health(tmp_path, "resnet", "1", window_s=60, now=T0)
    assert (other.requests, other.p50_ms, other.p95_ms, other.compared) == (1, 2, 2, 0)


def test_empty_health_and_the_open_ended_bucket(tmp_path: Path) -> None:
    """No requests: None figures; latencies past the largest bound report OVERFLOW_MS."""
    empty = read_health(tmp_path / "missing", "m", "1", window_s=30)
    assert empty == VersionHealth()
    assert (empty.error_rate, empty.agreement, empty.p95_ms) == (None, None, None)
    assert empty.mean_confidence_shift is None
    clock = Clock()
    stats = _stats(tmp_path, clock, name="w")
    stats.record_request("m", "1", "timeout", 30.0)
    stats.record_request("m", "1", "ok", float("nan"))  # never raises; lands in the first bucket
    stats.record_comparison("m", "1", True, float("nan"))  # counted, shift left out of the mean
    stats.flush()
    health = read_health(tmp_path, "m", "1", window_s=30, now=T0)
    assert (health.p50_ms, health.p95_ms) == (LATENCY_BOUNDS_MS[0], OVERFLOW_MS)
    assert OVERFLOW_MS == 20000
    assert (health.compared, health.mean_confidence_shift) == (1, 0.0)


def test_the_window_excludes_older_buckets(tmp_path: Path) -> None:
    """Only buckets starting within [now - window_s, now] are summed."""
    clock = Clock()
    stats = _stats(tmp_path, clock, name="w", bucket_s=5.0)
    stats.record_request("m", "1", "error", 0.01)  # bucket T0
    clock.now = T0 + 12.0
    stats.record_request("m", "1", "ok", 0.01)  # bucket T0 + 10
    stats.flush()
    recent = read_health(tmp_path, "m", "1", window_s=5, now=T0 + 14)
    assert (recent.requests, recent.errors) == (1, 0)
    both = read_health(tmp_path, "m", "1", window_s=14, now=T0 + 14)
    assert (both.requests, both.errors) == (2, 1)
    assert read_health(tmp_path, "m", "1", window_s=60, now=T0 - 1).requests == 0  # future


def test_keep_s_drops_old_buckets_from_the_file(tmp_path: Path) -> None:
    """A flush writes only the buckets of the last keep_s seconds."""
    clock = Clock()
    stats = _stats(tmp_path, clock, name="w", bucket_s=5.0, keep_s=30.0)
    stats.record_request("m", "1", "ok", 0.01)
    clock.now = T0 + 40.0
    stats.record_request("m", "1", "ok", 0.01)
    stats.flush()
    document = json.loads(stats.path.read_text(encoding="utf-8"))
    assert [bucket["start"] for bucket in document["buckets"]] == [T0 + 40.0]
    assert read_health(tmp_path, "m", "1", window_s=1000, now=T0 + 40).requests == 1


def test_two_workers_in_one_directory_are_summed(tmp_path: Path) -> None:
    """Each worker writes its own file; a reader adds them up."""
    clock = Clock()
    first, second = _stats(tmp_path, clock, name="a"), _stats(tmp_path, clock, name="b")
    for _ in range(3):
        first.record_request("m", "1", "ok", 0.01)
    second.record_request("m", "1", "error", 0.2)
    second.record_comparison("m", "1", False, -4.0)
    first.flush()
    second.flush()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a.json", "b.json"]
    health = read_health(tmp_path, "m", "1", window_s=30, now=T0)
    assert (health.requests, health.errors, health.compared, health.agreed) == (4, 1, 1, 0)
    assert (health.p50_ms, health.p95_ms) == (10, 200)


def test_a_real_second_process_is_seen(tmp_path: Path) -> None:
    """Requests another interpreter recorded (close() there, or just exiting) are summed here."""
    code = (
        "import sys; from pathlib import Path; from gateway.rollout.stats import WorkerStats\n"
        "stats = WorkerStats(Path(sys.argv[1]))\n"
        "for _ in range(int(sys.argv[2])): stats.record_request('m', '7', 'ok', 0.003)\n"
        "if sys.argv[3] == 'close': stats.close()\n"  # otherwise the atexit flush writes it
    )
    for count, ending in ((25, "close"), (5, "exit")):
        subprocess.run(
            [sys.executable, "-c", code, str(tmp_path), str(count), ending],
            cwd=REPO_ROOT,
            check=True,
            timeout=60,
        )
    assert len(list(tmp_path.glob("*.json"))) == 2
    health = read_health(tmp_path, "m", "7", window_s=60)
    assert (health.requests, health.p95_ms) == (30, 5)


def test_the_daemon_flusher_writes_without_an_explicit_flush(tmp_path: Path) -> None:
    """A record reaches another reader within about flush_s, with no flush() call."""
    stats = WorkerStats(tmp_path, flush_s=0.1)
    try:
        stats.record_request("m", "1", "ok", 0.01)
        deadline = time.monotonic() + 3.0
        while read_health(tmp_path, "m", "1", window_s=60).requests != 1:
            assert time.monotonic() < deadline, "the flusher wrote nothing within 3 s"
            time.sleep(0.05)
        assert stats.path.name == f"{socket.gethostname()}-{os.getpid()}.json"
    finally:
        stats.close()


def test_corrupt_foreign_and_half_written_files_are_ignored(tmp_path: Path) -> None:
    """A reader skips what it cannot use, whole, and never raises."""
    clock = Clock()
    stats = _stats(tmp_path, clock, name="good")
    stats.record_request("m", "1", "ok", 0.01)
    stats.flush()
    good = stats.path.read_text(encoding="utf-8")
    (tmp_path / "half.json").write_text(good[: len(good) // 2], encoding="utf-8")
    (tmp_path / ".tmp-abc.part").write_text(good, encoding="utf-8")  # being written
    (tmp_path / ".tmp-abc.json").write_text(good, encoding="utf-8")  # dotted: still skipped
    (tmp_path / "garbage.json").write_bytes(b"\xff\xfe{not json")
    (tmp_path / "list.json").write_text("[1, 2, 3]", encoding="utf-8")
    (tmp_path / "other.json").write_text('{"format": 99, "buckets": []}', encoding="utf-8")
    (tmp_path / "dir.json").mkdir()
    bad = json.loads(good)
    bad["buckets"].append(dict(bad["buckets"][0]))  # the good bucket twice, then a bad series
    bad["buckets"].append({"start": T0, "series": {"m/1": {"requests": -1}}})
    (tmp_path / "partly-bad.json").write_text(json.dumps(bad), encoding="utf-8")
    shape = json.loads(good)
    shape["buckets"][0]["series"]["m/1"]["latency"] = [1, 2]
    (tmp_path / "shape.json").write_text(json.dumps(shape), encoding="utf-8")
    health = read_health(tmp_path, "m", "1", window_s=30, now=T0)
    assert (health.requests, health.p50_ms) == (1, 10)


def test_a_forked_child_writes_its_own_counts_only(tmp_path: Path) -> None:
    """After fork, the child's file holds the child's requests, not the parent's unflushed ones."""
    stats = WorkerStats(tmp_path, flush_s=3600.0)  # the parent's counts stay unflushed
    for _ in range(5):
        stats.record_request("m", "1", "ok", 0.01)
    child = multiprocessing.get_context("fork").Process(target=_child_records, args=(stats, 3))
    child.start()
    child.join(timeout=30)
    assert child.exitcode == 0
    child_file = tmp_path / f"{socket.gethostname()}-{child.pid}.json"
    assert [path.name for path in tmp_path.glob("*.json")] == [child_file.name]
    assert read_health(tmp_path, "m", "1", window_s=60).requests == 3
    stats.close()
    assert read_health(tmp_path, "m", "1", window_s=60).requests == 8
    assert stats.path.name == f"{socket.gethostname()}-{os.getpid()}.json"


def _child_records(stats: WorkerStats, count: int) -> None:
    """In the forked child: record `count` requests and close (flushes the child's file)."""
    for _ in range(count):
        stats.record_request("m", "1", "ok", 0.01)
    stats.close()


def test_a_named_object_forked_writes_a_file_of_its_own(tmp_path: Path) -> None:
    """With `name`, a forked child appends its pid, so it never replaces the parent's file."""
    stats = _stats(tmp_path, Clock(), name="web 1/..")  # sanitised to [A-Za-z0-9_.-]
    stats.record_request("m", "1", "ok", 0.01)
    stats.flush()
    child = multiprocessing.get_context("fork").Process(target=_child_records, args=(stats, 2))
    child.start()
    child.join(timeout=30)
    assert child.exitcode == 0
    names = sorted(path.name for path in tmp_path.glob("*.json"))
    assert names == sorted(["web_1_...json", f"web_1_..-{child.pid}.json"])
    assert read_health(tmp_path, "m", "1", window_s=60, now=T0).requests == 3


def test_concurrent_records_are_all_counted(tmp_path: Path) -> None:
    """gunicorn threads recording at once lose no count."""
    stats = _stats(tmp_path, Clock(), name="w")

    def hammer() -> None:
        """Record a thousand requests."""
        for _ in range(1000):
            stats.record_request("m", "1", "ok", 0.01)

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stats.flush()
    assert read_health(tmp_path, "m", "1", window_s=60, now=T0).requests == 8000


def test_an_unwritable_directory_never_raises(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A directory under a regular file: records and flushes go on, one warning, counts kept."""
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a directory", encoding="utf-8")
    stats = _stats(blocker / "stats", Clock(), name="w")
    with caplog.at_level(logging.WARNING, logger="gateway.rollout"):
        stats.record_request("m", "1", "ok", 0.01)
        stats.flush()
        stats.record_request("m", "1", "error", 0.01)
        stats.flush()
    warnings = [record for record in caplog.records if record.name == "gateway.rollout"]
    assert len(warnings) == 1 and "counting in memory" in warnings[0].getMessage()
    assert read_health(blocker / "stats", "m", "1", window_s=60, now=T0).requests == 0
    blocker.unlink()  # once the directory can be created, the counts kept in memory are written
    stats.flush()
    health = read_health(blocker / "stats", "m", "1", window_s=60, now=T0)
    assert (health.requests, health.errors) == (2, 1)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_a_read_only_directory_never_raises(tmp_path: Path) -> None:
    """chmod 0o500: the flush fails quietly and the counts stay in memory."""
    directory = tmp_path / "stats"
    directory.mkdir()
    directory.chmod(0o500)
    try:
        stats = _stats(directory, Clock(), name="w")
        stats.record_request("m", "1", "ok", 0.01)
        stats.flush()
        assert list(directory.iterdir()) == []
    finally:
        directory.chmod(0o700)
    stats.flush()
    assert read_health(directory, "m", "1", window_s=60, now=T0).requests == 1


def test_prune_removes_files_not_written_for_long(tmp_path: Path) -> None:
    """Old stats files and stray temporary files go; recent ones and other files stay."""
    now = time.time()
    for name in ("old.json", ".tmp-old.part", "fresh.json", "notes.txt"):
        (tmp_path / name).write_text("{}", encoding="utf-8")
    for name in ("old.json", ".tmp-old.part", "notes.txt"):
        os.utime(tmp_path / name, (now - 7200, now - 7200))
    assert prune(tmp_path, older_than_s=3600, now=now) == 2
    assert sorted(path.name for path in tmp_path.iterdir()) == ["fresh.json", "notes.txt"]
    assert prune(tmp_path / "missing") == 0
