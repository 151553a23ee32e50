"""torchvision's classifiers as Architectures: preprocessing read from their weights' transforms."""

from __future__ import annotations

import warnings
from functools import partial
from typing import Any

import torchvision
from torch import nn

from export.architectures import Architecture
from export.weights import default_weights, load_pretrained
from model_contract.preprocessing import Preprocessing

FAMILY = "torchvision"

# torchvision's classic ImageNet recipe, for architectures whose weights carry no transforms.
IMAGENET_DEFAULT = Preprocessing(
    resize_size=256,
    crop_size=224,
    mean=(0.485, 0.456, 0.406),
    std=(0.229, 0.224, 0.225),
    interpolation="bilinear",
)


def torchvision_architecture(name: str) -> Architecture:
    """torchvision's `name`; preprocessing and classes come from its default weights, if any."""
    weights = default_weights(name)
    if weights is None:
        return Architecture(name, FAMILY, IMAGENET_DEFAULT, None, partial(_untrained, name), None)
    return Architecture(
        name=name,
        family=FAMILY,
        preprocessing=from_torchvision_transforms(weights.transforms()),
        default_labels=list(weights.meta["categories"]),
        build=partial(_untrained, name),
        load_pretrained=partial(load_pretrained, name, weights),
    )


def _untrained(name: str, num_classes: int) -> nn.Module:
    """A randomly initialized `name` with `num_classes` outputs."""
    with warnings.catch_warnings():
        # e.g. inception_v3 warns that its default init will change; irrelevant for an export.
        warnings.simplefilter("ignore", FutureWarning)
        module: nn.Module = torchvision.models.get_model(
            name, weights=None, num_classes=num_classes
        )
    return module


def from_torchvision_transforms(transforms: Any) -> Preprocessing:
    """Read torchvision's ImageClassification preset (weights.transforms()) into a Preprocessing."""
    interpolation = getattr(transforms.interpolation, "value", str(transforms.interpolation))
    return Preprocessing(
        resize_size=_single_size(transforms.resize_size, "resize_size"),
        crop_size=_single_size(transforms.crop_size, "crop_size"),
        mean=(float(transforms.mean[0]), float(transforms.mean[1]), float(transforms.mean[2])),
        std=(float(transforms.std[0]), float(transforms.std[1]), float(transforms.std[2])),
        interpolation=str(interpolation),
    )


def _single_size(value: Any, what: str) -> int:
    """torchvision stores sizes as [n]; accept int or one-element sequence."""
    if isinstance(value, int):
        return value
    if isinstance(value, (list, tuple)) and len(value) == 1 and isinstance(value[0], int):
        return int(value[0])
    raise ValueError(
        f"unsupported {what} {value!r}: only square crops / shorter-side resizes are supported"
    )
