"""The preprocessing a model expects, and its one implementation (PIL + numpy, no torch).

The spec is torchvision's ``Resize(resize_size)`` -> ``CenterCrop(crop_size)`` -> ``ToTensor``
-> ``Normalize(mean, std)``; config.pbtxt records it as ``preprocess_*`` parameters, so a model
and its preprocessing cannot drift apart. `preprocess` reproduces torchvision bit for bit on
PIL images; export, the gateway, the benchmark and the tests all call it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image

from model_contract.errors import ContractError

FloatArray = npt.NDArray[np.float32]

#: torchvision's InterpolationMode values and the PIL filter each one uses on PIL images.
INTERPOLATIONS: Mapping[str, Image.Resampling] = {
    "nearest": Image.Resampling.NEAREST,
    "nearest-exact": Image.Resampling.NEAREST,  # torchvision maps both to PIL's NEAREST
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
    "lanczos": Image.Resampling.LANCZOS,
}
PARAMETER_PREFIX = "preprocess_"
#: The config.pbtxt parameters, in the order they are written (readers must not depend on it).
PARAMETER_KEYS = tuple(
    PARAMETER_PREFIX + field
    for field in ("resize_size", "crop_size", "mean", "std", "interpolation")
)


@dataclass(frozen=True)
class Preprocessing:
    """Resize (shorter side), centre crop and per-channel normalisation of an RGB image."""

    resize_size: int
    crop_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        """Refuse values `preprocess` could not reproduce."""
        if self.interpolation not in INTERPOLATIONS:
            raise ContractError(
                f"interpolation must be one of {sorted(INTERPOLATIONS)}, got {self.interpolation!r}"
            )
        if self.resize_size < 1 or self.crop_size < 1:
            raise ContractError(
                f"resize and crop sizes must be positive, got {self.resize_size}/{self.crop_size}"
            )
        values = (*self.mean, *self.std)
        if len(self.mean) != 3 or len(self.std) != 3 or not all(map(math.isfinite, values)):
            raise ContractError("mean and std need three finite numbers each")
        if min(self.std) <= 0:
            raise ContractError(f"std must be positive, got {list(self.std)}")

    @classmethod
    def from_parameters(cls, parameters: Mapping[str, str]) -> Preprocessing:
        """Read a config's ``preprocess_*`` parameters; ContractError names a bad key."""
        missing = [key for key in PARAMETER_KEYS if not parameters.get(key, "").strip()]
        if missing:
            raise ContractError(f"config has no {', '.join(missing)} parameter(s)")
        values = {key[len(PARAMETER_PREFIX) :]: parameters[key].strip() for key in PARAMETER_KEYS}
        try:
            return cls(
                resize_size=int(values["resize_size"]),
                crop_size=int(values["crop_size"]),
                mean=_three_floats(values["mean"]),
                std=_three_floats(values["std"]),
                interpolation=values["interpolation"].lower(),
            )
        except ValueError as error:  # int()/float() errors and ContractError alike
            raise ContractError(f"malformed preprocess_* parameters: {error}") from None

    def parameters(self) -> dict[str, str]:
        """The ``preprocess_*`` config parameters, in the contract's order."""
        return {
            "preprocess_resize_size": str(self.resize_size),
            "preprocess_crop_size": str(self.crop_size),
            "preprocess_mean": _floats(self.mean),
            "preprocess_std": _floats(self.std),
            "preprocess_interpolation": self.interpolation,
        }

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Preprocessing:
        """Read `as_dict`'s JSON view back (export.json); ContractError when unusable."""
        try:
            mean, std = values["mean"], values["std"]
            return cls(
                resize_size=int(values["resize_size"]),
                crop_size=int(values["crop_size"]),
                mean=(float(mean[0]), float(mean[1]), float(mean[2])),
                std=(float(std[0]), float(std[1]), float(std[2])),
                interpolation=str(values.get("interpolation", "bilinear")).lower(),
            )
        except (KeyError, IndexError, TypeError, ValueError) as error:
            if isinstance(error, ContractError):
                raise
            raise ContractError(f"malformed preprocessing record: {error!r}") from None

    def as_dict(self) -> dict[str, Any]:
        """A JSON-friendly view (export.json)."""
        return {
            "resize_size": self.resize_size,
            "crop_size": self.crop_size,
            "mean": list(self.mean),
            "std": list(self.std),
            "interpolation": self.interpolation,
        }

    @cached_property
    def lookup(self) -> FloatArray:
        """A (3, 256) float32 table: the normalised value of each 8-bit level, per channel.

        It is computed with the same float32 operations as ToTensor (``/255``) and Normalize
        (``-mean``, ``/std``), so a lookup gives bit-identical values for a fraction of the work.
        """
        levels = np.arange(256, dtype=np.float32) / np.float32(255)
        mean = np.asarray(self.mean, dtype=np.float32)[:, None]
        std = np.asarray(self.std, dtype=np.float32)[:, None]
        return np.ascontiguousarray((levels[None, :] - mean) / std)


def _three_floats(text: str) -> tuple[float, float, float]:
    """Three comma-separated numbers."""
    values = [float(part) for part in text.split(",")]
    if len(values) != 3:
        raise ValueError(f"need three comma-separated numbers, got {text!r}")
    return values[0], values[1], values[2]


def _floats(values: tuple[float, ...]) -> str:
    """'0.485,0.456,0.406': the shortest text that round-trips each float."""
    return ",".join(repr(float(value)) for value in values)


def resized_size(width: int, height: int, size: int) -> tuple[int, int]:
    """Output (width, height) of torchvision ``Resize(size)``: shorter side to ``size``."""
    if width <= height:
        return size, int(size * height / width)
    return int(size * width / height), size


def crop_box(width: int, height: int, crop: int) -> tuple[int, int, int, int]:
    """PIL crop box of torchvision ``CenterCrop(crop)``, including its zero padding of small images.

    torchvision pads first (left/top get the floor of half the shortfall) and then crops at
    ``round((size - crop) / 2)``; PIL's ``crop`` fills outside the image with zeros, so shifting
    the box by the padding reproduces both steps at once.
    """
    pad_left = (crop - width) // 2 if crop > width else 0
    pad_top = (crop - height) // 2 if crop > height else 0
    padded_width = max(width, crop)
    padded_height = max(height, crop)
    left = round((padded_width - crop) / 2.0) - pad_left
    top = round((padded_height - crop) / 2.0) - pad_top
    return left, top, left + crop, top + crop


def source_crop_box(
    image_size: tuple[int, int], resized: tuple[int, int], crop: tuple[int, int, int, int]
) -> tuple[float, float, float, float] | None:
    """The crop box of the resized image in source coordinates; None when it needs padding.

    Resizing only this region of the source to the crop size gives PIL the same scale and the
    same filter support as resizing the whole image and then cropping.
    """
    (source_width, source_height), (width, height) = image_size, resized
    left, top, right, bottom = crop
    if left < 0 or top < 0 or right > width or bottom > height:
        return None
    scale_x, scale_y = source_width / width, source_height / height
    return left * scale_x, top * scale_y, right * scale_x, bottom * scale_y


def preprocess(
    image: Image.Image, spec: Preprocessing, *, resize_crop_only: bool = False
) -> FloatArray:
    """Return the (3, crop, crop) float32 CHW tensor torchvision would produce for `image`.

    Exact by default. ``resize_crop_only`` (the gateway's draft mode) resizes just the source
    region under the centre crop: the filter weights then differ from a full resize only by
    float rounding (a few pixel values off by one level), and on a 1080p photo it halves the
    resize cost.
    """
    if image.mode != "RGB":
        image = image.convert("RGB")
    width, height = resized_size(image.width, image.height, spec.resize_size)
    box = crop_box(width, height, spec.crop_size)
    if (width, height) == image.size:
        pixels = np.asarray(image.crop(box))
    else:
        resample = INTERPOLATIONS[spec.interpolation]
        # Only for downscaling with a filter that averages: NEAREST picks one source pixel, and
        # upscaling interpolates between two, so there a rounding difference in the region's
        # coordinates can move a value by more than one level. Large photos are what this is
        # for, and they are always downscaled.
        shrinks = image.width > width and image.height > height
        averaging = resample != Image.Resampling.NEAREST
        region = (
            source_crop_box(image.size, (width, height), box)
            if resize_crop_only and shrinks and averaging
            else None
        )
        if region is not None:
            size = (spec.crop_size, spec.crop_size)
            pixels = np.asarray(image.resize(size, resample, box=region))
        else:
            pixels = np.asarray(image.resize((width, height), resample).crop(box))
    lookup = spec.lookup
    tensor = np.empty((3, spec.crop_size, spec.crop_size), dtype=np.float32)
    for channel in range(3):
        np.take(lookup[channel], pixels[:, :, channel], out=tensor[channel])
    return tensor
