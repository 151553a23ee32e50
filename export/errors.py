"""Domain errors of the export pipeline: each carries the message a user sees and an exit code."""

from __future__ import annotations

from typing import Any

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class ExportError(Exception):
    """An expected export failure: the CLI prints its message (no traceback), exits non-zero."""

    exit_code: int = EXIT_FAILURE


class UsageError(ExportError):
    """Bad input from the caller (flags, files, names): exit code 2."""

    exit_code = EXIT_USAGE


class UnknownModelError(UsageError):
    """The requested architecture name is not one we can build."""


class CheckpointError(UsageError):
    """A local checkpoint cannot be read or does not fit the architecture."""


class LabelsError(UsageError):
    """The labels file is unreadable or its class count does not match the model's outputs."""


class RepositoryError(UsageError):
    """The model repository path is unusable (not a directory, not writable)."""


class VersionExistsError(UsageError):
    """The requested version is already published and --force was not given."""


class WeightsUnavailableError(ExportError):
    """Pretrained weights are neither cached nor downloadable."""


class ConversionError(ExportError):
    """PyTorch -> ONNX conversion failed or produced a file Triton's ONNX Runtime cannot read."""


class ValidationFailedError(ExportError):
    """The exported ONNX model failed the checker or the parity test against PyTorch."""

    def __init__(self, message: str, report: Any = None) -> None:
        """Keep the validation report (if any) so callers can show the figures."""
        super().__init__(message)
        self.report = report
