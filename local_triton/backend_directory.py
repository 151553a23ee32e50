"""Build the `--backend-directory` Triton needs, outside the source tree and site-packages.

Layout (every file a copy: Triton refuses a stub symlinked out of the backend directory):

    <cache>/<hash>/python/libtriton_python.so
    <cache>/<hash>/python/triton_python_backend_stub      (for the running Python version)
    <cache>/<hash>/python/triton_python_backend_utils.py
    <cache>/<hash>/onnxruntime/model.py                   (local_triton/ort_backend/model.py)

<hash> covers the content of every copied file, so a changed source makes a new directory;
a directory is built under a temporary name and renamed into place, so concurrent starts
never see a half-built one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

from local_triton.distribution import TritonDistribution, python_version_tag

CACHE_DIR_ENV = "LOCAL_TRITON_CACHE_DIR"
MANIFEST_NAME = "manifest.json"
BACKEND_NAME = "onnxruntime"
BACKEND_MODEL_SOURCE = Path(__file__).resolve().parent / "ort_backend" / "model.py"


def default_cache_root(environ: Mapping[str, str] = os.environ) -> Path:
    """$LOCAL_TRITON_CACHE_DIR, else $XDG_CACHE_HOME (or ~/.cache) + /visionai/local_triton."""
    explicit = environ.get(CACHE_DIR_ENV)
    if explicit:
        return Path(explicit).expanduser()
    xdg = environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "visionai" / "local_triton"


def backend_sources(distribution: TritonDistribution) -> dict[str, Path]:
    """Destination (relative to the backend directory) -> source file, for every copied file."""
    return {
        "python/libtriton_python.so": distribution.python_backend_library,
        "python/triton_python_backend_stub": distribution.python_stub,
        "python/triton_python_backend_utils.py": distribution.python_backend_utils,
        f"{BACKEND_NAME}/model.py": BACKEND_MODEL_SOURCE,
    }


def sources_digest(sources: Mapping[str, Path]) -> str:
    """A short hash of the destination names and the content of their sources."""
    digest = hashlib.sha256(python_version_tag().encode())
    for destination in sorted(sources):
        digest.update(destination.encode() + b"\0")
        with sources[destination].open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def _populate(directory: Path, sources: Mapping[str, Path]) -> None:
    """Copy every source into `directory` and write the manifest last."""
    for destination, source in sources.items():
        target = directory / destination
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        shutil.copymode(source, target)
    stub = directory / "python" / "triton_python_backend_stub"
    stub.chmod(stub.stat().st_mode | 0o111)
    manifest = {
        "python": python_version_tag(),
        "sources": {k: str(v) for k, v in sorted(sources.items())},
    }
    (directory / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")


def ensure_backend_directory(
    distribution: TritonDistribution, cache_root: Path | None = None
) -> Path:
    """Return a complete backend directory for these sources, building it atomically if needed."""
    sources = backend_sources(distribution)
    root = (cache_root or default_cache_root()).resolve()
    final = root / sources_digest(sources)
    if (final / MANIFEST_NAME).is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".building-", dir=root))
    try:
        _populate(staging, sources)
        try:
            os.rename(staging, final)
        except OSError:
            # Another process finished the same build first; theirs is identical.
            if not (final / MANIFEST_NAME).is_file():
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return final
