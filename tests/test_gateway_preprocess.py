"""Preprocessing parity: the gateway's PIL+numpy tensor equals torchvision's on real photos."""

from __future__ import annotations

import io

import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image

from gateway.classifier import preprocessing_of
from gateway.errors import ModelMisconfigured
from gateway.images import ImageLimits, jpeg_draft, load_rgb
from model_contract.preprocessing import Preprocessing as PreprocessSpec
from model_contract.preprocessing import (
    crop_box,
    preprocess,
    resized_size,
    source_crop_box,
)
from tests.fakes_gateway import SMALL_PREPROCESSING, encode_image

skdata = pytest.importorskip("skimage.data")
torch = pytest.importorskip("torch")
transforms = pytest.importorskip("torchvision.transforms")

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
SPECS = {
    "resnet50-v2": PreprocessSpec(232, 224, *IMAGENET, "bilinear"),
    "classic-bicubic": PreprocessSpec(256, 224, *IMAGENET, "bicubic"),
    "nearest-half": PreprocessSpec(160, 128, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "nearest"),
    "crop-larger-than-resize": PreprocessSpec(100, 112, *IMAGENET, "bilinear"),
}

# resnet50-v2's contract parameters, as its config.pbtxt carries them: the fake backend's
# ImageNet mean, std and bilinear interpolation, resized to 232 and cropped to 224.
RESNET50_PARAMETERS = {
    **SMALL_PREPROCESSING,
    "preprocess_resize_size": "232",
    "preprocess_crop_size": "224",
}


def _photos() -> dict[str, npt.NDArray[np.uint8]]:
    rng = np.random.default_rng(7)
    chelsea = skdata.chelsea()
    return {
        "chelsea": chelsea,
        "coffee": skdata.coffee(),
        "astronaut": skdata.astronaut(),
        "rocket": skdata.rocket(),
        "camera-gray": skdata.camera(),
        "tall-crop": chelsea[:, 100:180],
        "wide-strip": skdata.coffee()[150:190],
        "tiny-3x5": rng.integers(0, 256, (3, 5, 3), dtype=np.uint8),
        "one-pixel": np.array([[[200, 10, 60]]], np.uint8),
    }


PHOTOS = _photos()


def torchvision_tensor(image: Image.Image, spec: PreprocessSpec) -> npt.NDArray[np.float32]:
    """What torchvision produces for ``image`` with ``spec``'s parameters."""
    mode = transforms.InterpolationMode(spec.interpolation)
    pipeline = transforms.Compose(
        [
            transforms.Resize(spec.resize_size, interpolation=mode),
            transforms.CenterCrop(spec.crop_size),
            transforms.ToTensor(),
            transforms.Normalize(spec.mean, spec.std),
        ]
    )
    with torch.no_grad():
        return np.asarray(pipeline(image).numpy(), dtype=np.float32)


@pytest.mark.parametrize("spec_name", sorted(SPECS))
@pytest.mark.parametrize("photo", sorted(PHOTOS))
def test_tensor_matches_torchvision(photo: str, spec_name: str) -> None:
    """Same (3, crop, crop) float32 tensor as torchvision within 1e-5, on decoded real photos."""
    spec = SPECS[spec_name]
    data = encode_image(PHOTOS[photo], "PNG")
    ours = preprocess(load_rgb(data, ImageLimits(10**8)), spec)
    reference = torchvision_tensor(Image.open(io.BytesIO(data)).convert("RGB"), spec)
    assert ours.dtype == np.float32
    assert ours.shape == reference.shape == (3, spec.crop_size, spec.crop_size)
    np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-5)


def test_jpeg_photo_matches_torchvision() -> None:
    """The front end sends JPEG: parity holds on a JPEG-decoded photo too."""
    spec = SPECS["resnet50-v2"]
    data = encode_image(PHOTOS["chelsea"], "JPEG", quality=90)
    ours = preprocess(load_rgb(data, ImageLimits(10**8)), spec)
    reference = torchvision_tensor(Image.open(io.BytesIO(data)).convert("RGB"), spec)
    np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-5)


def _photo_1080p() -> Image.Image:
    """Chelsea upscaled to cover 1920x1080 (how the benchmark builds its 1080p payloads)."""
    photo = Image.fromarray(PHOTOS["chelsea"])
    scale = max(1920 / photo.width, 1080 / photo.height)
    big = photo.resize(
        (round(photo.width * scale), round(photo.height * scale)), Image.Resampling.BICUBIC
    )
    left, top = (big.width - 1920) // 2, (big.height - 1080) // 2
    return big.crop((left, top, left + 1920, top + 1080))


def test_large_jpeg_without_draft_matches_torchvision_exactly() -> None:
    """Draft off (no hook): a 1080p JPEG gives torchvision's tensor bit for bit."""
    spec = SPECS["resnet50-v2"]
    data = encode_image(_photo_1080p(), "JPEG", quality=90)
    ours = preprocess(load_rgb(data, ImageLimits(10**8)), spec)
    reference = torchvision_tensor(Image.open(io.BytesIO(data)).convert("RGB"), spec)
    np.testing.assert_array_equal(ours, reference)


def test_large_jpeg_with_draft_stays_close_to_exact() -> None:
    """Draft on: a 1080p JPEG decoded at 1/2 scale gives nearly the exact tensor."""
    spec = SPECS["resnet50-v2"]
    data = encode_image(_photo_1080p(), "JPEG", quality=90)
    exact = preprocess(load_rgb(data, ImageLimits(10**8)), spec)
    drafted_image = load_rgb(data, ImageLimits(10**8), jpeg_draft(spec.resize_size))
    assert drafted_image.size == (960, 540)
    drafted = preprocess(drafted_image, spec)
    assert drafted.shape == exact.shape
    assert not np.array_equal(drafted, exact)  # a different decode, so not bit-identical
    # Normalised units (one 8-bit level is about 0.017): on average under two levels apart.
    assert float(np.abs(drafted - exact).mean()) < 0.035


def test_source_crop_box_maps_the_crop_back_to_source_pixels() -> None:
    """The crop of a 960x540 -> 412x232 resize maps to ~522 source pixels square; padding: None."""
    resized = resized_size(960, 540, 232)
    box = crop_box(*resized, 224)
    region = source_crop_box((960, 540), resized, box)
    assert resized == (412, 232) and box == (94, 4, 318, 228)
    assert region is not None
    scale_x, scale_y = 960 / 412, 540 / 232
    assert region == pytest.approx((94 * scale_x, 4 * scale_y, 318 * scale_x, 228 * scale_y))
    assert source_crop_box((100, 80), (100, 80), crop_box(100, 80, 112)) is None


@pytest.mark.parametrize("spec_name", sorted(SPECS))
@pytest.mark.parametrize("photo", sorted(PHOTOS))
def test_resize_crop_only_is_within_one_level_of_exact(photo: str, spec_name: str) -> None:
    """Resizing only the crop's region differs from the full resize by float rounding at most."""
    spec = SPECS[spec_name]
    image = load_rgb(encode_image(PHOTOS[photo], "PNG"), ImageLimits(10**8))
    exact = preprocess(image, spec)
    fast = preprocess(image, spec, resize_crop_only=True)
    one_level = float(np.max(1 / (255 * np.asarray(spec.std)))) * 1.001
    assert fast.shape == exact.shape
    assert float(np.abs(fast - exact).max()) <= one_level
    assert float(np.mean(fast != exact)) < 0.01  # rounding moves a few pixels, not the picture


def test_resize_crop_only_on_1080p_draft_matches_what_it_replaces() -> None:
    """The gateway's draft path (1/2-scale decode + crop-region resize) stays close to exact."""
    spec = SPECS["resnet50-v2"]
    data = encode_image(_photo_1080p(), "JPEG", quality=90)
    drafted_image = load_rgb(data, ImageLimits(10**8), jpeg_draft(spec.resize_size))
    full_resize = preprocess(drafted_image, spec)
    fast = preprocess(drafted_image, spec, resize_crop_only=True)
    assert float(np.abs(fast - full_resize).max()) <= 1 / (255 * min(spec.std)) * 1.001


@pytest.mark.parametrize(
    ("size", "short", "expected"),
    [((451, 300), 232, (348, 232)), ((300, 451), 232, (232, 348)), ((5, 5), 7, (7, 7))],
)
def test_resized_size_follows_torchvision(
    size: tuple[int, int], short: int, expected: tuple[int, int]
) -> None:
    """Shorter side to ``short``, longer side truncated like torchvision's int()."""
    assert resized_size(*size, short) == expected


def test_crop_box_pads_small_images_like_torchvision() -> None:
    """Boxes reach outside small images exactly where torchvision pads them with zeros."""
    assert crop_box(10, 10, 4) == (3, 3, 7, 7)
    assert crop_box(3, 3, 6) == (-1, -1, 5, 5)
    assert crop_box(2, 9, 5) == (-1, 2, 4, 7)


def test_spec_from_contract_parameters() -> None:
    """The contract's preprocess_* parameters parse into a spec."""
    spec = preprocessing_of({**RESNET50_PARAMETERS, "model_trained": "true"}, "resnet50")
    assert spec == SPECS["resnet50-v2"]


@pytest.mark.parametrize(
    "change",
    [
        {"preprocess_resize_size": None},
        {"preprocess_resize_size": "big"},
        {"preprocess_crop_size": "0"},
        {"preprocess_mean": "0.5,0.5"},
        {"preprocess_std": "0.2,0,0.2"},
        {"preprocess_std": "nan,1,1"},
        {"preprocess_interpolation": "magic"},
    ],
)
def test_bad_parameters_are_a_model_configuration_error(change: dict[str, str | None]) -> None:
    """Missing or malformed parameters are a clear 503-class error, not a crash."""
    parameters: dict[str, str] = dict(RESNET50_PARAMETERS)
    for key, value in change.items():
        if value is None:
            del parameters[key]
        else:
            parameters[key] = value
    with pytest.raises(ModelMisconfigured):
        preprocessing_of(parameters, "m")
