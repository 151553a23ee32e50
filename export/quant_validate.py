"""Validation of an int8 model: the checker, then ORT int8 vs ORT fp32 on real held-out photos.

Quantization changes logits by design, so the fp32 rule (max |diff| <= 1e-3) cannot apply; what
must hold is that the int8 model names the same class: top-1 agreement >= --min-agreement.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from export.calibration_defaults import DEFAULT_MIN_AGREEMENT, DEFAULT_MIN_SPEEDUP
from export.errors import ValidationFailedError
from export.images import batches
from export.throughput import cpu_session
from export.validate import checker_line, checker_status, run_checker
from model_contract.preprocessing import FloatArray

INFERENCE_BATCH = 16


@dataclass(frozen=True)
class QuantPolicy:
    """When an int8 model may be published: agreement and speed-up over fp32 at least these."""

    min_agreement: float = DEFAULT_MIN_AGREEMENT
    min_speedup: float = DEFAULT_MIN_SPEEDUP


@dataclass(frozen=True)
class Agreement:
    """How int8 logits compare with fp32 logits on the same photos (and with labels, if known)."""

    images: int
    top1_agreement: float
    max_abs_diff: float
    fp32_accuracy: float | None = None
    int8_accuracy: float | None = None

    def as_dict(self) -> dict[str, Any]:
        """A JSON-friendly view."""
        return {
            "images": self.images,
            "top1_agreement": self.top1_agreement,
            "max_abs_diff_logits": self.max_abs_diff,
            "fp32_top1_accuracy": self.fp32_accuracy,
            "int8_top1_accuracy": self.int8_accuracy,
        }


@dataclass(frozen=True)
class QuantValidationReport:
    """Checker verdict, agreement on the validation photos, and the policy that judged it."""

    checker_passed: bool
    policy: QuantPolicy
    agreement: Agreement | None
    held_out: bool

    @property
    def passed(self) -> bool:
        """Checker passed and top-1 agreement reaches the policy's minimum."""
        return (
            self.checker_passed
            and self.agreement is not None
            and self.agreement.top1_agreement >= self.policy.min_agreement
        )

    def lines(self) -> list[str]:
        """The short printed report."""
        rows = [checker_line(self.checker_passed, " on the int8 model")]
        if self.agreement is not None:
            found = self.agreement
            which = "held-out" if self.held_out else "calibration-set (too few to hold out)"
            rows.append(
                f"int8 vs fp32 (ONNX Runtime) on {found.images} {which} photos: top-1 agreement "
                f"{found.top1_agreement:.1%} (minimum {self.policy.min_agreement:.1%}), "
                f"max |logit diff| {found.max_abs_diff:.3g} -> "
                f"{'ok' if self.passed else 'FAILED'}"
            )
            if found.fp32_accuracy is not None and found.int8_accuracy is not None:
                rows.append(
                    f"top-1 accuracy vs labels: fp32 {found.fp32_accuracy:.1%}, "
                    f"int8 {found.int8_accuracy:.1%}"
                )
        return rows

    def as_dict(self) -> dict[str, Any]:
        """A JSON-friendly view (used in export.json)."""
        return {
            "checker": checker_status(self.checker_passed),
            "min_top1_agreement": self.policy.min_agreement,
            "validation_images_held_out": self.held_out,
            **(self.agreement.as_dict() if self.agreement else {}),
            "passed": self.passed,
        }


def logits(model_path: Path, images: FloatArray, threads: int | None = None) -> FloatArray:
    """ONNX Runtime CPU logits for [N, C, H, W] images, run in batches of INFERENCE_BATCH."""
    session = cpu_session(model_path, threads)
    input_name = session.get_inputs()[0].name
    chunks = [
        np.asarray(session.run(None, {input_name: batch})[0])
        for batch in batches(images, INFERENCE_BATCH)
    ]
    stacked: FloatArray = np.concatenate(chunks).astype(np.float32)
    return stacked


def compare_logits(
    fp32: FloatArray, int8: FloatArray, labels: npt.NDArray[np.int64] | None = None
) -> Agreement:
    """Top-1 agreement and max |diff| of int8 vs fp32 logits; accuracies when labels are given."""
    fp32_top1, int8_top1 = fp32.argmax(axis=1), int8.argmax(axis=1)
    return Agreement(
        images=len(fp32),
        top1_agreement=float(np.mean(fp32_top1 == int8_top1)),
        max_abs_diff=float(np.max(np.abs(fp32 - int8))),
        fp32_accuracy=None if labels is None else float(np.mean(fp32_top1 == labels)),
        int8_accuracy=None if labels is None else float(np.mean(int8_top1 == labels)),
    )


def validate_quantized(
    fp32_path: Path,
    int8_path: Path,
    images: FloatArray,
    labels: npt.NDArray[np.int64] | None,
    policy: QuantPolicy,
    held_out: bool,
) -> QuantValidationReport:
    """Checker + agreement; raises ValidationFailedError (with the report) when either fails."""
    checker_error = run_checker(int8_path)
    if checker_error is not None:
        report = QuantValidationReport(False, policy, None, held_out)
        raise ValidationFailedError(
            f"onnx.checker rejected the int8 model: {checker_error}", report
        )
    agreement = compare_logits(logits(fp32_path, images), logits(int8_path, images), labels)
    report = QuantValidationReport(True, policy, agreement, held_out)
    if not report.passed:
        raise ValidationFailedError(
            "the int8 model does not name the same classes as fp32 often enough:\n  "
            + "\n  ".join(report.lines()),
            report,
        )
    return report
