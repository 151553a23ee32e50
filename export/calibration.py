"""Real photos for int8 calibration and validation: a folder (labels from index.csv) or skimage's.

Random noise is useless here: the activation ranges int8 needs, and whether the int8 model still
names the same class, only mean something on images like those the model will serve.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from export.calibration_defaults import (
    DEFAULT_CALIBRATION_COUNT,
    DEFAULT_VALIDATION_COUNT,
    MIN_IMAGES_FOR_SPLIT,
)
from export.errors import UsageError
from export.images import load_image, stack
from model_contract.preprocessing import FloatArray, Preprocessing, preprocess

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
INDEX_FILENAME = "index.csv"
# ../shared/imagenet-samples next to the project checkout (absent in a fresh clone).
DEFAULT_FOLDER = Path(__file__).resolve().parents[1].parent / "shared" / "imagenet-samples"
# Real photographs bundled with scikit-image (no download); synthetic images are left out.
SKIMAGE_PHOTOS = (
    "astronaut",
    "brick",
    "camera",
    "chelsea",
    "clock",
    "coffee",
    "coins",
    "grass",
    "gravel",
    "hubble_deep_field",
    "immunohistochemistry",
    "moon",
    "retina",
    "rocket",
)
# The ones that show an ImageNet object (tripod, cat, espresso, missile): only there does "int8
# names the same class" mean something. The textures and micrographs above have no ImageNet class,
# fp32 gives them a 3-16% top-1 guess and a tiny change flips it, as random noise would. They still
# calibrate: activation ranges want variety.
SKIMAGE_OBJECT_PHOTOS = ("camera", "chelsea", "coffee", "rocket")
SPLIT_SEED = 0


@dataclass(frozen=True)
class SampleImage:
    """One photo: a name, where it comes from, and its class index when the folder says."""

    name: str
    label: int | None
    load: Callable[[], Image.Image]

    def preprocessed(self, preprocessing: Preprocessing) -> FloatArray:
        """The CHW float32 input the model gets for this photo."""
        return preprocess(self.load(), preprocessing)


@dataclass(frozen=True)
class ImageSet:
    """The photos found, where they came from, and (when fixed) the ones to validate on."""

    origin: str
    images: tuple[SampleImage, ...]
    validation: tuple[SampleImage, ...] | None = None


@dataclass(frozen=True)
class Split:
    """Calibration and validation photos; `overlapping` when too few photos to hold some out."""

    calibration: tuple[SampleImage, ...]
    validation: tuple[SampleImage, ...]
    overlapping: bool

    def describe(self) -> str:
        """'200 calibration + 200 held-out validation images' style text."""
        if self.overlapping:
            return (
                f"{len(self.calibration)} calibration images, {len(self.validation)} validation "
                f"views of the same photos (fewer than {MIN_IMAGES_FOR_SPLIT}: too few to hold "
                "some out)"
            )
        return (
            f"{len(self.calibration)} calibration + {len(self.validation)} held-out validation "
            "images"
        )


def _file_loader(path: Path) -> Callable[[], Image.Image]:
    """A loader for one image file."""
    return lambda: load_image(path)


def _skimage_loader(name: str, mirrored: bool = False) -> Callable[[], Image.Image]:
    """A loader for one scikit-image sample photo (optionally its mirror image)."""

    def load() -> Image.Image:
        """skimage.data.<name>() as a PIL image (grey photos stay grey; RGB conversion is later)."""
        import skimage.data

        image = Image.fromarray(getattr(skimage.data, name)())
        return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if mirrored else image

    return load


def _read_index(folder: Path) -> dict[str, int]:
    """file -> class_index from index.csv, or {} when the folder has none."""
    index_path = folder / INDEX_FILENAME
    if not index_path.is_file():
        return {}
    try:
        with index_path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        return {row["file"]: int(row["class_index"]) for row in rows}
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise UsageError(
            f"{index_path} is not a readable index (columns file,class_index): {exc}"
        ) from None


def images_from_folder(folder: Path) -> ImageSet:
    """Every image file directly in `folder` (sorted), labelled from index.csv if present."""
    if not folder.is_dir():
        raise UsageError(f"calibration image folder {folder} does not exist or is not a directory")
    index = _read_index(folder)
    files = sorted(
        entry
        for entry in folder.iterdir()
        if entry.suffix.lower() in IMAGE_SUFFIXES and entry.is_file()
    )
    if not files:
        raise UsageError(
            f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in calibration folder {folder}"
        )
    images = tuple(
        SampleImage(path.name, index.get(path.name), _file_loader(path)) for path in files
    )
    return ImageSet(origin=str(folder), images=images)


def skimage_photos() -> ImageSet:
    """scikit-image's photos to calibrate; its object photos and their mirror images to validate."""
    images = tuple(SampleImage(name, None, _skimage_loader(name)) for name in SKIMAGE_PHOTOS)
    validation = tuple(
        SampleImage(
            f"{name}{' (mirrored)' if mirrored else ''}", None, _skimage_loader(name, mirrored)
        )
        for name in SKIMAGE_OBJECT_PHOTOS
        for mirrored in (False, True)
    )
    return ImageSet("scikit-image sample photos", images, validation)


def resolve_image_set(folder: Path | None, use_skimage: bool = False) -> ImageSet:
    """skimage's photos if asked, else the folder, else ../shared/imagenet-samples, else skimage."""
    if use_skimage:
        return skimage_photos()
    if folder is not None:
        return images_from_folder(folder)
    if DEFAULT_FOLDER.is_dir():
        return images_from_folder(DEFAULT_FOLDER)
    return skimage_photos()


def split_image_set(
    image_set: ImageSet,
    calibration_count: int = DEFAULT_CALIBRATION_COUNT,
    validation_count: int = DEFAULT_VALIDATION_COUNT,
) -> Split:
    """The set's own validation photos when it names them, else a seeded split of its photos."""
    if image_set.validation is None:
        return split_images(image_set.images, calibration_count, validation_count)
    calibration = image_set.images[:calibration_count]
    return Split(calibration, image_set.validation[:validation_count], overlapping=True)


def split_images(
    images: Sequence[SampleImage],
    calibration_count: int = DEFAULT_CALIBRATION_COUNT,
    validation_count: int = DEFAULT_VALIDATION_COUNT,
    seed: int = SPLIT_SEED,
) -> Split:
    """A seeded shuffle cut into calibration and held-out validation photos (when enough)."""
    if calibration_count < 1 or validation_count < 1:
        raise UsageError("calibration and validation counts must be at least 1")
    order = [images[i] for i in np.random.default_rng(seed).permutation(len(images))]
    if len(order) < MIN_IMAGES_FOR_SPLIT:
        chosen = tuple(order[:calibration_count])
        return Split(calibration=chosen, validation=chosen, overlapping=True)
    # Never let calibration eat more than half: the held-out half is the evidence.
    calibration = min(calibration_count, len(order) // 2)
    validation = order[calibration : calibration + validation_count]
    return Split(tuple(order[:calibration]), tuple(validation), overlapping=False)


def preprocess_all(images: Sequence[SampleImage], preprocessing: Preprocessing) -> FloatArray:
    """All photos as one [N, C, H, W] batch."""
    return stack([image.preprocessed(preprocessing) for image in images])
