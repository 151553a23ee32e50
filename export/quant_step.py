"""The --quantize int8 step of an export: calibrate, quantize, validate, measure, report.

Takes the validated fp32 model (outside the staging directory) and writes the int8 model where
the publisher expects model.onnx; the publish itself stays the pipeline's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from export.calibration import SampleImage, resolve_image_set, split_image_set
from export.calibration_defaults import DEFAULT_CALIBRATION_COUNT, DEFAULT_VALIDATION_COUNT
from export.errors import UsageError
from export.images import stack
from export.preprocessing import Preprocessing
from export.progress import Progress
from export.quant_validate import QuantPolicy, QuantValidationReport, validate_quantized
from export.quantize import (
    QUANTIZATION_TAG,
    QdqSummary,
    QuantizeSettings,
    quantize_int8,
    summarize_qdq,
)
from export.throughput import Throughput, measure_interleaved

SPEED_BATCH = 8
SPEED_SECONDS_PER_MODEL = 1.5


@dataclass(frozen=True)
class QuantizeOptions:
    """The --quantize int8 flags."""

    calibration_images: Path | None = None
    use_skimage_photos: bool = False
    calibration_count: int = DEFAULT_CALIBRATION_COUNT
    validation_count: int = DEFAULT_VALIDATION_COUNT
    policy: QuantPolicy = field(default_factory=QuantPolicy)
    settings: QuantizeSettings = field(default_factory=QuantizeSettings)
    use_labels: bool = True


@dataclass(frozen=True)
class QuantizationOutcome:
    """Everything the summary and export.json say about the int8 model."""

    origin: str
    split: str
    settings: QuantizeSettings
    kept_float: tuple[str, ...]
    qdq: QdqSummary
    report: QuantValidationReport
    fp32_size: int
    int8_size: int
    speed: dict[str, Throughput]

    def lines(self) -> list[str]:
        """The printed quantization report."""
        fp32_speed, int8_speed = self.speed["fp32"], self.speed["int8"]
        return [
            f"calibration: {self.split}, from {self.origin}",
            f"settings: {self.settings.method} calibration, {self.settings.activation_type} "
            f"activations, per-channel int8 weights, kept in float: "
            f"{', '.join(self.kept_float) or 'nothing'}",
            f"graph: {self.qdq.quantize_nodes} QuantizeLinear, {self.qdq.dequantize_nodes} "
            f"DequantizeLinear ({self.qdq.per_channel_weights} per-channel weights)",
            *self.report.lines(),
            f"size: fp32 {self.fp32_size / (1 << 20):.1f} MiB -> int8 "
            f"{self.int8_size / (1 << 20):.1f} MiB ({self.int8_size / self.fp32_size:.0%})",
            f"speed (ONNX Runtime CPU, batch {SPEED_BATCH}, this machine, interleaved): fp32 "
            f"{fp32_speed.images_per_s:.1f} images/s, int8 {int8_speed.images_per_s:.1f} "
            f"images/s ({int8_speed.images_per_s / fp32_speed.images_per_s:.2f}x)",
        ]

    def as_dict(self) -> dict[str, Any]:
        """A JSON-friendly view (export.json's "quantization")."""
        return {
            "scheme": QUANTIZATION_TAG,
            "settings": self.settings.as_dict(),
            "kept_float_nodes": list(self.kept_float),
            "calibration_images": self.origin,
            "split": self.split,
            "qdq": {
                "quantize_linear": self.qdq.quantize_nodes,
                "dequantize_linear": self.qdq.dequantize_nodes,
                "per_channel_weights": self.qdq.per_channel_weights,
            },
            "validation": self.report.as_dict(),
            "size_bytes": {"fp32": self.fp32_size, "int8": self.int8_size},
            "speed_images_per_s": {
                "batch_size": SPEED_BATCH,
                "fp32": self.speed["fp32"].images_per_s,
                "int8": self.speed["int8"].images_per_s,
            },
        }


def check_quantize_options(options: QuantizeOptions) -> None:
    """Cheap checks before any heavy work: the folder exists, counts and threshold make sense."""
    folder = options.calibration_images
    if folder is not None and not folder.is_dir():
        raise UsageError(f"--calibration-images {folder} is not a directory")
    if options.calibration_count < 1 or options.validation_count < 1:
        raise UsageError("--calibration-count and --validation-count must be at least 1")
    if not options.policy.min_agreement >= 0.0:  # also rejects NaN
        raise UsageError(f"--min-agreement must be >= 0, got {options.policy.min_agreement}")


def _labels(images: tuple[SampleImage, ...]) -> npt.NDArray[np.int64] | None:
    """Class indices when every photo has one, else None."""
    if not images or any(image.label is None for image in images):
        return None
    return np.array([image.label for image in images], dtype=np.int64)


def quantize_and_validate(
    fp32_path: Path,
    int8_path: Path,
    preprocessing: Preprocessing,
    options: QuantizeOptions,
    progress: Progress,
) -> QuantizationOutcome:
    """Calibrate on real photos, write int8_path, validate against fp32 (raises when it fails)."""
    import onnx

    image_set = resolve_image_set(options.calibration_images, options.use_skimage_photos)
    split = split_image_set(image_set, options.calibration_count, options.validation_count)
    progress.info(f"Calibration photos: {split.describe()}, from {image_set.origin}")
    with progress.step("Preprocessing the calibration and validation photos"):
        calibration = stack([image.preprocessed(preprocessing) for image in split.calibration])
        validation = stack([image.preprocessed(preprocessing) for image in split.validation])
    with progress.step(
        f"Quantizing to int8 (QDQ, per-channel, {options.settings.method} calibration)"
    ):
        kept_float = quantize_int8(fp32_path, int8_path, calibration, options.settings)
    labels = _labels(split.validation) if options.use_labels else None
    with progress.step("Validating: onnx.checker and int8 vs fp32 top-1 agreement"):
        report = validate_quantized(
            fp32_path, int8_path, validation, labels, options.policy, not split.overlapping
        )
    with progress.step(f"Measuring fp32 vs int8 throughput (batch {SPEED_BATCH})"):
        speed = measure_interleaved(
            {"fp32": fp32_path, "int8": int8_path},
            validation,
            SPEED_BATCH,
            SPEED_SECONDS_PER_MODEL,
        )
    return QuantizationOutcome(
        origin=image_set.origin,
        split=split.describe(),
        settings=options.settings,
        kept_float=tuple(kept_float),
        qdq=summarize_qdq(onnx.load(str(int8_path))),
        report=report,
        fp32_size=fp32_path.stat().st_size,
        int8_size=int8_path.stat().st_size,
        speed=speed,
    )
