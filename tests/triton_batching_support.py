"""Checks that a real Triton merged concurrent requests, from its statistics and its metrics.

- `Counters.read(server, model)`: the statistics and the Prometheus scrape for version 1 of
  ``model``, taken before the requests are sent.
- `assert_merged(server, model, before, requests=..., items=...)`: once the statistics have
  settled, ``items`` more inferences ran in fewer executions than ``requests``, and the
  success, inference and execution counters on the metrics port grew by as much; returns
  the number of executions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from local_triton import TritonServer
from tests.fixtures.triton import (
    metric_value,
    model_statistics,
    scrape_metrics,
    settled_statistics,
)

VERSION = "1"
Metrics = dict[tuple[str, frozenset[tuple[str, str]]], float]


@dataclass(frozen=True)
class Counters:
    """Triton's statistics and its Prometheus samples for version 1 of one model."""

    statistics: dict[str, Any]
    metrics: Metrics

    @classmethod
    def read(cls, server: TritonServer, model: str) -> Counters:
        """Read both now (before the requests whose counting is checked)."""
        return cls(model_statistics(server, model, VERSION), scrape_metrics(server))


def assert_merged(
    server: TritonServer, model: str, before: Counters, *, requests: int, items: int
) -> int:
    """``requests`` requests of ``items`` items in all: counted, in fewer executions."""
    start = before.statistics
    after_stats = settled_statistics(
        server,
        model,
        VERSION,
        lambda entry: entry["inference_count"] >= start["inference_count"] + items,
    )
    after = scrape_metrics(server)
    executions = int(after_stats["execution_count"] - start["execution_count"])
    assert after_stats["inference_count"] - start["inference_count"] == items
    assert 1 <= executions < requests, f"{requests} requests took {executions} executions"
    labels = {"model": model, "version": VERSION}
    for name, expected_delta in [
        ("nv_inference_request_success", requests),
        ("nv_inference_count", items),
        ("nv_inference_exec_count", executions),
    ]:
        delta = metric_value(after, name, **labels) - metric_value(before.metrics, name, **labels)
        assert delta == expected_delta, f"{name} grew by {delta}, expected {expected_delta}"
    return executions
