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

from export.calibration import SampleImage, preprocess_all, resolve_image_set, split_image_set
from export.calibration_defaults import DEFAULT_CALIBRATION_COUNT, DEFAULT_VALIDATION_COUNT
from export.cpu_features import CpuFeatures, read_cpu_features
from export.errors import ConversionError, UsageError, ValidationFailedError
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
from model_contract.preprocessing import Preprocessing

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
    cpu: CpuFeatures

    @property
    def speedup(self) -> float:
        """int8 images/s over fp32 images/s, measured here."""
        return self.speed["int8"].images_per_s / self.speed["fp32"].images_per_s

    def lines(self) -> list[str]:
        """The printed quantization report."""
        fp32_speed, int8_speed = self.speed["fp32"], self.speed["int8"]
        return [
            f"calibration: {self.split}, from {self.origin}",
            f"settings: {self.settings.method} calibration, {self.settings.activation_type} "
            f"activations, per-channel int8 weights, kept in float: "
            f"{', '.join(self.kept_float) or 'nothing'}",
            f"graph: {self.qdq.quantize_nodes} QuantizeLinear, {self.qdq.dequantize_nodes} "
            f"DequantizeLinear ({self.qdq.per_channel_weights} per-channel weights, |w| <= "
            f"{self.qdq.max_abs_int8_weight}: "
            + (
                "no saturation on any x86 CPU)"
                if self.qdq.saturation_free_without_vnni
                else "saturates on CPUs without VNNI)"
            ),
            f"validated on: {self.cpu.describe()}",
            *self.report.lines(),
            f"size: fp32 {self.fp32_size / (1 << 20):.1f} MiB -> int8 "
            f"{self.int8_size / (1 << 20):.1f} MiB ({self.int8_size / self.fp32_size:.0%})",
            f"speed (ONNX Runtime CPU, batch {SPEED_BATCH}, this machine, interleaved): fp32 "
            f"{fp32_speed.images_per_s:.1f} images/s, int8 {int8_speed.images_per_s:.1f} "
            f"images/s ({self.speedup:.2f}x, minimum {self.report.policy.min_speedup:.2f}x)",
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
                "max_abs_int8_weight": self.qdq.max_abs_int8_weight,
            },
            # Where the figures below were measured: an int8 model may be served on another CPU.
            "validated_on_cpu": self.cpu.as_dict(),
            "saturation_free_without_vnni": self.qdq.saturation_free_without_vnni,
            "validation": self.report.as_dict(),
            "size_bytes": {"fp32": self.fp32_size, "int8": self.int8_size},
            "speed_images_per_s": {
                "batch_size": SPEED_BATCH,
                "fp32": self.speed["fp32"].images_per_s,
                "int8": self.speed["int8"].images_per_s,
                "speedup": self.speedup,
                "min_speedup": self.report.policy.min_speedup,
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
    if not options.policy.min_speedup >= 0.0:
        raise UsageError(f"--min-speedup must be >= 0, got {options.policy.min_speedup}")


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
        calibration = preprocess_all(split.calibration, preprocessing)
        validation = preprocess_all(split.validation, preprocessing)
    with progress.step(
        f"Quantizing to int8 (QDQ, per-channel, {options.settings.method} calibration)"
    ):
        kept_float = quantize_int8(fp32_path, int8_path, calibration, options.settings)
    qdq = summarize_qdq(onnx.load(str(int8_path)))
    if options.settings.reduce_range and not qdq.saturation_free_without_vnni:
        raise ConversionError(
            f"the quantizer wrote int8 weights up to |{qdq.max_abs_int8_weight}| although 7-bit "
            "weights were asked for: such a model saturates on CPUs without VNNI"
        )
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
    outcome = QuantizationOutcome(
        origin=image_set.origin,
        split=split.describe(),
        settings=options.settings,
        kept_float=tuple(kept_float),
        qdq=qdq,
        report=report,
        fp32_size=fp32_path.stat().st_size,
        int8_size=int8_path.stat().st_size,
        speed=speed,
        cpu=read_cpu_features(),
    )
    check_speedup(outcome)
    return outcome


def check_speedup(outcome: QuantizationOutcome) -> None:
    """Refuse an int8 model that is not at least min_speedup x fp32 fast here (it exists to be)."""
    minimum = outcome.report.policy.min_speedup
    if outcome.speedup >= minimum:
        return
    raise ValidationFailedError(
        f"the int8 model runs at {outcome.speedup:.2f}x fp32's speed on this CPU (minimum "
        f"{minimum:.2f}x), so it would serve slower and less exactly than fp32:\n  "
        + "\n  ".join(outcome.lines())
        + f"\n  CPU: {outcome.cpu.describe()}\n"
        "Publish the fp32 model instead (no --quantize), or pass --min-speedup 0 to publish the "
        "int8 model anyway (for its size, or for a serving CPU with VNNI).",
        outcome.report,
    )
