"""Local checkpoints: read safely (weights-only first), unwrap state_dicts, fit them strictly."""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from export.architectures import Architecture, LoadedModule
from export.digest import file_record
from export.errors import CheckpointError, LabelsError
from export.model_labels import labels_origin
from export.progress import Progress


def load_checkpoint_into(
    architecture: Architecture,
    path: Path,
    labels: list[str],
    labels_from_file: bool,
    progress: Progress,
) -> LoadedModule:
    """A pickled module replaces the architecture's; a state_dict is loaded into a fresh one."""
    module = architecture.build(len(labels))
    with progress.step(f"Loading checkpoint {path}"):
        loaded = load_checkpoint(path, progress)
        if isinstance(loaded, nn.Module):
            module = loaded
            form = "module"
        else:
            _load_state_dict_strict(
                module, loaded, architecture.name, path, labels, labels_from_file
            )
            form = "state_dict"
    return LoadedModule(
        module=module,
        trained=True,
        source=f"{architecture.family}:{architecture.name}:checkpoint:{path.name}",
        provenance={"kind": "checkpoint", "form": form, **file_record(path.resolve())},
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
        raise LabelsError(
            f"checkpoint {path} has a {checkpoint_classes}-class classifier but "
            f"{labels_origin(labels_from_file)} has {len(labels)} "
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
