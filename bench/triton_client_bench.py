"""Stage 2: Triton alone over gRPC, pre-made tensors, several concurrent clients.

Each client sends batch-1 requests, as the gateway does, so Triton's dynamic batcher is
what forms batches. Input and output names come from Triton's model metadata, never from
assumptions (the contract says clients must read them).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt

from bench.loadgen import GrpcTarget, Measurement, sweep
from bench.triton_stats import with_triton_breakdown

Tensor = npt.NDArray[np.float32]

METADATA_TIMEOUT_S = 10.0


class TritonBenchError(Exception):
    """Triton's metadata could not be read or does not describe an image classifier."""


def grpc_target(grpc_url: str, model: str, tensors: Tensor) -> GrpcTarget:
    """The target that sends `tensors` to `model`, named as Triton's gRPC metadata names them."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(url=grpc_url)
    try:
        metadata = client.get_model_metadata(model, as_json=True, client_timeout=METADATA_TIMEOUT_S)
    except InferenceServerException as error:
        raise TritonBenchError(f"cannot read {model!r} metadata from Triton: {error}") from None
    finally:
        client.close()
    inputs, outputs = metadata.get("inputs", []), metadata.get("outputs", [])
    if not inputs or not outputs:
        raise TritonBenchError(f"Triton reports no inputs or outputs for {model!r}")
    return GrpcTarget(grpc_url, model, inputs[0]["name"], outputs[0]["name"], tensors)


def run(
    grpc_url: str,
    model: str,
    tensors: Tensor,
    levels: Sequence[int],
    warmup_s: float,
    duration_s: float,
    progress: Callable[[str], None] = print,
) -> list[Measurement]:
    """Measure Triton over gRPC at each concurrency level, in a separate client process."""
    target = grpc_target(grpc_url, model, tensors)
    around = with_triton_breakdown(grpc_url, model, progress)
    return sweep(target, levels, warmup_s, duration_s, progress, around)
