"""The model under test: published with the export CLI, then read as the contract describes.

By default the benchmark saves seeded random weights for a torchvision architecture
(``python -m bench.seed_server --save-state-dict``), publishes them with
``python -m export --weights PATH`` and hands the same file to the baseline, so both sides
run the very same weights. ``efficientnet_lite0`` uses its packaged ImageNet weights on
both sides. ``--repository DIR`` reuses a published model instead.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model_contract.errors import ContractError
from model_contract.files import CONFIG_FILE, LABELS_FILE, MODEL_FILE, PROVENANCE_FILE
from model_contract.preprocessing import Preprocessing
from model_contract.repository import latest_version as contract_latest_version
from model_contract.triton_config import config_parameters

REPO_ROOT = Path(__file__).resolve().parent.parent
PACKAGED_WEIGHTS_MODELS = ("efficientnet_lite0",)
EXPORT_TIMEOUT_S = 900.0


class RepositoryError(Exception):
    """The model could not be published or the repository does not hold a usable model."""


def preprocess_from(parameters: dict[str, str]) -> Preprocessing:
    """The preprocessing the contract's `preprocess_*` parameters describe, or RepositoryError."""
    try:
        return Preprocessing.from_parameters(parameters)
    except ContractError as error:
        raise RepositoryError(
            f"config.pbtxt lacks usable preprocess_* parameters: {error}"
        ) from None


def latest_version(model_dir: Path) -> str:
    """The highest published version of a model, or RepositoryError when there is none."""
    version = contract_latest_version(model_dir)
    if version is None:
        raise RepositoryError(f"{model_dir} has no published version (no numeric directory)")
    return str(version)


@dataclass(frozen=True)
class PublishedModel:
    """A model version in a Triton repository, with what the baseline needs to rebuild it."""

    repository: Path
    name: str
    version: str
    arch: str
    preprocess: Preprocessing
    state_dict: Path | None
    weights_note: str

    @property
    def onnx_path(self) -> Path:
        """The published model.onnx."""
        return self.repository / self.name / self.version / MODEL_FILE

    @property
    def labels_path(self) -> Path:
        """The model-level labels.txt."""
        return self.repository / self.name / LABELS_FILE


def read_published(
    repository: Path, name: str, arch: str, state_dict: Path | None, weights_note: str
) -> PublishedModel:
    """Read a published model's latest version and contract parameters from `repository`."""
    model_dir = repository / name
    config = model_dir / CONFIG_FILE
    if not config.is_file():
        raise RepositoryError(f"{config} does not exist: publish {name!r} with `python -m export`")
    parameters = config_parameters(config.read_text(encoding="utf-8"))
    version = latest_version(model_dir)
    if not (model_dir / version / MODEL_FILE).is_file():
        raise RepositoryError(f"{model_dir / version} has no {MODEL_FILE}")
    return PublishedModel(
        repository=repository,
        name=name,
        version=version,
        arch=arch,
        preprocess=preprocess_from(parameters),
        state_dict=state_dict,
        weights_note=weights_note,
    )


def _run(command: list[str], what: str) -> None:
    try:
        completed = subprocess.run(
            command,
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=EXPORT_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise RepositoryError(f"{what} did not finish within {EXPORT_TIMEOUT_S:.0f} s") from None
    if completed.returncode != 0:
        tail = "\n".join((completed.stdout + completed.stderr).strip().splitlines()[-15:])
        raise RepositoryError(f"{what} failed (exit {completed.returncode}):\n{tail}")


def publish(model: str, repository: Path, workdir: Path) -> PublishedModel:
    """Publish `model` into `repository` with the export CLI, weights shared with the baseline."""
    if model in PACKAGED_WEIGHTS_MODELS:
        weights, state_dict, note = "imagenet", None, "packaged ImageNet weights on both sides"
    else:
        state_dict = workdir / f"{model}-seed0.pt"
        _run(
            [
                sys.executable,
                "-m",
                "bench.seed_server",
                "--arch",
                model,
                "--save-state-dict",
                str(state_dict),
            ],
            f"saving seeded weights for {model}",
        )
        weights, note = str(state_dict), "the same seeded random state_dict on both sides"
    _run(
        [
            sys.executable,
            "-m",
            "export",
            "--model",
            model,
            "--weights",
            weights,
            "--repository",
            str(repository),
            "--name",
            model,
            "--version",
            "1",
        ],
        f"`python -m export --model {model}`",
    )
    return read_published(repository, model, model, state_dict, note)


def _checkpoint_path(provenance: dict[str, Any]) -> Path | None:
    """The state_dict file export.json names (``weights.path``), if it still exists."""
    weights = provenance.get("weights")
    path = weights.get("path") if isinstance(weights, dict) else weights
    if isinstance(path, str) and path and Path(path).is_file():
        return Path(path)
    return None


def reuse(repository: Path, model: str) -> PublishedModel:
    """Read a published model; the baseline gets its weights when export.json names them."""
    model_dir = repository / model
    if not model_dir.is_dir():
        raise RepositoryError(f"{repository} holds no model named {model!r}")
    provenance: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        provenance = json.loads(
            (model_dir / latest_version(model_dir) / PROVENANCE_FILE).read_text()
        )
    arch = str(provenance.get("architecture") or model)
    if arch in PACKAGED_WEIGHTS_MODELS:
        return read_published(repository, model, arch, None, "packaged ImageNet weights")
    checkpoint = _checkpoint_path(provenance)
    if checkpoint is not None:
        return read_published(
            repository, model, arch, checkpoint, f"the published state_dict {checkpoint}"
        )
    return read_published(
        repository,
        model,
        arch,
        None,
        "baseline uses untrained weights of the same architecture (not the published ones); "
        "speed is unaffected",
    )
