"""Golden references: a few real photos and the exporting framework's outputs for them.

Export writes them into each version as ``<version>/golden/``: the image files as they were
encoded (the bytes the serving stack will decode), and ``references.json`` with, per image, its
SHA-256, the reference logits and top-k class indices (PyTorch's, on the contract's
preprocessing) and, where known, the classes a correct answer may name. Rollout verification
(gateway/rollout/verify.py) sends the same bytes through the serving stack and compares.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model_contract.errors import ContractError

#: `<model>/<version>/golden/`: the directory of a version's golden set.
GOLDEN_DIR = "golden"
#: `<model>/<version>/golden/references.json`: the manifest.
GOLDEN_MANIFEST = "references.json"
#: A version's golden set (images and manifest) stays under this many bytes.
MAX_GOLDEN_BYTES = 2 * 1024 * 1024
GOLDEN_FORMAT = 1
#: How many reference classes are recorded per image, best first.
GOLDEN_TOP_K = 5


class GoldenError(ContractError):
    """A golden set that cannot be read, or one whose files do not match its manifest."""


@dataclass(frozen=True)
class GoldenImage:
    """One golden photo: its file, digest, the reference answer and the acceptable classes."""

    file: str  # a plain file name inside golden/
    sha256: str
    top_k: tuple[int, ...]  # reference class indices, best first
    top_labels: tuple[str, ...]  # their names in the version's labels
    logits: tuple[float, ...]  # every reference logit, class order
    expected: tuple[int, ...] | None = None  # classes a correct top-1 may name; None: unknown
    source: str = ""  # where the photo came from (a scikit-image name, a file name)

    def as_dict(self) -> dict[str, Any]:
        """The manifest entry."""
        return {
            "file": self.file,
            "sha256": self.sha256,
            "source": self.source,
            "expected": list(self.expected) if self.expected is not None else None,
            "top_k": list(self.top_k),
            "top_labels": list(self.top_labels),
            "logits": [float(f"{value:.7g}") for value in self.logits],
        }


@dataclass(frozen=True)
class GoldenSet:
    """A version's golden images with what produced their references."""

    images: tuple[GoldenImage, ...]
    reference: str  # e.g. "pytorch 2.14.1 (fp32)"
    labels_sha256: str  # the labels the references' names come from
    logit_tolerance: float  # the largest |served - reference| logit this version should show

    def as_dict(self) -> dict[str, Any]:
        """The manifest."""
        return {
            "format": GOLDEN_FORMAT,
            "reference": self.reference,
            "labels_sha256": self.labels_sha256,
            "logit_tolerance": self.logit_tolerance,
            "images": [image.as_dict() for image in self.images],
        }


def sha256_hex(data: bytes) -> str:
    """Hex SHA-256 of `data`."""
    return hashlib.sha256(data).hexdigest()


def golden_dir(version_dir: Path) -> Path:
    """Where a version keeps its golden set."""
    return version_dir / GOLDEN_DIR


def write_golden(version_dir: Path, golden: GoldenSet, image_bytes: Mapping[str, bytes]) -> int:
    """Write the golden set into `version_dir` (a staging directory); return its size in bytes.

    Raises GoldenError when an image is missing or mismatched, or the set exceeds
    MAX_GOLDEN_BYTES.
    """
    manifest = json.dumps(golden.as_dict(), indent=1).encode() + b"\n"
    total = len(manifest) + sum(len(data) for data in image_bytes.values())
    if total > MAX_GOLDEN_BYTES:
        raise GoldenError(
            f"the golden set is {total} bytes, more than {MAX_GOLDEN_BYTES}: use fewer or "
            "smaller images"
        )
    for image in golden.images:
        data = image_bytes.get(image.file)
        if data is None or sha256_hex(data) != image.sha256:
            raise GoldenError(f"golden image {image.file!r} is missing or does not match")
        _check_file_name(image.file)
    directory = golden_dir(version_dir)
    directory.mkdir(mode=0o755, exist_ok=True)
    for image in golden.images:
        (directory / image.file).write_bytes(image_bytes[image.file])
    (directory / GOLDEN_MANIFEST).write_bytes(manifest)
    return total


def read_golden(version_dir: Path) -> GoldenSet | None:
    """The version's golden set, None when it has none; GoldenError when it is unusable."""
    path = golden_dir(version_dir) / GOLDEN_MANIFEST
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise GoldenError(f"cannot read {path}: {error}") from None
    try:
        if raw.get("format") != GOLDEN_FORMAT:
            raise GoldenError(f"{path} has format {raw.get('format')!r}, not {GOLDEN_FORMAT}")
        images = tuple(_image_from(entry) for entry in raw["images"])
        golden = GoldenSet(
            images=images,
            reference=str(raw["reference"]),
            labels_sha256=str(raw["labels_sha256"]),
            logit_tolerance=float(raw["logit_tolerance"]),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        if isinstance(error, GoldenError):
            raise
        raise GoldenError(f"{path} is malformed: {error!r}") from None
    if not images or not math.isfinite(golden.logit_tolerance) or golden.logit_tolerance < 0:
        raise GoldenError(f"{path} has no images or an unusable logit_tolerance")
    return golden


def read_golden_image(version_dir: Path, image: GoldenImage) -> bytes:
    """The bytes of one golden image; GoldenError when missing or not what the manifest says."""
    _check_file_name(image.file)
    path = golden_dir(version_dir) / image.file
    try:
        data = path.read_bytes()
    except OSError as error:
        raise GoldenError(f"cannot read golden image {path}: {error.strerror or error}") from None
    if sha256_hex(data) != image.sha256:
        raise GoldenError(f"golden image {path} does not match its SHA-256 in the manifest")
    return data


def _image_from(entry: Mapping[str, Any]) -> GoldenImage:
    expected = entry.get("expected")
    image = GoldenImage(
        file=str(entry["file"]),
        sha256=str(entry["sha256"]),
        source=str(entry.get("source", "")),
        expected=None if expected is None else tuple(int(index) for index in expected),
        top_k=tuple(int(index) for index in entry["top_k"]),
        top_labels=tuple(str(name) for name in entry["top_labels"]),
        logits=tuple(float(value) for value in entry["logits"]),
    )
    if not image.top_k or len(image.top_k) != len(image.top_labels) or not image.logits:
        raise GoldenError(f"golden entry {image.file!r} has inconsistent top_k/labels/logits")
    if any(not 0 <= index < len(image.logits) for index in image.top_k):
        raise GoldenError(f"golden entry {image.file!r} names a class beyond its logits")
    return image


def _check_file_name(name: str) -> None:
    plain = bool(name) and name == os.path.basename(name) and not name.startswith(".")
    if not plain or name == GOLDEN_MANIFEST:
        raise GoldenError(f"invalid golden image file name {name!r}")


def top_k_of(logits: Sequence[float], k: int = GOLDEN_TOP_K) -> tuple[int, ...]:
    """Indices of the `k` largest logits, largest first (ties: lower index first)."""
    order = sorted(range(len(logits)), key=lambda index: (-logits[index], index))
    return tuple(order[:k])
