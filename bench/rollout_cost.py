"""Rollout routing's cost per request in-process: `RolloutRuntime.choose` + `observe` alone.

The HTTP stages compare the gateway with routing on and off, but a difference of well under a
millisecond drowns in the run-to-run noise of a ~40 ms request; this measures the work itself.
A RolloutStore on a temporary folder holds a record made by `adopt` (the version stable, as
the controller leaves it), a WorkerStats on another counts, and a RolloutRuntime with the
gateway's default refresh interval routes `calls` requests, timed with `time.perf_counter`.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

CALLS = 100_000
REPEATS = 3
WARMUP_CALLS = 2_000
#: The latency observe() records: a typical whole-path answer (it picks a histogram bucket).
OBSERVED_S = 0.04


@dataclass(frozen=True)
class RoutingCost:
    """Microseconds per request of choose + observe, at the gateway's refresh and at zero."""

    calls: int
    repeats: int
    refresh_s: float
    us_per_request: float  # best of the repeats, the gateway's default refresh interval
    us_per_request_runs: tuple[float, ...]
    # refresh 0: every call re-checks the record with a stat, the most a request can pay.
    us_per_request_stat: float

    def as_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict."""
        record = asdict(self)
        record["us_per_request_runs"] = list(self.us_per_request_runs)
        record["us_per_request_median"] = round(statistics.median(self.us_per_request_runs), 3)
        return record


def measure(
    directory: Path,
    model: str,
    version: str,
    calls: int = CALLS,
    repeats: int = REPEATS,
) -> RoutingCost:
    """Time `calls` choose + observe pairs `repeats` times (and once with a stat per call)."""
    # Imported here: the report and the CLI's option parsing must not need the gateway's stack.
    from gateway.classifier import Attempt, StageTimings
    from gateway.config import Settings
    from gateway.rollout.routing import RolloutRuntime
    from gateway.rollout.state import RolloutStore, adopt, now_s
    from gateway.rollout.stats import WorkerStats

    store = RolloutStore(directory / "records")
    store.update(model, lambda _current: adopt(model, version, "bench", now_s()))
    stats = WorkerStats(directory / "stats")
    refresh_s = float(Settings.rollout_refresh_s)
    attempt = Attempt(timings=StageTimings())  # no error: counted as "ok", as a served answer

    def timed(runtime: RolloutRuntime, count: int) -> float:
        started = time.perf_counter()
        for _ in range(count):
            route = runtime.choose(model)
            if route is None:
                raise RuntimeError(f"the record of {model} routes nothing")
            runtime.observe(model, route, attempt, OBSERVED_S)
        return (time.perf_counter() - started) / count * 1e6

    try:
        runtime = RolloutRuntime(store, stats, refresh_s=refresh_s)
        timed(runtime, WARMUP_CALLS)  # fills the cache, starts the stats flusher thread
        runs = tuple(round(timed(runtime, calls), 3) for _ in range(repeats))
        every_call = RolloutRuntime(store, stats, refresh_s=0.0)
        timed(every_call, WARMUP_CALLS)
        stat_us = round(timed(every_call, calls), 3)
    finally:
        stats.close()
    # Best of the repeats: what the code costs; the others only add this machine's noise.
    return RoutingCost(calls, repeats, refresh_s, min(runs), runs, stat_us)
