"""Golden references recorded by `python -m export`, and the kept version_policy.

The exports run through the real CLI in a subprocess (the untrained mobilenet_v3_small, a few
seconds each); the published golden sets are read back with the contract's reader and checked
against ONNX Runtime on the published model. The trained EfficientNet-Lite0 of the session
repository shows the references name what the photos show.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime
import pytest
import skimage.data
import torch
from google.protobuf import text_format
from PIL import Image

from export.errors import UsageError, ValidationFailedError
from export.golden import (
    FP32_LOGIT_TOLERANCE,
    SKIMAGE_GOLDEN_PHOTOS,
    check_golden_options,
    int8_logit_tolerance,
    record_golden,
    round_up_significant,
    skimage_photos,
)
from export.model_labels import imagenet_categories
from export.onnx_export import export_onnx
from export.pipeline import kept_version_policy
from export.progress import Progress
from model_contract.golden import (
    GOLDEN_DIR,
    GOLDEN_MANIFEST,
    MAX_GOLDEN_BYTES,
    GoldenSet,
    read_golden,
    read_golden_image,
)
from model_contract.preprocessing import Preprocessing, preprocess
from tests.export_checkpoints import TinyClassifier
from tests.export_support import (
    CAT_CLASSES,
    COFFEE_CLASSES,
    config_parameters,
    parse_config,
    snapshot,
)
from tests.fixtures.models import REPO_ROOT, SMALL_MODEL_ARGS, copy_repository, run_export

SMALL = "mobilenet_v3_small"
SHARED_SAMPLES = REPO_ROOT.parent / "shared" / "imagenet-samples"
DEFAULT_FILES = [f"{name}.jpg" for name in SKIMAGE_GOLDEN_PHOTOS]
VERSION_POLICY_LINE = "version_policy: { specific: { versions: [1] } }\n"


@pytest.fixture(scope="module")
def small_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    """A repository with the untrained mobilenet_v3_small v1 (default golden), stdout, stderr."""
    repository = tmp_path_factory.mktemp("golden") / "model_repository"
    result = run_export(*SMALL_MODEL_ARGS, "--repository", str(repository))
    assert result.returncode == 0, result.stdout + result.stderr
    return repository, result.stdout, result.stderr


def _golden(version_dir: Path) -> GoldenSet:
    """The version's golden set, which must exist and verify."""
    golden = read_golden(version_dir)
    assert golden is not None, f"no golden set in {version_dir}"
    for image in golden.images:
        read_golden_image(version_dir, image)  # raises unless the bytes match the manifest
    return golden


def _served_logits(
    model_dir: Path, version_dir: Path, golden: GoldenSet
) -> list[npt.NDArray[np.float32]]:
    """ONNX Runtime's logits on the published model.onnx for each stored golden image."""
    config = parse_config(model_dir / "config.pbtxt")
    spec = Preprocessing.from_parameters(config_parameters(config))
    session = onnxruntime.InferenceSession(
        str(version_dir / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    logits = []
    for image in golden.images:
        with Image.open(io.BytesIO(read_golden_image(version_dir, image))) as opened:
            batch = preprocess(opened.convert("RGB"), spec)[np.newaxis]
        (output,) = session.run(None, {config.input[0].name: batch})
        logits.append(np.asarray(output).reshape(-1))
    return logits


def _labels_sha256(version_dir: Path) -> str:
    """SHA-256 of the version's labels.txt as published."""
    return hashlib.sha256((version_dir / "labels.txt").read_bytes()).hexdigest()


def _write_photo(path: Path, array: npt.NDArray[np.uint8]) -> None:
    """Save `array` as the image format the file name says."""
    Image.fromarray(array).save(path)


def _skimage_photo(name: str) -> npt.NDArray[np.uint8]:
    """One of scikit-image's bundled photos (its loaders are untyped)."""
    return np.asarray(getattr(skimage.data, name)(), dtype=np.uint8)


def test_help_documents_the_golden_flags() -> None:
    """--help names --golden, --golden-count and --no-golden."""
    result = run_export("--help", timeout=60)
    assert result.returncode == 0
    for option in ("--golden DIR", "--golden-count N", "--no-golden"):
        assert option in result.stdout


def test_default_golden_set_is_published_with_the_version(
    small_export: tuple[Path, str, str],
) -> None:
    """golden/: references.json and the 5 scikit-image JPEGs, <= 2 MB, readable and verified."""
    repository, stdout, stderr = small_export
    version_dir = repository / SMALL / "1"
    files = sorted(path.name for path in (version_dir / GOLDEN_DIR).iterdir())
    assert files == sorted([GOLDEN_MANIFEST, *DEFAULT_FILES])
    size = sum(path.stat().st_size for path in (version_dir / GOLDEN_DIR).iterdir())
    print(f"default golden set of {SMALL}: {size} bytes")
    assert size <= MAX_GOLDEN_BYTES
    golden = _golden(version_dir)
    assert [image.file for image in golden.images] == DEFAULT_FILES
    assert golden.logit_tolerance == FP32_LOGIT_TOLERANCE
    assert golden.reference == f"pytorch {torch.__version__} (fp32)"
    assert golden.labels_sha256 == _labels_sha256(version_dir)
    for image in golden.images:
        assert Image.open(version_dir / GOLDEN_DIR / image.file).format == "JPEG"
        assert len(image.logits) == 1000 and len(image.top_k) == 5
        assert image.source.startswith("skimage.data.")
    record = json.loads((version_dir / "export.json").read_text())
    assert record["golden"]["images"] == 5 and record["golden"]["bytes"] == size
    assert record["golden"]["logit_tolerance"] == FP32_LOGIT_TOLERANCE
    assert record["golden"]["reference"] == golden.reference
    assert "Recording golden references (5 photos)" in stderr
    assert "skimage.data.chelsea():" in stderr
    assert "golden:        5 photos" in stdout


def test_default_golden_expected_classes_with_imagenet_labels(
    small_export: tuple[Path, str, str],
) -> None:
    """ImageNet labels: each photo's expected classes are recorded; astronaut has none."""
    golden = _golden(small_export[0] / SMALL / "1")
    categories = imagenet_categories()
    expected = {image.file: image.expected for image in golden.images}
    assert expected == {f"{name}.jpg": classes for name, classes in SKIMAGE_GOLDEN_PHOTOS.items()}
    assert {categories[index] for index in SKIMAGE_GOLDEN_PHOTOS["chelsea"] or ()} == CAT_CLASSES
    assert {categories[i] for i in SKIMAGE_GOLDEN_PHOTOS["coffee"] or ()} >= COFFEE_CLASSES
    for image in golden.images:
        assert image.top_labels == tuple(categories[index] for index in image.top_k)


def test_references_match_onnxruntime_on_the_published_model(
    small_export: tuple[Path, str, str], model_repository: Path
) -> None:
    """Reference logits = ONNX Runtime on model.onnx for the same image, within 1e-3."""
    for model_dir in (small_export[0] / SMALL, model_repository / "efficientnet_lite0"):
        golden = _golden(model_dir / "1")
        served = _served_logits(model_dir, model_dir / "1", golden)
        for image, logits in zip(golden.images, served, strict=True):
            np.testing.assert_allclose(logits, image.logits, rtol=0, atol=1e-3)
            if model_dir.name == "efficientnet_lite0":
                # The untrained model's logits are all near 0, so 1e-3 says little there; the
                # trained Lite0's are large, and its served top-5 is the references' too.
                assert image.logits[image.top_k[0]] > 3.0
                top5 = tuple(int(i) for i in np.argsort(-logits, kind="stable")[:5])
                assert top5 == image.top_k


def test_trained_lite0_golden_top1_names_the_photos(model_repository: Path) -> None:
    """The session's trained Lite0: chelsea and coffee references name an expected class."""
    golden = _golden(model_repository / "efficientnet_lite0" / "1")
    by_file = {image.file: image for image in golden.images}
    print("Lite0 golden top-1:", {file: image.top_labels[0] for file, image in by_file.items()})
    for name in ("chelsea.jpg", "coffee.jpg"):
        image = by_file[name]
        assert image.expected is not None and image.top_k[0] in image.expected, image.top_labels
    assert golden.logit_tolerance == 0.05


def test_custom_labels_record_no_expected_classes(tmp_path: Path) -> None:
    """With --labels the classes are not ImageNet's: expected is None, names are the file's."""
    labels = tmp_path / "classes.txt"
    labels.write_text("".join(f"class {index}\n" for index in range(1000)))
    repository = tmp_path / "repo"
    result = run_export(*SMALL_MODEL_ARGS, "--labels", str(labels), "--repository", str(repository))
    assert result.returncode == 0, result.stderr
    version_dir = repository / SMALL / "1"
    golden = _golden(version_dir)
    assert len(golden.images) == 5
    assert all(image.expected is None for image in golden.images)
    for image in golden.images:
        assert image.top_labels == tuple(f"class {index}" for index in image.top_k)
    assert golden.labels_sha256 == _labels_sha256(version_dir)


def test_version_policy_is_kept_and_no_golden_writes_none(
    small_export: tuple[Path, str, str], tmp_path: Path
) -> None:
    """A second export (--no-golden) keeps config.pbtxt's version_policy and has no golden/."""
    repository = copy_repository(small_export[0], tmp_path)
    config_path = repository / SMALL / "config.pbtxt"
    config_path.write_text(config_path.read_text() + VERSION_POLICY_LINE)
    result = run_export(*SMALL_MODEL_ARGS, "--no-golden", "--repository", str(repository))
    assert result.returncode == 0, result.stderr
    assert "Published mobilenet_v3_small version 2" in result.stdout
    config = parse_config(config_path)
    assert config.HasField("version_policy")
    assert list(config.version_policy.specific.versions) == [1]
    assert (config.name, list(config.output[0].dims)) == (SMALL, [1000])
    version_dir = repository / SMALL / "2"
    assert not (version_dir / GOLDEN_DIR).exists() and read_golden(version_dir) is None
    assert "golden" not in json.loads((version_dir / "export.json").read_text())
    assert "golden:        none (--no-golden)" in result.stdout
    assert "Recording golden references" not in result.stderr


def test_kept_version_policy_renders_the_existing_policy(tmp_path: Path) -> None:
    """kept_version_policy: '' without a (parseable) config or a policy, else one parseable line."""
    config_path = tmp_path / "config.pbtxt"
    assert kept_version_policy(config_path) == ""
    config_path.write_text('name: "m"\n')
    assert kept_version_policy(config_path) == ""
    config_path.write_text('name: "m"\nversion_policy { latest { num_versions: 2 } }\n')
    line = kept_version_policy(config_path)
    assert line == "version_policy { latest { num_versions: 2 } }\n"
    config_path.write_text('name: "m"\n' + line)
    assert parse_config(config_path).version_policy.latest.num_versions == 2
    config_path.write_text("version_policy: { specific: { versions: [1, 3] } }\n")
    policy = parse_config(config_path).version_policy
    one_line = text_format.MessageToString(policy, as_one_line=True)
    assert kept_version_policy(config_path) == f"version_policy {{ {one_line} }}\n"
    config_path.write_text("not { a config")  # Triton cannot load it: replaced, nothing kept
    assert kept_version_policy(config_path) == ""


def test_golden_dir_from_shared_imagenet_samples(tmp_path: Path) -> None:
    """--golden DIR with 3 ImageNet sample photos: bytes unchanged, expected from index.csv."""
    if not (SHARED_SAMPLES / "index.csv").is_file():
        pytest.skip(f"{SHARED_SAMPLES} is absent (a fresh clone has no ../shared)")
    with (SHARED_SAMPLES / "index.csv").open(newline="") as handle:
        rows = sorted(csv.DictReader(handle), key=lambda row: row["file"])[:3]
    photos = tmp_path / "photos"
    photos.mkdir()
    for row in rows:
        shutil.copy(SHARED_SAMPLES / row["file"], photos / row["file"])
    shutil.copy(SHARED_SAMPLES / "index.csv", photos / "index.csv")
    repository = tmp_path / "repo"
    args = ("--golden", str(photos), "--repository", str(repository))
    result = run_export(*SMALL_MODEL_ARGS, *args)
    assert result.returncode == 0, result.stderr
    version_dir = repository / SMALL / "1"
    golden = _golden(version_dir)
    assert [image.file for image in golden.images] == [row["file"] for row in rows]
    assert [image.expected for image in golden.images] == [
        (int(row["class_index"]),) for row in rows
    ]
    for image in golden.images:
        stored = (version_dir / GOLDEN_DIR / image.file).read_bytes()
        assert stored == (SHARED_SAMPLES / image.file).read_bytes()


def test_golden_dir_of_own_photos_with_index(tmp_path: Path) -> None:
    """--golden DIR --golden-count 3: sorted, capped, expected by file or by synset, else None."""
    photos = tmp_path / "photos"
    photos.mkdir()
    _write_photo(photos / "n02123045_tabby.JPEG", _skimage_photo("chelsea"))
    _write_photo(photos / "n07920052_espresso.jpg", _skimage_photo("coffee"))
    _write_photo(photos / "photo.png", _skimage_photo("rocket"))
    _write_photo(photos / "zz_extra.jpeg", _skimage_photo("astronaut"))  # 4th: beyond the count
    (photos / "notes.txt").write_text("not an image\n")
    # The tabby by its file name; the espresso only by the synset its name starts with.
    (photos / "index.csv").write_text(
        "file,class_index,synset\nn02123045_tabby.JPEG,281,n02123045\nother.JPEG,967,n07920052\n"
    )
    repository = tmp_path / "repo"
    args = ("--golden", str(photos), "--golden-count", "3", "--repository", str(repository))
    result = run_export(*SMALL_MODEL_ARGS, *args)
    assert result.returncode == 0, result.stderr
    assert "Recording golden references (3 photos)" in result.stderr
    version_dir = repository / SMALL / "1"
    golden = _golden(version_dir)
    assert [(image.file, image.expected) for image in golden.images] == [
        ("n02123045_tabby.JPEG", (281,)),
        ("n07920052_espresso.jpg", (967,)),
        ("photo.png", None),
    ]
    for image in golden.images:
        assert (version_dir / GOLDEN_DIR / image.file).read_bytes() == (
            photos / image.file
        ).read_bytes()
    record = json.loads((version_dir / "export.json").read_text())
    assert record["golden"]["images"] == 3 and record["golden"]["photos"] == str(photos)


def test_oversized_golden_dir_fails_and_leaves_the_repository_unchanged(
    small_export: tuple[Path, str, str], tmp_path: Path
) -> None:
    """Photos over MAX_GOLDEN_BYTES: exit code 2, a message with the fix, nothing changed."""
    photos = tmp_path / "photos"
    photos.mkdir()
    noise = np.random.default_rng(0).integers(0, 256, (1000, 800, 3), dtype=np.uint8)
    _write_photo(photos / "noise.png", noise)  # incompressible: about 2.4 MB
    assert (photos / "noise.png").stat().st_size > MAX_GOLDEN_BYTES
    repository = copy_repository(small_export[0], tmp_path)
    before = snapshot(repository)
    result = run_export(*SMALL_MODEL_ARGS, "--golden", str(photos), "--repository", str(repository))
    assert result.returncode == 2, result.stdout + result.stderr
    assert "MAX_GOLDEN_BYTES" in result.stderr and "--golden-count" in result.stderr
    assert "nothing was published" in result.stderr
    assert snapshot(repository) == before


def test_golden_options_are_checked_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Missing folder, no images, bad count, --no-golden with DIR, RGBA, bad index, no skimage."""
    with pytest.raises(UsageError, match="not a directory"):
        check_golden_options(tmp_path / "missing", 8, True)
    with pytest.raises(UsageError, match=r"no \.jpg"):
        check_golden_options(tmp_path, 8, True)
    with pytest.raises(UsageError, match="at least 1"):
        check_golden_options(None, 0, True)
    with pytest.raises(UsageError, match="exclude each other"):
        check_golden_options(tmp_path, 8, False)
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    Image.fromarray(rgba).save(tmp_path / "alpha.png")
    with pytest.raises(UsageError, match="RGBA"):
        check_golden_options(tmp_path, 8, True)
    (tmp_path / "alpha.png").unlink()
    Image.fromarray(rgba[:, :, :3]).save(tmp_path / "n01440764_tench.jpg")
    (tmp_path / "index.csv").write_text("file,class\nn01440764_tench.jpg,0\n")
    with pytest.raises(UsageError, match="class_index"):
        check_golden_options(tmp_path, 8, True)
    monkeypatch.setitem(sys.modules, "skimage", None)  # as if scikit-image were not installed
    with pytest.raises(UsageError, match="pip install scikit-image"):
        check_golden_options(None, 8, True)
    check_golden_options(None, 8, False)  # --no-golden needs no photos at all


def test_int8_tolerance_is_twice_the_measured_difference_rounded_up() -> None:
    """max(0.05, 2 x diff), rounded up to 2 significant digits."""
    assert [round_up_significant(value) for value in (0.05, 0.0613, 0.1234, 2.94, 1.0)] == [
        0.05,
        0.062,
        0.13,
        3.0,
        1.0,
    ]
    assert int8_logit_tolerance(0.001) == 0.05
    assert int8_logit_tolerance(0.3456) == 0.7
    assert int8_logit_tolerance(1.47) == 3.0


def test_record_golden_measures_the_staged_model(tmp_path: Path) -> None:
    """int8: tolerance from the staged model's distance to PyTorch; fp32 beyond 0.05 fails."""
    torch.manual_seed(0)
    module = TinyClassifier(num_classes=10).eval()
    shifted = TinyClassifier(num_classes=10).eval()
    shifted.load_state_dict(module.state_dict())
    with torch.no_grad():
        shifted.head.bias.add_(torch.linspace(0.0, 0.3, 10))  # the "int8" model: off by up to 0.3
    onnx_path = tmp_path / "model.onnx"
    export_onnx(shifted, onnx_path, (3, 56, 56))
    spec = Preprocessing(64, 56, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    labels = [f"c{index}" for index in range(10)]
    photos = skimage_photos()
    quiet = Progress(enabled=False)
    staging = tmp_path / "staging"
    staging.mkdir()
    record = record_golden(
        staging, module, labels, spec, onnx_path, photos,
        origin="test", imagenet_labels=False, quantized=True, progress=quiet,
    )  # fmt: skip
    assert record.onnxruntime_max_abs_diff == pytest.approx(0.3, abs=1e-4)
    assert record.logit_tolerance == int8_logit_tolerance(record.onnxruntime_max_abs_diff)
    assert 0.6 <= record.logit_tolerance <= 0.61
    golden = _golden(staging)
    assert golden.logit_tolerance == record.logit_tolerance
    assert all(image.expected is None for image in golden.images)
    with pytest.raises(ValidationFailedError, match="golden tolerance"):
        record_golden(
            tmp_path, module, labels, spec, onnx_path, photos,
            origin="test", imagenet_labels=False, quantized=False, progress=quiet,
        )  # fmt: skip
