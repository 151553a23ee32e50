"""The repository layout: `<repository>/<model>/<version>/` with numeric versions."""

from __future__ import annotations

from pathlib import Path

from model_contract.files import LABELS_FILE


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
