"""Unit tests of the int8 pieces: photo sets and splits, calibration reader, agreement, policy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import skimage.data
from PIL import Image

from export import calibration
from export.calibration import (
    SampleImage,
    images_from_folder,
    resolve_image_set,
    split_image_set,
    split_images,
)
from export.calibration_defaults import MIN_IMAGES_FOR_SPLIT
from export.errors import UsageError
from export.quant_validate import Agreement, QuantPolicy, QuantValidationReport, compare_logits
from export.quantize import ArrayCalibrationReader
from model_contract.preprocessing import Preprocessing

LITE0 = Preprocessing(256, 224, (0.498, 0.498, 0.498), (0.502, 0.502, 0.502), "bilinear")


def _photos(count: int) -> list[SampleImage]:
    """`count` placeholder photos (never loaded by the split)."""
    return [SampleImage(f"p{i:04d}", i % 7, lambda: Image.new("RGB", (8, 8))) for i in range(count)]


def test_large_sets_hold_out_validation_photos() -> None:
    """1000 photos: 200 calibration, 200 validation, disjoint, same pick every time."""
    split = split_images(_photos(1000), calibration_count=200, validation_count=200)
    calibration = {image.name for image in split.calibration}
    validation = {image.name for image in split.validation}
    assert (len(calibration), len(validation)) == (200, 200)
    assert not calibration & validation
    assert not split.overlapping
    again = split_images(_photos(1000), calibration_count=200, validation_count=200)
    assert [image.name for image in again.calibration] == [i.name for i in split.calibration]


def test_calibration_never_takes_more_than_half() -> None:
    """A 60-photo folder with --calibration-count 200: 30 calibrate, 30 validate."""
    split = split_images(_photos(60), calibration_count=200, validation_count=200)
    assert (len(split.calibration), len(split.validation)) == (30, 30)


def test_small_sets_validate_on_the_calibration_photos() -> None:
    """Below MIN_IMAGES_FOR_SPLIT photos, all serve both, and the split says so."""
    photos = _photos(MIN_IMAGES_FOR_SPLIT - 1)
    split = split_images(photos, calibration_count=200, validation_count=200)
    assert split.overlapping
    assert split.calibration == split.validation
    assert len(split.calibration) == len(photos)
    assert "too few to hold some out" in split.describe()


def test_skimage_set_validates_on_object_photos_and_mirrors() -> None:
    """skimage: all photos calibrate; the cat, espresso, tripod and missile photos validate."""
    split = split_image_set(calibration.skimage_photos())
    assert {image.name for image in split.calibration} >= {"chelsea", "coffee", "astronaut"}
    names = [image.name for image in split.validation]
    assert "chelsea" in names and "chelsea (mirrored)" in names
    assert "gravel" not in names
    mirrored = next(image for image in split.validation if image.name == "chelsea (mirrored)")
    original = skimage.data.chelsea()  # type: ignore[no-untyped-call]
    assert np.array_equal(np.asarray(mirrored.load()), original[:, ::-1])


def test_default_falls_back_to_skimage_without_the_shared_folder(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """No ../shared/imagenet-samples (a fresh clone): scikit-image's photos are used."""
    monkeypatch.setattr(calibration, "DEFAULT_FOLDER", tmp_path / "absent")
    assert resolve_image_set(None).origin == "scikit-image sample photos"


def test_folder_reads_labels_from_index_csv(tmp_path: Path) -> None:
    """Images directly in the folder, labels from index.csv; other files ignored."""
    for name in ("b.jpg", "a.png"):
        Image.new("RGB", (16, 12), "red").save(tmp_path / name)
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "index.csv").write_text("file,class_index\na.png,3\nb.jpg,281\n")
    found = images_from_folder(tmp_path)
    assert [(image.name, image.label) for image in found.images] == [("a.png", 3), ("b.jpg", 281)]
    assert found.images[0].load().size == (16, 12)


@pytest.mark.parametrize("content", [None, "file,class_index\na.png,three\n"])
def test_unusable_folders_are_usage_errors(tmp_path: Path, content: str | None) -> None:
    """An empty folder or a malformed index.csv: UsageError with a message."""
    if content is not None:
        Image.new("RGB", (4, 4)).save(tmp_path / "a.png")
        (tmp_path / "index.csv").write_text(content)
    with pytest.raises(UsageError):
        images_from_folder(tmp_path)


def test_a_broken_image_file_is_a_usage_error(tmp_path: Path) -> None:
    """A .jpg that is not an image fails with a message naming it, not a PIL traceback."""
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    (image,) = images_from_folder(tmp_path).images
    with pytest.raises(UsageError, match=r"broken\.jpg"):
        image.preprocessed(LITE0)


def test_calibration_reader_batches_and_rewinds() -> None:
    """All images come out once in batches of at most 8, then None; rewind starts over."""
    images = np.arange(20 * 3, dtype=np.float32).reshape(20, 3, 1, 1)
    reader = ArrayCalibrationReader("input", images, batch_size=8)
    sizes = []
    while (feed := reader.get_next()) is not None:
        sizes.append(len(feed["input"]))
    assert sizes == [8, 8, 4]
    reader.rewind()
    first = reader.get_next()
    assert first is not None
    np.testing.assert_array_equal(first["input"], images[:8])


def test_agreement_and_accuracy_figures() -> None:
    """Top-1 agreement, max |diff| and accuracies from hand-made logits."""
    fp32 = np.array([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0], [0.0, 1.0, 5.0], [1.0, 0.0, 0.5]])
    int8 = np.array([[2.5, 1.0, 0.0], [0.0, 1.0, 1.5], [0.0, 1.0, 4.0], [1.0, 0.0, 0.5]])
    found = compare_logits(fp32.astype(np.float32), int8.astype(np.float32), np.array([0, 1, 2, 2]))
    assert found.top1_agreement == 0.75
    assert found.max_abs_diff == pytest.approx(1.0)
    assert found.fp32_accuracy == 0.75
    assert found.int8_accuracy == 0.5


@pytest.mark.parametrize(("agreement", "passed"), [(0.95, True), (0.9, True), (0.89, False)])
def test_policy_threshold(agreement: float, passed: bool) -> None:
    """Publishing needs top-1 agreement >= min_agreement (0.9 by default)."""
    report = QuantValidationReport(True, QuantPolicy(), Agreement(100, agreement, 1.0), True)
    assert report.passed is passed
    assert ("FAILED" in report.lines()[1]) is not passed
