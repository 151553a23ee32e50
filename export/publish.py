"""Publishing one version atomically: built in a dot-staging dir in <name>/, then os.rename."""

from __future__ import annotations

import contextlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from export.errors import RepositoryError, UsageError, VersionExistsError
from export.progress import Progress
from export.repository import (
    check_model_name,
    check_version_free,
    commit_version,
    create_staging_dir,
    ensure_repository,
    fsync_tree,
    next_version,
    remove_stale_entries,
    write_text_atomically,
)
from model_contract.files import CONFIG_FILE, LABELS_FILE, MODEL_FILE, PROVENANCE_FILE

_AUTO_VERSION_ATTEMPTS = 3


@dataclass(frozen=True)
class PublishedVersion:
    """Where a version landed and what changed at model level."""

    model_dir: Path
    version: int
    version_dir: Path
    config_changed: bool
    labels_changed: bool


class VersionPublisher:
    """Context manager: staging dir on enter, commit() publishes, any other exit removes staging.

    Usage::

        with VersionPublisher(repo, "resnet50", version=None, force=False) as publisher:
            write_model(publisher.onnx_path)
            published = publisher.commit(labels_text, config_text, metadata)
    """

    def __init__(
        self,
        repository: Path,
        name: str,
        version: int | None = None,
        force: bool = False,
        progress: Progress | None = None,
    ) -> None:
        """Plan a publish of `name` into `repository` (version None = next free one)."""
        check_model_name(name)
        if version is not None and version < 1:
            raise UsageError(f"version must be a positive integer, got {version}")
        self.repository = repository
        self.name = name
        self.model_dir = repository / name
        self.requested_version = version
        self.force = force
        self._progress = progress or Progress(enabled=False)
        self._staging: Path | None = None
        self._created_model_dir = False
        self._created_repository = False
        self._model_level_written: list[Path] = []
        self._committed = False

    @property
    def staging_dir(self) -> Path:
        """The staging directory (only valid inside the with-block)."""
        if self._staging is None:
            raise RuntimeError("VersionPublisher is not entered")
        return self._staging

    @property
    def onnx_path(self) -> Path:
        """Where the exporter must write model.onnx."""
        return self.staging_dir / MODEL_FILE

    def __enter__(self) -> VersionPublisher:
        """Check the repository, clear stale staging left by killed runs, create our staging dir."""
        self._created_repository = not self.repository.exists()
        ensure_repository(self.repository)
        if self.model_dir.exists() and not self.model_dir.is_dir():
            raise RepositoryError(f"{self.model_dir} exists but is not a directory")
        if not self.model_dir.exists():
            try:
                self.model_dir.mkdir()
                self._created_model_dir = True
            except FileExistsError:
                pass
            except OSError as exc:
                raise RepositoryError(
                    f"cannot create {self.model_dir}: {exc.strerror or exc}"
                ) from None
        for stale in remove_stale_entries(self.model_dir):
            self._progress.info(f"Removed stale {stale.name} left by an interrupted run")
        try:
            check_version_free(self.model_dir, self.requested_version, self.force)
            self._staging = create_staging_dir(self.model_dir)
        except VersionExistsError:
            self._discard()
            raise
        except OSError as exc:
            self._discard()
            raise RepositoryError(
                f"cannot create a staging directory in {self.model_dir}: {exc}"
            ) from None
        return self

    def commit(
        self, labels_text: str, config_text: str, metadata: dict[str, Any]
    ) -> PublishedVersion:
        """Finish staging, update labels/config (if changed), rename the version into place."""
        staging = self.staging_dir
        (staging / LABELS_FILE).write_text(labels_text, encoding="utf-8")
        labels_changed = self._write_model_level(LABELS_FILE, labels_text)
        config_changed = self._write_model_level(CONFIG_FILE, config_text)
        for attempt in range(_AUTO_VERSION_ATTEMPTS):
            version = self.requested_version or next_version(self.model_dir)
            record = {"name": self.name, "version": version, **metadata}
            (staging / PROVENANCE_FILE).write_text(
                json.dumps(record, indent=2) + "\n", encoding="utf-8"
            )
            fsync_tree(staging)
            try:
                target = commit_version(staging, self.model_dir, version, force=self.force)
            except VersionExistsError:
                # Only a concurrent writer can take an automatic version between look and rename.
                if self.requested_version is not None or attempt == _AUTO_VERSION_ATTEMPTS - 1:
                    raise
                continue
            self._committed = True
            return PublishedVersion(self.model_dir, version, target, config_changed, labels_changed)
        raise AssertionError("unreachable")  # the loop either returns or raises

    def _write_model_level(self, filename: str, content: str) -> bool:
        """Atomically update a model-level file; remember it so a failed first publish undoes it."""
        path = self.model_dir / filename
        existed = path.exists()
        changed = write_text_atomically(path, content)
        if changed and not existed:
            self._model_level_written.append(path)
        return changed

    def __exit__(self, *exc_info: object) -> None:
        """Without a commit (error, KeyboardInterrupt), leave the repository as it was."""
        if not self._committed:
            self._discard()

    def _discard(self) -> None:
        """Remove our staging dir, and the model dir if this run created it."""
        if self._staging is not None:
            shutil.rmtree(self._staging, ignore_errors=True)
            self._staging = None
        if self._created_model_dir:
            for path in self._model_level_written:
                path.unlink(missing_ok=True)
            with contextlib.suppress(OSError):  # rmdir fails if others wrote there meanwhile
                self.model_dir.rmdir()
        if self._created_repository:
            with contextlib.suppress(OSError):
                self.repository.rmdir()
