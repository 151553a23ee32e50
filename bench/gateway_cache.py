"""The `gateway_cache` stage: what an answer-cache hit costs, for one 1080p JPEG sent again.

A gateway with GATEWAY_CACHE=on (each worker's memory, no Redis; history and rollout off)
gets the bench's first payload (a 1920x1080 JPEG with the default payloads) on fresh
connections until every worker has answered it from its cache at least once (each worker's
own hit counter, read from its prometheus_client multiprocess file), so no timed request
is the first one a worker sees. Then the same body is sent from 1 (and 4) keep-alive clients
and every answer is looked at: the hits say ``"cached": true``; any other answer is counted
as a non-hit. The miss figure to compare with is the cache-off `gateway` stage's p50 at its
lowest concurrency (the same kind of payloads, decoded and classified every time).

What a hit still does is timed in this process too (`hit_parts_ms`): parsing the JSON body,
decoding its base64, hashing the image, and the one Triton metadata call an unpinned
request makes to learn which version would answer (the cache key holds the version).
"""

from __future__ import annotations

import http.client
import json
import statistics
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.loadgen import HttpTarget, Measurement
from bench.servers import ServerError
from bench.whole_path import CHECK_TIMEOUT_S, HOST, json_headers, sweep_gateway

DEFAULT_LEVELS = (1, 4)
SMOKE_LEVELS = (1,)
#: The issue's target: a hit's p50 at one client, for a 1080p JPEG.
TARGET_HIT_P50_MS = 3.0
WARM_ATTEMPTS = 40
WARM_WITHOUT_COUNTS = 8  # when the workers' counters cannot be read: send this many
HIT_PARTS_REPEATS = 30
CACHE_LOOKUPS = "gateway_cache_requests_total"

# (key, value, timestamp, position) of each entry of a prometheus_client multiprocess file.
ReadValues = Callable[[str], Iterable[tuple[str, float, float, int]]]


def worker_cache_counts(metrics_dir: Path) -> dict[int, dict[str, float]]:
    """Each worker's answer-cache lookups so far, by result ("hit", "miss"), keyed by pid.

    Read from the counter files prometheus_client's multiprocess mode keeps per process
    (``counter_<pid>.db``); a worker appears once its app has registered the counter.
    """
    from prometheus_client.mmap_dict import MmapedDict

    read: ReadValues = MmapedDict.read_all_values_from_file
    counts: dict[int, dict[str, float]] = {}
    for path in sorted(metrics_dir.glob("counter_*.db")):
        pid_text = path.stem.removeprefix("counter_")
        if not pid_text.isdigit():
            continue
        try:
            entries = list(read(str(path)))
        except (OSError, ValueError):  # being created, or not such a file: skip it
            continue
        for key, value, _timestamp, _position in entries:
            try:
                _metric, sample, labels, _help = json.loads(key)
            except (ValueError, TypeError):
                continue
            if sample != CACHE_LOOKUPS or not isinstance(labels, dict):
                continue
            result = str(labels.get("result", ""))
            worker = counts.setdefault(int(pid_text), {})
            worker[result] = worker.get(result, 0.0) + value
    return counts


def _send_fresh(port: int, body: bytes, headers: Mapping[str, str]) -> bytes:
    """POST /analyze on a new connection, closed after the answer (another worker may take it)."""
    connection = http.client.HTTPConnection(HOST, port, timeout=CHECK_TIMEOUT_S)
    try:
        connection.request(
            "POST", "/analyze", body=body, headers={**headers, "Connection": "close"}
        )
        response = connection.getresponse()
        text = response.read()
    except (OSError, http.client.HTTPException) as error:
        raise ServerError(f"a cache warm-up request to port {port} failed: {error}") from None
    finally:
        connection.close()
    if response.status != 200:
        raise ServerError(f"a cache warm-up request got HTTP {response.status}: {text[:300]!r}")
    return text


def warm(
    port: int,
    body: bytes,
    headers: Mapping[str, str],
    metrics_dir: Path,
    workers: int,
    attempts: int = WARM_ATTEMPTS,
) -> dict[str, int | None]:
    """Send `body` until each of `workers` workers has answered it from its cache once.

    Returns the requests sent and how many workers counted a hit (None: their counters
    could not be read, and WARM_WITHOUT_COUNTS requests were sent instead).
    """
    sent = 0
    warm_workers: int | None = None
    while sent < attempts:
        _send_fresh(port, body, headers)
        sent += 1
        counts = worker_cache_counts(metrics_dir)
        if not counts:
            if sent >= WARM_WITHOUT_COUNTS:
                break
            continue
        warm_workers = sum(1 for worker in counts.values() if worker.get("hit", 0.0) >= 1)
        if warm_workers >= workers:
            break
    return {"requests": sent, "workers": workers, "workers_with_hits": warm_workers}


def hit_parts(
    body: bytes, grpc_url: str, model: str, repeats: int = HIT_PARTS_REPEATS
) -> dict[str, float]:
    """Median ms, in this process, of each step a hit still takes before its cache lookup."""
    from gateway.cache import image_digest
    from gateway.config import Settings
    from gateway.images import decode_base64
    from gateway.triton import TritonBackend

    backend = TritonBackend(grpc_url, timeout_s=10.0, ready_timeout_s=2.0)
    document = json.loads(body)
    data = decode_base64(document["image"], Settings.max_body_bytes)
    steps: dict[str, Callable[[], object]] = {
        "json": lambda: json.loads(body),
        "base64": lambda: decode_base64(document["image"], Settings.max_body_bytes),
        "sha256": lambda: image_digest(data),
        "served_version": lambda: backend.served_version(model),
    }
    parts: dict[str, float] = {}
    for name, step in steps.items():
        step()  # first call: connections, caches
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            step()
            times.append((time.perf_counter() - started) * 1000.0)
        parts[name] = round(statistics.median(times), 3)
    parts["sum"] = round(sum(parts.values()), 3)
    return parts


def measure(
    port: int,
    body: bytes,
    api_key: str,
    levels: Sequence[int],
    warmup_s: float,
    duration_s: float,
    progress: Callable[[str], None],
    cpu_groups: Mapping[str, int],
) -> list[Measurement]:
    """Sweep the levels with `body` alone, counting the answers that say they were cached."""
    target = HttpTarget(
        host=HOST,
        port=port,
        path="/analyze",
        bodies=(body,),
        headers=tuple(json_headers(api_key).items()),
        count_cached=True,
    )
    measurements = sweep_gateway(
        target, levels, warmup_s, duration_s, progress, True, None, cpu_groups
    )
    for m in measurements:
        progress(
            f"  c={m.concurrency}: {m.cache_hits or 0} answers cached, {m.cache_misses or 0} not"
        )
    return measurements


def summary(
    measurements: Sequence[Measurement],
    miss: Measurement | None,
    payload_kib: float | None,
    warmed: Mapping[str, int | None],
    parts: Mapping[str, float],
    target_ms: float = TARGET_HIT_P50_MS,
) -> dict[str, Any]:
    """Hit latency per level, hits vs non-hits, the miss p50 beside it, and the target."""
    by_concurrency = {
        str(m.concurrency): {
            "hit_p50_ms": round(m.percentile(50), 3),
            "hit_p95_ms": round(m.percentile(95), 3),
            "ips": round(m.images_per_s, 3),
            "hits": m.cache_hits or 0,
            "non_hits": m.cache_misses or 0,
        }
        for m in measurements
    }
    single = min(measurements, key=lambda m: m.concurrency, default=None)
    hit_p50 = round(single.percentile(50), 3) if single is not None else None
    miss_p50 = round(miss.percentile(50), 3) if miss is not None else None
    return {
        "payload_kib": payload_kib,
        "warm": dict(warmed),
        "by_concurrency": by_concurrency,
        "hit_p50_ms": hit_p50,
        "miss_p50_ms": miss_p50,
        "miss_source": (
            f"gateway stage (cache off) at c={miss.concurrency}" if miss is not None else None
        ),
        "hit_vs_miss": (round(hit_p50 / miss_p50, 4) if hit_p50 and miss_p50 else None),
        "hits": sum(m.cache_hits or 0 for m in measurements),
        "non_hits": sum(m.cache_misses or 0 for m in measurements),
        "target_hit_p50_ms": target_ms,
        "target_met": None if hit_p50 is None else hit_p50 <= target_ms,
        "hit_parts_ms": dict(parts),
    }
