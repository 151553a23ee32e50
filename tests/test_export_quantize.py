"""`python -m export --quantize int8`: a real int8 EfficientNet-Lite0, calibrated on skimage photos.

Everything runs through the real CLI in a subprocess; the published files are then checked against
docs/model-contract.md with helpers written independently of export/ (tests.export_support).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
import pytest
import skimage.data
from onnx import numpy_helper
from PIL import Image

from export.cpu_features import read_cpu_features
from export.quantize import QuantizeSettings, quantize_int8
from tests.emulated_cpu import AVX2_ONLY_CPU, onnx_logits
from tests.export_support import (
    check_lite0_parameters,
    config_parameters,
    parse_config,
    photo_logits,
    preprocess,
    real_photos,
    snapshot,
)
from tests.fixtures.models import run_export

MODEL_NAME = "efficientnet_lite0_int8"
QUANTIZE_ARGS = ("--model", "efficientnet_lite0", "--quantize", "int8")
# scikit-image's photos: the suite must not depend on ../shared/imagenet-samples. The speed gate
# is off because whether int8 beats fp32 depends on the CPU (slower without VNNI, see README);
# its refusal is tested on its own below.
SKIMAGE_ARGS = ("--calibration-images", "skimage", "--min-speedup", "0")
# VPMADDUBSW (AVX2 without VNNI) adds two u8 x s8 products in 16 bits: 2 * 255 * 64 fits.
PORTABLE_WEIGHT_LIMIT = 64


@pytest.fixture(scope="module")
def int8_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A repository into which the CLI published the int8 Lite0 (default name), and its stdout."""
    repository = tmp_path_factory.mktemp("int8") / "model_repository"
    result = run_export(*QUANTIZE_ARGS, *SKIMAGE_ARGS, "--repository", str(repository))
    assert result.returncode == 0, result.stdout + result.stderr
    return repository, result.stdout


def _model_dir(int8_export: tuple[Path, str]) -> Path:
    """The published model's directory."""
    return int8_export[0] / MODEL_NAME


def test_published_under_the_int8_name_with_a_report(int8_export: tuple[Path, str]) -> None:
    """Default name <model>_int8, version 1; the summary gives agreement, size and speed."""
    repository, stdout = int8_export
    assert sorted(entry.name for entry in repository.iterdir()) == [MODEL_NAME]
    assert (repository / MODEL_NAME / "1" / "model.onnx").is_file()
    assert f"Published {MODEL_NAME} version 1" in stdout
    assert "top-1 agreement" in stdout
    assert "size: fp32" in stdout
    assert "images/s" in stdout


def _initializers(model: onnx.ModelProto) -> dict[str, npt.NDArray[np.generic]]:
    """Initializer name -> numpy array."""
    return {tensor.name: numpy_helper.to_array(tensor) for tensor in model.graph.initializer}


def test_graph_is_qdq_with_per_channel_int8_conv_weights(int8_export: tuple[Path, str]) -> None:
    """QuantizeLinear/DequantizeLinear present; conv weights int8 with one scale per channel."""
    model = onnx.load(str(_model_dir(int8_export) / "1" / "model.onnx"))
    ops = [node.op_type for node in model.graph.node]
    assert ops.count("QuantizeLinear") > 10
    assert ops.count("DequantizeLinear") > 10
    assert "QLinearConv" not in ops  # QDQ format, not QOperator
    values = _initializers(model)
    producers = {output: node for node in model.graph.node for output in node.output}
    per_channel_convs = 0
    for conv in (node for node in model.graph.node if node.op_type == "Conv"):
        dequantize = producers.get(conv.input[1])
        if dequantize is None or dequantize.op_type != "DequantizeLinear":
            continue
        weight, scale = values[dequantize.input[0]], values[dequantize.input[1]]
        axis = next((attr.i for attr in dequantize.attribute if attr.name == "axis"), 1)
        assert weight.dtype == np.int8
        assert axis == 0
        assert scale.shape == (weight.shape[0],)
        per_channel_convs += 1
    assert per_channel_convs > 40  # Lite0 has 49 convs; the stem may stay float


def test_config_keeps_preprocessing_and_records_quantization(
    int8_export: tuple[Path, str],
) -> None:
    """config.pbtxt: Triton-parsable, fp32 input, Lite0's preprocessing, quantization parameter."""
    config = parse_config(_model_dir(int8_export) / "config.pbtxt")
    assert config.name == MODEL_NAME
    assert config.input[0].data_type == 11  # TYPE_FP32: clients keep sending float
    parameters = config_parameters(config)
    assert parameters["quantization"] == "int8-qdq-per-channel"
    check_lite0_parameters(parameters)


def test_export_json_records_the_int8_validation(int8_export: tuple[Path, str]) -> None:
    """export.json: the quantization figures that justified publishing."""
    record = json.loads((_model_dir(int8_export) / "1" / "export.json").read_text())
    quantization = record["quantization"]
    assert quantization["scheme"] == "int8-qdq-per-channel"
    assert quantization["calibration_images"] == "scikit-image sample photos"
    validation = quantization["validation"]
    assert validation["passed"] is True
    assert validation["checker"] == "passed"
    assert validation["top1_agreement"] >= validation["min_top1_agreement"] == 0.9
    assert quantization["size_bytes"]["int8"] < 0.6 * quantization["size_bytes"]["fp32"]
    assert record["onnx"]["size_bytes"] == quantization["size_bytes"]["int8"]


@real_photos
def test_int8_model_still_recognises_real_photos(
    int8_export: tuple[Path, str],
    photo: Callable[[], npt.NDArray[np.uint8]],
    expected: set[str],
) -> None:
    """Through its recorded preprocessing, the int8 model names a cat / an espresso or cup."""
    logits, labels = photo_logits(_model_dir(int8_export), photo())
    assert labels[int(np.argmax(logits[0]))] in expected


def test_unreachable_agreement_refuses_to_publish(int8_export: tuple[Path, str]) -> None:
    """--min-agreement 1.01 cannot be met: exit 1, the figures shown, the repository untouched."""
    repository = int8_export[0]
    before = snapshot(repository)
    result = run_export(
        *QUANTIZE_ARGS, *SKIMAGE_ARGS, "--min-agreement", "1.01", "--repository", str(repository)
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "top-1 agreement" in result.stderr
    assert "minimum 101.0%" in result.stderr
    assert "nothing was published" in result.stderr
    assert "Traceback" not in result.stderr
    assert snapshot(repository) == before


@pytest.mark.parametrize(
    "args",
    [
        ("--calibration-count", "10"),
        ("--min-agreement", "0.5"),
        ("--calibration-images", "skimage"),
    ],
    ids=["count", "agreement", "images"],
)
def test_quantize_flags_without_quantize_are_refused(args: tuple[str, ...], tmp_path: Path) -> None:
    """Calibration flags alone are a usage error (exit 2), not silently ignored."""
    result = run_export("--model", "efficientnet_lite0", *args, "--repository", str(tmp_path))
    assert result.returncode == 2
    assert "only apply with --quantize int8" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_missing_calibration_folder_is_a_usage_error(tmp_path: Path) -> None:
    """A --calibration-images folder that does not exist: exit 2 before any export work."""
    result: subprocess.CompletedProcess[str] = run_export(
        *QUANTIZE_ARGS,
        "--calibration-images",
        str(tmp_path / "missing"),
        "--repository",
        str(tmp_path / "repo"),
    )
    assert result.returncode == 2
    assert "is not a directory" in result.stderr
    assert not (tmp_path / "repo").exists()


def _int8_weights(model: onnx.ModelProto) -> list[npt.NDArray[np.generic]]:
    """The int8 initializers that DequantizeLinear nodes read: the quantized weights."""
    values = _initializers(model)
    return [
        values[node.input[0]]
        for node in model.graph.node
        if node.op_type == "DequantizeLinear"
        and node.input[0] in values
        and values[node.input[0]].dtype == np.int8
    ]


def test_int8_weights_cannot_saturate_without_vnni(int8_export: tuple[Path, str]) -> None:
    """Every int8 weight is within +-64, so u8 x s8 pairs fit VPMADDUBSW's 16 bits on any CPU."""
    model = onnx.load(str(_model_dir(int8_export) / "1" / "model.onnx"))
    weights = _int8_weights(model)
    assert len(weights) > 40
    largest = max(int(np.abs(w.astype(np.int32)).max()) for w in weights)
    assert 32 <= largest <= PORTABLE_WEIGHT_LIMIT
    assert 2 * 255 * largest <= 32767


def test_export_json_records_the_cpu_it_was_validated_on(int8_export: tuple[Path, str]) -> None:
    """export.json names this CPU and its int8 flags, the weight range and the speed-up."""
    cpu = read_cpu_features()
    print(f"CPU: {cpu.describe()}")
    quantization = json.loads((_model_dir(int8_export) / "1" / "export.json").read_text())[
        "quantization"
    ]
    assert quantization["validated_on_cpu"] == cpu.as_dict()
    assert quantization["saturation_free_without_vnni"] is True
    assert quantization["qdq"]["max_abs_int8_weight"] <= PORTABLE_WEIGHT_LIMIT
    assert quantization["settings"]["reduce_range"] is True
    speed = quantization["speed_images_per_s"]
    assert speed["speedup"] == pytest.approx(speed["int8"] / speed["fp32"])
    assert speed["min_speedup"] == 0


def test_unreachable_speedup_refuses_to_publish(int8_export: tuple[Path, str]) -> None:
    """--min-speedup 1000 cannot be met: exit 1, figures and CPU shown, nothing published."""
    repository = int8_export[0]
    before = snapshot(repository)
    result = run_export(
        *QUANTIZE_ARGS,
        "--calibration-images",
        "skimage",
        "--min-speedup",
        "1000",
        "--repository",
        str(repository),
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "minimum 1000.00x" in result.stderr
    assert "CPU: " in result.stderr and "int8 kernels" in result.stderr
    assert "Publish the fp32 model instead" in result.stderr
    assert "nothing was published" in result.stderr
    assert "Traceback" not in result.stderr
    assert snapshot(repository) == before


def _photo_batch(parameters: dict[str, str]) -> npt.NDArray[np.float32]:
    """The cat and the espresso, preprocessed as the model's config says."""
    photos = (skimage.data.chelsea(), skimage.data.coffee())  # type: ignore[no-untyped-call]
    return np.stack([preprocess(Image.fromarray(photo), parameters) for photo in photos])


def test_int8_model_answers_the_same_on_an_avx2_only_cpu(
    int8_export: tuple[Path, str], tmp_path: Path
) -> None:
    """Under an emulated AVX2-only CPU (no AVX-512, no VNNI) the logits equal this CPU's."""
    model_dir = _model_dir(int8_export)
    batch = _photo_batch(config_parameters(parse_config(model_dir / "config.pbtxt")))
    native = onnx_logits(model_dir / "1" / "model.onnx", batch, tmp_path)
    emulated = onnx_logits(model_dir / "1" / "model.onnx", batch, tmp_path, AVX2_ONLY_CPU)
    print(f"max |logit diff| native vs {AVX2_ONLY_CPU}: {np.abs(native - emulated).max():.3g}")
    assert np.array_equal(native.argmax(axis=1), emulated.argmax(axis=1))
    assert np.abs(native - emulated).max() <= 1e-3


def test_emulation_detects_full_range_saturation(model_repository: Path, tmp_path: Path) -> None:
    """Control: full-range int8 weights give other logits on the emulated AVX2 CPU than on VNNI."""
    cpu = read_cpu_features()
    if not cpu.has_vnni:
        pytest.skip(f"this CPU has no VNNI ({cpu.describe()}): both runs saturate alike")
    model_dir = model_repository / "efficientnet_lite0"
    batch = _photo_batch(config_parameters(parse_config(model_dir / "config.pbtxt")))
    full_range = tmp_path / "full-range.onnx"
    settings = QuantizeSettings(reduce_range=False, preprocess=False)
    quantize_int8(model_dir / "1" / "model.onnx", full_range, batch, settings)
    native = onnx_logits(full_range, batch, tmp_path)
    emulated = onnx_logits(full_range, batch, tmp_path, AVX2_ONLY_CPU)
    print(
        f"full range: max |logit diff| native vs {AVX2_ONLY_CPU}: "
        f"{np.abs(native - emulated).max():.3g}"
    )
    assert np.abs(native - emulated).max() > 0.05
