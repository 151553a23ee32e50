"""Test helpers for the export tests: contract preprocessing with PIL, config parsing, snapshots.

Written from docs/model-contract.md independently of export/, so the tests check export's output
against the contract rather than against export's own code.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from google.protobuf import text_format
from PIL import Image
from tritonclient.grpc import model_config_pb2

PIL_RESAMPLING = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
}


def parse_config(path: Path) -> Any:
    """config.pbtxt parsed with Triton's protobuf schema (fails on anything Triton would reject)."""
    return text_format.Parse(path.read_text(encoding="utf-8"), model_config_pb2.ModelConfig())


def config_parameters(config: Any) -> dict[str, str]:
    """The string parameters of a parsed config."""
    return {key: value.string_value for key, value in config.parameters.items()}


def preprocess(image: Image.Image, parameters: dict[str, str]) -> npt.NDArray[np.float32]:
    """The contract's preprocessing in PIL + numpy: resize, center crop, scale, normalize."""
    resize = int(parameters["preprocess_resize_size"])
    crop = int(parameters["preprocess_crop_size"])
    mean = np.array([float(v) for v in parameters["preprocess_mean"].split(",")], dtype=np.float32)
    std = np.array([float(v) for v in parameters["preprocess_std"].split(",")], dtype=np.float32)
    resample = PIL_RESAMPLING[parameters["preprocess_interpolation"]]
    image = image.convert("RGB")
    width, height = image.size
    if width <= height:
        size = (resize, int(resize * height / width))
    else:
        size = (int(resize * width / height), resize)
    image = image.resize(size, resample=resample)
    left = round((size[0] - crop) / 2.0)
    top = round((size[1] - crop) / 2.0)
    image = image.crop((left, top, left + crop, top + crop))
    pixels = np.asarray(image, dtype=np.float32) / 255.0
    return ((pixels - mean) / std).transpose(2, 0, 1).astype(np.float32)


def snapshot(root: Path) -> dict[str, tuple[int, int, int]]:
    """Every entry under root, dot entries included: relative path -> (inode, size, mtime_ns).

    Directories record only their inode: their mtime moves whenever an entry comes and goes
    (a staging dir created and removed again), which is not a change of the repository's content.
    """
    entries: dict[str, tuple[int, int, int]] = {}
    for directory, subdirs, files in os.walk(root):
        for name in subdirs:
            path = Path(directory) / name
            entries[str(path.relative_to(root))] = (path.lstat().st_ino, 0, 0)
        for name in files:
            path = Path(directory) / name
            info = path.lstat()
            entries[str(path.relative_to(root))] = (info.st_ino, info.st_size, info.st_mtime_ns)
    return entries


def version_dirs(model_dir: Path) -> list[str]:
    """The entry names Triton treats as versions (numeric directories), sorted numerically."""
    return sorted(
        (entry.name for entry in model_dir.iterdir() if entry.is_dir() and entry.name.isdigit()),
        key=int,
    )


def hidden_entries(model_dir: Path) -> list[str]:
    """Dot-prefixed entries (staging dirs, temp files) in a model directory."""
    return sorted(entry.name for entry in model_dir.iterdir() if entry.name.startswith("."))
