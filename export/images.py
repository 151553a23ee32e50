"""Images for export's checks: files read fully, and batches of contract-preprocessed arrays."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from export.errors import UsageError
from model_contract.preprocessing import FloatArray


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


def batches(array: FloatArray, batch_size: int) -> Iterator[FloatArray]:
    """Consecutive slices of at most batch_size along the batch axis."""
    for start in range(0, len(array), batch_size):
        yield array[start : start + batch_size]
