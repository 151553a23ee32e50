"""The environment the tritonserver process (and the Python stubs it spawns) runs with."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from local_triton.distribution import (
    TritonDistribution,
    interpreter_site_packages,
    python_library_dir,
)

#: Read by local_triton/ort_backend/model.py: the stub interpreter is isolated (no PYTHONPATH).
STUB_PYTHONPATH_ENV = "LOCAL_TRITON_PYTHONPATH"
PACKAGE_PARENT = Path(__file__).resolve().parent.parent


def _join_unique(paths: Sequence[str]) -> str:
    """Join non-empty paths with os.pathsep, first occurrence wins."""
    seen: list[str] = []
    for path in paths:
        if path and path not in seen:
            seen.append(path)
    return os.pathsep.join(seen)


def interpreter_bin_dir() -> Path:
    """The bin directory whose `python3` the stub must resolve to (the venv's, when in one).

    The stub embeds Python without a program path, so Python looks up `python3` on PATH and
    takes sys.prefix (and with a pyvenv.cfg, the venv's site-packages) from what it finds.
    Without this, the stub would import the base interpreter's packages (another numpy).
    """
    venv_bin = Path(sys.prefix) / "bin"
    if (venv_bin / "python3").exists():
        return venv_bin
    return Path(sys.executable).parent


def stub_python_path() -> list[Path]:
    """Where the stub must import from: this package's parent, then the venv's site-packages."""
    return [PACKAGE_PARENT, *interpreter_site_packages()]


def triton_environment(
    distribution: TritonDistribution,
    base: Mapping[str, str] = os.environ,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Copy `base`, adding what tritonserver and the stub need to find libraries and packages."""
    env = dict(base)
    library_dirs = []
    python_lib = python_library_dir()
    if python_lib is not None:
        # First, so the stub links the interpreter we run, not a system libpython of that version.
        library_dirs.append(str(python_lib))
    library_dirs.append(str(distribution.libraries_dir))
    library_dirs.extend(env.get("LD_LIBRARY_PATH", "").split(os.pathsep))
    env["LD_LIBRARY_PATH"] = _join_unique(library_dirs)
    stub_paths = [str(p) for p in stub_python_path()]
    stub_paths.extend(env.get(STUB_PYTHONPATH_ENV, "").split(os.pathsep))
    env[STUB_PYTHONPATH_ENV] = _join_unique(stub_paths)
    env["PATH"] = _join_unique([str(interpreter_bin_dir()), *env.get("PATH", "").split(os.pathsep)])
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    if extra:
        env.update(extra)
    return env
