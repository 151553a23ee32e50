"""ONNX Runtime (CPU) throughput of several models, measured interleaved so they share the load.

The machine is shared: whatever else runs slows each model in turn by about the same amount, so
fp32 and int8 figures stay comparable even when the absolute numbers wander.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime

from model_contract.preprocessing import FloatArray

WARMUP_RUNS = 2
ROUND_SECONDS = 0.25


@dataclass(frozen=True)
class Throughput:
    """Images per second of one model at one batch size."""

    batch_size: int
    images_per_s: float
    images: int
    seconds: float


def cpu_session(path: Path, threads: int | None = None) -> onnxruntime.InferenceSession:
    """A CPU InferenceSession; `threads` sets intra-op threads (None: ONNX Runtime's default)."""
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # the quantizer's leftover initializers warn at load: noise
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def measure_interleaved(
    models: Mapping[str, Path],
    images: FloatArray,
    batch_size: int,
    seconds_per_model: float = 2.0,
    threads: int | None = None,
) -> dict[str, Throughput]:
    """Run each model in turns of ROUND_SECONDS until each had seconds_per_model; images/s each."""
    if len(images) == 0:
        raise ValueError("need at least one image to measure throughput")
    repeats = -(-batch_size // len(images))
    batch = np.ascontiguousarray(np.concatenate([images] * repeats)[:batch_size])
    sessions = {name: cpu_session(path, threads) for name, path in models.items()}
    feeds = {name: {s.get_inputs()[0].name: batch} for name, s in sessions.items()}
    for name, session in sessions.items():
        for _ in range(WARMUP_RUNS):
            session.run(None, feeds[name])
    spent = dict.fromkeys(sessions, 0.0)
    counted = dict.fromkeys(sessions, 0)
    rounds = max(1, round(seconds_per_model / ROUND_SECONDS))
    for _ in range(rounds):
        for name, session in sessions.items():
            started = time.perf_counter()
            while True:
                session.run(None, feeds[name])
                counted[name] += batch_size
                elapsed = time.perf_counter() - started
                if elapsed >= ROUND_SECONDS:
                    break
            spent[name] += elapsed
    return {
        name: Throughput(batch_size, counted[name] / spent[name], counted[name], spent[name])
        for name in sessions
    }
