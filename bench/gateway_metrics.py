"""Where time goes inside the gateway: its own /metrics histograms, diffed around each window.

The gateway exports per-phase histograms (request, image decode, preprocessing, Triton call).
Subtracting a scrape taken before a window from one taken after gives each phase's mean time
per request over that window and its warm-up; what the client saw beyond the gateway's own
request time is queueing in gunicorn and transport.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

SCRAPE_TIMEOUT_S = 10.0
PHASES = {
    "request": "gateway_request_duration_seconds",
    "decode": "gateway_decode_duration_seconds",
    "preprocess": "gateway_preprocess_duration_seconds",
    "triton": "gateway_triton_duration_seconds",
}
ANALYZE_ROUTE_HINT = "analyze"


@dataclass(frozen=True)
class Snapshot:
    """Sum and count of each phase histogram at one moment (None: the scrape failed)."""

    sums: dict[str, float]
    counts: dict[str, float]


def _keep(phase: str, labels: dict[str, str]) -> bool:
    # Only /analyze requests: health and metrics scrapes would dilute the request phase.
    route = labels.get("route")
    return phase != "request" or route is None or ANALYZE_ROUTE_HINT in route


def parse(text: str) -> Snapshot:
    """Sum each phase histogram's _sum and _count over its label sets."""
    names = {name: phase for phase, name in PHASES.items()}
    sums = dict.fromkeys(PHASES, 0.0)
    counts = dict.fromkeys(PHASES, 0.0)
    for family in text_string_to_metric_families(text):
        phase = names.get(family.name)
        if phase is None:
            continue
        for sample in family.samples:
            if not _keep(phase, sample.labels):
                continue
            if sample.name.endswith("_sum"):
                sums[phase] += sample.value
            elif sample.name.endswith("_count"):
                counts[phase] += sample.value
    return Snapshot(sums, counts)


def exposition(port: int) -> str | None:
    """The text of the gateway's /metrics (every worker summed); None when it cannot be read."""
    try:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{port}/metrics", timeout=SCRAPE_TIMEOUT_S
        ) as response:
            return str(response.read().decode("utf-8", "replace"))
    except (urllib.error.URLError, OSError, ValueError):
        return None


def scrape(port: int) -> Snapshot | None:
    """Fetch and parse the gateway's /metrics; None when it cannot be read."""
    text = exposition(port)
    return parse(text) if text is not None else None


def counter_by_label(text: str, family_name: str, label: str) -> dict[str, int]:
    """Sum one counter family's ``_total`` samples by one label's value, in an exposition."""
    counts: dict[str, int] = {}
    for family in text_string_to_metric_families(text):
        if family.name != family_name:
            continue
        for sample in family.samples:
            if sample.name.endswith("_total"):
                value = sample.labels.get(label, "")
                counts[value] = counts.get(value, 0) + int(sample.value)
    return counts


def breakdown(before: Snapshot | None, after: Snapshot | None) -> dict[str, float]:
    """Mean milliseconds per request of each phase between two snapshots, plus 'other'."""
    if before is None or after is None:
        return {}
    means: dict[str, float] = {}
    for phase in PHASES:
        count = after.counts[phase] - before.counts[phase]
        if count > 0:
            means[phase] = round((after.sums[phase] - before.sums[phase]) / count * 1000.0, 3)
    if "request" in means:
        inner = sum(means.get(phase, 0.0) for phase in ("decode", "preprocess", "triton"))
        means["other"] = round(means["request"] - inner, 3)
    return means
