"""The class names an export publishes: --labels, else the architecture's ImageNet categories."""

from __future__ import annotations

from pathlib import Path

import torchvision

from export.errors import LabelsError, UsageError
from model_contract import labels as contract_labels

IMAGENET_CLASSES = 1000


def read_labels(path: Path) -> list[str]:
    """The contract's labels file reader, its errors as export's LabelsError (exit code 2)."""
    try:
        return contract_labels.read_labels(path)
    except contract_labels.LabelsError as error:
        raise LabelsError(str(error)) from None


def imagenet_categories() -> list[str]:
    """ImageNet-1k class names in standard index order (torchvision metadata, offline)."""
    return list(torchvision.models.ResNet50_Weights.IMAGENET1K_V2.meta["categories"])


def labels_for_pretrained(explicit: list[str] | None, default: list[str], what: str) -> list[str]:
    """A pretrained head has fixed classes: --labels may rename them, not change their count."""
    if explicit is None:
        return default
    if len(explicit) != len(default):
        raise LabelsError(
            f"the labels file has {len(explicit)} classes but {what} output {len(default)}; "
            "for a model fine-tuned on other classes use --weights PATH with --labels"
        )
    return explicit


def labels_or_default(
    explicit: list[str] | None, default: list[str] | None, architecture: str
) -> list[str]:
    """Labels from --labels, else the architecture's ImageNet categories."""
    if explicit is not None:
        return explicit
    if default is None:
        raise UsageError(f"{architecture} has no default class names; pass --labels FILE")
    return default


def labels_origin(labels_from_file: bool) -> str:
    """Where the labels of an export came from, as the class-count messages name it."""
    return "the labels file" if labels_from_file else "the default ImageNet labels"
