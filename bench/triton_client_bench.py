"""Stage 2: Triton alone over gRPC, pre-made tensors, several concurrent clients.

Each client sends batch-1 requests, as the gateway does, so Triton's dynamic batcher is
what forms batches. Input and output names come from Triton's model metadata, never from
assumptions (the contract says clients must read them).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from bench.loadgen import GrpcTarget, Measurement, sweep
from bench.triton_stats import with_triton_breakdown

Tensor = npt.NDArray[np.float32]

METADATA_TIMEOUT_S = 10.0


class TritonBenchError(Exception):
    """Triton's metadata could not be read or does not describe an image classifier."""


@dataclass(frozen=True)
class TensorNames:
    """The model's first input and first output names, as Triton reports them."""

    input_name: str
    output_name: str


def tensor_names(grpc_url: str, model: str) -> TensorNames:
    """Ask Triton (gRPC model metadata) for the model's input and output names."""
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
    return TensorNames(inputs[0]["name"], outputs[0]["name"])


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
    names = tensor_names(grpc_url, model)
    target = GrpcTarget(
        url=grpc_url,
        model=model,
        input_name=names.input_name,
        output_name=names.output_name,
        tensors=tensors,
    )
    around = with_triton_breakdown(grpc_url, model, progress)
    return sweep(target, levels, warmup_s, duration_s, progress, around)
