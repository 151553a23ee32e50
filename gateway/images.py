"""Turning request bytes into an RGB PIL image: strict base64, format sniffing, size limits.

The order matters for safety: the format is sniffed from magic bytes before any decoder
runs, and the pixel count is read from the header (``Image.open`` parses only the header)
and checked before ``load()`` decodes a single pixel, so decompression bombs cost nothing.
"""

from __future__ import annotations

import binascii
import io
import math
import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pybase64
from PIL import Image, ImageOps, UnidentifiedImageError

from gateway.errors import BadRequest, InvalidImage, PayloadTooLarge, UnsupportedMediaType

ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP")
_DATA_URL = re.compile(
    rb"^data:([A-Za-z0-9!#$&^_.+\-]+/[A-Za-z0-9!#$&^_.+\-]+)?((?:;[^;,]*)*),", re.ASCII
)
# Deleted with bytes.translate: on a 400 KiB payload that is ~0.1 ms where re.sub took ~8 ms.
_WHITESPACE = b" \t\r\n\f\v"
_TRANSPARENT_MODES = ("RGBA", "LA", "PA", "RGBa", "La")

# A hook run on the opened-but-not-decoded image, e.g. ``image.draft("RGB", size)`` to let
# libjpeg decode at a reduced scale. It must only make decoding cheaper, never change the
# picture beyond what the preprocessing would produce anyway.
BeforeLoad = Callable[[Image.Image], None]

#: Draft mode keeps the decoded shorter side at least this many times the model's resize
#: size, so the exact resize that follows still averages >= 2 source pixels per output pixel
#: (docs/performance.md: top-1 agreement with exact preprocessing, measured).
DRAFT_MIN_FACTOR = 2


def draft_size(width: int, height: int, min_short_side: int) -> tuple[int, int] | None:
    """The size to ask ``Image.draft`` for so the shorter side stays >= ``min_short_side``.

    None when no DCT scale (1/2, 1/4, 1/8) fits, i.e. the image is smaller than twice that.
    Pillow picks the largest scale ``s`` with ``width // s >= asked width`` on both sides.
    """
    short = min(width, height)
    if min_short_side < 1 or short < 2 * min_short_side:
        return None
    ratio = min_short_side / short
    return max(1, math.ceil(width * ratio)), max(1, math.ceil(height * ratio))


def jpeg_draft(resize_size: int, factor: int = DRAFT_MIN_FACTOR) -> BeforeLoad:
    """A ``before_load`` hook: decode large JPEGs at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling).

    The decoded shorter side stays >= ``factor * resize_size``; the exact Resize + CenterCrop
    + Normalize then run on that smaller image. Other formats and small JPEGs are untouched.
    """
    min_short_side = factor * resize_size

    def draft(image: Image.Image) -> None:
        if image.format != "JPEG":
            return
        size = draft_size(image.width, image.height, min_short_side)
        if size is not None:
            image.draft(None, size)  # mode None: never changes the colour mode

    return draft


@dataclass(frozen=True)
class ImageLimits:
    """Bounds applied while decoding: pixels in the header (bytes are bounded before decoding)."""

    max_pixels: int


def decode_base64(text: str | bytes, max_bytes: int) -> bytes:
    """Decode standard base64 (an optional ``data:`` URL prefix, whitespace tolerated) strictly."""
    raw = text.encode("ascii", "replace") if isinstance(text, str) else text
    raw = raw.strip()
    if raw[:5].lower() == b"data:":
        match = _DATA_URL.match(raw)
        if match is None:
            raise BadRequest("The data URL is malformed: expected data:<type>;base64,<data>.")
        if b";base64" not in match.group(2).lower():
            raise BadRequest("Only base64 data URLs are accepted (data:<type>;base64,<data>).")
        declared = (match.group(1) or b"").lower()
        # A declared type must at least claim to be an image (the bytes are sniffed anyway;
        # image/png holding a JPEG is accepted, text/html holding anything is not).
        if declared and not declared.startswith(b"image/"):
            raise UnsupportedMediaType(
                "The data URL's type must be an image type such as image/jpeg."
            )
        raw = raw[match.end() :]
    payload = raw.translate(None, _WHITESPACE)
    if not payload:
        raise BadRequest("The image is empty.")
    # 4 base64 characters carry 3 bytes: reject before allocating the decoded copy.
    if len(payload) // 4 * 3 > max_bytes + 2:
        raise PayloadTooLarge(f"The decoded image is larger than {max_bytes} bytes.")
    try:
        # pybase64 is stricter than the standard library's validate=True: it also refuses
        # padding beyond a quantum ("Zm9v===="), which no encoder produces.
        data = pybase64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest("The image is not valid base64.") from None
    if len(data) > max_bytes:
        raise PayloadTooLarge(f"The decoded image is larger than {max_bytes} bytes.")
    if not data:
        raise BadRequest("The image is empty.")
    return data


def sniff_format(data: bytes) -> str:
    """Return the PIL format name from the leading magic bytes, or raise UnsupportedMediaType."""
    if data[:3] == b"\xff\xd8\xff":
        return "JPEG"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "PNG"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data[:2] == b"BM":
        return "BMP"
    raise UnsupportedMediaType("The image must be JPEG, PNG, WebP, GIF or BMP.")


def open_image(data: bytes, limits: ImageLimits) -> Image.Image:
    """Open ``data`` lazily (header only) after sniffing, and enforce the pixel limit."""
    image_format = sniff_format(data)
    try:
        image = Image.open(io.BytesIO(data), formats=(image_format,))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise PayloadTooLarge(f"The image has more than {limits.max_pixels} pixels.") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError):
        raise InvalidImage(f"The data is not a valid {image_format} image.") from None
    width, height = image.size
    if width < 1 or height < 1:
        raise InvalidImage("The image has no pixels.")
    if width * height > limits.max_pixels:
        raise PayloadTooLarge(
            f"The image is {width}x{height} pixels; at most {limits.max_pixels} are accepted."
        )
    return image


@dataclass(frozen=True)
class ImageFacts:
    """What the history records of an image instead of the image: format, stored size, bytes."""

    format: str
    width: int
    height: int
    bytes: int


def load_rgb(
    data: bytes, limits: ImageLimits, before_load: BeforeLoad | None = None
) -> Image.Image:
    """Decode ``data`` to RGB: first frame, EXIF orientation applied, any mode converted."""
    return decode_rgb(data, limits, before_load)[0]


def decode_rgb(
    data: bytes, limits: ImageLimits, before_load: BeforeLoad | None = None
) -> tuple[Image.Image, ImageFacts]:
    """load_rgb, and the image's facts as its header gives them (before any draft scaling)."""
    image = open_image(data, limits)
    facts = ImageFacts(str(image.format), image.width, image.height, len(data))
    try:
        # An opened animation (GIF, WebP) sits on its first frame; load() decodes that frame
        # only. Asking for n_frames would parse every frame, so it is deliberately not used.
        if before_load is not None:
            before_load(image)
        image.load()
        ImageOps.exif_transpose(image, in_place=True)
        return to_rgb(image), facts
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise PayloadTooLarge(f"The image has more than {limits.max_pixels} pixels.") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError, TypeError):
        # Truncated or corrupt data surfaces from the decoders as any of these.
        raise InvalidImage("The image data is corrupt or truncated.") from None


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB.

    Transparent images are composited on white rather than having alpha dropped: the
    colour under fully transparent pixels is arbitrary (often black or encoder garbage),
    so dropping alpha shows the model something no person ever saw, while white is what
    the front end's page and most viewers show behind a transparent image.
    """
    mode = image.mode
    if mode == "RGB":
        return image
    if mode.startswith("I;16") or mode == "I":
        return _sixteen_bit_to_rgb(image)
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
        mode = "RGBA"
    if mode in _TRANSPARENT_MODES:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _sixteen_bit_to_rgb(image: Image.Image) -> Image.Image:
    # PIL's own convert() clips 16-bit values at 255 (a white picture); scale instead.
    values = np.asarray(image).astype(np.int32)  # also normalises big-endian I;16B
    eight_bit = (np.clip(values, 0, 65535) >> 8).astype(np.uint8)
    return Image.fromarray(eight_bit).convert("RGB")
