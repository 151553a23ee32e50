"""The architectures --model can name, and what resolving one of them needs to know."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torchvision
from torch import nn

from export.errors import UnknownModelError
from export.progress import Progress
from model_contract.preprocessing import Preprocessing

EFFICIENTNET_LITE0 = "efficientnet_lite0"
DEFAULT_MODEL = "resnet50"


def torchvision_classifiers() -> list[str]:
    """Names of torchvision's classification architectures."""
    return sorted(torchvision.models.list_models(module=torchvision.models))


def available_models() -> list[str]:
    """Every name --model accepts."""
    return sorted([*torchvision_classifiers(), EFFICIENTNET_LITE0])


def check_architecture(name: str) -> None:
    """Raise UnknownModelError (suggesting close names) unless we can build `name`."""
    names = available_models()
    if name in names:
        return
    close = difflib.get_close_matches(name.lower(), names, n=4, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise UnknownModelError(
        f"unknown model {name!r}.{hint} `python -m export --list-models` lists the {len(names)} "
        "supported names."
    )


@dataclass(frozen=True)
class LoadedModule:
    """A module with its weights in place, and where those weights came from."""

    module: nn.Module
    trained: bool
    source: str  # config.pbtxt's model_source
    provenance: dict[str, Any]  # export.json's "weights"


@dataclass(frozen=True)
class Architecture:
    """One buildable architecture: its preprocessing and classes, a builder, its weights."""

    name: str
    family: str  # where the architecture comes from, the first field of model_source
    preprocessing: Preprocessing
    # The classes its pretrained head outputs, also the labels of an export without --labels.
    default_labels: list[str] | None
    build: Callable[[int], nn.Module]  # randomly initialized, with that many classes
    # (offline, progress) -> the pretrained module; None when the architecture has no weights.
    load_pretrained: Callable[[bool, Progress], LoadedModule] | None
