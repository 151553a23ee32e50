"""Triton model repository primitives: versions, staging dirs, atomic file and dir swaps.

Everything a writer creates next to published content starts with a dot, which Triton ignores
(only numeric sub-directories are versions), and lives on the same filesystem, so that
publishing is one os.rename / os.replace.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import uuid
from pathlib import Path

import model_contract.files
from export.errors import RepositoryError, UsageError, VersionExistsError
from model_contract.errors import ContractError
from model_contract.repository import latest_version

STAGING_PREFIX = ".staging-"
RETIRED_PREFIX = ".retired-"
TEMP_FILE_PREFIX = ".tmp-"
_OWNED_NAME = re.compile(r"^\.(?:staging|retired|tmp)-(\d+)-")


def check_model_name(name: str) -> None:
    """The contract's model-name rule, its refusal as a UsageError (exit code 2)."""
    try:
        model_contract.files.check_model_name(name)
    except ContractError as error:
        raise UsageError(str(error)) from None


def ensure_repository(path: Path) -> Path:
    """Create the repository directory if needed and prove we can write into it."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise RepositoryError(f"model repository {path} exists but is not a directory") from None
    except OSError as exc:
        raise RepositoryError(
            f"cannot create model repository {path}: {exc.strerror or exc}"
        ) from None
    if not path.is_dir():
        raise RepositoryError(f"model repository {path} is not a directory")
    try:
        # os.access lies for root and on some network filesystems; actually try.
        handle, probe = tempfile.mkstemp(prefix=f"{TEMP_FILE_PREFIX}{os.getpid()}-", dir=path)
        os.close(handle)
        os.unlink(probe)
    except OSError as exc:
        raise RepositoryError(
            f"model repository {path} is not writable: {exc.strerror or exc}"
        ) from None
    return path


def check_repository_usable(path: Path) -> None:
    """Fail early (creating nothing) when `path` cannot become or be a writable repository."""
    if path.exists():
        if not path.is_dir():
            raise RepositoryError(f"model repository {path} exists but is not a directory")
        if not os.access(path, os.W_OK | os.X_OK):
            raise RepositoryError(f"model repository {path} is not writable")
        return
    ancestor = path.absolute().parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
        raise RepositoryError(
            f"cannot create model repository {path}: {ancestor} is not a writable directory"
        )


def next_version(model_dir: Path) -> int:
    """One above the highest published version (1 for a new model)."""
    latest = latest_version(model_dir)
    return 1 if latest is None else latest + 1


def check_version_free(model_dir: Path, version: int | None, force: bool) -> None:
    """Raise VersionExistsError when `version` of the model is published and --force is not set."""
    if version is not None and not force and (model_dir / str(version)).exists():
        raise VersionExistsError(
            f"version {version} of {model_dir.name} already exists in {model_dir.parent}; "
            "use --force to replace it, or omit --version to publish the next one"
        )


def _owner_is_gone(name: str) -> bool:
    """True for a dot-entry we created whose process is gone (left by SIGKILL or a crash)."""
    match = _OWNED_NAME.match(name)
    if match is None:
        return False
    pid = int(match.group(1))
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, owned by someone else
    return False


def remove_stale_entries(model_dir: Path) -> list[Path]:
    """Delete staging dirs, retired versions, temp files whose writer is gone; return them."""
    removed: list[Path] = []
    if not model_dir.is_dir():
        return removed
    for entry in model_dir.iterdir():
        if not entry.name.startswith(".") or not _owner_is_gone(entry.name):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


def create_staging_dir(model_dir: Path) -> Path:
    """A fresh dot-prefixed directory inside `model_dir` (invisible to Triton, same filesystem)."""
    staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-", dir=model_dir))
    # mkdtemp makes it 0700; a published version must be readable by Triton running as another user.
    staging.chmod(0o755)
    return staging


def fsync_tree(path: Path) -> None:
    """Flush a directory tree's files and the directory itself to disk before publishing."""
    for root, _dirs, files in os.walk(path):
        for name in files:
            with open(os.path.join(root, name), "rb") as handle:
                os.fsync(handle.fileno())
    fsync_dir(path)


def fsync_dir(path: Path) -> None:
    """Persist a directory's entries (renames into it)."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_text_atomically(path: Path, content: str) -> bool:
    """Replace `path` by `content` (temp file + os.replace) only if it differs; True if written."""
    try:
        if path.read_text(encoding="utf-8") == content:
            return False
    except FileNotFoundError:
        pass
    handle, temp_name = tempfile.mkstemp(
        prefix=f"{TEMP_FILE_PREFIX}{os.getpid()}-{path.name}-", dir=path.parent
    )
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as temp:
            temp.write(content)
            temp.flush()
            os.fsync(temp.fileno())
        os.chmod(temp_name, 0o644)
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return True


def commit_version(staging: Path, model_dir: Path, version: int, force: bool = False) -> Path:
    """Move a complete staging dir into place as `<model_dir>/<version>` with one os.rename.

    An existing version is kept unless `force`: then it is renamed aside, the new one renamed in,
    and only then the old one deleted (a reader sees the old or the new version, never neither
    for longer than between two renames, never a mix).
    """
    target = model_dir / str(version)
    check_version_free(model_dir, version, force)
    if not target.exists():
        try:
            os.rename(staging, target)
        except OSError as exc:
            if target.exists():  # another writer took this version between our check and rename
                raise VersionExistsError(
                    f"version {version} of {model_dir.name} appeared while publishing"
                ) from None
            raise RepositoryError(f"cannot publish {target}: {exc.strerror or exc}") from None
        fsync_dir(model_dir)
        return target
    retired = model_dir / f"{RETIRED_PREFIX}{os.getpid()}-{version}-{uuid.uuid4().hex[:8]}"
    os.rename(target, retired)
    try:
        os.rename(staging, target)
    except BaseException:
        os.rename(retired, target)
        raise
    fsync_dir(model_dir)
    shutil.rmtree(retired, ignore_errors=True)
    return target
