"""Preprocessing equal to torchvision's ``Resize`` + ``CenterCrop`` + ``ToTensor`` + ``Normalize``.

Implemented with PIL and numpy only (the gateway never imports torch). The parameters
come from the model's Triton config (``preprocess_*`` parameters, see
docs/model-contract.md), so a model and its preprocessing cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import numpy.typing as npt
from PIL import Image

from gateway.errors import ModelMisconfigured

INTERPOLATIONS: dict[str, Image.Resampling] = {
    "nearest": Image.Resampling.NEAREST,
    "nearest-exact": Image.Resampling.NEAREST,  # torchvision maps both to PIL's NEAREST
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
    "lanczos": Image.Resampling.LANCZOS,
}
PARAMETER_PREFIX = "preprocess_"


@dataclass(frozen=True)
class PreprocessSpec:
    """Resize (shorter side), centre crop and per-channel normalisation of an RGB image."""

    resize_size: int
    crop_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"

    @classmethod
    def from_parameters(cls, parameters: Mapping[str, str], model: str) -> PreprocessSpec:
        """Parse the ``preprocess_*`` parameters of a model config, or raise ModelMisconfigured."""

        def required(key: str) -> str:
            value = parameters.get(PARAMETER_PREFIX + key)
            if value is None or not value.strip():
                raise ModelMisconfigured(
                    f"Model {model!r} has no {PARAMETER_PREFIX}{key} parameter in its config."
                )
            return value.strip()

        try:
            resize_size = int(required("resize_size"))
            crop_size = int(required("crop_size"))
            mean = _three_floats(required("mean"))
            std = _three_floats(required("std"))
        except ValueError:
            raise ModelMisconfigured(
                f"Model {model!r} has malformed preprocessing parameters."
            ) from None
        interpolation = required("interpolation").lower()
        if resize_size < 1 or crop_size < 1 or min(std) <= 0 or interpolation not in INTERPOLATIONS:
            raise ModelMisconfigured(f"Model {model!r} has invalid preprocessing parameters.")
        return cls(resize_size, crop_size, mean, std, interpolation)

    @cached_property
    def lookup(self) -> npt.NDArray[np.float32]:
        """A (3, 256) float32 table: normalised value of each 8-bit level, per channel.

        It is computed with the same float32 operations as ToTensor (``/255``) and
        Normalize (``-mean``, ``/std``), so a lookup gives bit-identical values for
        a fraction of the arithmetic.
        """
        levels = np.arange(256, dtype=np.float32) / np.float32(255)
        mean = np.asarray(self.mean, dtype=np.float32)[:, None]
        std = np.asarray(self.std, dtype=np.float32)[:, None]
        return np.ascontiguousarray((levels[None, :] - mean) / std)


def _three_floats(text: str) -> tuple[float, float, float]:
    values = [float(part) for part in text.split(",")]
    if len(values) != 3 or not all(np.isfinite(values)):
        raise ValueError(text)
    return values[0], values[1], values[2]


def resized_size(width: int, height: int, size: int) -> tuple[int, int]:
    """Output (width, height) of torchvision ``Resize(size)``: shorter side to ``size``."""
    if width <= height:
        return size, int(size * height / width)
    return int(size * width / height), size


def crop_box(width: int, height: int, crop: int) -> tuple[int, int, int, int]:
    """PIL crop box of torchvision ``CenterCrop(crop)``, including its zero padding of small images.

    torchvision pads first (left/top get the floor of half the shortfall) and then
    crops at ``round((size - crop) / 2)``; PIL's ``crop`` fills outside the image with
    zeros, so shifting the box by the padding reproduces both steps at once.
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

    Resizing only this region of the source to the crop size gives PIL the same scale and
    the same filter support as resizing the whole image and then cropping.
    """
    (source_width, source_height), (width, height) = image_size, resized
    left, top, right, bottom = crop
    if left < 0 or top < 0 or right > width or bottom > height:
        return None
    scale_x, scale_y = source_width / width, source_height / height
    return left * scale_x, top * scale_y, right * scale_x, bottom * scale_y


def preprocess(
    image: Image.Image, spec: PreprocessSpec, *, resize_crop_only: bool = False
) -> npt.NDArray[np.float32]:
    """Return the (3, crop, crop) float32 CHW tensor torchvision would produce for an RGB image.

    ``resize_crop_only`` resizes just the source region under the centre crop. The filter
    weights then differ from a full resize only by float rounding (a few pixel values off by
    one level), and on a 1080p photo it halves the resize cost; the default stays bit-exact.
    """
    if image.mode != "RGB":
        raise ValueError(f"preprocess expects an RGB image, got mode {image.mode}")
    width, height = resized_size(image.width, image.height, spec.resize_size)
    box = crop_box(width, height, spec.crop_size)
    if (width, height) == image.size:
        pixels = np.asarray(image.crop(box))
    else:
        resample = INTERPOLATIONS[spec.interpolation]
        # Only for downscaling with a filter that averages: NEAREST picks one source pixel,
        # and upscaling interpolates between two, so there a rounding difference in the
        # region's coordinates can move a value by more than one level. Large photos are
        # what this is for, and they are always downscaled.
        shrinks = image.width > width and image.height > height
        averaging = resample != Image.Resampling.NEAREST
        region = (
            source_crop_box(image.size, (width, height), box)
            if resize_crop_only and shrinks and averaging
            else None
        )
        if region is not None:
            pixels = np.asarray(
                image.resize((spec.crop_size, spec.crop_size), resample, box=region)
            )
        else:
            pixels = np.asarray(image.resize((width, height), resample).crop(box))
    lookup = spec.lookup
    tensor = np.empty((3, spec.crop_size, spec.crop_size), dtype=np.float32)
    for channel in range(3):
        np.take(lookup[channel], pixels[:, :, channel], out=tensor[channel])
    return tensor
