"""The contract's preprocessing (docs/model-contract.md) on a PIL image, as numpy for ORT."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image, UnidentifiedImageError

from export.errors import UsageError
from export.preprocessing import Preprocessing

PIL_RESAMPLING = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
}

FloatArray = npt.NDArray[np.float32]


def resized_size(width: int, height: int, resize_size: int) -> tuple[int, int]:
    """torchvision Resize(int): shorter side to resize_size, longer int(resize * long / short)."""
    if width <= height:
        return resize_size, int(resize_size * height / width)
    return int(resize_size * width / height), resize_size


def preprocess_image(image: Image.Image, preprocessing: Preprocessing) -> FloatArray:
    """Resize, CenterCrop, ToTensor, Normalize: one CHW float32 array, as the gateway does."""
    rgb = image.convert("RGB")
    size = resized_size(rgb.width, rgb.height, preprocessing.resize_size)
    rgb = rgb.resize(size, resample=PIL_RESAMPLING[preprocessing.interpolation])
    crop = preprocessing.crop_size
    # torchvision's CenterCrop rounds the offsets the same way.
    left = round((size[0] - crop) / 2.0)
    top = round((size[1] - crop) / 2.0)
    rgb = rgb.crop((left, top, left + crop, top + crop))
    pixels = np.asarray(rgb, dtype=np.float32) / 255.0
    mean = np.asarray(preprocessing.mean, dtype=np.float32)
    std = np.asarray(preprocessing.std, dtype=np.float32)
    return np.ascontiguousarray(((pixels - mean) / std).transpose(2, 0, 1), dtype=np.float32)


def load_image(path: Path) -> Image.Image:
    """Open an image file fully (so the file is closed); UsageError when it is not an image."""
    try:
        with Image.open(path) as opened:
            opened.load()
            return opened.copy()
    except (OSError, UnidentifiedImageError) as exc:
        raise UsageError(f"cannot read image {path}: {exc}") from None


def stack(arrays: Sequence[FloatArray]) -> FloatArray:
    """A batch [N, C, H, W] from CHW arrays."""
    return np.ascontiguousarray(np.stack(arrays), dtype=np.float32)
