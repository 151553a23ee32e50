"""bench.triton_stats: Triton's statistics turned into mean milliseconds per request."""

from __future__ import annotations

from typing import Any

from bench.triton_stats import Snapshot, breakdown, describe, parse


def _statistics(requests: int, executions: int, scale_ns: int) -> dict[str, Any]:
    """Triton's JSON statistics answer for one model version, with every phase scaled."""
    phases = ("queue", "compute_input", "compute_infer", "compute_output", "success")
    return {
        "model_stats": [
            {
                "name": "resnet50",
                "version": "1",
                "inference_count": str(requests),
                "execution_count": str(executions),
                "inference_stats": {
                    key: {"count": str(requests), "ns": str(scale_ns * (index + 1))}
                    for index, key in enumerate(phases)
                },
            }
        ]
    }


def test_parse_reads_phases_and_counts() -> None:
    """Nanoseconds, counts and the inference/execution counts come out as integers."""
    snapshot = parse(_statistics(requests=10, executions=4, scale_ns=1_000_000))
    assert snapshot.ns == {
        "queue": 1_000_000,
        "input": 2_000_000,
        "infer": 3_000_000,
        "output": 4_000_000,
        "total": 5_000_000,
    }
    assert snapshot.counts["total"] == 10
    assert (snapshot.inferences, snapshot.executions) == (10, 4)


def test_breakdown_is_the_mean_per_request_between_snapshots() -> None:
    """(after - before) / requests, in ms; mean batch = inferences / executions."""
    before = parse(_statistics(requests=10, executions=10, scale_ns=1_000_000))
    after = parse(_statistics(requests=30, executions=15, scale_ns=41_000_000))
    phases = breakdown(before, after)
    assert phases["queue"] == 2.0  # (41 - 1) ms / 20 requests
    assert phases["total"] == 10.0  # (205 - 5) ms / 20 requests
    assert phases["mean_batch"] == 4.0  # 20 inferences in 5 executions
    assert "total 10.0" in describe(phases) and "mean batch 4.00" in describe(phases)


def test_breakdown_is_empty_without_both_snapshots_or_requests() -> None:
    """A failed read or a window without requests gives no figures rather than a division by 0."""
    snapshot = Snapshot(dict.fromkeys(("queue", "total"), 0), {"total": 3}, 3, 3)
    assert breakdown(None, snapshot) == {}
    assert breakdown(snapshot, None) == {}
    assert breakdown(snapshot, snapshot) == {}
