"""Locate the Triton files the `nvidia-pytriton` wheel installs (binary, libraries, backend)."""

from __future__ import annotations

import importlib.util
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path


class TritonNotInstalledError(RuntimeError):
    """The nvidia-pytriton wheel (or one of the files we need from it) is missing."""


@dataclass(frozen=True)
class TritonDistribution:
    """Paths of one installed nvidia-pytriton wheel, for the running Python version."""

    package_dir: Path  # site-packages/pytriton
    binary: Path  # pytriton/tritonserver/bin/tritonserver
    libraries_dir: Path  # site-packages/nvidia_pytriton.libs
    python_backend_dir: Path  # pytriton/tritonserver/backends/python
    python_stub: Path  # pytriton/tritonserver/python_backend_stubs/<X.Y>/triton_python_backend_stub

    @property
    def site_packages(self) -> Path:
        """The site-packages directory that holds the pytriton package."""
        return self.package_dir.parent

    @property
    def python_backend_library(self) -> Path:
        """libtriton_python.so, the Python backend that Triton loads."""
        return self.python_backend_dir / "libtriton_python.so"

    @property
    def python_backend_utils(self) -> Path:
        """triton_python_backend_utils.py, imported by every Python model as pb_utils."""
        return self.python_backend_dir / "triton_python_backend_utils.py"

    def required_files(self) -> list[Path]:
        """Every file this distribution must provide."""
        return [
            self.binary,
            self.python_backend_library,
            self.python_backend_utils,
            self.python_stub,
        ]


def python_version_tag() -> str:
    """'3.11' for the running interpreter: the stub must match the interpreter it embeds."""
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def find_distribution() -> TritonDistribution:
    """Find nvidia-pytriton's files from the installed `pytriton` package (without importing it)."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise TritonNotInstalledError(
            "the 'pytriton' package is not installed: pip install nvidia-pytriton==0.7.0"
        )
    package_dir = Path(next(iter(spec.submodule_search_locations))).resolve()
    server_dir = package_dir / "tritonserver"
    distribution = TritonDistribution(
        package_dir=package_dir,
        binary=server_dir / "bin" / "tritonserver",
        libraries_dir=package_dir.parent / "nvidia_pytriton.libs",
        python_backend_dir=server_dir / "backends" / "python",
        python_stub=server_dir
        / "python_backend_stubs"
        / python_version_tag()
        / "triton_python_backend_stub",
    )
    missing = [str(path) for path in distribution.required_files() if not path.is_file()]
    if not distribution.libraries_dir.is_dir():
        missing.append(str(distribution.libraries_dir))
    if missing:
        raise TritonNotInstalledError(
            f"nvidia-pytriton at {package_dir} lacks files needed for Python "
            f"{python_version_tag()}: {missing}"
        )
    return distribution


def python_library_dir() -> Path | None:
    """Directory of the running interpreter's shared libpython (the stub must link it), if any."""
    if not sysconfig.get_config_var("Py_ENABLE_SHARED"):
        return None
    libdir = sysconfig.get_config_var("LIBDIR")
    return Path(libdir) if libdir else None


def interpreter_site_packages() -> list[Path]:
    """The running interpreter's site-packages (the venv's), where onnxruntime and numpy live."""
    paths = sysconfig.get_paths()
    ordered: list[Path] = []
    for key in ("purelib", "platlib"):
        path = Path(paths[key])
        if path not in ordered:
            ordered.append(path)
    return ordered
