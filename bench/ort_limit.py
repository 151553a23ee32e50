"""Stage 1, the limit: ONNX Runtime alone on the published model.onnx, in its own process.

The session uses ONNX Runtime's defaults (CPU provider, intra-op threads = physical cores),
pre-made tensors, no I/O: it is what this machine can do at best with this model, the
ceiling every serving path is compared with.
"""

from __future__ import annotations

import multiprocessing
import statistics
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

Tensor = npt.NDArray[np.float32]

EXTRA_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class BatchFigure:
    """Throughput and per-call latency of one batch size."""

    batch_size: int
    images_per_s: float
    latency_p50_ms: float
    latency_p99_ms: float
    calls: int


@dataclass
class OrtLimit:
    """The ONNX Runtime figures: one per batch size, the best, and batch-1 latency."""

    figures: list[BatchFigure] = field(default_factory=list)

    @property
    def best(self) -> BatchFigure:
        """The batch size with the highest images/s."""
        return max(self.figures, key=lambda figure: figure.images_per_s)

    @property
    def batch1_latency_ms(self) -> float:
        """Median latency of one batch-1 inference (the floor under any single request)."""
        for figure in self.figures:
            if figure.batch_size == 1:
                return figure.latency_p50_ms
        raise ValueError("batch size 1 was not measured")


def _percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else 0.0


def measure(
    onnx_path: Path,
    tensors: Tensor,
    batch_sizes: Sequence[int],
    warmup_s: float,
    duration_s: float,
    *,
    here: bool = False,
) -> OrtLimit:
    """Measure each batch size for a warm-up then `duration_s` seconds.

    The measurement runs in a fresh process, so nothing else in this one competes, unless
    `here` (which is how that process runs it).
    """
    if not here:
        timeout = len(batch_sizes) * (warmup_s + duration_s) * 3 + EXTRA_TIMEOUT_S
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
            args = (onnx_path, tensors, batch_sizes, warmup_s, duration_s)
            return pool.submit(measure, *args, here=True).result(timeout=timeout)
    import onnxruntime as ort  # imported here: the child process is the one that runs it

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    result = OrtLimit()
    for batch_size in batch_sizes:
        rows = [tensors[i % len(tensors)] for i in range(batch_size)]
        batch = np.ascontiguousarray(np.stack(rows))
        feed = {input_name: batch}
        warm_end = time.perf_counter() + warmup_s
        session.run(None, feed)  # at least one run even with no warm-up: first-call allocations
        while time.perf_counter() < warm_end:
            session.run(None, feed)
        latencies: list[float] = []
        started = time.perf_counter()
        end = started + duration_s
        while True:
            call_start = time.perf_counter()
            session.run(None, feed)
            finished = time.perf_counter()
            latencies.append((finished - call_start) * 1000.0)
            if finished >= end and len(latencies) >= 3:
                break
        elapsed = finished - started
        result.figures.append(
            BatchFigure(
                batch_size=batch_size,
                images_per_s=len(latencies) * batch_size / elapsed,
                latency_p50_ms=statistics.median(latencies),
                latency_p99_ms=_percentile(latencies, 99),
                calls=len(latencies),
            )
        )
    return result
