"""Where a model comes from: an architecture and a --weights choice, resolved to one module."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from export.architectures import EFFICIENTNET_LITE0, Architecture, LoadedModule, check_architecture
from export.checkpoints import load_checkpoint_into
from export.efficientnet import efficientnet_lite0
from export.errors import CheckpointError, LabelsError, UsageError
from export.model_labels import labels_for_pretrained, labels_or_default, labels_origin, read_labels
from export.progress import Progress
from export.torchvision_models import torchvision_architecture
from export.weights import pretrained_weights_location
from model_contract.preprocessing import Preprocessing

# local_stack asks export.sources where the default weights are cached (and tests patch it there).
__all__ = ["ResolvedModel", "WeightsChoice", "pretrained_weights_location", "resolve_model"]

WeightsKind = Literal["imagenet", "none", "checkpoint"]


@dataclass(frozen=True)
class WeightsChoice:
    """The --weights value: pretrained ImageNet weights, random init, or a local checkpoint file."""

    kind: WeightsKind
    path: Path | None = None

    @classmethod
    def parse(cls, value: str) -> WeightsChoice:
        """Interpret 'imagenet', 'none' or a path."""
        lowered = value.strip().lower()
        if lowered == "imagenet":
            return cls("imagenet")
        if lowered == "none":
            return cls("none")
        return cls("checkpoint", Path(value).expanduser())


@dataclass
class ResolvedModel:
    """What export needs about one model: the module (eval mode) and its published metadata."""

    architecture: str
    module: nn.Module
    labels: list[str]
    preprocessing: Preprocessing
    trained: bool
    source: str
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """The CHW shape of one input image."""
        return (3, self.preprocessing.crop_size, self.preprocessing.crop_size)

    @property
    def num_classes(self) -> int:
        """Number of output logits (= number of labels)."""
        return len(self.labels)


def resolve_model(
    architecture: str,
    weights: WeightsChoice,
    labels_path: Path | None = None,
    offline: bool = False,
    progress: Progress | None = None,
) -> ResolvedModel:
    """Build the module for `architecture` with `weights`, plus its labels and preprocessing."""
    progress = progress or Progress(enabled=False)
    check_architecture(architecture)
    explicit_labels = read_labels(labels_path) if labels_path is not None else None
    found = (
        efficientnet_lite0()
        if architecture == EFFICIENTNET_LITE0
        else torchvision_architecture(architecture)
    )
    labels, loaded = _load_weights(found, weights, explicit_labels, offline, progress)
    loaded.module.eval()
    resolved = ResolvedModel(
        architecture=found.name,
        module=loaded.module,
        labels=labels,
        preprocessing=found.preprocessing,
        trained=loaded.trained,
        source=loaded.source,
        provenance=loaded.provenance,
    )
    _check_output_matches_labels(resolved, labels_from_file=explicit_labels is not None)
    return resolved


def _load_weights(
    architecture: Architecture,
    weights: WeightsChoice,
    explicit_labels: list[str] | None,
    offline: bool,
    progress: Progress,
) -> tuple[list[str], LoadedModule]:
    """The labels and the module that the --weights choice gives: the one branch on its kind."""
    match weights.kind:
        case "imagenet":
            if architecture.load_pretrained is None:
                raise UsageError(
                    f"{architecture.family} has no pretrained weights for {architecture.name}; "
                    "use --weights PATH or none"
                )
            labels = labels_for_pretrained(
                explicit_labels, architecture.default_labels or [], "the ImageNet weights"
            )
            return labels, architecture.load_pretrained(offline, progress)
        case "none":
            labels = labels_or_default(
                explicit_labels, architecture.default_labels, architecture.name
            )
            return labels, _untrained(architecture, labels)
        case "checkpoint":
            assert weights.path is not None, "a checkpoint choice always has a path"
            labels = labels_or_default(
                explicit_labels, architecture.default_labels, architecture.name
            )
            loaded = load_checkpoint_into(
                architecture, weights.path, labels, explicit_labels is not None, progress
            )
            return labels, loaded


def _untrained(architecture: Architecture, labels: list[str]) -> LoadedModule:
    """A randomly initialized model (`--weights none`), recorded as untrained."""
    return LoadedModule(
        module=architecture.build(len(labels)),
        trained=False,
        source=f"{architecture.family}:{architecture.name}:none",
        provenance={
            "kind": "none",
            "note": "random initialization, untrained: for pipeline tests only",
        },
    )


def _check_output_matches_labels(resolved: ResolvedModel, labels_from_file: bool) -> None:
    """Run one dummy image through the module: its output must be [1, number of labels]."""
    with torch.no_grad():
        try:
            output = resolved.module(torch.zeros(1, *resolved.input_shape))
        except Exception as exc:
            raise CheckpointError(
                f"the model does not run on a {list(resolved.input_shape)} input: "
                f"{type(exc).__name__}: {exc}"
            ) from None
    if not isinstance(output, torch.Tensor) or output.dim() != 2 or output.shape[0] != 1:
        shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise CheckpointError(
            f"the model's output is {shape}, not a [batch, classes] tensor of logits"
        )
    if output.shape[1] != len(resolved.labels):
        raise LabelsError(
            f"the model outputs {output.shape[1]} classes but {labels_origin(labels_from_file)} "
            f"has {len(resolved.labels)}; pass --labels FILE with one line per output"
        )
