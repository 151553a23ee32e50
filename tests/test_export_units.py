"""Unit tests of export's parts: config rendering, preprocessing, labels, repository operations."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torchvision
from PIL import Image
from torchvision import transforms as T

from export.architectures import check_architecture
from export.efficientnet import EFFICIENTNET_LITE0_PREPROCESSING
from export.errors import UnknownModelError, UsageError, VersionExistsError
from export.model_labels import imagenet_categories
from export.publish import VersionPublisher
from export.repository import (
    commit_version,
    create_staging_dir,
    next_version,
    remove_stale_entries,
    write_text_atomically,
)
from export.sources import WeightsChoice
from export.torchvision_models import from_torchvision_transforms
from model_contract.labels import LabelsError, parse_labels, render_labels
from model_contract.preprocessing import Preprocessing
from model_contract.repository import list_versions
from model_contract.triton_config import (
    TritonModelConfig,
    config_parameters,
    parse_config,
    render_config,
)
from tests.export_support import check_published_layout, preprocess
from tests.fixtures.models import REPO_ROOT


def _contract_config_example() -> str:
    """The config.pbtxt example block of docs/model-contract.md."""
    text = (REPO_ROOT / "docs" / "model-contract.md").read_text(encoding="utf-8")
    match = re.search(r"```\n(name: .*?)```", text, flags=re.DOTALL)
    assert match, "docs/model-contract.md has no config.pbtxt example"
    return match.group(1)


def _resnet50_config() -> TritonModelConfig:
    """The config facts of ResNet50 IMAGENET1K_V2, taken from torchvision's weights metadata."""
    weights = torchvision.models.ResNet50_Weights.IMAGENET1K_V2
    return TritonModelConfig(
        name="resnet50",
        input_name="input",
        output_name="logits",
        input_dims=(3, 224, 224),
        num_classes=len(weights.meta["categories"]),
        preprocessing=from_torchvision_transforms(weights.transforms()),
        trained=True,
        source="torchvision:resnet50:IMAGENET1K_V2",
    )


def test_rendered_config_is_exactly_the_contract_example() -> None:
    """ResNet50 IMAGENET1K_V2 renders byte for byte as docs/model-contract.md shows."""
    expected = _contract_config_example().replace('name: "<name>"', 'name: "resnet50"')
    assert render_config(_resnet50_config()) == expected


def test_rendered_config_parses_with_triton_schema_and_round_trips() -> None:
    """Triton's protobuf schema accepts the config and the preprocessing reads back unchanged."""
    config = _resnet50_config()
    parsed = parse_config(render_config(config))
    assert parsed.max_batch_size == 16
    assert list(parsed.input[0].dims) == [3, 224, 224]
    assert list(parsed.output[0].dims) == [1000]
    assert parsed.output[0].label_filename == "labels.txt"
    parameters = config_parameters(render_config(config))
    assert Preprocessing.from_parameters(parameters) == config.preprocessing
    assert parameters["model_trained"] == "true"


def test_preprocessing_comes_from_the_weights_transforms() -> None:
    """ResNet50 V2 resizes to 232; EfficientNet-B3's weights say 320/300 bicubic."""
    resnet = from_torchvision_transforms(
        torchvision.models.ResNet50_Weights.IMAGENET1K_V2.transforms()
    )
    assert (resnet.resize_size, resnet.crop_size, resnet.interpolation) == (232, 224, "bilinear")
    effnet_b3 = from_torchvision_transforms(
        torchvision.models.EfficientNet_B3_Weights.IMAGENET1K_V1.transforms()
    )
    assert (effnet_b3.resize_size, effnet_b3.crop_size, effnet_b3.interpolation) == (
        320,
        300,
        "bicubic",
    )


def test_efficientnet_lite0_preprocessing_is_inception_style() -> None:
    """Lite0: mean 0.498 / std 0.502 on 0..1, 256 bilinear resize, 224 crop."""
    expected = Preprocessing(256, 224, (0.498, 0.498, 0.498), (0.502, 0.502, 0.502), "bilinear")
    assert expected == EFFICIENTNET_LITE0_PREPROCESSING


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "nearest"])
@pytest.mark.parametrize("size", [(640, 480), (300, 500), (224, 224)])
def test_contract_pil_preprocessing_matches_torchvision(
    interpolation: str, size: tuple[int, int]
) -> None:
    """The contract's PIL recipe (used by the tests) equals torchvision's transforms."""
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    parameters = {
        "preprocess_resize_size": "232",
        "preprocess_crop_size": "224",
        "preprocess_mean": "0.485,0.456,0.406",
        "preprocess_std": "0.229,0.224,0.225",
        "preprocess_interpolation": interpolation,
    }
    reference = T.Compose(
        [
            T.Resize(232, interpolation=T.InterpolationMode(interpolation)),
            T.CenterCrop(224),
            T.ToTensor(),
            T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ]
    )(image).numpy()
    np.testing.assert_allclose(preprocess(image, parameters), reference, atol=1e-5)


def test_imagenet_categories_are_in_standard_order() -> None:
    """Offline ImageNet labels: 1000 names, standard indices."""
    labels = imagenet_categories()
    assert len(labels) == 1000
    assert (labels[0], labels[281], labels[285], labels[967]) == (
        "tench",
        "tabby",
        "Egyptian cat",
        "espresso",
    )


def test_labels_parsing_rules() -> None:
    """Trailing blank lines are dropped; inner blank lines and empty files are errors."""
    assert parse_labels("cat\ndog\n\n\n", "x") == ["cat", "dog"]
    assert parse_labels("cat\r\ndog", "x") == ["cat", "dog"]
    assert render_labels(["cat", "dog"]) == "cat\ndog\n"
    with pytest.raises(LabelsError, match="blank line"):
        parse_labels("cat\n\ndog\n", "x")
    with pytest.raises(LabelsError, match="empty"):
        parse_labels("\n\n", "x")


def test_weights_choice_parsing() -> None:
    """imagenet / none (any case) or a path."""
    assert WeightsChoice.parse("ImageNet").kind == "imagenet"
    assert WeightsChoice.parse("none").kind == "none"
    choice = WeightsChoice.parse("ckpt/model.pth")
    assert (choice.kind, choice.path) == ("checkpoint", Path("ckpt/model.pth"))


def test_unknown_model_name_suggests_close_names() -> None:
    """A typo gets the nearest architecture names."""
    with pytest.raises(UnknownModelError, match="resnet50"):
        check_architecture("resnet5O")
    with pytest.raises(UnknownModelError, match="efficientnet_lite0"):
        check_architecture("efficientnet-lite0")
    check_architecture("efficientnet_lite0")
    check_architecture("mobilenet_v3_small")


def test_versions_are_the_numeric_directories(tmp_path: Path) -> None:
    """Only numeric directories count; next_version is one above the highest."""
    assert next_version(tmp_path / "missing") == 1
    for name in ("1", "3", "10", ".staging-1-x", "notes"):
        (tmp_path / name).mkdir()
    (tmp_path / "12").write_text("a file, not a version")
    assert list_versions(tmp_path) == [1, 3, 10]
    assert next_version(tmp_path) == 11


def test_write_text_atomically_only_when_changed(tmp_path: Path) -> None:
    """Same content: untouched (inode and mtime kept). New content: replaced, no temp left."""
    path = tmp_path / "config.pbtxt"
    assert write_text_atomically(path, "a\n") is True
    before = path.stat()
    assert write_text_atomically(path, "a\n") is False
    after = path.stat()
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)
    assert write_text_atomically(path, "b\n") is True
    assert path.read_text() == "b\n"
    assert path.stat().st_ino != before.st_ino
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.pbtxt"]


def test_commit_version_refuses_then_forces(tmp_path: Path) -> None:
    """An existing version is kept unless forced; forcing swaps it and leaves nothing behind."""
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / "model.onnx").write_text("old")
    staging = create_staging_dir(tmp_path)
    (staging / "model.onnx").write_text("new")
    with pytest.raises(VersionExistsError):
        commit_version(staging, tmp_path, 1)
    assert (tmp_path / "1" / "model.onnx").read_text() == "old"
    commit_version(staging, tmp_path, 1, force=True)
    assert (tmp_path / "1" / "model.onnx").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1"]
    assert oct((tmp_path / "1").stat().st_mode & 0o777) == oct(0o755)


def test_stale_entries_of_dead_processes_are_removed(tmp_path: Path) -> None:
    """Staging dirs of exited processes go; ours, live ones and foreign dot files stay."""
    finished = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    dead_pid = int(finished.stdout)
    stale = tmp_path / f".staging-{dead_pid}-abc"
    stale.mkdir()
    (stale / "model.onnx").write_text("partial")
    stale_temp = tmp_path / f".tmp-{dead_pid}-config.pbtxt-x"
    stale_temp.write_text("partial")
    ours = tmp_path / f".staging-{os.getpid()}-def"
    ours.mkdir()
    live_parent = tmp_path / f".staging-{os.getppid()}-ghi"
    live_parent.mkdir()
    foreign = tmp_path / ".keep"
    foreign.write_text("")
    removed = remove_stale_entries(tmp_path)
    assert sorted(removed) == sorted([stale, stale_temp])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [ours.name, live_parent.name, foreign.name]
    )


@pytest.mark.parametrize("failure", [RuntimeError("boom"), KeyboardInterrupt()])
def test_publisher_failure_leaves_repository_as_it_was(
    tmp_path: Path, failure: BaseException
) -> None:
    """An exception or Ctrl-C inside the publish removes staging and the model dir it created."""
    (tmp_path / "other").mkdir()
    with pytest.raises(type(failure)), VersionPublisher(tmp_path, "fresh") as publisher:
        publisher.onnx_path.write_bytes(b"onnx")
        assert publisher.staging_dir.parent == tmp_path / "fresh"
        raise failure
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other"]


def test_publisher_commit_publishes_version_and_model_files(tmp_path: Path) -> None:
    """commit() writes labels, config and export.json and renames the version into place."""
    with VersionPublisher(tmp_path, "m") as publisher:
        publisher.onnx_path.write_bytes(b"onnx")
        published = publisher.commit("a\nb\n", 'name: "m"\n', {"source": "test"})
    assert published.version == 1 and published.config_changed and published.labels_changed
    model_dir = tmp_path / "m"
    check_published_layout(model_dir, golden=False)  # golden/ is the pipeline's, not commit()'s


def test_publisher_rejects_bad_names_and_versions(tmp_path: Path) -> None:
    """Names that could escape the repository or hide from Triton are refused."""
    for name in ("../evil", ".hidden", "a/b", ""):
        with pytest.raises(UsageError):
            VersionPublisher(tmp_path, name)
    with pytest.raises(UsageError):
        VersionPublisher(tmp_path, "ok", version=0)


def test_serving_defaults_render_threads_spinning_and_batching() -> None:
    """The measured serving defaults: one instance, 2+1 ORT threads, no spinning, no window."""
    parsed = parse_config(render_config(_resnet50_config()))
    assert parsed.HasField("dynamic_batching")  # batching on, with no added delay
    assert parsed.dynamic_batching.max_queue_delay_microseconds == 0
    assert list(parsed.dynamic_batching.preferred_batch_size) == []
    assert parsed.instance_group[0].count == 1
    parameters = config_parameters(render_config(_resnet50_config()))
    assert parameters["intra_op_thread_count"] == "2"
    assert parameters["inter_op_thread_count"] == "1"
    assert parameters["local_backend.session.intra_op.allow_spinning"] == "0"


def test_preferred_batch_sizes_and_instances_render_when_set() -> None:
    """Non-default batching and instance settings reach config.pbtxt in Triton's schema."""
    config = replace(
        _resnet50_config(),
        preferred_batch_sizes=(4, 8),
        max_queue_delay_microseconds=500,
        instance_count=2,
        ort_parameters={"intra_op_thread_count": "1"},
    )
    parsed = parse_config(render_config(config))
    assert list(parsed.dynamic_batching.preferred_batch_size) == [4, 8]
    assert parsed.dynamic_batching.max_queue_delay_microseconds == 500
    assert parsed.instance_group[0].count == 2
    parameters = config_parameters(render_config(config))
    assert parameters["intra_op_thread_count"] == "1"
    assert "local_backend.session.intra_op.allow_spinning" not in parameters
