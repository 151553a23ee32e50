"""export_and_publish: resolve the model, export ONNX into staging, validate, publish atomically.

Steps (each a separate module): sources -> onnx_export -> validate -> publish (config.pbtxt from
model_contract.triton_config). check_options is the one place the options are checked: the CLI
and the Python API both reach it through export_and_publish, before any heavy work.
With `--quantize int8` the validated fp32 model is written to a scratch directory instead, and
quant_step turns it into the staged int8 model.onnx (calibrated, validated against fp32).
Before the commit, golden (unless --no-golden) writes the version's golden references into
staging, so the version appears with them. An existing config.pbtxt's version_policy belongs to
rollout: the rewritten config keeps it.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

from export.architectures import DEFAULT_MODEL, check_architecture
from export.errors import RepositoryError, UsageError
from export.golden import (
    DEFAULT_GOLDEN_COUNT,
    GoldenRecord,
    check_golden_options,
    collect_photos,
    record_golden,
)
from export.model_labels import IMAGENET_CLASSES
from export.onnx_export import OnnxInfo, export_onnx, inspect_onnx
from export.progress import Progress
from export.publish import VersionPublisher
from export.quant_step import (
    QuantizationOutcome,
    QuantizeOptions,
    check_quantize_options,
    quantize_and_validate,
)
from export.quantize import QUANTIZATION_TAG
from export.repository import check_model_name, check_repository_usable, check_version_free
from export.sources import ResolvedModel, WeightsChoice, resolve_model
from export.validate import ParityPolicy, ValidationReport, validate
from model_contract.files import CONFIG_FILE
from model_contract.labels import render_labels
from model_contract.preprocessing import Preprocessing
from model_contract.triton_config import (
    DEFAULT_MAX_BATCH_SIZE,
    DEFAULT_MAX_QUEUE_DELAY_US,
    TritonModelConfig,
    render_config,
    version_policy_line,
)

DEFAULT_REPOSITORY = Path("model_repository")


@dataclass(frozen=True)
class ExportOptions:
    """Everything the CLI can set; the defaults are the CLI's defaults."""

    model: str = DEFAULT_MODEL
    weights: str = "imagenet"
    labels: Path | None = None
    repository: Path = DEFAULT_REPOSITORY
    name: str | None = None
    version: int | None = None
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    max_queue_delay_us: int = DEFAULT_MAX_QUEUE_DELAY_US
    force: bool = False
    offline: bool = False
    parity: ParityPolicy = field(default_factory=ParityPolicy)
    quantize: QuantizeOptions | None = None
    golden: Path | None = None  # the user's golden photos; None: scikit-image's
    golden_count: int = DEFAULT_GOLDEN_COUNT
    golden_enabled: bool = True

    @property
    def model_name(self) -> str:
        """The Triton model name: --name, else the architecture's name (+ '_int8' if quantized)."""
        if self.name:
            return self.name
        return f"{self.model}_int8" if self.quantize is not None else self.model


@dataclass(frozen=True)
class ExportResult:
    """What was published, with the figures the summary prints."""

    name: str
    version: int
    repository: Path
    version_dir: Path
    model_path: Path
    size_bytes: int
    onnx: OnnxInfo
    validation: ValidationReport
    config_path: Path
    config_changed: bool
    labels_changed: bool
    trained: bool
    source: str
    preprocessing: Preprocessing
    num_classes: int
    quantization: QuantizationOutcome | None = None
    golden: GoldenRecord | None = None

    @property
    def golden_images(self) -> int:
        """How many golden photos the version carries (0 with --no-golden)."""
        return self.golden.images if self.golden is not None else 0


def check_options(options: ExportOptions) -> None:
    """Every check of the options, before any heavy work (UsageError and its kinds: exit 2)."""
    check_architecture(options.model)
    check_model_name(options.model_name)
    if options.max_batch_size < 1:
        raise UsageError(f"--max-batch-size must be at least 1, got {options.max_batch_size}")
    if options.max_queue_delay_us < 0:
        raise UsageError(
            f"--max-queue-delay-us must be 0 or more, got {options.max_queue_delay_us}"
        )
    if options.version is not None and options.version < 1:
        raise UsageError(f"--version must be at least 1, got {options.version}")
    check_repository_usable(options.repository)
    if options.quantize is not None:
        check_quantize_options(options.quantize)
    check_golden_options(options.golden, options.golden_count, options.golden_enabled)
    check_version_free(options.repository / options.model_name, options.version, options.force)


def export_and_publish(options: ExportOptions, progress: Progress | None = None) -> ExportResult:
    """Run the whole export; on any failure (or Ctrl-C) the repository is left exactly as it was."""
    progress = progress or Progress(enabled=False)
    check_options(options)
    weights = WeightsChoice.parse(options.weights)
    resolved = resolve_model(options.model, weights, options.labels, options.offline, progress)
    progress.info(
        f"Model {resolved.architecture}: source {resolved.source}, {resolved.num_classes} classes, "
        f"input {list(resolved.input_shape)}"
        f"{'' if resolved.trained else ', UNTRAINED (random weights)'}"
    )
    with VersionPublisher(
        options.repository, options.model_name, options.version, options.force, progress
    ) as publisher:
        if options.quantize is None:
            onnx_info, report = _export_and_validate(
                options, resolved, publisher.onnx_path, progress
            )
            quantization = None
        else:
            # The fp32 model never enters staging: only the int8 model is published.
            with tempfile.TemporaryDirectory(prefix="export-fp32-") as scratch:
                fp32_path = Path(scratch) / publisher.onnx_path.name
                _, report = _export_and_validate(options, resolved, fp32_path, progress)
                quantization = quantize_and_validate(
                    fp32_path,
                    publisher.onnx_path,
                    resolved.preprocessing,
                    _quantize_options_for(options.quantize, options, resolved),
                    progress,
                )
            onnx_info = inspect_onnx(publisher.onnx_path)
        golden = (
            _record_golden(options, resolved, publisher.staging_dir, publisher.onnx_path, progress)
            if options.golden_enabled
            else None
        )
        config = _triton_config(options, resolved, onnx_info)
        metadata = _export_metadata(resolved, onnx_info, report, quantization)
        if golden is not None:
            metadata["golden"] = golden.as_dict()
        published = publisher.commit(
            labels_text=render_labels(resolved.labels),
            config_text=render_config(config)
            + kept_version_policy(publisher.model_dir / CONFIG_FILE, progress),
            metadata=metadata,
        )
    model_path = published.version_dir / onnx_info.path.name
    return ExportResult(
        name=options.model_name,
        version=published.version,
        repository=options.repository,
        version_dir=published.version_dir,
        model_path=model_path,
        size_bytes=model_path.stat().st_size,
        onnx=onnx_info,
        validation=report,
        config_path=published.model_dir / CONFIG_FILE,
        config_changed=published.config_changed,
        labels_changed=published.labels_changed,
        trained=resolved.trained,
        source=resolved.source,
        preprocessing=resolved.preprocessing,
        num_classes=resolved.num_classes,
        quantization=quantization,
        golden=golden,
    )


def _record_golden(
    options: ExportOptions,
    resolved: ResolvedModel,
    staging_dir: Path,
    onnx_path: Path,
    progress: Progress,
) -> GoldenRecord:
    """Write the version's golden references into staging (before the commit publishes it)."""
    origin, photos = collect_photos(options.golden, options.golden_count)
    with progress.step(f"Recording golden references ({len(photos)} photos)"):
        return record_golden(
            staging_dir,
            resolved.module,
            resolved.labels,
            resolved.preprocessing,
            onnx_path,
            photos,
            origin=origin,
            imagenet_labels=_imagenet_labels(options, resolved),
            quantized=options.quantize is not None,
            progress=progress,
        )


def kept_version_policy(config_path: Path, progress: Progress | None = None) -> str:
    """The `version_policy` line of the existing config.pbtxt, to append to the new one; or "".

    Which versions Triton serves is rollout's decision, recorded in config.pbtxt: a new export
    rewrites the rest of the config but must not start serving versions rollout holds back.
    """
    try:
        text = config_path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return ""
    except OSError as error:
        raise RepositoryError(f"cannot read the existing {config_path}: {error}") from None
    try:
        return version_policy_line(text)
    except Exception as error:  # protobuf's ParseError: only the contract may name its module
        # Triton cannot load such a config either: it is replaced, as before, with a warning.
        if progress is not None:
            progress.info(
                f"Existing {config_path} does not parse ({error}): rewritten without keeping "
                "any version_policy it had"
            )
        return ""


def _export_and_validate(
    options: ExportOptions, resolved: ResolvedModel, destination: Path, progress: Progress
) -> tuple[OnnxInfo, ValidationReport]:
    """Export the fp32 model to `destination` and validate it against PyTorch."""
    with progress.step(f"Exporting {resolved.architecture} to ONNX (opset 17)"):
        onnx_info = export_onnx(resolved.module, destination, resolved.input_shape)
    with progress.step("Validating: onnx.checker (full_check) and ONNX Runtime vs PyTorch"):
        report = validate(resolved.module, destination, resolved.input_shape, options.parity)
    for line in report.lines():
        progress.info(f"  {line}")
    return onnx_info, report


def _quantize_options_for(
    quantize: QuantizeOptions, options: ExportOptions, resolved: ResolvedModel
) -> QuantizeOptions:
    """Labelled accuracy only makes sense for ImageNet's 1000 classes in ImageNet's order."""
    return replace(quantize, use_labels=quantize.use_labels and _imagenet_labels(options, resolved))


def _imagenet_labels(options: ExportOptions, resolved: ResolvedModel) -> bool:
    """True when the classes are ImageNet's 1000 in standard order (no --labels renamed them)."""
    return options.labels is None and resolved.num_classes == IMAGENET_CLASSES


def _triton_config(
    options: ExportOptions, resolved: ResolvedModel, onnx_info: OnnxInfo
) -> TritonModelConfig:
    """The config.pbtxt facts for this export."""
    return TritonModelConfig(
        name=options.model_name,
        input_name=onnx_info.input_name,
        output_name=onnx_info.output_name,
        input_dims=resolved.input_shape,
        num_classes=resolved.num_classes,
        preprocessing=resolved.preprocessing,
        trained=resolved.trained,
        source=resolved.source,
        max_batch_size=options.max_batch_size,
        max_queue_delay_microseconds=options.max_queue_delay_us,
        extra_parameters={"quantization": QUANTIZATION_TAG} if options.quantize else {},
    )


def _export_metadata(
    resolved: ResolvedModel,
    onnx_info: OnnxInfo,
    report: ValidationReport,
    quantization: QuantizationOutcome | None = None,
) -> dict[str, object]:
    """Provenance recorded as <version>/export.json (name and version are added at commit)."""
    metadata: dict[str, object] = {
        "source": resolved.source,
        "architecture": resolved.architecture,
        "weights": resolved.provenance,
        "trained": resolved.trained,
        "num_classes": resolved.num_classes,
        "preprocessing": resolved.preprocessing.as_dict(),
        "onnx": {
            "file": onnx_info.path.name,
            "opset": onnx_info.opset,
            "ir_version": onnx_info.ir_version,
            "size_bytes": onnx_info.size_bytes,
            "sha256": onnx_info.sha256,
            "input": {
                "name": onnx_info.input_name,
                "shape": ["batch", *resolved.input_shape],
                "dtype": "float32",
            },
            "output": {
                "name": onnx_info.output_name,
                "shape": ["batch", resolved.num_classes],
                "dtype": "float32",
            },
        },
        "validation": report.as_dict(),
        "exported_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "tools": {
            package: _version_of(package)
            for package in ("torch", "torchvision", "onnx", "onnxruntime")
        },
    }
    if quantization is not None:
        # "onnx"/"validation" above describe the published int8 file and the fp32 parity check.
        metadata["quantization"] = quantization.as_dict()
    return metadata


def _version_of(package: str) -> str:
    """Installed version of a distribution, or 'unknown'."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
