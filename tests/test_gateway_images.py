"""Image decoding: strict base64, sniffing, pixel limits before decoding, modes, EXIF, frames."""

from __future__ import annotations

import base64
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from gateway.errors import BadRequest, InvalidImage, PayloadTooLarge, UnsupportedMediaType
from gateway.images import (
    ImageLimits,
    decode_base64,
    draft_size,
    jpeg_draft,
    load_rgb,
    open_image,
    sniff_format,
    to_rgb,
)
from tests.fakes_gateway import data_url, encode_image

LIMITS = ImageLimits(max_pixels=1_000_000)
PNG = encode_image(np.full((4, 6, 3), 200, np.uint8), "PNG")


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    """One PNG chunk: length, type, payload, CRC."""
    body = kind + payload
    return struct.pack(">I", len(payload)) + body + struct.pack(">I", zlib.crc32(body))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG claiming width x height whose IDAT holds 16 bytes of garbage: it can be opened
    (header parsed) but any attempt to decode it fails."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", b"\xff" * 16)


# -- base64 ------------------------------------------------------------------------------------


def test_data_url_and_bare_base64_decode_to_the_same_bytes() -> None:
    """The data URL prefix is optional."""
    assert decode_base64(data_url(PNG), 10**6) == PNG
    assert decode_base64(base64.b64encode(PNG).decode(), 10**6) == PNG


def test_whitespace_and_line_breaks_are_tolerated() -> None:
    """MIME-style wrapped base64 (76-column lines, CRLF) and surrounding blanks decode."""
    wrapped = base64.encodebytes(PNG).decode().replace("\n", "\r\n")
    assert decode_base64("  \n" + wrapped + "\t ", 10**6) == PNG
    assert decode_base64("data:image/png;base64, " + wrapped, 10**6) == PNG


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "not base64 at all!",
        base64.b64encode(PNG).decode()[:-2],  # padding removed
        base64.urlsafe_b64encode(b"\xfb\xff\xfe" * 10).decode(),  # URL-safe alphabet
        "data:image/png," + base64.b64encode(PNG).decode(),  # not a base64 data URL
        "data:image/png;base64",  # no comma
        "data:;base64,",  # empty payload
        "QUJD=QUJD",  # padding in the middle
        "é" + base64.b64encode(PNG).decode(),  # non-ASCII
    ],
)
def test_invalid_base64_is_a_bad_request(text: str) -> None:
    """Anything but standard, correctly padded base64 is a 400."""
    with pytest.raises(BadRequest):
        decode_base64(text, 10**6)


@pytest.mark.parametrize("mime", ["text/html", "application/json", "video/mp4", "TEXT/PLAIN"])
def test_data_url_of_a_non_image_type_is_unsupported(mime: str) -> None:
    """A data URL declaring a non-image type is a 415, whatever the bytes inside."""
    with pytest.raises(UnsupportedMediaType):
        decode_base64(f"data:{mime};base64," + base64.b64encode(PNG).decode(), 10**6)


@pytest.mark.parametrize(
    "prefix", ["data:image/jpeg;base64,", "data:IMAGE/PNG;base64,", "data:;base64,"]
)
def test_data_url_of_an_image_type_or_none_is_accepted(prefix: str) -> None:
    """Any image/* type (the bytes are sniffed anyway) or no type at all is accepted."""
    assert decode_base64(prefix + base64.b64encode(PNG).decode(), 10**6) == PNG


def test_decoded_size_is_limited_before_decoding() -> None:
    """More base64 than the byte limit allows is a 413."""
    with pytest.raises(PayloadTooLarge):
        decode_base64(base64.b64encode(b"\0" * 5000).decode(), 4000)


# -- formats -----------------------------------------------------------------------------------


@pytest.mark.parametrize("image_format", ["JPEG", "PNG", "WEBP", "GIF", "BMP"])
def test_allowed_formats_are_sniffed_from_bytes(image_format: str) -> None:
    """JPEG, PNG, WebP, GIF and BMP are recognised by their magic bytes and decode to RGB."""
    data = encode_image(np.full((5, 7, 3), 90, np.uint8), image_format)
    assert sniff_format(data) == image_format
    image = load_rgb(data, LIMITS)
    assert image.mode == "RGB"
    assert image.size == (7, 5)


@pytest.mark.parametrize("image_format", ["TIFF", "ICO", "PPM"])
def test_other_image_formats_are_unsupported(image_format: str) -> None:
    """A valid image in another format is a 415, not decoded."""
    with pytest.raises(UnsupportedMediaType):
        load_rgb(encode_image(np.zeros((8, 8, 3), np.uint8), image_format), LIMITS)


def test_non_image_bytes_are_unsupported() -> None:
    """Text or random bytes are a 415 (no decoder is tried)."""
    with pytest.raises(UnsupportedMediaType):
        load_rgb(b"%PDF-1.7 hello", LIMITS)


@pytest.mark.parametrize(
    "data",
    [
        b"\x89PNG\r\n\x1a\n" + b"garbage" * 10,
        PNG[: len(PNG) // 2],
        b"\xff\xd8\xff" + b"\0" * 50,
        b"GIF89a",
        b"BM" + b"\0" * 4,
    ],
)
def test_corrupt_or_truncated_images_are_invalid(data: bytes) -> None:
    """A recognised signature followed by garbage is a 400 invalid_image."""
    with pytest.raises(InvalidImage):
        load_rgb(data, LIMITS)


def test_truncated_jpeg_is_invalid() -> None:
    """A JPEG cut in half does not decode to a half-grey picture."""
    jpeg = encode_image(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8), "JPEG")
    with pytest.raises(InvalidImage):
        load_rgb(jpeg[: len(jpeg) // 2], LIMITS)


# -- limits ------------------------------------------------------------------------------------


# Between 89M and 178M pixels Pillow only warns while opening; the gateway still rejects.
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize(("width", "height"), [(20000, 20000), (7000, 7000), (100_000, 1000)])
def test_pixel_bomb_is_rejected_from_the_header_without_decoding(width: int, height: int) -> None:
    """An oversized PNG is rejected by its header: its pixel data is garbage, so decoding it
    would have given invalid_image; a 413 proves nothing was decoded."""
    with pytest.raises(PayloadTooLarge):
        load_rgb(png_header_only(width, height), ImageLimits(40_000_000))


def test_header_only_png_within_limits_is_invalid() -> None:
    """The same garbage PNG at an allowed size is decoded, and fails as invalid_image."""
    with pytest.raises(InvalidImage):
        load_rgb(png_header_only(20, 20), ImageLimits(40_000_000))


def test_pixel_limit_message_names_the_size() -> None:
    """Within Pillow's own bomb limit, the gateway's message gives the image's dimensions."""
    with pytest.raises(PayloadTooLarge, match="7000x7000"):
        open_image(png_header_only(7000, 7000), ImageLimits(40_000_000))


def test_pixel_limit_is_inclusive() -> None:
    """An image of exactly max_pixels is accepted; one pixel more is not."""
    data = encode_image(np.zeros((10, 10, 3), np.uint8), "PNG")
    assert load_rgb(data, ImageLimits(100)).size == (10, 10)
    with pytest.raises(PayloadTooLarge):
        load_rgb(data, ImageLimits(99))


def test_pillow_decompression_bomb_error_is_a_413(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pillow's own bomb guard (stricter here) maps to 413, not 500."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)
    data = encode_image(np.zeros((10, 10, 3), np.uint8), "PNG")
    with pytest.raises(PayloadTooLarge):
        load_rgb(data, ImageLimits(10**6))


# -- modes -------------------------------------------------------------------------------------


def test_transparent_pixels_are_composited_on_white() -> None:
    """RGBA: fully transparent pixels become white, opaque ones keep their colour."""
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = (10, 20, 30, 255)
    rgba[1, 1] = (0, 0, 0, 0)  # transparent black
    rgba[0, 1] = (0, 0, 0, 128)  # half-transparent black
    out = np.asarray(load_rgb(encode_image(rgba, "PNG"), LIMITS))
    assert tuple(out[0, 0]) == (10, 20, 30)
    assert tuple(out[1, 1]) == (255, 255, 255)
    assert all(126 <= v <= 128 for v in out[0, 1])


def test_la_and_palette_transparency_are_composited_on_white() -> None:
    """LA and P-with-transparency images get the same white background."""
    la = Image.fromarray(np.array([[[50, 255], [50, 0]]], np.uint8), "LA")
    assert np.asarray(to_rgb(la)).tolist() == [[[50, 50, 50], [255, 255, 255]]]
    palette = Image.new("P", (2, 1))
    palette.putpalette([0, 0, 0, 200, 0, 0] + [0] * 762)
    palette.putpixel((0, 0), 0)
    palette.putpixel((1, 0), 1)
    gif = encode_image(palette, "GIF", transparency=0)
    assert np.asarray(load_rgb(gif, LIMITS)).tolist() == [[[255, 255, 255], [200, 0, 0]]]


@pytest.mark.parametrize("mode", ["L", "1", "P", "CMYK", "YCbCr", "RGBA", "LA", "I", "F"])
def test_every_mode_becomes_rgb(mode: str) -> None:
    """Any PIL mode converts to a 3-channel 8-bit image."""
    image = Image.new("RGB", (4, 3), (120, 60, 30)).convert(mode)
    out = to_rgb(image)
    assert out.mode == "RGB"
    assert out.size == (4, 3)


def test_grayscale_keeps_its_level() -> None:
    """An L image converts to equal R, G, B."""
    gray = encode_image(np.full((3, 3), 77, np.uint8), "PNG")
    assert set(np.asarray(load_rgb(gray, LIMITS)).reshape(-1).tolist()) == {77}


def test_sixteen_bit_grayscale_is_scaled_not_clipped() -> None:
    """16-bit PNG levels are scaled to 8 bits (PIL's convert would clip them all to white)."""
    levels = np.array([[0, 256 * 100, 65535]], np.uint16)
    image = Image.fromarray(levels)
    png = encode_image(image, "PNG")
    assert Image.open(io.BytesIO(png)).mode.startswith("I")
    out = np.asarray(load_rgb(png, LIMITS))
    assert out[0, :, 0].tolist() == [0, 100, 255]


def test_cmyk_jpeg_decodes_to_rgb() -> None:
    """A CMYK JPEG (print workflows) is converted, not rejected."""
    cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # red
    out = np.asarray(load_rgb(encode_image(cmyk, "JPEG"), LIMITS))
    assert out[4, 4, 0] > 200 and out[4, 4, 1] < 60 and out[4, 4, 2] < 60


def test_exif_orientation_is_applied() -> None:
    """A JPEG stored landscape with Orientation=6 (rotate 90° CW) decodes as portrait."""
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :20] = (255, 0, 0)  # left half red
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6
    out = load_rgb(encode_image(image, "JPEG", exif=exif.tobytes(), quality=95), LIMITS)
    assert out.size == (20, 40)
    top = np.asarray(out)[5, 10]
    assert top[0] > 200 and top[1] < 60  # the red left half is now on top


def test_animation_uses_its_first_frame() -> None:
    """An animated GIF classifies its first frame."""
    frames = [Image.new("RGB", (6, 6), colour) for colour in [(255, 0, 0), (0, 0, 255)]]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    out = np.asarray(load_rgb(buffer.getvalue(), LIMITS))
    assert tuple(out[3, 3]) == (255, 0, 0)


def test_before_load_hook_runs_before_decoding() -> None:
    """The draft-mode seam sees the opened image before any pixel is decoded."""
    seen: list[bool] = []

    def hook(image: Image.Image) -> None:
        seen.append(bool(getattr(image, "tile", None)))  # load() empties the tile list once decoded

    load_rgb(encode_image(np.zeros((8, 8, 3), np.uint8), "JPEG"), LIMITS, hook)
    assert seen == [True]


BIG_LIMITS = ImageLimits(max_pixels=10**8)


def _large_photo(width: int = 1920, height: int = 1080) -> Image.Image:
    """A smooth, photo-like RGB picture (gradients plus a circle) of the given size."""
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :]
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None]
    yy, xx = np.mgrid[0:height, 0:width]
    circle = ((xx - width / 2) ** 2 + (yy - height / 2) ** 2) < (min(width, height) / 4) ** 2
    pixels = np.stack([x + 0 * y, y + 0 * x, 255 * circle.astype(np.float32)], axis=-1)
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8))


@pytest.mark.parametrize(
    ("size", "min_short", "expected"),
    [
        ((1920, 1080), 464, (825, 464)),
        ((1080, 1920), 512, (512, 911)),
        ((1920, 1080), 540, (960, 540)),
        ((1920, 1080), 541, None),
        ((500, 375), 464, None),
    ],
)
def test_draft_size_keeps_the_shorter_side(
    size: tuple[int, int], min_short: int, expected: tuple[int, int] | None
) -> None:
    """The asked size keeps the aspect ratio and the minimum; None when no 1/2 scale fits."""
    assert draft_size(*size, min_short) == expected


def test_jpeg_draft_engages_for_a_large_jpeg() -> None:
    """A 1920x1080 JPEG with resize 232 decodes at 1/2 scale: 960x540, shorter side >= 464."""
    data = encode_image(_large_photo(), "JPEG", quality=90)
    image = load_rgb(data, BIG_LIMITS, jpeg_draft(232))
    assert image.size == (960, 540)
    assert image.mode == "RGB"
    exact = load_rgb(data, BIG_LIMITS).resize(image.size, Image.Resampling.BOX)
    difference = np.abs(np.asarray(image, np.int16) - np.asarray(exact, np.int16))
    assert difference.mean() < 3.0  # the same picture, only decoded at a lower resolution


def test_jpeg_draft_uses_smaller_scales_for_smaller_targets() -> None:
    """With factor 1 the shorter side only needs to reach the resize size: 1/4 scale here."""
    data = encode_image(_large_photo(), "JPEG", quality=90)
    assert load_rgb(data, BIG_LIMITS, jpeg_draft(232, factor=1)).size == (480, 270)


def test_jpeg_draft_leaves_small_jpegs_alone() -> None:
    """A 500x375 JPEG (typical ImageNet photo) is decoded at full size."""
    data = encode_image(_large_photo(500, 375), "JPEG", quality=90)
    assert load_rgb(data, BIG_LIMITS, jpeg_draft(232)).size == (500, 375)


def test_jpeg_draft_leaves_other_formats_alone() -> None:
    """PNG has no DCT scaling: a large PNG keeps its size."""
    data = encode_image(_large_photo(), "PNG")
    assert load_rgb(data, BIG_LIMITS, jpeg_draft(232)).size == (1920, 1080)


def test_jpeg_draft_keeps_grayscale_and_exif_orientation() -> None:
    """A grayscale JPEG stays single-channel until RGB conversion; EXIF rotation still applies."""
    photo = _large_photo().convert("L")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when shown
    data = encode_image(photo, "JPEG", quality=90, exif=exif)
    image = load_rgb(data, BIG_LIMITS, jpeg_draft(232))
    assert image.size == (540, 960)
    assert image.mode == "RGB"
    pixels = np.asarray(image)
    assert np.array_equal(pixels[..., 0], pixels[..., 2])
