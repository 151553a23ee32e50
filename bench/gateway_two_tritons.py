"""The `gateway_two_tritons` stage: one gateway balanced over two local Tritons, and a failover.

The gateway accepts a list of Tritons (``GATEWAY_TRITON_URL=host1:port1,host2:port2``): each
worker's gRPC channel spreads calls over both with ``round_robin``, and a call that fails to
connect (the server went away) is retried once on the other. This stage measures what that
gives on one machine, with a second Triton on the same published model repository:

- the same HTTP sweep as the `gateway` stage (concurrency levels, warm-up and window, bodies),
  so the report can put images/s and p50/p99 at each level next to the one-Triton figures
  (the ratio two/one). On a 2-core machine both Tritons share the same two cores (and ONNX
  Runtime's two intra-op threads each), so no speed-up is expected: a second server only adds
  capacity where it has cores of its own;
- the share per server: each Triton's own ``inference_count`` (its statistics API) over each
  level's load run (warm-up included), as counts and fractions: whether the balancing spreads;
- a failover run: C clients send for a few seconds, the second Triton is SIGKILLed, the load
  goes on, then it is restarted on the same ports. Counted: requests that failed (non-200 or
  no answer, expected 0), the longest gap between consecutive answers around the kill (the
  failover gap, against the longest gap before it), latencies during the outage, the retries
  the gateway counted (``gateway_triton_retries_total``), and the seconds from the restarted
  server being ready until it serves again (its inference count grows).

The failover's clients are threads of this process (each request with a timeout, every phase
bounded in time), because the answers' own timestamps are needed, not a window's totals.
"""

from __future__ import annotations

import http.client
import itertools
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from bench import gateway_metrics, triton_stats
from bench.loadgen import HttpTarget, Measurement
from bench.whole_path import HOST, check_answer, json_headers, sweep_gateway
from local_triton import TritonServer

#: The two servers' names in the figures (and their CPU groups): triton.log and triton-2.log.
SERVER_NAMES = ("triton_1", "triton_2")
FULL_FAILOVER_CLIENTS = 8
FAILOVER_REQUEST_TIMEOUT_S = 10.0
ERROR_BACKOFF_S = 0.02
MAX_ERROR_SAMPLES = 5
REJOIN_TIMEOUT_S = 30.0
REJOIN_POLL_S = 0.1
RETRIES = "gateway_triton_retries"  # the counter family (samples end in _total)


@dataclass(frozen=True)
class FailoverPlan:
    """How the failover run goes: clients, seconds of load before the kill, seconds of outage
    (the victim dead, load going on), and seconds of load once it serves again."""

    clients: int
    before_s: float
    outage_s: float
    after_s: float


def failover_plan(smoke: bool, levels: Sequence[int]) -> FailoverPlan:
    """8 clients, 3 s + 5 s outage + 1 s in a full run; in smoke the top level, 0.5 + 1 + 0.2 s."""
    if smoke:
        return FailoverPlan(max(levels), 0.5, 1.0, 0.2)
    return FailoverPlan(FULL_FAILOVER_CLIENTS, 3.0, 5.0, 1.0)


@dataclass(frozen=True)
class Outcome:
    """One failover request: when it was sent and answered (monotonic s), and whether it was 200."""

    started: float
    finished: float
    ok: bool
    error: str = ""


@dataclass(frozen=True)
class Timeline:
    """Monotonic seconds of the failover run's events (`serving`: None if never seen)."""

    started: float
    killed: float
    restarted: float  # the victim's start() called
    ready: float  # its readiness answered 200
    serving: float | None  # its inference count grew
    ended: float


@dataclass(frozen=True)
class Failover:
    """What the failover run gave (see the module docstring); latencies in ms.

    "before" is from the load's start to the kill, "outage" from the kill to the restart:
    the percentiles are of the successful requests sent in that span, the rates (img/s) of
    the answers that arrived in it.
    """

    plan: FailoverPlan
    requests: int  # every request of the run, before, during and after the outage
    failed: int  # non-200 answers and requests with no answer (error or timeout)
    error_samples: tuple[str, ...]
    gap_ms: float | None  # longest interval between answers that overlaps the outage
    steady_gap_ms: float | None  # the same, among the answers before the kill
    before_ips: float
    before_p50_ms: float
    before_p99_ms: float
    outage_answers: int
    outage_ips: float
    outage_p50_ms: float
    outage_p99_ms: float
    retries: dict[str, int] | None  # the gateway's retries over the run, by call (None: unread)
    survivor_inferences: int | None  # the first Triton's inferences during the outage
    restart_s: float  # from the victim's start to its readiness
    rejoin_s: float | None  # from its readiness to its first inference (None: not seen)

    def as_dict(self) -> dict[str, Any]:
        """The JSON-friendly figures."""
        return {
            "clients": self.plan.clients,
            "before_s": self.plan.before_s,
            "outage_s": self.plan.outage_s,
            "after_s": self.plan.after_s,
            "requests": self.requests,
            "failed": self.failed,
            "error_samples": list(self.error_samples),
            "gap_ms": self.gap_ms,
            "steady_gap_ms": self.steady_gap_ms,
            "before_ips": self.before_ips,
            "before_p50_ms": self.before_p50_ms,
            "before_p99_ms": self.before_p99_ms,
            "outage_answers": self.outage_answers,
            "outage_ips": self.outage_ips,
            "outage_p50_ms": self.outage_p50_ms,
            "outage_p99_ms": self.outage_p99_ms,
            "retries": dict(self.retries) if self.retries is not None else None,
            "retries_total": sum(self.retries.values()) if self.retries is not None else None,
            "survivor_inferences": self.survivor_inferences,
            "restart_s": self.restart_s,
            "rejoin_s": self.rejoin_s,
        }


@dataclass
class TwoTritons:
    """The stage's figures: the sweep, each level's inferences per server, the failover."""

    measurements: list[Measurement] = field(default_factory=list)
    # Per concurrency level: server name -> inferences over its load run (None: unread).
    shares: dict[int, dict[str, int | None]] = field(default_factory=dict)
    failover: Failover | None = None


def share_figures(counts: Mapping[str, int | None]) -> dict[str, Any]:
    """Inferences per server and each one's fraction of their sum (None where unknown)."""
    known = [count for count in counts.values() if count is not None]
    total = sum(known) if len(known) == len(counts) else None
    return {
        "counts": dict(counts),
        "total": total,
        "fractions": {
            name: round(count / total, 4) if total and count is not None else None
            for name, count in counts.items()
        },
    }


def total_shares(shares: Mapping[int, Mapping[str, int | None]]) -> dict[str, int | None]:
    """Each server's inferences summed over the levels (None if any level's were unread)."""
    names = list(dict.fromkeys(name for level in shares.values() for name in level))
    totals: dict[str, int | None] = {}
    for name in names:
        values = [level.get(name) for level in shares.values()]
        totals[name] = None if any(v is None for v in values) else sum(v or 0 for v in values)
    return totals


def longest_gap_ms(times: Sequence[float], start: float, end: float) -> float | None:
    """The longest interval between consecutive answer times that overlaps [start, end], in ms;
    None when no such interval exists (fewer than two answers around it)."""
    ordered = sorted(times)
    gaps = [
        later - earlier
        for earlier, later in itertools.pairwise(ordered)
        if earlier < end and later > start
    ]
    return round(max(gaps) * 1000.0, 3) if gaps else None


def _window(outcomes: Sequence[Outcome], start: float, end: float, clients: int) -> Measurement:
    """The successful requests sent in [start, end), as a Measurement (its percentiles)."""
    latencies = [
        (o.finished - o.started) * 1000.0 for o in outcomes if o.ok and start <= o.started < end
    ]
    return Measurement(clients, max(end - start, 0.0), latencies_ms=latencies)


def _answered(answers: Sequence[float], start: float, end: float) -> int:
    """How many answers arrived in [start, end)."""
    return sum(1 for t in answers if start <= t < end)


def _rate(count: int, start: float, end: float) -> float:
    """Answers per second over [start, end)."""
    return round(count / (end - start), 3) if end > start else 0.0


def retries_delta(
    before: Mapping[str, int] | None, after: Mapping[str, int] | None
) -> dict[str, int] | None:
    """Retries counted between two scrapes, by call; None when either could not be read."""
    if before is None or after is None:
        return None
    return {what: count - before.get(what, 0) for what, count in after.items()}


def summarize_failover(
    outcomes: Sequence[Outcome],
    timeline: Timeline,
    plan: FailoverPlan,
    retries: dict[str, int] | None,
    survivor_inferences: int | None,
) -> Failover:
    """Failed requests, the failover gap, the outage's latencies and the rejoin, from the
    requests' own timestamps (every request of the run counts for `failed`)."""
    failures = [o for o in outcomes if not o.ok]
    answers = [o.finished for o in outcomes if o.ok]
    before = _window(outcomes, timeline.started, timeline.killed, plan.clients)
    outage = _window(outcomes, timeline.killed, timeline.restarted, plan.clients)
    outage_answers = _answered(answers, timeline.killed, timeline.restarted)
    return Failover(
        plan=plan,
        requests=len(outcomes),
        failed=len(failures),
        error_samples=tuple(o.error for o in failures[:MAX_ERROR_SAMPLES]),
        gap_ms=longest_gap_ms(answers, timeline.killed, timeline.restarted),
        steady_gap_ms=longest_gap_ms(
            [t for t in answers if t <= timeline.killed], timeline.started, timeline.killed
        ),
        before_ips=_rate(
            _answered(answers, timeline.started, timeline.killed), timeline.started, timeline.killed
        ),
        before_p50_ms=round(before.percentile(50), 3),
        before_p99_ms=round(before.percentile(99), 3),
        outage_answers=outage_answers,
        outage_ips=_rate(outage_answers, timeline.killed, timeline.restarted),
        outage_p50_ms=round(outage.percentile(50), 3),
        outage_p99_ms=round(outage.percentile(99), 3),
        retries=retries,
        survivor_inferences=survivor_inferences,
        restart_s=round(timeline.ready - timeline.restarted, 3),
        rejoin_s=(
            round(timeline.serving - timeline.ready, 3) if timeline.serving is not None else None
        ),
    )


def parse_retries(text: str) -> dict[str, int]:
    """Sum gateway_triton_retries_total by call ("what") in a Prometheus exposition."""
    return gateway_metrics.counter_by_label(text, RETRIES, "what")


def scrape_retries(port: int) -> dict[str, int] | None:
    """The gateway's Triton retries so far, by call, all workers; None if /metrics is unread."""
    text = gateway_metrics.exposition(port)
    return parse_retries(text) if text is not None else None


def inferences(server: TritonServer, model: str) -> int | None:
    """The server's inference count for `model` (its statistics); None when unreadable."""
    snapshot = triton_stats.snapshot(server.grpc_url, model)
    return snapshot.inferences if snapshot is not None else None


def _counts(servers: Sequence[TritonServer], model: str) -> list[int | None]:
    return [inferences(server, model) for server in servers]


def count_deltas(
    before: Sequence[int | None], after: Sequence[int | None]
) -> dict[str, int | None]:
    """Each server's inferences between two readings (None: either reading failed)."""
    return {
        name: None if earlier is None or later is None else later - earlier
        for name, earlier, later in zip(SERVER_NAMES, before, after, strict=True)
    }


def sweep(
    port: int,
    bodies: Sequence[bytes],
    api_key: str,
    servers: Sequence[TritonServer],
    model: str,
    levels: Sequence[int],
    warmup_s: float,
    duration_s: float,
    progress: Callable[[str], None],
    cpu_groups: Mapping[str, int],
) -> TwoTritons:
    """Check one answer, then the `gateway` stage's sweep, each level's inferences per server
    read from both Tritons around its load run."""
    headers = json_headers(api_key)
    label = check_answer(port, bodies[0], headers)
    progress(f"  check request answered label {label!r}")
    target = HttpTarget(
        host=HOST, port=port, path="/analyze", bodies=tuple(bodies), headers=tuple(headers.items())
    )
    result = TwoTritons()
    for level in levels:
        before = _counts(servers, model)
        result.measurements += sweep_gateway(
            target, [level], warmup_s, duration_s, progress, True, None, cpu_groups
        )
        after = _counts(servers, model)
        result.shares[level] = counts = count_deltas(before, after)
        progress(f"    per server: {describe_shares(share_figures(counts))}")
    return result


def describe_shares(shares: Mapping[str, Any]) -> str:
    """E.g. ``triton_1 120 (50.4 %), triton_2 118 (49.6 %)``."""
    parts = []
    for name, count in shares["counts"].items():
        fraction = shares["fractions"].get(name)
        share = f" ({fraction * 100.0:.1f} %)" if fraction is not None else ""
        parts.append(f"{name} {'?' if count is None else count}{share}")
    return ", ".join(parts)


def _client(
    port: int,
    bodies: Sequence[bytes],
    headers: Mapping[str, str],
    offset: int,
    stop: threading.Event,
    outcomes: list[Outcome],
) -> None:
    """Send POST /analyze on one keep-alive connection until `stop`, recording each outcome."""
    connection: http.client.HTTPConnection | None = None
    index = offset
    while not stop.is_set():
        current = connection or http.client.HTTPConnection(
            HOST, port, timeout=FAILOVER_REQUEST_TIMEOUT_S
        )
        connection = current
        started = time.monotonic()
        ok, error = False, ""
        try:
            current.request(
                "POST", "/analyze", body=bodies[index % len(bodies)], headers=dict(headers)
            )
            response = current.getresponse()
            answer = response.read()
            ok = response.status == 200
            if not ok:
                error = f"HTTP {response.status}: {answer[:120]!r}"
            if response.will_close:
                current.close()
                connection = None
        except (OSError, http.client.HTTPException) as exc:  # no answer: counted, reconnected
            error = f"{type(exc).__name__}: {exc}"[:200]
            current.close()
            connection = None
        outcomes.append(Outcome(started, time.monotonic(), ok, error))
        index += 1
        if not ok:
            stop.wait(ERROR_BACKOFF_S)  # a refusing gateway must not turn the client into a spin
    if connection is not None:
        connection.close()


def _wait_serving(server: TritonServer, model: str, timeout_s: float) -> float | None:
    """Monotonic seconds when `server`'s inference count grows past its value now; None after
    `timeout_s`."""
    base = inferences(server, model) or 0
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        count = inferences(server, model)
        if count is not None and count > base:
            return time.monotonic()
        time.sleep(REJOIN_POLL_S)
    return None


def failover(
    port: int,
    bodies: Sequence[bytes],
    api_key: str,
    survivor: TritonServer,
    victim: TritonServer,
    model: str,
    plan: FailoverPlan,
    ready_timeout_s: float,
    progress: Callable[[str], None],
) -> Failover:
    """Load from `plan.clients` threads; SIGKILL `victim`, keep the load on, restart it on the
    same ports, wait (bounded) until it serves again, and summarize."""
    headers = json_headers(api_key)
    retries_before = scrape_retries(port)
    stop = threading.Event()
    per_client: list[list[Outcome]] = [[] for _ in range(plan.clients)]
    threads = [
        threading.Thread(
            target=_client,
            args=(port, bodies, headers, number * 3, stop, per_client[number]),
            daemon=True,
        )
        for number in range(plan.clients)
    ]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    try:
        time.sleep(plan.before_s)
        survivor_at_kill = inferences(survivor, model)
        killed = time.monotonic()
        victim.kill()  # SIGKILL to tritonserver and its Python stubs
        progress(
            f"  {SERVER_NAMES[1]} SIGKILLed under {plan.clients} clients; "
            f"load goes on for {plan.outage_s:g} s"
        )
        time.sleep(max(0.0, killed + plan.outage_s - time.monotonic()))
        survivor_at_restart = inferences(survivor, model)
        restarted = time.monotonic()
        victim.start()  # the same ports
        victim.wait_ready(ready_timeout_s)
        ready = time.monotonic()
        serving = _wait_serving(victim, model, REJOIN_TIMEOUT_S)
        time.sleep(plan.after_s)
    finally:
        stop.set()
        ended = time.monotonic()
        for thread in threads:
            thread.join(timeout=FAILOVER_REQUEST_TIMEOUT_S + 5.0)
    retries = retries_delta(retries_before, scrape_retries(port))
    survivor_ran = (
        survivor_at_restart - survivor_at_kill
        if survivor_at_kill is not None and survivor_at_restart is not None
        else None
    )
    outcomes = [outcome for client in per_client for outcome in client]
    timeline = Timeline(started, killed, restarted, ready, serving, ended)
    return summarize_failover(outcomes, timeline, plan, retries, survivor_ran)


def summary(two: TwoTritons, one: Sequence[Measurement]) -> dict[str, Any]:
    """Two Tritons against one per level (img/s, p50, p99, ratio two/one), the shares per
    server per level and over the sweep, and the failover's figures."""
    by_one = {m.concurrency: m for m in one}
    by_concurrency: dict[str, dict[str, Any]] = {}
    for m in two.measurements:
        single = by_one.get(m.concurrency)
        ips_one = round(single.throughput, 3) if single is not None else None
        by_concurrency[str(m.concurrency)] = {
            "ips_two": round(m.throughput, 3),
            "ips_one": ips_one,
            "two_vs_one": round(m.throughput / ips_one, 4) if ips_one else None,
            "p50_two_ms": round(m.percentile(50), 3),
            "p50_one_ms": round(single.percentile(50), 3) if single is not None else None,
            "p99_two_ms": round(m.percentile(99), 3),
            "p99_one_ms": round(single.percentile(99), 3) if single is not None else None,
            "shares": share_figures(two.shares.get(m.concurrency, {})),
        }
    return {
        "servers": list(SERVER_NAMES),
        "by_concurrency": by_concurrency,
        "best_ips": (
            round(max(m.throughput for m in two.measurements), 3) if two.measurements else None
        ),
        "shares": share_figures(total_shares(two.shares)),
        "failover": two.failover.as_dict() if two.failover is not None else None,
    }
