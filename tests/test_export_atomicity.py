"""Crash safety: interrupted, killed or failed exports leave the repository as it was."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest
import torch

from tests.export_checkpoints import TraceDivergentClassifier
from tests.export_support import (
    PausedExport,
    fault_command,
    hidden_entries,
    snapshot,
    version_dirs,
)
from tests.fixtures.models import REPO_ROOT, SMALL_MODEL_ARGS, run_export

# The fastest real export in the session repository (real weights, ~18 MiB).
LITE0_ARGS = ("--model", "efficientnet_lite0")


def _crashing_export(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the export CLI with a simulated crash right before its version is committed."""
    return subprocess.run(
        fault_command("raise", *args),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_sigkill_after_onnx_write_publishes_nothing_and_next_run_cleans_up(
    fresh_model_repository: Path,
) -> None:
    """SIGKILL with model.onnx in staging: no new version; the next run removes the staging."""
    model_dir = fresh_model_repository / "efficientnet_lite0"
    visible_before = {k: v for k, v in snapshot(model_dir).items() if not k.startswith(".")}
    export = PausedExport(fresh_model_repository, *LITE0_ARGS)
    onnx_in_staging = export.wait_for_pause()
    try:
        assert onnx_in_staging.is_file() and onnx_in_staging.stat().st_size > 1_000_000
        assert onnx_in_staging.parent.parent == model_dir
        assert onnx_in_staging.parent.name.startswith(".staging-")
    finally:
        export.process.send_signal(signal.SIGKILL)
        code, _ = export.finish()
    assert code == -signal.SIGKILL
    visible_after = {k: v for k, v in snapshot(model_dir).items() if not k.startswith(".")}
    assert visible_after == visible_before
    assert version_dirs(model_dir) == ["1"]
    assert hidden_entries(model_dir) == [onnx_in_staging.parent.name]  # invisible to Triton

    rerun = run_export(*LITE0_ARGS, "--repository", str(fresh_model_repository))
    assert rerun.returncode == 0, rerun.stderr
    assert "Removed stale .staging-" in rerun.stderr
    assert version_dirs(model_dir) == ["1", "2"]
    assert hidden_entries(model_dir) == []


@pytest.mark.parametrize("sent", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_interrupt_after_onnx_write_leaves_repository_unchanged(
    fresh_model_repository: Path, sent: signal.Signals
) -> None:
    """Ctrl-C / SIGTERM mid-publish: exit 130, a message, no traceback, repository identical."""
    before = snapshot(fresh_model_repository)
    export = PausedExport(fresh_model_repository, *LITE0_ARGS)
    export.wait_for_pause()
    export.process.send_signal(sent)
    code, stderr = export.finish()
    assert code == 130
    assert "interrupted" in stderr and "Traceback" not in stderr
    assert snapshot(fresh_model_repository) == before


def test_crash_after_onnx_write_in_a_new_model_dir_leaves_nothing(tmp_path: Path) -> None:
    """A crash (injected exception) publishing a new model removes its staging and model dir."""
    (tmp_path / "keep").mkdir()
    before = snapshot(tmp_path)
    result = _crashing_export(*SMALL_MODEL_ARGS, "--repository", str(tmp_path))
    assert result.returncode != 0
    assert "simulated crash" in result.stderr
    assert snapshot(tmp_path) == before


def test_crash_in_a_new_repository_leaves_no_repository(tmp_path: Path) -> None:
    """A crash during the first publish into a repository that did not exist removes it again."""
    repository = tmp_path / "new" / "repo"
    result = _crashing_export(*SMALL_MODEL_ARGS, "--repository", str(repository))
    assert result.returncode != 0
    assert not repository.exists()


def test_failed_validation_publishes_nothing(fresh_model_repository: Path, tmp_path: Path) -> None:
    """A model whose ONNX disagrees with PyTorch: exit 1, the parity figures, nothing published."""
    torch.save(TraceDivergentClassifier(num_classes=3), tmp_path / "divergent.pth")
    (tmp_path / "classes.txt").write_text("a\nb\nc\n")
    before = snapshot(fresh_model_repository)
    result = run_export(
        "--model",
        "resnet18",
        "--weights",
        str(tmp_path / "divergent.pth"),
        "--labels",
        str(tmp_path / "classes.txt"),
        "--name",
        "efficientnet_lite0",
        "--repository",
        str(fresh_model_repository),
    )
    assert result.returncode == 1, result.stderr
    assert "does not reproduce PyTorch" in result.stderr
    assert "parity batch 1" in result.stderr and "FAILED" in result.stderr
    assert "nothing was published" in result.stderr and "Traceback" not in result.stderr
    assert snapshot(fresh_model_repository) == before


def test_existing_version_needs_force_and_force_swaps_it(fresh_model_repository: Path) -> None:
    """--version 1 is refused (exit 2) while it exists; with --force it is replaced whole."""
    model_dir = fresh_model_repository / "efficientnet_lite0"
    before = snapshot(fresh_model_repository)
    refused = run_export(*LITE0_ARGS, "--version", "1", "--repository", str(fresh_model_repository))
    assert refused.returncode == 2
    assert "already exists" in refused.stderr and "--force" in refused.stderr
    assert snapshot(fresh_model_repository) == before

    old_record = json.loads((model_dir / "1" / "export.json").read_text())
    old_inode = (model_dir / "1").stat().st_ino
    forced = run_export(
        *LITE0_ARGS, "--version", "1", "--force", "--repository", str(fresh_model_repository)
    )
    assert forced.returncode == 0, forced.stderr
    assert version_dirs(model_dir) == ["1"]
    assert hidden_entries(model_dir) == []
    assert (model_dir / "1").stat().st_ino != old_inode
    new_record = json.loads((model_dir / "1" / "export.json").read_text())
    assert new_record["onnx"]["sha256"] == old_record["onnx"]["sha256"]  # same weights, same file
    assert new_record["version"] == 1
