"""The benchmark's outputs: a printed table with the ratios, a JSON file and a PNG chart."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import gateway_batch, gateway_cache, gateway_two_tritons
from bench.batch_strategy import BatchStrategy
from bench.cpu_time import describe as describe_cpu
from bench.gateway_batch import BatchPair
from bench.gateway_two_tritons import TwoTritons
from bench.loadgen import Measurement
from bench.ort_limit import OrtLimit
from bench.rollout_cost import RoutingCost

# The stages run by default, in this order.
STAGES = (
    "ort",
    "triton",
    "batch_strategy",
    "gateway",
    "gateway_batch",
    "gateway_history",
    "gateway_rollout",
    "gateway_cache",
    "baseline",
)
# Stages run only when --stages names them (gateway_two_tritons restarts a Triton and costs
# time); each runs in its place in the order of cli.measure, after gateway_cache.
OPT_IN_STAGES = ("gateway_two_tritons",)
ALL_STAGES = (*STAGES, *OPT_IN_STAGES)
FAIRNESS = (
    "same model weights: one state_dict exported with `python -m export --weights PATH` and "
    "loaded by the baseline (or the packaged ImageNet weights of efficientnet_lite0)",
    "same preprocessing parameters (read from the published config.pbtxt) on both HTTP paths",
    "same JPEG payloads and JSON bodies, base64-encoded before any timed window",
    "same machine, one stage at a time: each stage's servers are stopped before the next starts",
    "servers started the same way (python -m ..., logs to files, readiness polled over HTTP)",
    "load generator in its own process per window: threads with keep-alive http.client (or "
    "tritonclient gRPC) connections, status check only in the hot loop",
    "a warm-up before every timed window, then a fixed-duration window; only requests completing "
    "inside the window count",
    "history on vs off: the same gateway, Triton, bodies and windows, one after the other; "
    "`gateway` runs with GATEWAY_HISTORY_URL empty, `gateway_history` stores every answer in a "
    "new, migrated SQLite file (what `make run` uses)",
    "rollout routing on vs off: the same gateway (history off) with GATEWAY_ROLLOUT_DIR set to a "
    "new folder, measured after its controller adopted the model, so every timed request is "
    "routed by the record; its in-process cost (choose + observe) is timed on its own",
    "answer cache off (GATEWAY_CACHE=off) in every gateway but `gateway_cache`'s: the bodies "
    "repeat a few photos, so a cache would answer most timed requests without the path",
    "batch vs singles: the same gateway and images, as many images in flight (8 per batch "
    "request x C clients, or 8 x C one-image clients); server CPU per image from /proc",
    "one Triton vs two: the same gateway settings, bodies, levels and windows; the second "
    "Triton serves the same published repository on the same machine (the same cores)",
)


@dataclass
class BenchResults:
    """Everything one run measured, plus the settings it ran with."""

    settings: dict[str, Any]
    ort: OrtLimit | None = None
    triton: list[Measurement] = field(default_factory=list)
    gateway: list[Measurement] = field(default_factory=list)
    gateway_history: list[Measurement] = field(default_factory=list)
    gateway_rollout: list[Measurement] = field(default_factory=list)
    baseline: list[Measurement] = field(default_factory=list)
    # The history gateway's writes over its whole stage (check, warm-ups, windows), by outcome.
    history_writes: dict[str, int] = field(default_factory=dict)
    # The version the rollout gateway routed to, and the answers its workers counted for it
    # over the whole stage (requests, errors, timeouts).
    rollout_stable: str | None = None
    rollout_routed: dict[str, int] = field(default_factory=dict)
    rollout_routing: RoutingCost | None = None
    # /analyze/batch vs as many one-image requests, per client count.
    gateway_batch: list[BatchPair] = field(default_factory=list)
    batch_strategy: BatchStrategy | None = None
    # Cache hits of one payload: the windows, the warm-up's outcome, the in-process parts.
    gateway_cache: list[Measurement] = field(default_factory=list)
    cache_warm: dict[str, int | None] = field(default_factory=dict)
    cache_hit_parts: dict[str, float] = field(default_factory=dict)
    cache_payload_kib: float | None = None
    # One gateway over two Tritons: the sweep, the shares per server, the failover run.
    two_tritons: TwoTritons | None = None


def _best(measurements: Sequence[Measurement]) -> float | None:
    return max((m.throughput for m in measurements), default=None)


def _lowest_concurrency(measurements: Sequence[Measurement]) -> Measurement | None:
    return min(measurements, key=lambda m: m.concurrency, default=None)


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return round(numerator / denominator, 4)


def on_off_cost(
    off: Sequence[Measurement], on: Sequence[Measurement]
) -> dict[str, dict[str, float | None]]:
    """What a feature costs, per concurrency level measured both ways: p50 added (ms) and
    throughput lost (% of the feature-off figure; negative: it went faster)."""
    cost: dict[str, dict[str, float | None]] = {}
    for without in off:
        for with_feature in on:
            if with_feature.concurrency != without.concurrency:
                continue
            p50_off, p50_on = without.percentile(50), with_feature.percentile(50)
            ips_off, ips_on = without.throughput, with_feature.throughput
            cost[str(without.concurrency)] = {
                "p50_off_ms": round(p50_off, 3),
                "p50_on_ms": round(p50_on, 3),
                "p50_added_ms": round(p50_on - p50_off, 3),
                "ips_off": round(ips_off, 3),
                "ips_on": round(ips_on, 3),
                "throughput_lost_pct": (
                    round((ips_off - ips_on) / ips_off * 100.0, 2) if ips_off else None
                ),
            }
    return cost


def history_cost(
    off: Sequence[Measurement], on: Sequence[Measurement]
) -> dict[str, dict[str, float | None]]:
    """What storing every answer costs, per concurrency level (on_off_cost's figures)."""
    return on_off_cost(off, on)


def rollout_summary(results: BenchResults) -> dict[str, Any]:
    """Rollout routing on vs off per concurrency level, the single-client p50 it adds, the
    answers routed, and its in-process cost per request."""
    by_concurrency = on_off_cost(results.gateway, results.gateway_rollout)
    single = _lowest_concurrency(results.gateway_rollout)
    single_entry = by_concurrency.get(str(single.concurrency)) if single is not None else None
    routing = results.rollout_routing
    return {
        "stable": results.rollout_stable,
        "routed": dict(results.rollout_routed),
        "by_concurrency": by_concurrency,
        "single_client_p50_added_ms": (
            single_entry["p50_added_ms"] if single_entry is not None else None
        ),
        "routing_us_per_request": routing.us_per_request if routing is not None else None,
        "routing": routing.as_dict() if routing is not None else None,
    }


def cache_summary(results: BenchResults) -> dict[str, Any] | None:
    """The cache stage's figures, its miss p50 being the cache-off gateway's lowest level."""
    if not results.gateway_cache:
        return None
    return gateway_cache.summary(
        results.gateway_cache,
        _lowest_concurrency(results.gateway),
        results.cache_payload_kib,
        results.cache_warm,
        results.cache_hit_parts,
    )


def two_tritons_summary(results: BenchResults) -> dict[str, Any] | None:
    """The two-Triton stage's figures, each level against the one-Triton `gateway` stage."""
    if results.two_tritons is None:
        return None
    return gateway_two_tritons.summary(results.two_tritons, results.gateway)


def to_json(results: BenchResults) -> dict[str, Any]:
    """Return the JSON document: headline keys, ratios, per-stage figures, settings and notes."""
    ort = results.ort
    ort_ips = ort.best.images_per_s if ort is not None else None
    batch = gateway_batch.summary(results.gateway_batch, ort_ips) if results.gateway_batch else None
    strategy = results.batch_strategy
    two = results.two_tritons.measurements if results.two_tritons is not None else []
    batch1 = round(ort.batch1_latency_ms, 3) if ort is not None else None
    whole = _best(results.gateway)
    baseline = _best(results.baseline)
    single = _lowest_concurrency(results.gateway)
    single_base = _lowest_concurrency(results.baseline)
    single_p50 = round(single.percentile(50), 3) if single is not None else None
    per_level = {
        str(g.concurrency): _ratio(g.throughput, b.throughput)
        for g in results.gateway
        for b in results.baseline
        if g.concurrency == b.concurrency
    }
    return {
        "ort_limit_ips": round(ort.best.images_per_s, 3) if ort is not None else None,
        "ort_best_batch": ort.best.batch_size if ort is not None else None,
        "triton_ips": _round(_best(results.triton)),
        "whole_path_ips": _round(whole),
        "whole_path_history_ips": _round(_best(results.gateway_history)),
        "whole_path_rollout_ips": _round(_best(results.gateway_rollout)),
        "whole_path_batch_ips": batch["best_batch_ips"] if batch is not None else None,
        "whole_path_two_tritons_ips": _round(_best(two)),
        "baseline_ips": _round(baseline),
        "batch1_latency_ms": batch1,
        "single_client_p50_ms": single_p50,
        "baseline_single_client_p50_ms": (
            round(single_base.percentile(50), 3) if single_base is not None else None
        ),
        "errors": sum(
            m.errors
            for m in (
                *results.triton,
                *results.gateway,
                *results.gateway_history,
                *results.gateway_rollout,
                *(m for pair in results.gateway_batch for m in (pair.batch, pair.singles)),
                *results.gateway_cache,
                *two,
                *results.baseline,
            )
        ),
        "history": {
            "backend": "sqlite" if results.gateway_history else None,
            "by_concurrency": history_cost(results.gateway, results.gateway_history),
            "writes": dict(results.history_writes),
        },
        "rollout": rollout_summary(results),
        "batch": batch,
        "batch_strategy": strategy.as_dict() if strategy is not None else None,
        "cache": cache_summary(results),
        "two_tritons": two_tritons_summary(results),
        "ratios": {
            "whole_path_vs_ort_limit": _ratio(whole, ort.best.images_per_s if ort else None),
            "whole_path_vs_baseline": _ratio(whole, baseline),
            "whole_path_vs_baseline_by_concurrency": per_level,
            "triton_vs_ort_limit": _ratio(
                _best(results.triton), ort.best.images_per_s if ort else None
            ),
            "batch_whole_path_vs_ort_limit": (
                batch["batch_vs_ort_limit"]["ratio"] if batch is not None else None
            ),
            "latency_overhead_ms": (
                round(single_p50 - batch1, 3) if single_p50 is not None and batch1 else None
            ),
            "latency_vs_batch1": _ratio(single_p50, batch1),
        },
        "stages": {
            "ort": [vars(figure) for figure in ort.figures] if ort is not None else [],
            "triton": [m.summary() for m in results.triton],
            "gateway": [m.summary() for m in results.gateway],
            "gateway_history": [m.summary() for m in results.gateway_history],
            "gateway_rollout": [m.summary() for m in results.gateway_rollout],
            "gateway_batch": gateway_batch.stage_figures(results.gateway_batch),
            "gateway_cache": [m.summary() for m in results.gateway_cache],
            "gateway_two_tritons": [m.summary() for m in two],
            "baseline": [m.summary() for m in results.baseline],
        },
        "settings": results.settings,
        "fairness": list(FAIRNESS),
    }


def _round(value: float | None) -> float | None:
    return round(value, 3) if value is not None else None


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table(results: BenchResults, document: dict[str, Any]) -> str:
    """Return the human-readable table and ratios."""
    lines = [
        f"{'stage':<22}{'conc/batch':>10}{'img/s':>10}{'p50 ms':>10}{'p95 ms':>10}"
        f"{'p99 ms':>10}{'errors':>8}"
    ]
    if results.ort is not None:
        for figure in results.ort.figures:
            lines.append(
                f"{'ORT alone (limit)':<22}{'b=' + str(figure.batch_size):>10}"
                f"{figure.images_per_s:>10.2f}{figure.latency_p50_ms:>10.1f}"
                f"{'':>10}{figure.latency_p99_ms:>10.1f}{'':>8}"
            )
    for title, measurements in (
        ("Triton gRPC alone", results.triton),
        ("gateway + Triton", results.gateway),
        ("+ history (SQLite)", results.gateway_history),
        ("+ rollout routing", results.gateway_rollout),
        ("gateway + 2 Tritons", results.two_tritons.measurements if results.two_tritons else []),
        ("seed baseline (Flask)", results.baseline),
    ):
        for m in measurements:
            lines.append(
                f"{title:<22}{'c=' + str(m.concurrency):>10}{m.throughput:>10.2f}"
                f"{m.percentile(50):>10.1f}{m.percentile(95):>10.1f}"
                f"{m.percentile(99):>10.1f}{m.errors:>8}"
            )
    lines += _breakdown_lines(results.gateway)
    lines += _breakdown_lines(results.gateway_history, "whole path with history")
    lines += _breakdown_lines(results.gateway_rollout, "whole path with rollout routing")
    lines += _triton_lines(
        results.triton, results.gateway, results.gateway_history, results.gateway_rollout
    )
    ratios = document["ratios"]
    lines += [
        "",
        f"ONNX Runtime limit:          {_fmt(document['ort_limit_ips'])} img/s "
        f"(batch {document['ort_best_batch']}), batch-1 latency "
        f"{_fmt(document['batch1_latency_ms'], 1)} ms",
        f"whole path / ORT limit:      {_fmt(ratios['whole_path_vs_ort_limit'], 3)}",
        f"whole path / baseline:       {_fmt(ratios['whole_path_vs_baseline'], 3)}  "
        "by concurrency: "
        + ", ".join(
            f"c={k}: {_fmt(v, 3)}"
            for k, v in ratios["whole_path_vs_baseline_by_concurrency"].items()
        ),
        f"Triton / ORT limit:          {_fmt(ratios['triton_vs_ort_limit'], 3)}",
        f"single-client p50 overhead:  {_fmt(ratios['latency_overhead_ms'], 1)} ms over batch-1 "
        f"inference (x{_fmt(ratios['latency_vs_batch1'])})",
        f"errors:                      {document['errors']}",
    ]
    lines += _history_lines(document["history"])
    lines += _rollout_lines(document["rollout"])
    lines += _batch_lines(results.gateway_batch, document["batch"])
    lines += _strategy_lines(document["batch_strategy"])
    lines += _cache_lines(results.gateway_cache, document["cache"])
    lines += _two_triton_lines(results, document["two_tritons"])
    settings = results.settings
    if "cpu_count" in settings:
        lines.append(
            f"machine:                     {settings.get('cpu_model', 'unknown CPU')}, "
            f"{settings['cpu_count']} CPUs (int8 flags: "
            f"{' '.join(settings.get('cpu_int8_flags', [])) or 'not recorded'}), "
            f"load average {settings.get('load_average_start')} "
            f"at start, {settings.get('load_average_end')} at end"
        )
    return "\n".join(lines)


def _history_lines(history: dict[str, Any]) -> list[str]:
    """History on vs off, per concurrency level measured both ways, and its write outcomes."""
    cost = history["by_concurrency"]
    if not cost:
        return []
    writes = history["writes"]
    stored, failed = writes.get("stored"), writes.get("failed", 0)
    written = (
        "writes not read from /metrics"
        if stored is None
        else f"{stored} answers stored, {failed} not stored"
    )
    lines = [f"history on vs off ({history['backend']}; {written}):"]
    lines += [_on_off_line(level, entry) for level, entry in cost.items()]
    return lines


def _on_off_line(level: Any, entry: dict[str, Any]) -> str:
    """One concurrency level of an on-vs-off comparison."""
    return (
        f"  c={level:<3} p50 {_signed(entry['p50_added_ms'], 1)} ms "
        f"({_fmt(entry['p50_off_ms'], 1)} -> {_fmt(entry['p50_on_ms'], 1)}), "
        f"throughput lost {_fmt(entry['throughput_lost_pct'], 1)} % "
        f"({_fmt(entry['ips_off'])} -> {_fmt(entry['ips_on'])} img/s)"
    )


def _rollout_lines(rollout: dict[str, Any]) -> list[str]:
    """Rollout routing on vs off per concurrency level, and its in-process cost."""
    lines = []
    cost = rollout["by_concurrency"]
    if cost:
        routed = rollout["routed"]
        counted = (
            "routed answers not read from the stats files"
            if "requests" not in routed
            else f"{routed['requests']} answers routed to stable version {rollout['stable']}, "
            f"{routed.get('errors', 0) + routed.get('timeouts', 0)} failed"
        )
        lines.append(f"rollout routing on vs off ({counted}):")
        lines += [_on_off_line(level, entry) for level, entry in cost.items()]
    routing = rollout["routing"]
    if routing is not None:
        lines.append(
            f"rollout routing in-process:  choose + observe {routing['us_per_request']:.2f} us "
            f"per request (best of {routing['repeats']} x {routing['calls']} calls, record "
            f"re-checked every {routing['refresh_s']:g} s; "
            f"{routing['us_per_request_stat']:.2f} us with a stat on every call)"
        )
    return lines


def _batch_lines(pairs: Sequence[BatchPair], batch: dict[str, Any] | None) -> list[str]:
    """/analyze/batch vs one-image requests per client count, CPU per image, the target."""
    if batch is None:
        return []
    per = batch["images_per_request"]
    lines = [
        "",
        f"/analyze/batch ({per} images a request, C clients) vs {per} x C one-image clients:",
        f"  {'C':<3}{'batch img/s':>12}{'p50 ms':>9}{'p95 ms':>9}{'singles img/s':>15}"
        f"{'p50 ms':>9}{'p95 ms':>9}{'batch/singles':>15}{'batch/ORT':>11}",
    ]
    for clients, entry in batch["by_clients"].items():
        lines.append(
            f"  {clients:<3}{entry['batch_ips']:>12.2f}{entry['batch_p50_ms']:>9.1f}"
            f"{entry['batch_p95_ms']:>9.1f}{entry['singles_ips']:>15.2f}"
            f"{entry['singles_p50_ms']:>9.1f}{entry['singles_p95_ms']:>9.1f}"
            f"{_fmt(entry['batch_vs_singles'], 3):>15}{_fmt(entry['batch_vs_ort_limit'], 3):>11}"
        )
    for pair in pairs:
        for name, m in (("batch", pair.batch), ("singles", pair.singles)):
            if m.server_cpu:
                cpu = describe_cpu(m.server_cpu)
                lines.append(f"  C={pair.clients:<3}{name:<8} server CPU ms/image: {cpu}")
            phases = m.triton_breakdown_ms
            if "total" in phases:
                lines.append(
                    f"  C={pair.clients:<3}{name:<8} Triton ms per request: queue "
                    f"{phases.get('queue', 0.0):.1f}, infer {phases.get('infer', 0.0):.1f}, total "
                    f"{phases['total']:.1f}; mean batch {phases.get('mean_batch', 0.0):.2f}"
                )
    verdict = batch["batch_vs_ort_limit"]
    met = {True: "met", False: "NOT met", None: "not judged (no ORT limit)"}[verdict["met"]]
    lines.append(
        f"batch whole path / ORT limit: {_fmt(verdict['ratio'], 3)} "
        f"(best {_fmt(batch['best_batch_ips'])} img/s; target >= {verdict['target']:g}: {met}); "
        f"singles / ORT limit {_fmt(batch['singles_vs_ort_limit'], 3)}"
    )
    return lines


def _strategy_lines(strategy: dict[str, Any] | None) -> list[str]:
    """One batched Triton request vs parallel singles merged by the dynamic batcher."""
    if strategy is None:
        return []
    images = strategy["images"]

    def way(name: str, title: str) -> str:
        entry = strategy[name]
        batch = entry["mean_batch"]
        return (
            f"  {title:<34}{entry['median_s'] * 1000.0:>9.1f} ms per {images} images "
            f"(p95 {entry['p95_s'] * 1000.0:.1f}), {entry['images_per_s']:>8.2f} img/s, "
            f"Triton mean batch {_fmt(batch)}"
        )

    pre = strategy["preprocess_ms_per_image"]
    return [
        "",
        f"Triton strategy for {images} images (gateway's TritonBackend, pre-made tensors, "
        f"median of {strategy['repeats']}):",
        way("batched", f"one [{images},3,H,W] request"),
        way("parallel", f"{images} concurrent batch-1 requests"),
        f"  faster: {strategy['faster']} (x{_fmt(strategy['speedup'], 3)}); outputs match: "
        f"{strategy['outputs_match']}",
        f"  gateway decode + preprocess in one thread: {pre['total']:.1f} ms per image "
        f"(decode {pre['decode']:.1f}, preprocess {pre['preprocess']:.1f}; JPEG draft "
        f"{'on' if strategy['draft_jpeg'] else 'off'})",
    ]


def _cache_lines(measurements: Sequence[Measurement], cache: dict[str, Any] | None) -> list[str]:
    """Cache hits of one payload per level, hits vs non-hits, miss p50, the in-process parts."""
    if cache is None:
        return []
    warm = cache["warm"]
    warmed = (
        "workers' counters not read"
        if warm.get("workers_with_hits") is None
        else f"{warm['workers_with_hits']} of {warm['workers']} workers hit"
    )
    lines = [
        "",
        f"answer cache hits (one {_fmt(cache['payload_kib'], 0)} KiB JPEG, memory; warmed with "
        f"{warm.get('requests')} requests, {warmed}):",
    ]
    for level, entry in cache["by_concurrency"].items():
        lines.append(
            f"  c={level:<3} p50 {entry['hit_p50_ms']:.2f} ms, p95 {entry['hit_p95_ms']:.2f} ms, "
            f"{entry['ips']:.1f} req/s; {entry['hits']} cached, {entry['non_hits']} not"
        )
    for m in measurements:
        if m.server_cpu:
            lines.append(f"  c={m.concurrency:<3} server CPU ms/hit: {describe_cpu(m.server_cpu)}")
    parts = cache["hit_parts_ms"]
    if parts:
        lines.append(
            "  in-process parts of a hit, median ms: "
            + ", ".join(f"{name} {value:.2f}" for name, value in parts.items())
        )
    met = {True: "met", False: "NOT met", None: "-"}[cache["target_met"]]
    lines.append(
        f"cache hit p50 {_fmt(cache['hit_p50_ms'])} ms vs miss p50 {_fmt(cache['miss_p50_ms'])} "
        f"ms ({cache['miss_source'] or 'no cache-off stage run'}); target <= "
        f"{cache['target_hit_p50_ms']:g} ms: {met}"
    )
    return lines


def _two_triton_lines(results: BenchResults, two: dict[str, Any] | None) -> list[str]:
    """Two Tritons vs one per level, the share per server, and the failover run."""
    if two is None:
        return []
    cpus = results.settings.get("cpu_count")
    on = f"; both on the same {cpus} CPUs" if cpus else ""
    lines = [
        "",
        f"gateway over 2 Tritons (GATEWAY_TRITON_URL lists both, round_robin{on}) vs 1 Triton:",
    ]
    for level, entry in two["by_concurrency"].items():
        lines.append(
            f"  c={level:<3} {entry['ips_two']:.2f} img/s vs {_fmt(entry['ips_one'])} "
            f"(x{_fmt(entry['two_vs_one'], 3)}), p50 {entry['p50_two_ms']:.1f} vs "
            f"{_fmt(entry['p50_one_ms'], 1)} ms, p99 {entry['p99_two_ms']:.1f} vs "
            f"{_fmt(entry['p99_one_ms'], 1)} ms; per server "
            f"{gateway_two_tritons.describe_shares(entry['shares'])}"
        )
    for m in results.two_tritons.measurements if results.two_tritons else []:
        if m.server_cpu:
            lines.append(
                f"  c={m.concurrency:<3} server CPU ms/image: {describe_cpu(m.server_cpu)}"
            )
    lines.append(
        "  share over the sweep (inferences, warm-ups included): "
        + gateway_two_tritons.describe_shares(two["shares"])
    )
    failover = two["failover"]
    if failover is None:
        return lines
    retries = failover["retries"]
    by_call = ", ".join(f"{what} {count}" for what, count in (retries or {}).items() if count)
    counted = (
        "retries not read from /metrics"
        if retries is None
        else f"gateway retries {failover['retries_total']}" + (f" ({by_call})" if by_call else "")
    )
    rejoin = (
        f"serving again {failover['rejoin_s']:.2f} s after ready"
        if failover["rejoin_s"] is not None
        else f"NOT serving again within {gateway_two_tritons.REJOIN_TIMEOUT_S:g} s of ready"
    )
    lines += [
        f"failover ({failover['clients']} clients; {gateway_two_tritons.SERVER_NAMES[1]} "
        f"SIGKILLed after {failover['before_s']:g} s, restarted {failover['outage_s']:g} s later):",
        f"  failed requests {failover['failed']} of {failover['requests']}; longest gap between "
        f"answers {_fmt(failover['gap_ms'], 1)} ms around the kill (before it: "
        f"{_fmt(failover['steady_gap_ms'], 1)} ms)",
        f"  outage: {failover['outage_ips']:.2f} img/s, p50 {failover['outage_p50_ms']:.1f} ms, "
        f"p99 {failover['outage_p99_ms']:.1f} ms (before the kill: {failover['before_ips']:.2f} "
        f"img/s, p50 {failover['before_p50_ms']:.1f}, p99 {failover['before_p99_ms']:.1f}); "
        f"{counted}",
        f"  restarted server ready {failover['restart_s']:.1f} s after its start, {rejoin}",
    ]
    for sample in failover["error_samples"]:
        lines.append(f"  failed: {sample}")
    return lines


def _signed(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:+.{digits}f}"


def _triton_lines(
    alone: Sequence[Measurement],
    behind_gateway: Sequence[Measurement],
    behind_history: Sequence[Measurement] = (),
    behind_rollout: Sequence[Measurement] = (),
) -> list[str]:
    """Where Triton's time goes, from its own statistics, one line per stage and level."""
    lines = []
    for stage, measurements in (
        ("Triton alone", alone),
        ("behind gateway", behind_gateway),
        ("+ history", behind_history),
        ("+ rollout", behind_rollout),
    ):
        for m in measurements:
            phases = m.triton_breakdown_ms
            if "total" not in phases:
                continue
            inner = ", ".join(
                f"{name} {phases[name]:.1f}"
                for name in ("queue", "input", "infer", "output")
                if name in phases
            )
            batch = f", mean batch {phases['mean_batch']:.2f}" if "mean_batch" in phases else ""
            lines.append(
                f"  {stage:<15} c={m.concurrency:<3} Triton {phases['total']:.1f} ms "
                f"({inner}){batch}"
            )
    if lines:
        lines.insert(0, "\nTriton, mean ms per request (its statistics API, incl. warm-up):")
    return lines


def _breakdown_lines(measurements: Sequence[Measurement], title: str = "whole path") -> list[str]:
    """Where the gateway's time goes, from its own /metrics, one line per concurrency level.

    With the history on, its write is part of "other" (after Triton, before the answer).
    """
    lines = []
    for m in measurements:
        phases = m.server_breakdown_ms
        if "request" not in phases:
            continue
        client_mean = sum(m.latencies_ms) / m.completed if m.completed else 0.0
        names = [name for name in ("decode", "preprocess", "triton", "other") if name in phases]
        inner = " + ".join(f"{name} {phases[name]:.1f}" for name in names)
        lines.append(
            f"  c={m.concurrency:<3} client mean {client_mean:7.1f} ms = gateway "
            f"{phases['request']:.1f} ({inner}) + queue/transport "
            f"{client_mean - phases['request']:.1f}"
        )
        if m.server_cpu:
            lines.append(f"        server CPU ms/image: {describe_cpu(m.server_cpu)}")
    if lines:
        lines.insert(0, f"\n{title}, mean ms per request (gateway's /metrics, incl. warm-up):")
    return lines


def write_json(document: dict[str, Any], path: Path) -> None:
    """Write the JSON document (parent folders created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")


def write_chart(results: BenchResults, document: dict[str, Any], path: Path) -> None:
    """Draw throughput by stage and concurrency, and the HTTP paths' latency, into a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    # (label, colour, measurements); a stage that was not run draws nothing.
    series = [
        entry
        for entry in (
            ("Triton gRPC", "tab:blue", results.triton),
            ("gateway + Triton", "tab:orange", results.gateway),
            ("gateway + history", "tab:red", results.gateway_history),
            ("gateway + rollout", "tab:purple", results.gateway_rollout),
            (
                "gateway + 2 Tritons",
                "tab:brown",
                results.two_tritons.measurements if results.two_tritons else [],
            ),
            ("seed baseline", "tab:green", results.baseline),
        )
        if entry[2]
    ]
    levels = sorted({m.concurrency for _, _, ms in series for m in ms})
    width = 0.8 / max(1, len(series))
    for offset, (label, colour, measurements) in enumerate(series):
        by_level = {m.concurrency: m.throughput for m in measurements}
        left.bar(
            [i + offset * width for i in range(len(levels))],
            [by_level.get(level, 0.0) for level in levels],
            width,
            label=label,
            color=colour,
        )
    if document["ort_limit_ips"] is not None:
        left.axhline(
            document["ort_limit_ips"],
            color="black",
            linestyle="--",
            label=f"ORT limit (batch {document['ort_best_batch']})",
        )
    left.set_xticks(
        [i + width * (len(series) - 1) / 2 for i in range(len(levels))],
        [f"c={level}" for level in levels],
    )
    left.set_ylabel("images / s")
    left.set_title("Throughput")
    left.legend(fontsize="small")
    for label, colour, measurements in series:
        if label == "Triton gRPC":  # gRPC with pre-made tensors: not an HTTP path
            continue
        xs = [m.concurrency for m in measurements]
        for q, style in ((50, "-o"), (99, ":x")):
            right.plot(
                xs,
                [m.percentile(q) for m in measurements],
                style,
                color=colour,
                label=f"{label} p{q}",
            )
    if document["batch1_latency_ms"] is not None:
        right.axhline(
            document["batch1_latency_ms"],
            color="black",
            linestyle="--",
            label="ORT batch-1 latency",
        )
    right.set_xscale("log", base=2)
    right.set_xticks(levels, [str(level) for level in levels])
    right.minorticks_off()
    right.set_xlabel("concurrent clients")
    right.set_ylabel("latency, ms")
    right.set_title("HTTP latency")
    right.legend(fontsize="small")
    settings = results.settings
    figure.suptitle(
        f"{settings.get('model')} - {settings.get('payload')} payloads - "
        f"{settings.get('cpu_model', '')} {settings.get('cpu_count')} CPUs"
    )
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
