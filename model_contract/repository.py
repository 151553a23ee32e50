"""The repository layout: `<repository>/<model>/<version>/` with numeric versions."""

from __future__ import annotations

import json
from pathlib import Path

from model_contract.errors import ContractError
from model_contract.files import LABELS_FILE, PROVENANCE_FILE
from model_contract.preprocessing import Preprocessing


def is_version_name(name: str) -> bool:
    """True for a directory name Triton treats as a version (ASCII digits only)."""
    return name.isascii() and name.isdigit()


def list_versions(model_dir: Path) -> list[int]:
    """The published versions of a model: its numeric sub-directories, sorted."""
    if not model_dir.is_dir():
        return []
    return sorted(
        int(entry.name)
        for entry in model_dir.iterdir()
        if is_version_name(entry.name) and entry.is_dir()
    )


def latest_version(model_dir: Path) -> int | None:
    """The highest published version, or None when there is none."""
    versions = list_versions(model_dir)
    return versions[-1] if versions else None


def labels_path(model_dir: Path, version: str) -> Path | None:
    """The labels file that names a version's classes: its own, else the model-level one."""
    for candidate in (model_dir / version / LABELS_FILE, model_dir / LABELS_FILE):
        if candidate.is_file():
            return candidate
    return None


def version_preprocessing(model_dir: Path, version: str) -> Preprocessing | None:
    """The preprocessing a version recorded for itself (`<version>/export.json`), if any.

    None when the version has no provenance file or it names no preprocessing (a version
    written by hand): its model's config.pbtxt parameters apply. ContractError when the record
    exists but cannot be used.
    """
    path = model_dir / version / PROVENANCE_FILE
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ContractError(f"cannot read {path}: {error}") from None
    values = record.get("preprocessing") if isinstance(record, dict) else None
    if values is None:
        return None
    if not isinstance(values, dict):
        raise ContractError(f"{path}: 'preprocessing' is not an object")
    return Preprocessing.from_dict(values)
