"""Validation before publishing: the ONNX checker, then ONNX Runtime vs PyTorch on equal inputs."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime
import torch
from torch import nn

from export.errors import ValidationFailedError

DEFAULT_BATCH_SIZES = (1, 3)
DEFAULT_TOLERANCE = 1e-3


@dataclass(frozen=True)
class BatchParity:
    """How ONNX Runtime's outputs compare with PyTorch's for one batch."""

    batch_size: int
    max_abs_diff: float
    top1_identical: bool


@dataclass(frozen=True)
class ParityPolicy:
    """What 'the same model' means (a later --quantize int8 would relax it, e.g. top-1 only)."""

    batch_sizes: tuple[int, ...] = DEFAULT_BATCH_SIZES
    max_abs_diff: float = DEFAULT_TOLERANCE
    require_top1_identical: bool = True
    seed: int = 0


@dataclass(frozen=True)
class ValidationReport:
    """The checker verdict and the per-batch parity figures."""

    checker_passed: bool
    policy: ParityPolicy
    parity: tuple[BatchParity, ...] = field(default_factory=tuple)
    onnxruntime_version: str = onnxruntime.__version__

    @property
    def max_abs_diff(self) -> float:
        """Worst difference over all batches."""
        return max((entry.max_abs_diff for entry in self.parity), default=float("nan"))

    @property
    def passed(self) -> bool:
        """True when the checker passed and every batch is within the policy."""
        return (
            self.checker_passed
            and bool(self.parity)
            and all(self._batch_ok(entry) for entry in self.parity)
        )

    def _batch_ok(self, entry: BatchParity) -> bool:
        """One batch within tolerance (and top-1 identical when required)."""
        within = entry.max_abs_diff <= self.policy.max_abs_diff
        return within and (entry.top1_identical or not self.policy.require_top1_identical)

    def lines(self) -> list[str]:
        """The short printed report."""
        rows = [checker_line(self.checker_passed)]
        for entry in self.parity:
            verdict = "ok" if self._batch_ok(entry) else "FAILED"
            rows.append(
                f"parity batch {entry.batch_size}: max |onnxruntime - torch| = "
                f"{entry.max_abs_diff:.3g} "
                f"(limit {self.policy.max_abs_diff:g}), top-1 "
                f"{'identical' if entry.top1_identical else 'DIFFERS'}"
                f" -> {verdict}"
            )
        return rows

    def as_dict(self) -> dict[str, Any]:
        """A JSON-friendly view (used in export.json)."""
        return {
            "checker": checker_status(self.checker_passed),
            "tolerance_max_abs_diff": self.policy.max_abs_diff,
            "onnxruntime_version": self.onnxruntime_version,
            "batches": [
                {
                    "batch_size": e.batch_size,
                    "max_abs_diff": e.max_abs_diff,
                    "top1_identical": e.top1_identical,
                }
                for e in self.parity
            ],
            "max_abs_diff": self.max_abs_diff,
            "passed": self.passed,
        }


def checker_line(passed: bool, subject: str = "") -> str:
    """The printed onnx.checker verdict; `subject` (' on the int8 model') says which model."""
    return f"onnx.checker.check_model(full_check=True){subject}: {'passed' if passed else 'FAILED'}"


def checker_status(passed: bool) -> str:
    """The onnx.checker verdict as export.json records it."""
    return "passed" if passed else "failed"


def run_checker(onnx_path: Path) -> str | None:
    """onnx.checker with full_check (includes shape inference); returns the error text or None."""
    try:
        onnx.checker.check_model(str(onnx_path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        return str(exc)
    return None


def compare_with_pytorch(
    module: nn.Module, onnx_path: Path, input_shape: tuple[int, int, int], policy: ParityPolicy
) -> tuple[BatchParity, ...]:
    """Feed identical seeded random batches to PyTorch and ONNX Runtime (CPU); compare outputs."""
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    generator = torch.Generator().manual_seed(policy.seed)
    module.eval()
    results = []
    for batch_size in policy.batch_sizes:
        batch = torch.randn(batch_size, *input_shape, generator=generator)
        with torch.no_grad():
            expected = module(batch).numpy()
        actual = np.asarray(session.run(None, {input_name: batch.numpy()})[0])
        if actual.shape != expected.shape:
            raise ValidationFailedError(
                f"ONNX Runtime returned shape {actual.shape} for batch {batch_size}, PyTorch "
                f"{expected.shape}"
            )
        results.append(
            BatchParity(
                batch_size=batch_size,
                max_abs_diff=float(np.max(np.abs(actual - expected))),
                top1_identical=bool(np.array_equal(actual.argmax(axis=1), expected.argmax(axis=1))),
            )
        )
    return tuple(results)


def validate(
    module: nn.Module,
    onnx_path: Path,
    input_shape: tuple[int, int, int],
    policy: ParityPolicy | None = None,
) -> ValidationReport:
    """Checker + parity; raises ValidationFailedError (carrying the report) when anything fails."""
    policy = policy or ParityPolicy()
    checker_error = run_checker(onnx_path)
    if checker_error is not None:
        report = ValidationReport(checker_passed=False, policy=policy)
        raise ValidationFailedError(f"onnx.checker rejected the model: {checker_error}", report)
    report = ValidationReport(
        checker_passed=True,
        policy=policy,
        parity=compare_with_pytorch(module, onnx_path, input_shape, policy),
    )
    if not report.passed:
        raise ValidationFailedError(
            "ONNX Runtime does not reproduce PyTorch's outputs:\n  " + "\n  ".join(report.lines()),
            report,
        )
    return report
