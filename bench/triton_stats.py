"""Where time goes inside Triton: its per-model statistics, diffed around each window.

Triton counts, per model, the time requests spent queued (waiting for the dynamic batcher
and a free instance), and the time of each execution's input copy, inference (our backend's
``execute``, ONNX Runtime included) and output copy. Subtracting a snapshot taken before a
window from one taken after gives the mean of each phase per request over that window and
its warm-up, and the mean batch size Triton formed. What a client saw beyond Triton's own
total ("success") is gRPC transport and client-side work.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench.loadgen import Measurement

STATS_TIMEOUT_S = 10.0
# Triton's inference_stats entries, reported as mean ms per request under these names.
PHASES = {
    "queue": "queue",
    "input": "compute_input",
    "infer": "compute_infer",
    "output": "compute_output",
    "total": "success",
}


@dataclass(frozen=True)
class Snapshot:
    """Cumulative nanoseconds and counts of each phase, and the inference/execution counts."""

    ns: dict[str, int]
    counts: dict[str, int]
    inferences: int
    executions: int


def parse(statistics: dict[str, Any]) -> Snapshot:
    """Sum Triton's JSON statistics over every version of the model in the answer."""
    ns = dict.fromkeys(PHASES, 0)
    counts = dict.fromkeys(PHASES, 0)
    inferences = executions = 0
    for model in statistics.get("model_stats", []):
        stats = model.get("inference_stats", {})
        for phase, key in PHASES.items():
            entry = stats.get(key, {})
            ns[phase] += int(entry.get("ns", 0))
            counts[phase] += int(entry.get("count", 0))
        inferences += int(model.get("inference_count", 0))
        executions += int(model.get("execution_count", 0))
    return Snapshot(ns, counts, inferences, executions)


def snapshot(grpc_url: str, model: str) -> Snapshot | None:
    """Read the model's statistics from Triton over gRPC; None when they cannot be read."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(url=grpc_url)
    try:
        answer = client.get_inference_statistics(
            model, as_json=True, client_timeout=STATS_TIMEOUT_S
        )
    except InferenceServerException:
        return None
    finally:
        client.close()
    return parse(answer)


def breakdown(before: Snapshot | None, after: Snapshot | None) -> dict[str, float]:
    """Mean milliseconds per request of each phase between two snapshots, and the mean batch."""
    if before is None or after is None:
        return {}
    requests = after.counts["total"] - before.counts["total"]
    if requests <= 0:
        return {}
    means = {
        phase: round((after.ns[phase] - before.ns[phase]) / requests / 1e6, 3) for phase in PHASES
    }
    executions = after.executions - before.executions
    if executions > 0:
        means["mean_batch"] = round((after.inferences - before.inferences) / executions, 2)
    return means


def describe(phases: dict[str, float]) -> str:
    """One progress line, e.g. ``queue 0.1, input 0.1, infer 43.0, ...; mean batch 1.00``."""
    timed = ", ".join(f"{phase} {phases[phase]:.1f}" for phase in PHASES if phase in phases)
    batch = f"; mean batch {phases['mean_batch']:.2f}" if "mean_batch" in phases else ""
    return f"    triton mean ms/request: {timed}{batch}"


def with_triton_breakdown(
    grpc_url: str,
    model: str,
    progress: Callable[[str], None],
    inner: Callable[[Callable[[], Measurement]], Measurement] | None = None,
) -> Callable[[Callable[[], Measurement]], Measurement]:
    """Wrap each window (and ``inner``'s wrapping of it) in Triton statistics snapshots."""

    def around(window: Callable[[], Measurement]) -> Measurement:
        before = snapshot(grpc_url, model)
        measurement = inner(window) if inner is not None else window()
        measurement.triton_breakdown_ms = breakdown(before, snapshot(grpc_url, model))
        if measurement.triton_breakdown_ms:
            progress(describe(measurement.triton_breakdown_ms))
        return measurement

    return around
