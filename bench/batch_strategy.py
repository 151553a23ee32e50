"""The `batch_strategy` stage: one batched Triton request, or parallel singles merged by Triton?

Against the bench's local Triton and the published model, through the gateway's own
adapter (gateway.triton.TritonBackend, one client shared by the threads, as in a worker),
N pre-made tensors (8 by default: no decoding, no preprocessing) are classified

  batched   as one infer of an [N, 3, H, W] tensor, what /analyze/batch sends;
  parallel  as N concurrent batch-1 infers from N threads, which Triton's dynamic batcher
            merges as they arrive, what N /analyze requests in flight amount to.

The two alternate (and swap order every repetition, so neither always runs on a machine
just warmed by the other); each repetition's seconds are timed, and Triton's statistics,
read around each call, give the batch sizes it really formed. The gateway's own
decode + preprocess of the same images in one thread (Classifier.preprocess, as
/analyze/batch runs it) is timed as well: what the batched request waits for before it
can be sent.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from bench import triton_stats

if TYPE_CHECKING:
    from gateway.triton import TritonBackend

Tensor = npt.NDArray[np.float32]

IMAGES = 8
REPEATS = 30
SMOKE_REPEATS = 5
WARMUP_REPEATS = 3
PREPROCESS_REPEATS = 3
INFER_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class StrategyFigure:
    """One way of sending N images: seconds per N images, images/s, Triton's mean batch."""

    median_s: float
    p95_s: float
    images_per_s: float
    mean_batch: float | None  # images per Triton execution (None: statistics unreadable)


@dataclass(frozen=True)
class BatchStrategy:
    """The two ways measured on the same images, and the gateway's preprocessing of them."""

    images: int
    repeats: int
    batched: StrategyFigure
    parallel: StrategyFigure
    outputs_match: bool  # both ways gave the same logits (within float tolerance)
    preprocess_ms_per_image: dict[str, float]  # decode, preprocess (one thread, as shipped)
    draft_jpeg: bool  # the gateway's JPEG draft decoding, on by default, was used

    @property
    def faster(self) -> str:
        """ "batched" or "parallel": the way with the lower median seconds per N images."""
        return "batched" if self.batched.median_s <= self.parallel.median_s else "parallel"

    def as_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict, with the faster way and how much faster it is."""
        record = asdict(self)
        record["faster"] = self.faster
        slower = max(self.batched.median_s, self.parallel.median_s)
        quicker = min(self.batched.median_s, self.parallel.median_s)
        record["speedup"] = round(slower / quicker, 4) if quicker > 0 else None
        return record


def figure(seconds: Sequence[float], images: int, mean_batch: float | None) -> StrategyFigure:
    """The median and p95 seconds per `images` of the timed repetitions, and images/s."""
    ordered = sorted(seconds)
    median = statistics.median(ordered)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return StrategyFigure(
        median_s=round(median, 6),
        p95_s=round(p95, 6),
        images_per_s=round(images / median, 3) if median > 0 else 0.0,
        mean_batch=mean_batch,
    )


def _mean_batch(inferences: int, executions: int) -> float | None:
    return round(inferences / executions, 3) if executions > 0 else None


def measure(
    grpc_url: str,
    model: str,
    tensors: Tensor,
    repository: Path,
    jpegs: Sequence[bytes],
    images: int = IMAGES,
    repeats: int = REPEATS,
) -> BatchStrategy:
    """Time `repeats` alternating batched and parallel sends of `images` pre-made tensors."""
    from gateway.config import Settings
    from gateway.triton import TritonBackend

    backend = TritonBackend(grpc_url, timeout_s=INFER_TIMEOUT_S, ready_timeout_s=5.0)
    spec = backend.model_spec(model, None)
    rows = [tensors[i % len(tensors)] for i in range(images)]
    if spec.channels_last:
        rows = [np.ascontiguousarray(row.transpose(1, 2, 0)) for row in rows]
    batch = np.ascontiguousarray(np.stack(rows))
    singles = [np.ascontiguousarray(row[np.newaxis]) for row in rows]
    seconds: dict[str, list[float]] = {"batched": [], "parallel": []}
    counted = {name: [0, 0] for name in seconds}  # inferences, executions
    with ThreadPoolExecutor(max_workers=images, thread_name_prefix="single") as pool:

        def batched() -> Tensor:
            return np.asarray(backend.infer(spec, batch, None).values, dtype=np.float32)

        def parallel() -> Tensor:
            futures = [pool.submit(backend.infer, spec, single, None) for single in singles]
            outputs = [np.asarray(f.result().values, dtype=np.float32) for f in futures]
            return np.concatenate(outputs)

        ways: dict[str, Callable[[], Tensor]] = {"batched": batched, "parallel": parallel}
        # The threads and both gRPC paths warm up first; the outputs are compared once.
        outputs_match = bool(np.allclose(batched(), parallel(), rtol=1e-3, atol=1e-4))
        for repetition in range(WARMUP_REPEATS + repeats):
            order = ("batched", "parallel") if repetition % 2 == 0 else ("parallel", "batched")
            for name in order:
                before = triton_stats.snapshot(grpc_url, model)
                started = time.perf_counter()
                ways[name]()
                elapsed = time.perf_counter() - started
                after = triton_stats.snapshot(grpc_url, model)
                if repetition < WARMUP_REPEATS:
                    continue
                seconds[name].append(elapsed)
                if before is not None and after is not None:
                    counted[name][0] += after.inferences - before.inferences
                    counted[name][1] += after.executions - before.executions
    return BatchStrategy(
        images=images,
        repeats=repeats,
        batched=figure(seconds["batched"], images, _mean_batch(*counted["batched"])),
        parallel=figure(seconds["parallel"], images, _mean_batch(*counted["parallel"])),
        outputs_match=outputs_match,
        preprocess_ms_per_image=_preprocess_ms(backend, model, repository, jpegs, images),
        draft_jpeg=Settings.jpeg_draft,
    )


def _preprocess_ms(
    backend: TritonBackend, model: str, repository: Path, jpegs: Sequence[bytes], images: int
) -> dict[str, float]:
    """The gateway's decode and preprocess of `images` payloads in one thread, ms per image.

    The Classifier is built with the gateway's default settings (JPEG draft decoding on), and
    the median over PREPROCESS_REPEATS passes is taken.
    """
    from gateway.classifier import Classifier, StageTimings
    from gateway.config import Settings
    from gateway.images import ImageLimits
    from gateway.labels import LabelStore

    classifier = Classifier(
        backend,
        LabelStore(repository),
        default_model=model,
        limits=ImageLimits(max_pixels=Settings.max_pixels),
        cache_ttl_s=Settings.model_cache_ttl_s,
        draft_jpeg=Settings.jpeg_draft,
    )
    served = classifier.model(model, None)
    chosen = [jpegs[i % len(jpegs)] for i in range(images)]
    passes: list[StageTimings] = []
    for _ in range(PREPROCESS_REPEATS):
        total = StageTimings()
        for jpeg in chosen:
            total += classifier.preprocess(jpeg, served)[1]
        passes.append(total)
    decode = statistics.median(p.decode_s for p in passes) * 1000.0 / images
    preprocess = statistics.median(p.preprocess_s for p in passes) * 1000.0 / images
    return {
        "decode": round(decode, 3),
        "preprocess": round(preprocess, 3),
        "total": round(decode + preprocess, 3),
    }
