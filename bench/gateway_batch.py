"""The `gateway_batch` stage: POST /analyze/batch against the same images sent one by one.

The gateway is the `gateway` stage's (history off, answer cache off; the same process when
both stages run). For each client count C:

  batch    C clients, each sending /analyze/batch bodies of `per_request` (8) images;
  singles  per_request x C clients, each sending /analyze bodies of one image.

Both keep per_request x C images in flight at every moment, and the singles' clients run
freely (no client waits for seven others before sending again), so the singles get the
best the one-image path can do with that many images in flight, and the dynamic batcher
can merge their Triton calls. Latencies are per request: 8 images for a batch, one for a
single. Every window also reads the gateway's and Triton's CPU time (bench.cpu_time), so
each image's server CPU cost is reported beside the throughput.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bench.loadgen import HttpTarget, Measurement
from bench.servers import ServerError
from bench.whole_path import CHECK_TIMEOUT_S, HOST, json_headers, sweep_gateway

BATCH_PATH = "/analyze/batch"
IMAGES_PER_REQUEST = 8
DEFAULT_CLIENTS = (1, 2, 4)
SMOKE_CLIENTS = (1,)
#: The issue's target for the batch whole path: at least this share of the ORT limit.
TARGET_VS_ORT_LIMIT = 0.9
SINGLES_MODE = "per_request x C free-running clients, one image per /analyze request"


@dataclass
class BatchPair:
    """One client count: the batch window and the singles window with as many images."""

    clients: int
    batch: Measurement
    singles: Measurement


def check_batch(port: int, body: bytes, headers: Mapping[str, str], images: int) -> list[str]:
    """Send one batch outside the timed windows; return its labels or raise ServerError.

    Every entry must carry a label: the timed loop checks only the HTTP status, and a batch
    answers 200 even when some of its images failed.
    """
    connection = http.client.HTTPConnection(HOST, port, timeout=CHECK_TIMEOUT_S)
    try:
        connection.request("POST", BATCH_PATH, body=body, headers=dict(headers))
        response = connection.getresponse()
        text = response.read()
    except (OSError, http.client.HTTPException) as error:
        raise ServerError(f"the batch check request to port {port} failed: {error}") from None
    finally:
        connection.close()
    if response.status != 200:
        raise ServerError(f"the batch check request got HTTP {response.status}: {text[:300]!r}")
    try:
        results = json.loads(text)["results"]
        labels = [str(result["label"]) for result in results]
    except (ValueError, KeyError, TypeError):
        raise ServerError(f"a batch check answer entry has no label: {text[:300]!r}") from None
    if len(labels) != images:
        raise ServerError(f"the batch check sent {images} images and got {len(labels)} answers")
    return labels


def measure(
    port: int,
    batch_bodies: Sequence[bytes],
    single_bodies: Sequence[bytes],
    api_key: str,
    clients: Sequence[int],
    per_request: int,
    warmup_s: float,
    duration_s: float,
    progress: Callable[[str], None],
    triton: tuple[str, str],
    cpu_groups: Mapping[str, int],
) -> list[BatchPair]:
    """Check every batch body, then measure batch and singles windows at each client count."""
    headers = json_headers(api_key)
    labels = [check_batch(port, body, headers, per_request)[0] for body in batch_bodies]
    progress(
        f"  {len(labels)} batch check request(s) answered {per_request} labels each, "
        f"e.g. {labels[0]!r}"
    )
    batch = HttpTarget(
        host=HOST,
        port=port,
        path=BATCH_PATH,
        bodies=tuple(batch_bodies),
        headers=tuple(headers.items()),
        images_per_request=per_request,
    )
    singles = HttpTarget(
        host=HOST,
        port=port,
        path="/analyze",
        bodies=tuple(single_bodies),
        headers=tuple(headers.items()),
    )
    pairs = []
    for count in clients:

        def window(target: HttpTarget, level: int) -> Measurement:
            return sweep_gateway(
                target, [level], warmup_s, duration_s, progress, True, triton, cpu_groups
            )[0]

        progress(f"  {count} client(s) x {per_request} images per /analyze/batch request")
        with_batch = window(batch, count)
        progress(f"  {per_request * count} clients x 1 image per /analyze request")
        pairs.append(BatchPair(count, with_batch, window(singles, per_request * count)))
    return pairs


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return round(numerator / denominator, 4)


def target_verdict(
    batch_ips: float | None, ort_limit_ips: float | None, target: float = TARGET_VS_ORT_LIMIT
) -> dict[str, float | bool | None]:
    """Batch whole path img/s over the ORT limit's, and whether it reaches `target` x the limit.

    ``met`` is None when either figure is missing (the stage or the ORT stage did not run).
    """
    ratio = _ratio(batch_ips, ort_limit_ips)
    return {
        "ratio": ratio,
        "target": target,
        "met": None if ratio is None else ratio >= target,
    }


def _cpu(measurement: Measurement) -> dict[str, float]:
    return {
        key: value
        for key, value in measurement.server_cpu.items()
        if key.endswith("_ms_per_image") or key in ("total_cores", "other_cores")
    }


def summary(pairs: Sequence[BatchPair], ort_limit_ips: float | None) -> dict[str, Any]:
    """Batch vs singles per client count, the best of each, and the target's verdict."""
    by_clients: dict[str, dict[str, Any]] = {}
    for pair in pairs:
        batch_ips, singles_ips = pair.batch.images_per_s, pair.singles.images_per_s
        by_clients[str(pair.clients)] = {
            "images_in_flight": pair.singles.concurrency,
            "batch_ips": round(batch_ips, 3),
            "singles_ips": round(singles_ips, 3),
            "batch_vs_singles": _ratio(batch_ips, singles_ips),
            "batch_vs_ort_limit": _ratio(batch_ips, ort_limit_ips),
            "singles_vs_ort_limit": _ratio(singles_ips, ort_limit_ips),
            "batch_p50_ms": round(pair.batch.percentile(50), 3),
            "batch_p95_ms": round(pair.batch.percentile(95), 3),
            "singles_p50_ms": round(pair.singles.percentile(50), 3),
            "singles_p95_ms": round(pair.singles.percentile(95), 3),
            "batch_cpu": _cpu(pair.batch),
            "singles_cpu": _cpu(pair.singles),
        }
    best_batch = max((p.batch.images_per_s for p in pairs), default=None)
    best_singles = max((p.singles.images_per_s for p in pairs), default=None)
    return {
        "images_per_request": pairs[0].batch.images_per_request if pairs else None,
        "singles_mode": SINGLES_MODE,
        "by_clients": by_clients,
        "best_batch_ips": round(best_batch, 3) if best_batch is not None else None,
        "best_singles_ips": round(best_singles, 3) if best_singles is not None else None,
        "batch_vs_ort_limit": target_verdict(best_batch, ort_limit_ips),
        "singles_vs_ort_limit": _ratio(best_singles, ort_limit_ips),
    }


def stage_figures(pairs: Sequence[BatchPair]) -> list[dict[str, Any]]:
    """Every window's figures, one entry per client count."""
    return [
        {"clients": p.clients, "batch": p.batch.summary(), "singles": p.singles.summary()}
        for p in pairs
    ]
