"""Class names (and each version's own preprocessing) from the model repository.

Labels follow the version that answered, so a hot swap to a version (or model) with other
classes changes the answers' names without restarting the gateway. Entries are cached per
(name, version) and revalidated with one ``stat`` per lookup, so a file rewritten in place is
picked up too.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from gateway.errors import ModelMisconfigured
from model_contract.errors import ContractError
from model_contract.files import LABELS_FILE, is_valid_model_name
from model_contract.labels import LabelsError, read_labels
from model_contract.preprocessing import Preprocessing
from model_contract.repository import is_version_name, labels_path, version_preprocessing

log = logging.getLogger("gateway.labels")
_MAX_CACHED = 256


class LabelStore:
    """Reads and caches each model version's label file from the repository directory."""

    def __init__(self, repository: Path) -> None:
        self._repository = repository
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, str], tuple[tuple[int, int, int], tuple[str, ...]]] = {}

    def get(self, name: str, version: str) -> tuple[str, ...]:
        """Class names of ``name`` at ``version`` (raises ModelMisconfigured when missing)."""
        path = self._locate(name, version)
        try:
            stat = path.stat()
        except OSError:
            log.error("label file %s disappeared", path)
            raise _missing(name, version) from None
        signature = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        key = (name, version)
        cached = self._cache.get(key)
        if cached is not None and cached[0] == signature:
            return cached[1]
        try:
            labels = tuple(read_labels(path))
        except LabelsError as error:
            log.error("%s", error)
            raise _missing(name, version) from None
        with self._lock:
            if len(self._cache) >= _MAX_CACHED:
                self._cache.clear()
            self._cache[key] = (signature, labels)
        return labels

    @property
    def repository(self) -> Path:
        """The repository directory the files are read from."""
        return self._repository

    def preprocessing(self, name: str, version: str) -> Preprocessing | None:
        """The preprocessing `version` of `name` recorded for itself, None when it has none.

        Two versions of one model may preprocess differently (config.pbtxt is model-level);
        export records each version's own in `<version>/export.json`.
        """
        if not is_valid_model_name(name) or not is_version_name(version):
            raise ModelMisconfigured(f"Cannot look up model {name!r} version {version!r}.")
        try:
            return version_preprocessing(self._repository / name, version)
        except ContractError as error:
            log.error("%s", error)
            raise ModelMisconfigured(
                f"Model {name!r} version {version} has unusable preprocessing."
            ) from None

    def _locate(self, name: str, version: str) -> Path:
        # Both parts come from Triton's answer, but they also become path components here.
        if not is_valid_model_name(name) or not is_version_name(version):
            raise ModelMisconfigured(
                f"Cannot look up labels for model {name!r} version {version!r}."
            )
        model_dir = self._repository / name
        path = labels_path(model_dir, version)
        if path is None:
            log.error(
                "no %s for model %s version %s under %s (is GATEWAY_MODEL_REPOSITORY right?)",
                LABELS_FILE,
                name,
                version,
                os.fspath(model_dir),
            )
            raise _missing(name, version)
        return path


def _missing(name: str, version: str) -> ModelMisconfigured:
    return ModelMisconfigured(
        f"The class names of model {name!r} version {version} are not available."
    )
