"""The session Triton (`triton_server`) on the exported repository: parity, batching, metrics."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from local_triton import TritonServer
from tests.fixtures.triton import grpc_client, infer_once, onnxruntime_reference
from tests.triton_batching_support import Counters, assert_merged

SESSION_MODELS = ["efficientnet_lite0", "resnet50"]


def io_of(server: TritonServer, model: str) -> tuple[str, list[int], str]:
    """(input name, per-item dims, output name), read from Triton's metadata, not assumed."""
    metadata = grpc_client(server).get_model_metadata(model, as_json=True, client_timeout=10)
    (model_input,) = metadata["inputs"]
    (model_output,) = metadata["outputs"]
    dims = [int(d) for d in model_input["shape"][1:]]
    return model_input["name"], dims, model_output["name"]


def random_input(dims: list[int], batch: int, seed: int) -> npt.NDArray[np.float32]:
    """Normalized-image-like random input of shape [batch, *dims]."""
    return np.random.default_rng(seed).normal(size=(batch, *dims)).astype(np.float32)


def ort_logits(repository: Path, model: str, input_name: str, array: Any) -> Any:
    """ONNX Runtime's own output for version 1 of `model`."""
    return onnxruntime_reference(repository / model / "1" / "model.onnx", {input_name: array})[0]


@pytest.mark.parametrize("model", SESSION_MODELS)
def test_session_models_match_onnxruntime_at_batch_one(
    triton_server: TritonServer, model_repository: Path, model: str
) -> None:
    """Each exported model answers over gRPC what ONNX Runtime answers (max abs diff 1e-4)."""
    input_name, dims, output_name = io_of(triton_server, model)
    array = random_input(dims, batch=1, seed=SESSION_MODELS.index(model))
    logits, version = infer_once(
        grpc_client(triton_server), model, array, input_name=input_name, output_name=output_name
    )
    expected = ort_logits(model_repository, model, input_name, array)
    assert version == "1"
    assert logits.shape == expected.shape == (1, 1000)
    assert float(np.max(np.abs(logits - expected))) <= 1e-4


def test_concurrent_requests_on_a_real_model_are_batched_and_counted(
    triton_server: TritonServer, model_repository: Path
) -> None:
    """Concurrent resnet50 requests: right answers, fewer executions, counted in Prometheus."""
    model, count = "resnet50", 6
    input_name, dims, output_name = io_of(triton_server, model)
    before = Counters.read(triton_server, model)
    arrays = [random_input(dims, batch=1, seed=200 + i) for i in range(count)]
    clients = [grpc_client(triton_server) for _ in range(count)]

    def call(index: int) -> npt.NDArray[Any]:
        logits, _ = infer_once(
            clients[index], model, arrays[index], input_name=input_name, output_name=output_name
        )
        return logits

    with ThreadPoolExecutor(count) as pool:
        results = list(pool.map(call, range(count)))
    merged = np.concatenate(arrays)
    expected = ort_logits(model_repository, model, input_name, merged)
    got = np.concatenate(results)
    assert float(np.max(np.abs(got - expected))) <= 1e-4

    assert_merged(triton_server, model, before, requests=count, items=count)
