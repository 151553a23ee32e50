"""Test helpers for the export tests: config files read with the contract, and snapshots.

The contract's preprocessing itself is checked against torchvision in test_gateway_preprocess.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image

from model_contract import triton_config as contract_config
from model_contract.preprocessing import Preprocessing
from model_contract.preprocessing import preprocess as contract_preprocess


def parse_config(path: Path) -> Any:
    """A config.pbtxt file parsed with Triton's protobuf schema (fails where Triton would)."""
    return contract_config.parse_config(path.read_text(encoding="utf-8"))


def config_parameters(config: Any) -> dict[str, str]:
    """The string parameters of a parsed config."""
    return contract_config.parameters_of(config)


def preprocess(image: Image.Image, parameters: dict[str, str]) -> npt.NDArray[np.float32]:
    """The contract's preprocessing, as its config parameters describe it."""
    return contract_preprocess(image, Preprocessing.from_parameters(parameters))


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
