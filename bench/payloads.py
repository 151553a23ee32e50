"""Payload sets for the benchmark: real photos as JPEG bytes, request bodies and model tensors.

Two sets: ``1080p`` (photos upscaled to 1920x1080 and encoded as JPEG quality 90, cached under
the results folder's cache/) and ``imagenet`` (the photos' own JPEG files). Photos come from
``--images DIR``, else ../shared/imagenet-samples/ when it exists, else scikit-image's samples,
so a fresh clone works without the ImageNet folder.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image, UnidentifiedImageError

from model_contract.preprocessing import Preprocessing
from model_contract.preprocessing import preprocess as contract_preprocess

Tensor = npt.NDArray[np.float32]

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_SAMPLES = REPO_ROOT.parent / "shared" / "imagenet-samples"
PAYLOAD_KINDS = ("1080p", "imagenet")
FULL_HD = (1920, 1080)
JPEG_QUALITY = 90
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}
SKIMAGE_PHOTOS = ("chelsea", "coffee", "rocket", "astronaut")


class PayloadError(Exception):
    """The payload photos cannot be found or read; the message says which and why."""


@dataclass(frozen=True)
class PayloadSet:
    """The JPEG payloads every HTTP stage sends, and where they came from."""

    kind: str
    source: str
    jpegs: tuple[bytes, ...]

    def mean_kib(self) -> float:
        """Return the mean JPEG size in KiB (before base64)."""
        return sum(len(jpeg) for jpeg in self.jpegs) / len(self.jpegs) / 1024


def _encode_jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def _spread(items: Sequence[Path], count: int) -> list[Path]:
    """Pick `count` items spread evenly over the sorted list, so the sample is deterministic."""
    if count >= len(items):
        return list(items)
    step = len(items) / count
    return [items[int(index * step)] for index in range(count)]


def load_photos(images_dir: Path | None, count: int) -> tuple[str, dict[str, bytes]]:
    """Return (description, photos by file name) from `images_dir`, the shared ones or skimage."""
    folder = images_dir if images_dir is not None else SHARED_SAMPLES
    if images_dir is not None or folder.is_dir():
        if not folder.is_dir():
            raise PayloadError(f"--images {folder}: no such folder")
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
            raise PayloadError(f"{folder} holds no image files ({suffixes})")
        chosen = _spread(files, count)
        try:
            photos = {path.name: path.read_bytes() for path in chosen}
        except OSError as error:
            raise PayloadError(f"cannot read a photo in {folder}: {error}") from None
        return f"{len(photos)} photos from {folder}", photos
    import skimage.data  # imported late: only the fresh-clone fallback needs it

    photos = {
        name: _encode_jpeg(Image.fromarray(getattr(skimage.data, name)()))
        for name in SKIMAGE_PHOTOS[:count]
    }
    return f"{len(photos)} scikit-image photos ({', '.join(SKIMAGE_PHOTOS[:count])})", photos


def upscale_to_1080p(data: bytes) -> bytes:
    """Scale a photo to cover 1920x1080, centre-crop it to exactly that, encode JPEG quality 90."""
    with Image.open(io.BytesIO(data)) as opened:
        image = opened.convert("RGB")
    width, height = FULL_HD
    scale = max(width / image.width, height / image.height)
    scaled = image.resize(
        (max(width, round(image.width * scale)), max(height, round(image.height * scale))),
        Image.Resampling.BICUBIC,
    )
    left = (scaled.width - width) // 2
    top = (scaled.height - height) // 2
    return _encode_jpeg(scaled.crop((left, top, left + width, top + height)))


def _cached_1080p(name: str, data: bytes, cache_dir: Path) -> bytes:
    # Keyed by content too: two folders may hold different photos under the same name.
    digest = hashlib.sha256(data).hexdigest()[:12]
    path = cache_dir / f"{Path(name).stem}-{digest}.jpg"
    if path.is_file():
        return path.read_bytes()
    jpeg = upscale_to_1080p(data)
    cache_dir.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_bytes(jpeg)
    temporary.replace(path)
    return jpeg


def build_payloads(kind: str, images_dir: Path | None, count: int, cache_dir: Path) -> PayloadSet:
    """Build the payload set `kind` ("1080p" or "imagenet") from `count` source photos."""
    if kind not in PAYLOAD_KINDS:
        choices = ", ".join(PAYLOAD_KINDS)
        raise PayloadError(f"unknown payload set {kind!r}: choose one of {choices}")
    source, photos = load_photos(images_dir, count)
    try:
        if kind == "1080p":
            cache = cache_dir / "1080p"
            jpegs = tuple(_cached_1080p(name, data, cache) for name, data in photos.items())
        else:
            jpegs = tuple(photos.values())
    except (OSError, UnidentifiedImageError) as error:
        raise PayloadError(f"cannot decode a source photo: {error}") from None
    return PayloadSet(kind, source, jpegs)


def data_url(jpeg: bytes) -> str:
    """Return a base64 JPEG data URL, as the front end sends an image."""
    return f"data:image/jpeg;base64,{base64.b64encode(jpeg).decode('ascii')}"


def request_body(jpeg: bytes) -> bytes:
    """Return the front end's JSON body for one image: a base64 JPEG data URL."""
    return json.dumps({"image": data_url(jpeg)}).encode("ascii")


def batch_bodies(jpegs: Sequence[bytes], per_request: int) -> list[bytes]:
    """Return /analyze/batch JSON bodies of `per_request` images each, in payload order.

    Consecutive payloads go together, wrapping around, until every payload is in a body:
    16 payloads in batches of 8 make 2 bodies; 2 payloads make 1 body of 8 (repeated).
    """
    if per_request < 1 or not jpegs:
        raise ValueError("a batch body needs at least one image per request and one payload")
    urls = [data_url(jpeg) for jpeg in jpegs]
    count = -(-len(urls) // per_request)  # ceiling division
    return [
        json.dumps(
            {"images": [urls[(body * per_request + i) % len(urls)] for i in range(per_request)]}
        ).encode("ascii")
        for body in range(count)
    ]


def preprocess(jpeg: bytes, params: Preprocessing) -> Tensor:
    """Decode JPEG bytes and apply the contract's preprocessing (torchvision's, bit for bit)."""
    with Image.open(io.BytesIO(jpeg)) as opened:
        return contract_preprocess(opened.convert("RGB"), params)


def tensor_pool(payloads: PayloadSet, params: Preprocessing) -> Tensor:
    """Return an (N, 3, crop, crop) float32 array of the payloads, preprocessed once up front."""
    return np.stack([preprocess(jpeg, params) for jpeg in payloads.jpegs])
