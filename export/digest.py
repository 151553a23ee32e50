"""SHA-256 of files, and the record export.json keeps of a weights file (path and digest)."""

from __future__ import annotations

import hashlib
from pathlib import Path


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks (weights files are large)."""
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def file_record(path: Path) -> dict[str, str]:
    """The "path" and "sha256" fields export.json gives a weights file."""
    return {"path": str(path), "sha256": sha256_of(path)}
