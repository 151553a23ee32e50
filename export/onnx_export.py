"""PyTorch -> ONNX: one self-contained file, opset 17, dynamic batch, readable by ORT 1.19."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch
from torch import nn

from export.digest import sha256_of
from export.errors import ConversionError

OPSET = 17
# ONNX Runtime 1.19 (inside Triton 2.51 / NGC 24.10) reads IR versions up to 10.
MAX_IR_VERSION = 10
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
BATCH_AXIS_NAME = "batch"


@dataclass(frozen=True)
class OnnxInfo:
    """Facts about the written ONNX file."""

    path: Path
    opset: int
    ir_version: int
    size_bytes: int
    sha256: str
    input_name: str
    output_name: str


def export_onnx(
    module: nn.Module, destination: Path, input_shape: tuple[int, int, int]
) -> OnnxInfo:
    """Write `module` to `destination` as ONNX; check the file has what Triton needs."""
    module.eval()
    # Trace with batch 2 so nothing batch-1-specific (e.g. squeezes) can be baked into the graph.
    sample = torch.randn(2, *input_shape, generator=torch.Generator().manual_seed(0))
    try:
        with warnings.catch_warnings(), torch.no_grad():
            # The TorchScript exporter still works in torch 2.14, is fast and never writes external
            # data for models < 2 GiB; its deprecation and tracer warnings are noise here.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                (sample,),
                str(destination),
                dynamo=False,
                opset_version=OPSET,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: BATCH_AXIS_NAME}, OUTPUT_NAME: {0: BATCH_AXIS_NAME}},
                do_constant_folding=True,
                export_params=True,
            )
    except Exception as exc:
        raise ConversionError(f"torch.onnx.export failed: {type(exc).__name__}: {exc}") from None
    return inspect_onnx(destination)


def inspect_onnx(path: Path) -> OnnxInfo:
    """Verify the file is self-contained, opset 17, IR <= 10, batch axis dynamic; describe it."""
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise ConversionError(f"{path} is not a readable ONNX model: {exc}") from None
    if model.ir_version > MAX_IR_VERSION:
        raise ConversionError(
            f"{path} has IR version {model.ir_version}; ONNX Runtime 1.19 (Triton 2.51) reads at "
            f"most {MAX_IR_VERSION}"
        )
    opset = next(
        (entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")), None
    )
    if opset != OPSET:
        raise ConversionError(f"{path} uses opset {opset}, expected {OPSET}")
    external = [
        tensor.name
        for tensor in model.graph.initializer
        if tensor.data_location == onnx.TensorProto.EXTERNAL
    ]
    if external:
        raise ConversionError(
            f"{path} keeps {len(external)} tensor(s) in external data; expected one file"
        )
    if len(model.graph.input) != 1 or len(model.graph.output) != 1:
        raise ConversionError(f"{path} must have exactly one input and one output")
    graph_input, graph_output = model.graph.input[0], model.graph.output[0]
    for value in (graph_input, graph_output):
        first_dim = value.type.tensor_type.shape.dim[0]
        if not first_dim.dim_param or first_dim.HasField("dim_value"):
            raise ConversionError(f"{path}: the batch axis of {value.name!r} is not dynamic")
    return OnnxInfo(
        path=path,
        opset=opset,
        ir_version=int(model.ir_version),
        size_bytes=path.stat().st_size,
        sha256=sha256_of(path),
        input_name=graph_input.name,
        output_name=graph_output.name,
    )
