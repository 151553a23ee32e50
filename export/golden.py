"""Golden references recorded with each version: real photos and PyTorch's fp32 logits for them.

The photos are scikit-image's bundled ones (re-encoded once as JPEG) or the user's own
(`--golden DIR`, kept byte for byte). For each, the stored bytes are decoded, preprocessed with
the contract's `preprocess` and run through the fp32 PyTorch module: those logits are what the
served version must reproduce (model_contract/golden.py has the format, gateway/rollout/verify.py
the check). The set is written into the staging directory, so it appears with its version.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from export.errors import UsageError, ValidationFailedError
from export.progress import Progress
from model_contract.golden import (
    MAX_GOLDEN_BYTES,
    GoldenError,
    GoldenImage,
    GoldenSet,
    sha256_hex,
    top_k_of,
    write_golden,
)
from model_contract.labels import render_labels
from model_contract.preprocessing import FloatArray, Preprocessing, preprocess

if TYPE_CHECKING:
    from torch import nn

# torch and onnxruntime are imported where used: the CLI reads DEFAULT_GOLDEN_COUNT from here
# for --help, which must stay instant.

DEFAULT_GOLDEN_COUNT = 8
GOLDEN_SUFFIXES = frozenset({".jpg", ".jpeg", ".png"})
INDEX_FILENAME = "index.csv"
JPEG_QUALITY = 90
#: fp32 ONNX Runtime and PyTorch typically differ by ~1e-4 on these photos; 0.05 leaves room for
#: another CPU's kernels and still catches any real change (other weights, preprocessing, file).
FP32_LOGIT_TOLERANCE = 0.05
#: An int8 model's tolerance is this many times its measured distance from the fp32 references.
INT8_TOLERANCE_FACTOR = 2.0
#: `<synset>_<class name>.<ext>`, as ../shared/imagenet-samples names its files.
_SYNSET_NAME = re.compile(r"^(n\d{8})_")
#: EXIF tag 0x0112: how a viewer (and the gateway) must rotate the decoded pixels.
_EXIF_ORIENTATION = 0x0112
#: Modes that `convert("RGB")` turns into what every decoder shows: no alpha, 8 bits a channel.
_PLAIN_MODES = frozenset({"1", "L", "P", "RGB", "CMYK", "YCbCr"})

#: scikit-image's bundled real photos, in golden order, and the ImageNet-1k classes a correct
#: top-1 may name (indices checked against export.model_labels.imagenet_categories()).
SKIMAGE_GOLDEN_PHOTOS: Mapping[str, tuple[int, ...] | None] = {
    "chelsea": (281, 282, 285),  # tabby, tiger cat, Egyptian cat
    "coffee": (967, 968, 504),  # espresso, cup, coffee mug
    "rocket": (657, 744, 812),  # missile, projectile, space shuttle
    "astronaut": None,  # ImageNet has no class for a person in a space suit
    "stereo_motorcycle": (665, 670),  # moped, motor scooter
}


@dataclass(frozen=True)
class GoldenPhoto:
    """One photo as it will be stored: file name, bytes, origin and ImageNet class if known."""

    file: str
    data: bytes
    source: str
    imagenet_expected: tuple[int, ...] | None  # ImageNet-1k indices; used only for such labels


@dataclass(frozen=True)
class GoldenRecord:
    """What export.json and the summary say about the golden set written with a version."""

    images: int
    bytes: int
    reference: str
    logit_tolerance: float
    onnxruntime_max_abs_diff: float
    origin: str

    def as_dict(self) -> dict[str, Any]:
        """export.json's "golden"."""
        return {
            "images": self.images,
            "bytes": self.bytes,
            "reference": self.reference,
            "logit_tolerance": self.logit_tolerance,
            "onnxruntime_max_abs_diff": self.onnxruntime_max_abs_diff,
            "photos": self.origin,
        }


def check_golden_options(folder: Path | None, count: int, enabled: bool) -> None:
    """The cheap golden checks (UsageError): folder, count, image kinds and sizes, scikit-image."""
    if not enabled:
        if folder is not None:
            raise UsageError("--golden DIR and --no-golden exclude each other")
        return
    if count < 1:
        raise UsageError(f"--golden-count must be at least 1, got {count}")
    if folder is None:
        _require_skimage()
        return
    files = golden_files(folder, count)
    for path in files:
        _check_plain_image(path)
    total = sum(path.stat().st_size for path in files)
    if total > MAX_GOLDEN_BYTES:
        raise _too_large(folder, len(files), total)
    read_index(folder)  # a malformed index.csv fails now, not after the export's work


def golden_files(folder: Path, count: int) -> list[Path]:
    """The first `count` *.jpg/*.jpeg/*.png files of `folder` by name; UsageError when none."""
    if not folder.is_dir():
        raise UsageError(f"--golden {folder} does not exist or is not a directory")
    files = sorted(
        (
            entry
            for entry in folder.iterdir()
            # Dot files are left out: the contract refuses them as golden file names.
            if entry.suffix.lower() in GOLDEN_SUFFIXES
            and not entry.name.startswith(".")
            and entry.is_file()
        ),
        key=lambda entry: entry.name,
    )
    if not files:
        raise UsageError(f"--golden {folder} has no .jpg, .jpeg or .png images")
    return files[:count]


def collect_photos(folder: Path | None, count: int) -> tuple[str, list[GoldenPhoto]]:
    """The golden photos (scikit-image's, or the folder's) and where they come from."""
    if folder is None:
        return "scikit-image sample photos", skimage_photos()
    return str(folder), folder_photos(folder, count)


def skimage_photos() -> list[GoldenPhoto]:
    """scikit-image's bundled photos, each encoded once as a quality-90 JPEG."""
    data_module = _require_skimage()
    photos = []
    for name, expected in SKIMAGE_GOLDEN_PHOTOS.items():
        array = getattr(data_module, name)()
        if isinstance(array, tuple):  # stereo_motorcycle: (left, right, disparity)
            array, source = array[0], f"skimage.data.{name}()[0]"
        else:
            source = f"skimage.data.{name}()"
        buffer = io.BytesIO()
        Image.fromarray(np.asarray(array)).convert("RGB").save(
            buffer, format="JPEG", quality=JPEG_QUALITY
        )
        photos.append(GoldenPhoto(f"{name}.jpg", buffer.getvalue(), source, expected))
    return photos


def folder_photos(folder: Path, count: int) -> list[GoldenPhoto]:
    """The folder's first `count` photos, bytes unchanged, classes from index.csv when known."""
    index = read_index(folder)
    photos = []
    for path in golden_files(folder, count):
        _check_plain_image(path)
        try:
            data = path.read_bytes()
        except OSError as error:
            reason = error.strerror or error
            raise UsageError(f"cannot read golden image {path}: {reason}") from None
        photos.append(GoldenPhoto(path.name, data, path.name, _expected_from(path.name, index)))
    total = sum(len(photo.data) for photo in photos)
    if total > MAX_GOLDEN_BYTES:  # checked again: the folder may have changed since the options
        raise _too_large(folder, len(photos), total)
    return photos


@dataclass(frozen=True)
class GoldenIndex:
    """index.csv of a golden folder: class index by file name, and by synset where given."""

    by_file: Mapping[str, int]
    by_synset: Mapping[str, int]


def read_index(folder: Path) -> GoldenIndex:
    """DIR/index.csv (columns file,class_index[,synset]); an empty index when there is none."""
    path = folder / INDEX_FILENAME
    if not path.is_file():
        return GoldenIndex({}, {})
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        by_file = {row["file"]: int(row["class_index"]) for row in rows}
        by_synset = {row["synset"]: int(row["class_index"]) for row in rows if row.get("synset")}
    except (OSError, UnicodeDecodeError, KeyError, ValueError, TypeError) as error:
        raise UsageError(
            f"{path} is not a readable index (columns file,class_index,synset): {error!r}"
        ) from None
    return GoldenIndex(by_file, by_synset)


def _expected_from(name: str, index: GoldenIndex) -> tuple[int, ...] | None:
    """The file's class from index.csv: by file name, else by the synset its name starts with."""
    if name in index.by_file:
        return (index.by_file[name],)
    match = _SYNSET_NAME.match(name)
    if match and match.group(1) in index.by_synset:
        return (index.by_synset[match.group(1)],)
    return None


def decode(data: bytes) -> Image.Image:
    """The stored bytes as the RGB image the references are computed from."""
    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB")


def reference_logits(module: nn.Module, inputs: Sequence[FloatArray]) -> list[FloatArray]:
    """The fp32 PyTorch logits (1-D float32) of each preprocessed image, one batch of one each."""
    import torch

    module.eval()
    results = []
    with torch.no_grad():
        for array in inputs:
            output = module(torch.from_numpy(np.ascontiguousarray(array[np.newaxis])))
            results.append(output.reshape(-1).numpy().astype(np.float32))
    return results


def onnxruntime_logits(onnx_path: Path, inputs: Sequence[FloatArray]) -> list[FloatArray]:
    """ONNX Runtime CPU logits of the published (staged) model for each preprocessed image."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    return [
        np.asarray(session.run(None, {input_name: array[np.newaxis]})[0], np.float32).reshape(-1)
        for array in inputs
    ]


def round_up_significant(value: float, digits: int = 2) -> float:
    """`value` rounded up (towards +inf) to `digits` significant digits: 0.0613 -> 0.062."""
    if not math.isfinite(value) or value <= 0:
        return value
    # Decimal of the shortest repr: binary float noise (0.05 / 0.001 = 50.000...01) cannot push
    # an exact value up by one step.
    exact = Decimal(repr(value))
    step = Decimal(1).scaleb(exact.adjusted() - (digits - 1))
    return float(exact.quantize(step, rounding=ROUND_CEILING))


def int8_logit_tolerance(max_abs_diff: float) -> float:
    """An int8 version's tolerance: twice its distance from fp32 here, at least the fp32 one.

    Twice: another CPU's int8 kernels (VNNI or not) round differently, but a broken model or
    other preprocessing lands far beyond that.
    """
    return round_up_significant(max(FP32_LOGIT_TOLERANCE, INT8_TOLERANCE_FACTOR * max_abs_diff))


def record_golden(
    staging_dir: Path,
    module: nn.Module,
    labels: Sequence[str],
    preprocessing: Preprocessing,
    onnx_path: Path,
    photos: Sequence[GoldenPhoto],
    *,
    origin: str,
    imagenet_labels: bool,
    quantized: bool,
    progress: Progress,
) -> GoldenRecord:
    """Compute the references of `photos`, write the golden set into `staging_dir`."""
    import torch

    inputs = [preprocess(decode(photo.data), preprocessing) for photo in photos]
    references = reference_logits(module, inputs)
    served = onnxruntime_logits(onnx_path, inputs)
    max_diff = max(float(np.max(np.abs(a - b))) for a, b in zip(served, references, strict=True))
    if quantized:
        tolerance = int8_logit_tolerance(max_diff)
    else:
        tolerance = FP32_LOGIT_TOLERANCE
        if not max_diff <= tolerance:
            # Parity passed on random inputs, yet the version would fail its own verification.
            raise ValidationFailedError(
                f"ONNX Runtime's logits for the golden photos differ from PyTorch's by "
                f"{max_diff:.3g}, more than the golden tolerance {tolerance:g}"
            )
    images = []
    for photo, logits in zip(photos, references, strict=True):
        top_k = top_k_of([float(value) for value in logits])
        expected = _expected_in(photo, len(labels)) if imagenet_labels else None
        images.append(
            GoldenImage(
                file=photo.file,
                sha256=sha256_hex(photo.data),
                top_k=top_k,
                top_labels=tuple(labels[index] for index in top_k),
                logits=tuple(float(value) for value in logits),
                expected=expected,
                source=photo.source,
            )
        )
        progress.info(f"  {_describe(images[-1], labels)}")
    golden = GoldenSet(
        images=tuple(images),
        reference=f"pytorch {torch.__version__} (fp32)",
        labels_sha256=sha256_hex(render_labels(labels).encode("utf-8")),
        logit_tolerance=tolerance,
    )
    try:
        size = write_golden(staging_dir, golden, {photo.file: photo.data for photo in photos})
    except GoldenError as error:
        raise UsageError(
            f"cannot record the golden references: {error} (limit MAX_GOLDEN_BYTES = "
            f"{MAX_GOLDEN_BYTES} bytes, references included): pass fewer or smaller images "
            "with --golden DIR, a lower --golden-count, or --no-golden"
        ) from None
    progress.info(
        f"  ONNX Runtime vs the references: max |diff| {max_diff:.3g}; logit tolerance "
        f"{tolerance:g} ({'int8: twice the measured diff' if quantized else 'fp32'}); {size} bytes"
    )
    return GoldenRecord(
        images=len(images),
        bytes=size,
        reference=golden.reference,
        logit_tolerance=tolerance,
        onnxruntime_max_abs_diff=max_diff,
        origin=origin,
    )


def _expected_in(photo: GoldenPhoto, num_classes: int) -> tuple[int, ...] | None:
    """The photo's ImageNet classes, refusing an index.csv entry beyond the model's classes."""
    expected = photo.imagenet_expected
    if expected is not None and any(not 0 <= index < num_classes for index in expected):
        raise UsageError(
            f"{INDEX_FILENAME} gives {photo.file} class {list(expected)}, outside the model's "
            f"{num_classes} classes"
        )
    return expected


def _describe(image: GoldenImage, labels: Sequence[str]) -> str:
    """'chelsea: tabby (logit 9.87), expected tabby/tiger cat/Egyptian cat' style text."""
    top1 = image.top_k[0]
    text = f"{image.source}: {image.top_labels[0]} (logit {image.logits[top1]:.3g})"
    if image.expected is not None:
        names = "/".join(labels[index] for index in image.expected)
        text += f", expected {names}{'' if top1 in image.expected else ' (not top-1)'}"
    return text


def _require_skimage() -> Any:
    """skimage.data, or a UsageError that says how to get it (or do without it)."""
    message = (
        "the default golden photos are scikit-image's sample data, and scikit-image is not "
        "installed: pip install scikit-image (pinned in pyproject.toml), or pass --golden DIR "
        "with your own photos, or --no-golden"
    )
    try:
        found = importlib.util.find_spec("skimage") is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise UsageError(message)
    try:
        import skimage.data
    except ImportError:
        raise UsageError(message) from None
    return skimage.data


def _check_plain_image(path: Path) -> None:
    """Refuse a photo whose decoding depends on the decoder: alpha, 16 bits, EXIF rotation.

    The references come from PIL's plain ``convert("RGB")``; the gateway also applies EXIF
    orientation and composites transparency on white, so for such files the two would see
    different pixels and the version would fail its verification for no fault of its own.
    """
    try:
        with Image.open(path) as image:
            mode, info = image.mode, image.info
            orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as error:
        raise UsageError(f"cannot read golden image {path}: {error}") from None
    transparent = mode == "P" and "transparency" in info
    if mode not in _PLAIN_MODES or transparent or orientation not in (0, 1):
        raise UsageError(
            f"golden image {path} is {mode}"
            f"{' with transparency' if transparent else ''}"
            f"{f' with EXIF orientation {orientation}' if orientation not in (0, 1) else ''}: "
            "golden photos must decode the same everywhere; save it as a plain RGB or grey "
            "JPEG/PNG (upright, no alpha, 8 bits)"
        )


def _too_large(folder: Path, count: int, total: int) -> UsageError:
    """The message for a golden folder over the size limit."""
    return UsageError(
        f"--golden {folder}: its {count} image(s) take {total} bytes, more than a version's "
        f"golden set may (MAX_GOLDEN_BYTES = {MAX_GOLDEN_BYTES} bytes, references included): "
        "use fewer or smaller images, or a lower --golden-count"
    )
