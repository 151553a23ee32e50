"""The preprocessing a model expects, as recorded in config.pbtxt (see docs/model-contract.md)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

INTERPOLATIONS = ("nearest", "bilinear", "bicubic")


@dataclass(frozen=True)
class Preprocessing:
    """torchvision Resize(resize_size) -> CenterCrop(crop_size) -> ToTensor -> Normalize."""

    resize_size: int
    crop_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str

    def __post_init__(self) -> None:
        """Reject values the gateway could not reproduce."""
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(
                f"interpolation must be one of {INTERPOLATIONS}, got {self.interpolation!r}"
            )
        if self.crop_size <= 0 or self.resize_size < self.crop_size:
            raise ValueError(
                f"need 0 < crop_size <= resize_size, got {self.crop_size}/{self.resize_size}"
            )
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError("mean and std need three values each, std positive")

    def as_dict(self) -> dict[str, Any]:
        """A JSON-friendly view (used in export.json)."""
        return {
            "resize_size": self.resize_size,
            "crop_size": self.crop_size,
            "mean": list(self.mean),
            "std": list(self.std),
            "interpolation": self.interpolation,
        }


# torchvision's classic ImageNet recipe, for architectures whose weights carry no transforms.
IMAGENET_DEFAULT = Preprocessing(
    resize_size=256,
    crop_size=224,
    mean=(0.485, 0.456, 0.406),
    std=(0.229, 0.224, 0.225),
    interpolation="bilinear",
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
