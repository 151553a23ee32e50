"""Acceptance tests of `python -m export`: real exports, checked against the model contract."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
import torchvision

from tests.export_checkpoints import TinyClassifier
from tests.export_support import (
    check_published_layout,
    config_parameters,
    hidden_entries,
    parse_config,
    snapshot,
    version_dirs,
)
from tests.fixtures.models import SMALL_MODEL_ARGS, run_export


def _check_onnx_file(path: Path, classes: int, side: int) -> None:
    """One self-contained opset-17 file, IR <= 10, dynamic batch, runs at batch 1 and 3."""
    model = onnx.load(str(path), load_external_data=False)
    assert model.ir_version <= 10
    assert [entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")] == [
        17
    ]
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    batch_dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.HasField("dim_value")
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        inputs = np.random.default_rng(batch).standard_normal((batch, 3, side, side))
        (outputs,) = session.run(None, {"input": inputs.astype(np.float32)})
        assert outputs.shape == (batch, classes)


def test_help_documents_the_cli() -> None:
    """--help lists the options and the exit codes."""
    result = run_export("--help", timeout=60)
    assert result.returncode == 0
    for option in ("--model", "--weights", "--labels", "--repository", "--name", "--version"):
        assert option in result.stdout
    for option in ("--max-batch-size", "--max-queue-delay-us", "--force", "efficientnet_lite0"):
        assert option in result.stdout
    assert "exit codes" in result.stdout


def test_resnet50_untrained_publishes_version_1_then_version_2(tmp_path: Path) -> None:
    """The issue's acceptance run: checker + parity at 1 and 3, version 1 then version 2."""
    repository = tmp_path / "r"
    first = run_export("--model", "resnet50", "--weights", "none", "--repository", str(repository))
    assert first.returncode == 0, first.stderr
    assert "Published resnet50 version 1" in first.stdout
    assert "check_model(full_check=True): passed" in first.stderr
    assert "parity batch 1:" in first.stderr and "parity batch 3:" in first.stderr
    assert "python -m local_triton --model-repository" in first.stdout
    assert "python -m rollout status resnet50" in first.stdout

    model_dir = repository / "resnet50"
    check_published_layout(model_dir)
    config = parse_config(model_dir / "config.pbtxt")
    parameters = config_parameters(config)
    assert (config.name, config.backend, config.max_batch_size) == ("resnet50", "onnxruntime", 16)
    assert list(config.input[0].dims) == [3, 224, 224]
    assert list(config.output[0].dims) == [1000]
    assert parameters["model_trained"] == "false"
    assert parameters["model_source"] == "torchvision:resnet50:none"
    # --weights none still records the IMAGENET1K_V2 preprocessing (232, not 256).
    assert parameters["preprocess_resize_size"] == "232"
    assert parameters["preprocess_crop_size"] == "224"
    labels = (model_dir / "labels.txt").read_text().splitlines()
    assert labels == torchvision.models.ResNet50_Weights.IMAGENET1K_V2.meta["categories"]
    assert (model_dir / "1" / "labels.txt").read_text() == (model_dir / "labels.txt").read_text()

    record = json.loads((model_dir / "1" / "export.json").read_text())
    assert (record["name"], record["version"], record["trained"]) == ("resnet50", 1, False)
    validation = record["validation"]
    assert validation["checker"] == "passed" and validation["passed"] is True
    assert [b["batch_size"] for b in validation["batches"]] == [1, 3]
    for batch in validation["batches"]:
        assert batch["max_abs_diff"] <= 1e-3 and batch["top1_identical"] is True
    _check_onnx_file(model_dir / "1" / "model.onnx", classes=1000, side=224)

    model_level_before = {
        key: value for key, value in snapshot(model_dir).items() if not key.startswith("1")
    }
    version_1_before = {k: v for k, v in snapshot(model_dir).items() if k.startswith("1")}
    second = run_export("--model", "resnet50", "--weights", "none", "--repository", str(repository))
    assert second.returncode == 0, second.stderr
    assert "Published resnet50 version 2" in second.stdout
    after = snapshot(model_dir)
    assert version_dirs(model_dir) == ["1", "2"]
    assert hidden_entries(model_dir) == []
    # Same model again: config.pbtxt and labels.txt are not rewritten (same inode and mtime),
    # so Triton's poll mode does not reload the model config; version 1 is untouched.
    for key, value in model_level_before.items():
        assert after[key] == value, key
    for key, value in version_1_before.items():
        assert after[key] == value, key
    assert json.loads((model_dir / "2" / "export.json").read_text())["version"] == 2


def test_name_version_and_batching_flags(tmp_path: Path) -> None:
    """--name, --version, --max-batch-size and --max-queue-delay-us land in layout and config."""
    result = run_export(
        *SMALL_MODEL_ARGS,
        "--name",
        "small",
        "--version",
        "7",
        "--max-batch-size",
        "4",
        "--max-queue-delay-us",
        "1500",
        "--repository",
        str(tmp_path),
    )
    assert result.returncode == 0, result.stderr
    assert version_dirs(tmp_path / "small") == ["7"]
    config = parse_config(tmp_path / "small" / "config.pbtxt")
    assert (config.name, config.max_batch_size) == ("small", 4)
    assert config.dynamic_batching.max_queue_delay_microseconds == 1500


def test_state_dict_checkpoint_is_exported_with_its_weights(tmp_path: Path) -> None:
    """A state_dict checkpoint: the published ONNX computes what PyTorch with those weights does."""
    torch.manual_seed(3)
    reference = torchvision.models.get_model("mobilenet_v3_small", weights=None).eval()
    checkpoint = tmp_path / "mobilenet.pth"
    torch.save({"state_dict": reference.state_dict(), "epoch": 5}, checkpoint)
    repository = tmp_path / "repo"
    result = run_export(
        "--model",
        "mobilenet_v3_small",
        "--weights",
        str(checkpoint),
        "--repository",
        str(repository),
    )
    assert result.returncode == 0, result.stderr
    model_dir = repository / "mobilenet_v3_small"
    parameters = config_parameters(parse_config(model_dir / "config.pbtxt"))
    assert parameters["model_trained"] == "true"
    assert parameters["model_source"] == "torchvision:mobilenet_v3_small:checkpoint:mobilenet.pth"
    record = json.loads((model_dir / "1" / "export.json").read_text())
    assert record["weights"]["kind"] == "checkpoint" and record["weights"]["form"] == "state_dict"
    image = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = reference(image).numpy()
    session = onnxruntime.InferenceSession(str(model_dir / "1" / "model.onnx"))
    (actual,) = session.run(None, {"input": image.numpy()})
    np.testing.assert_allclose(actual, expected, atol=1e-3)


def test_full_module_checkpoint_with_own_labels(tmp_path: Path) -> None:
    """A pickled nn.Module with --labels: num_classes comes from the label count."""
    torch.save(TinyClassifier(num_classes=3), tmp_path / "tiny.pth")
    (tmp_path / "classes.txt").write_text("cat\ndog\nbird\n")
    repository = tmp_path / "repo"
    result = run_export(
        "--model",
        "resnet18",
        "--weights",
        str(tmp_path / "tiny.pth"),
        "--labels",
        str(tmp_path / "classes.txt"),
        "--name",
        "pets",
        "--repository",
        str(repository),
    )
    assert result.returncode == 0, result.stderr
    model_dir = repository / "pets"
    config = parse_config(model_dir / "config.pbtxt")
    assert list(config.output[0].dims) == [3]
    assert (model_dir / "labels.txt").read_text() == "cat\ndog\nbird\n"
    _check_onnx_file(model_dir / "1" / "model.onnx", classes=3, side=224)


@pytest.mark.parametrize("model", ["efficientnet_lite0", "resnet50"])
def test_session_repository_fixture_holds_cli_published_models(
    model_repository: Path, model: str
) -> None:
    """The shared fixture holds version 1 of both models, published by the CLI."""
    assert version_dirs(model_repository / model) == ["1"]
    assert (model_repository / model / "1" / "export.json").is_file()
