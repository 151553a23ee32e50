"""Static int8 quantization (QDQ, per-channel weights) of an exported fp32 ONNX model.

ONNX Runtime's `quant_pre_process` (symbolic shape inference + graph optimization) runs first,
then `quantize_static` with activation ranges calibrated on real photos. QDQ keeps the model a
plain opset-17 ONNX graph (QuantizeLinear/DequantizeLinear pairs) that ONNX Runtime's CPU provider
fuses into int8 kernels, so Triton's onnxruntime backend serves it like any other model.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
from onnx import numpy_helper
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from export.cpu_features import saturates_without_vnni
from export.errors import ConversionError
from export.images import batches
from model_contract.preprocessing import FloatArray

QUANTIZATION_TAG = "int8-qdq-per-channel"
CalibrationName = Literal["minmax", "entropy", "percentile"]
CALIBRATION_METHODS: dict[str, CalibrationMethod] = {
    "minmax": CalibrationMethod.MinMax,
    "entropy": CalibrationMethod.Entropy,
    "percentile": CalibrationMethod.Percentile,
}
# Nodes kept in float by default, named by role (resolved to node names per model).
DEFAULT_KEEP_FLOAT = ("first-conv", "last-gemm")
CALIBRATION_BATCH = 8


@dataclass(frozen=True)
class QuantizeSettings:
    """The quantize_static choices (defaults: the ones measured best on EfficientNet-Lite0)."""

    method: CalibrationName = "minmax"
    activation_type: Literal["uint8", "int8"] = "uint8"
    activation_symmetric: bool = False
    # 7-bit weights (-64..64): the only choice that computes the same integers on every x86 CPU
    # (export/cpu_features.py says why); full range is correct on VNNI/AMX CPUs only.
    reduce_range: bool = True
    percentile: float = 99.999
    # Measured on the 1000 ImageNet samples: keeping the stem conv and the classifier in float
    # lifts top-1 agreement with fp32 from 97.6% to 98.1% for a few % of the int8 speed-up.
    keep_float: tuple[str, ...] = DEFAULT_KEEP_FLOAT
    preprocess: bool = True

    def as_dict(self) -> dict[str, Any]:
        """A JSON-friendly view (export.json, reports)."""
        return {
            "format": "QDQ",
            "weights": "int8 symmetric, per-channel, "
            + ("7-bit range (-64..64)" if self.reduce_range else "full range (-127..127)"),
            "activations": self.activation_type
            + (" symmetric" if self.activation_symmetric else " asymmetric"),
            "calibration": self.method
            + (f" ({self.percentile:g}th percentile)" if self.method == "percentile" else ""),
            "reduce_range": self.reduce_range,
            "kept_float": list(self.keep_float),
            "quant_pre_process": self.preprocess,
        }


class ArrayCalibrationReader(CalibrationDataReader):  # type: ignore[misc]
    """Feeds preprocessed photos to the calibrator in small batches."""

    def __init__(self, input_name: str, images: FloatArray, batch_size: int = CALIBRATION_BATCH):
        """`images` is [N, C, H, W] float32, already preprocessed as the model expects."""
        self._input_name = input_name
        self._images = images
        self._batch_size = batch_size
        self._iterator = self._feeds()

    def _feeds(self) -> Iterator[dict[str, FloatArray]]:
        """One {input: batch} dict per batch."""
        for batch in batches(self._images, self._batch_size):
            yield {self._input_name: batch}

    def get_next(self) -> dict[str, FloatArray] | None:
        """The next batch, or None when all were given."""
        return next(self._iterator, None)

    def rewind(self) -> None:
        """Start again from the first batch."""
        self._iterator = self._feeds()


def sensitive_nodes(model: onnx.ModelProto, roles: Sequence[str]) -> list[str]:
    """Node names for roles: 'first-conv' (Conv reading the graph input), 'last-gemm', or names."""
    graph_input = model.graph.input[0].name
    names: list[str] = []
    for role in roles:
        if role == "first-conv":
            names += [
                n.name for n in model.graph.node if n.op_type == "Conv" and graph_input in n.input
            ]
        elif role == "last-gemm":
            names += [n.name for n in model.graph.node if n.op_type in ("Gemm", "MatMul")][-1:]
        elif role == "depthwise-conv":
            names += [n.name for n in model.graph.node if _is_depthwise(n)]
        else:
            names.append(role)
    return names


def _is_depthwise(node: onnx.NodeProto) -> bool:
    """A Conv whose group attribute is more than 1."""
    if node.op_type != "Conv":
        return False
    return any(attr.name == "group" and attr.i > 1 for attr in node.attribute)


def quantize_int8(
    fp32_path: Path,
    int8_path: Path,
    calibration_images: FloatArray,
    settings: QuantizeSettings | None = None,
) -> list[str]:
    """Write the int8 QDQ model of fp32_path to int8_path; returns the node names kept in float."""
    settings = settings or QuantizeSettings()
    with tempfile.TemporaryDirectory(prefix="export-quant-") as scratch:
        source = fp32_path
        if settings.preprocess:
            source = Path(scratch) / "preprocessed.onnx"
            try:
                quant_pre_process(str(fp32_path), str(source), skip_symbolic_shape=False)
            except Exception as exc:
                raise ConversionError(
                    f"onnxruntime quant_pre_process failed: {type(exc).__name__}: {exc}"
                ) from None
        model = onnx.load(str(source))
        keep_float = sensitive_nodes(model, settings.keep_float)
        reader = ArrayCalibrationReader(model.graph.input[0].name, calibration_images)
        extra_options: dict[str, Any] = {
            "ActivationSymmetric": settings.activation_symmetric,
            "WeightSymmetric": True,
        }
        if settings.method == "percentile":
            extra_options["CalibPercentile"] = settings.percentile
        activation_type = (
            QuantType.QUInt8 if settings.activation_type == "uint8" else QuantType.QInt8
        )
        try:
            with _quiet_quantizer_logs():
                quantize_static(
                    str(source),
                    str(int8_path),
                    reader,
                    quant_format=QuantFormat.QDQ,
                    per_channel=True,
                    reduce_range=settings.reduce_range,
                    activation_type=activation_type,
                    weight_type=QuantType.QInt8,
                    nodes_to_exclude=keep_float,
                    calibrate_method=CALIBRATION_METHODS[settings.method],
                    extra_options=extra_options,
                )
        except Exception as exc:
            raise ConversionError(
                f"onnxruntime quantize_static failed: {type(exc).__name__}: {exc}"
            ) from None
        _drop_unused_domains(int8_path)
    return keep_float


def _drop_unused_domains(path: Path) -> None:
    """Remove opset imports no node uses (ORT's optimizer adds every domain it knows)."""
    model = onnx.load(str(path))
    used = {node.domain for node in model.graph.node} | {""}
    kept = [
        entry for entry in model.opset_import if entry.domain in used or entry.domain == "ai.onnx"
    ]
    if len(kept) != len(model.opset_import):
        del model.opset_import[:]
        model.opset_import.extend(kept)
        onnx.save(model, str(path))


@contextlib.contextmanager
def _quiet_quantizer_logs() -> Iterator[None]:
    """Silence the quantizer's INFO/WARNING chatter (it logs through the root logger)."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


@dataclass(frozen=True)
class QdqSummary:
    """What the quantized graph holds: QDQ node counts, per-channel weights, their int8 range."""

    quantize_nodes: int
    dequantize_nodes: int
    per_channel_weights: int
    # The largest |w| among the int8 weights: what decides saturation without VNNI.
    max_abs_int8_weight: int

    @property
    def saturation_free_without_vnni(self) -> bool:
        """True when no u8 x s8 pair can overflow VPMADDUBSW's 16-bit intermediate (AVX2)."""
        return not saturates_without_vnni(self.max_abs_int8_weight)


def summarize_qdq(model: onnx.ModelProto) -> QdqSummary:
    """Count QuantizeLinear/DequantizeLinear, per-channel (1-D scale) weights, max |int8 weight|."""
    initializers = {tensor.name: tensor for tensor in model.graph.initializer}
    quantize = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    dequantize = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
    per_channel = 0
    max_abs = 0
    for node in dequantize:
        weight, scale = initializers.get(node.input[0]), initializers.get(node.input[1])
        if weight is None:
            continue
        if scale is not None and len(scale.dims) == 1:
            per_channel += 1
        if weight.data_type == onnx.TensorProto.INT8:
            values = numpy_helper.to_array(weight).astype(np.int32)
            max_abs = max(max_abs, int(np.abs(values).max(initial=0)))
    return QdqSummary(len(quantize), len(dequantize), per_channel, max_abs)
