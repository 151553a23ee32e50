"""Tests of how local_triton prepares a run: files, backend directory, environment, command."""

from __future__ import annotations

import os
import shutil
import sys
import sysconfig
import threading
from pathlib import Path

import pytest

from local_triton import backend_directory as backend_directory_module
from local_triton.backend_directory import (
    MANIFEST_NAME,
    default_cache_root,
    ensure_backend_directory,
)
from local_triton.cli import main as cli_main
from local_triton.distribution import find_distribution
from local_triton.environment import STUB_PYTHONPATH_ENV, triton_environment
from local_triton.ports import free_ports
from local_triton.server import TritonServer


def test_distribution_is_found_from_the_installed_package() -> None:
    """Binary, libraries, Python backend and this Python's stub are located via `pytriton`."""
    distribution = find_distribution()
    assert distribution.binary.name == "tritonserver" and os.access(distribution.binary, os.X_OK)
    assert distribution.libraries_dir.name == "nvidia_pytriton.libs"
    assert distribution.site_packages == distribution.package_dir.parent
    tag = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert distribution.python_stub.parent.name == tag
    assert all(path.is_file() for path in distribution.required_files())


def test_backend_directory_is_a_tree_of_copies(tmp_path: Path) -> None:
    """Every file is a real copy (no symlink) in the layout Triton expects, stub executable."""
    directory = ensure_backend_directory(find_distribution(), tmp_path)
    expected = {
        "python/libtriton_python.so",
        "python/triton_python_backend_stub",
        "python/triton_python_backend_utils.py",
        "onnxruntime/model.py",
        MANIFEST_NAME,
    }
    files = {str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file()}
    assert files == expected
    assert not any(p.is_symlink() for p in directory.rglob("*"))
    assert os.access(directory / "python" / "triton_python_backend_stub", os.X_OK)
    assert directory.parent == tmp_path.resolve()
    assert (directory / "onnxruntime" / "model.py").read_bytes() == (
        backend_directory_module.BACKEND_MODEL_SOURCE.read_bytes()
    )


def test_backend_directory_is_reused_until_a_source_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same sources -> same directory untouched; a changed model.py -> a new directory."""
    distribution = find_distribution()
    first = ensure_backend_directory(distribution, tmp_path / "cache")
    stamp = (first / MANIFEST_NAME).stat().st_mtime_ns
    assert ensure_backend_directory(distribution, tmp_path / "cache") == first
    assert (first / MANIFEST_NAME).stat().st_mtime_ns == stamp

    changed = tmp_path / "model.py"
    shutil.copyfile(backend_directory_module.BACKEND_MODEL_SOURCE, changed)
    with changed.open("a") as handle:
        handle.write("\n# changed\n")
    monkeypatch.setattr(backend_directory_module, "BACKEND_MODEL_SOURCE", changed)
    second = ensure_backend_directory(distribution, tmp_path / "cache")
    assert second != first
    assert (second / "onnxruntime" / "model.py").read_text().endswith("# changed\n")


def test_concurrent_builds_leave_one_complete_directory(tmp_path: Path) -> None:
    """Builders racing on one cache all get the same complete directory; no staging is left."""
    distribution = find_distribution()
    results: list[Path] = []
    errors: list[BaseException] = []

    def build() -> None:
        try:
            results.append(ensure_backend_directory(distribution, tmp_path))
        except BaseException as error:  # collected and re-raised in the test thread
            errors.append(error)

    threads = [threading.Thread(target=build) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    assert len(set(results)) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [results[0].name]


def test_cache_root_follows_environment(tmp_path: Path) -> None:
    """LOCAL_TRITON_CACHE_DIR wins, then XDG_CACHE_HOME, then ~/.cache."""
    assert default_cache_root({"LOCAL_TRITON_CACHE_DIR": str(tmp_path)}) == tmp_path
    assert default_cache_root({"XDG_CACHE_HOME": str(tmp_path)}) == (
        tmp_path / "visionai" / "local_triton"
    )
    assert default_cache_root({}) == Path.home() / ".cache" / "visionai" / "local_triton"


def test_environment_lets_the_stub_find_libpython_libraries_and_packages() -> None:
    """LD_LIBRARY_PATH: this interpreter's LIBDIR, then the wheel's libs, then the caller's."""
    distribution = find_distribution()
    env = triton_environment(
        distribution,
        base={"LD_LIBRARY_PATH": "/opt/caller/lib", "PATH": "/usr/bin"},
        extra={"LOCAL_TRITON_ORT_THREADS": "1"},
    )
    library_path = env["LD_LIBRARY_PATH"].split(os.pathsep)
    assert library_path == [
        sysconfig.get_config_var("LIBDIR"),
        str(distribution.libraries_dir),
        "/opt/caller/lib",
    ]
    # The stub resolves `python3` on PATH to pick its prefix: it must be this (venv) interpreter.
    first_bin = Path(env["PATH"].split(os.pathsep)[0])
    assert (first_bin / "python3").exists()
    assert first_bin.resolve() in {
        (Path(sys.prefix) / "bin").resolve(),
        Path(sys.executable).parent.resolve(),
    }
    stub_paths = env[STUB_PYTHONPATH_ENV].split(os.pathsep)
    assert str(Path(backend_directory_module.__file__).resolve().parents[1]) == stub_paths[0]
    assert sysconfig.get_paths()["purelib"] in stub_paths
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["LOCAL_TRITON_ORT_THREADS"] == "1"


def test_command_line_binds_loopback_and_sets_the_mode(tmp_path: Path) -> None:
    """The command carries ports, 127.0.0.1, the mode, poll interval and models to load."""
    http, grpc, metrics = free_ports(3)
    poll = TritonServer(tmp_path, http_port=http, grpc_port=grpc, metrics_port=metrics)
    command = poll.command(tmp_path / "backends")
    assert command[0] == str(find_distribution().binary)
    for flag in (
        f"--http-port={http}",
        f"--grpc-port={grpc}",
        f"--metrics-port={metrics}",
        "--http-address=127.0.0.1",
        "--grpc-address=127.0.0.1",
        "--metrics-address=127.0.0.1",
        "--model-control-mode=poll",
        "--repository-poll-secs=1",
        f"--backend-directory={tmp_path / 'backends'}",
        "--strict-readiness=true",
    ):
        assert flag in command
    explicit = TritonServer(tmp_path, model_control_mode="explicit", load_models=["a", "b"])
    explicit_command = explicit.command(tmp_path)
    assert "--load-model=a" in explicit_command and "--load-model=b" in explicit_command
    assert not any(arg.startswith("--repository-poll-secs") for arg in explicit_command)
    assert poll.grpc_url == f"127.0.0.1:{grpc}"
    assert poll.http_url == f"127.0.0.1:{http}"
    assert poll.metrics_url == f"http://127.0.0.1:{metrics}/metrics"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"model_control_mode": "poll", "load_all": True}, "only apply"),
        ({"model_control_mode": "sometimes"}, "model_control_mode"),
        ({"poll_seconds": 0}, "poll_seconds"),
        (
            {"model_control_mode": "explicit", "load_all": True, "load_models": ["a"]},
            "either",
        ),
    ],
)
def test_bad_server_arguments_are_rejected(
    tmp_path: Path, kwargs: dict[str, object], message: str
) -> None:
    """Inconsistent options raise ValueError before anything starts."""
    with pytest.raises(ValueError, match=message):
        TritonServer(tmp_path, **kwargs)  # type: ignore[arg-type]


def test_missing_repository_is_rejected(tmp_path: Path) -> None:
    """A repository path that is not a directory is a clear error."""
    with pytest.raises(ValueError, match="not a directory"):
        TritonServer(tmp_path / "missing")


def test_cli_rejects_load_model_outside_explicit_mode(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--load-model with poll mode is a usage error (exit 2), not a Triton failure."""
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["--model-repository", str(tmp_path), "--load-model", "x"])
    assert exit_info.value.code == 2
    assert "--model-control-mode explicit" in capsys.readouterr().err


def test_cli_reports_missing_repository(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A missing repository gives one clear line and exit status 2, no traceback."""
    status = cli_main(["--model-repository", str(tmp_path / "nope")])
    err = capsys.readouterr().err
    assert status == 2
    assert "not a directory" in err and "Traceback" not in err


def test_free_ports_are_distinct() -> None:
    """free_ports hands out different ports in one call."""
    ports = free_ports(5)
    assert len(set(ports)) == 5 and all(1024 <= p <= 65535 for p in ports)
