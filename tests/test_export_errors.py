"""Bad input to `python -m export`: clear message, right exit code, no traceback, no change."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torchvision

from export.cli import main
from tests.export_checkpoints import TinyClassifier
from tests.fixtures.models import run_export

USAGE = 2
FAILURE = 1


def _run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """Run the CLI in-process; return (exit code, stderr)."""
    code = main(list(args))
    stderr = capsys.readouterr().err
    assert "Traceback" not in stderr
    return code, stderr


def _refused_weights(
    capsys: pytest.CaptureFixture[str], repo: Path, model: str, weights: Path, *args: str
) -> str:
    """Run the CLI on --model and --weights into `repo`: exit 2, no repository; return stderr."""
    code, stderr = _run_cli(
        capsys, "--model", model, "--weights", str(weights), *args, "--repository", str(repo)
    )
    assert code == USAGE
    assert not repo.exists()
    return stderr


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A repository path that does not exist yet (a failed run must not create it)."""
    return tmp_path / "repo"


@pytest.fixture
def three_labels(tmp_path: Path) -> Path:
    """A labels file with three classes."""
    path = tmp_path / "three.txt"
    path.write_text("cat\ndog\nbird\n")
    return path


def test_unknown_model_suggests_close_names_in_a_real_process(repo: Path) -> None:
    """A typo in --model: exit 2 and the nearest names, from the real process."""
    result = run_export("--model", "resnet5O", "--weights", "none", "--repository", str(repo))
    assert result.returncode == USAGE
    assert "unknown model 'resnet5O'" in result.stderr and "resnet50" in result.stderr
    assert "Traceback" not in result.stderr
    assert not repo.exists()


@pytest.mark.parametrize(
    "args",
    [
        ("--max-batch-size", "0"),
        ("--max-queue-delay-us", "-1"),
        ("--version", "x"),
        ("--version", "-1"),
        ("--bogus",),
    ],
)
def test_bad_flag_values_are_usage_errors(
    capsys: pytest.CaptureFixture[str], args: tuple[str, ...]
) -> None:
    """argparse rejects non-positive sizes/versions and unknown flags with exit code 2."""
    with pytest.raises(SystemExit) as exited:
        main(list(args))
    assert exited.value.code == USAGE
    assert "error:" in capsys.readouterr().err


def test_missing_checkpoint(capsys: pytest.CaptureFixture[str], repo: Path, tmp_path: Path) -> None:
    """--weights pointing nowhere says so (and what --weights accepts)."""
    stderr = _refused_weights(capsys, repo, "resnet18", tmp_path / "nope.pth")
    assert "does not exist" in stderr and "'imagenet', 'none'" in stderr


def test_unreadable_checkpoint(
    capsys: pytest.CaptureFixture[str], repo: Path, tmp_path: Path
) -> None:
    """A file that is not a torch checkpoint is reported as unreadable."""
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(os.urandom(4096))
    stderr = _refused_weights(capsys, repo, "resnet18", garbage)
    assert "cannot read checkpoint" in stderr


def test_checkpoint_of_another_architecture(
    capsys: pytest.CaptureFixture[str], repo: Path, tmp_path: Path
) -> None:
    """A state_dict that does not fit --model names the mismatching keys."""
    checkpoint = tmp_path / "tiny_state.pth"
    torch.save(TinyClassifier(num_classes=1000).state_dict(), checkpoint)
    stderr = _refused_weights(capsys, repo, "mobilenet_v3_small", checkpoint)
    assert "does not match the mobilenet_v3_small architecture" in stderr
    assert "missing key" in stderr and "unexpected key" in stderr


def test_state_dict_classes_differ_from_labels(
    capsys: pytest.CaptureFixture[str], repo: Path, tmp_path: Path, three_labels: Path
) -> None:
    """A 1000-class checkpoint with a 3-line labels file: the counts are named."""
    checkpoint = tmp_path / "mobilenet.pth"
    torch.save(torchvision.models.mobilenet_v3_small(weights=None).state_dict(), checkpoint)
    stderr = _refused_weights(
        capsys, repo, "mobilenet_v3_small", checkpoint, "--labels", str(three_labels)
    )
    assert "1000-class classifier" in stderr and "has 3 classes" in stderr


def test_module_outputs_differ_from_default_labels(
    capsys: pytest.CaptureFixture[str], repo: Path, tmp_path: Path
) -> None:
    """A 3-class pickled model without --labels: 3 outputs vs 1000 ImageNet labels."""
    torch.save(TinyClassifier(num_classes=3), tmp_path / "tiny.pth")
    stderr = _refused_weights(capsys, repo, "resnet18", tmp_path / "tiny.pth")
    assert "outputs 3 classes" in stderr and "1000" in stderr and "--labels" in stderr


def test_pretrained_head_with_wrong_label_count(
    capsys: pytest.CaptureFixture[str], repo: Path, three_labels: Path
) -> None:
    """ImageNet weights have 1000 outputs: a 3-line labels file cannot describe them."""
    code, stderr = _run_cli(
        capsys,
        "--model",
        "efficientnet_lite0",
        "--labels",
        str(three_labels),
        "--repository",
        str(repo),
    )
    assert code == USAGE
    assert "3 classes" in stderr and "output 1000" in stderr
    assert not repo.exists()


@pytest.mark.parametrize(
    ("content", "message"), [(None, "does not exist"), ("a\n\nb\n", "blank line")]
)
def test_bad_labels_file(
    capsys: pytest.CaptureFixture[str],
    repo: Path,
    tmp_path: Path,
    content: str | None,
    message: str,
) -> None:
    """A missing labels file, or one with gaps, is rejected before any export work."""
    labels = tmp_path / "labels.txt"
    if content is not None:
        labels.write_text(content)
    code, stderr = _run_cli(
        capsys, "--weights", "none", "--labels", str(labels), "--repository", str(repo)
    )
    assert code == USAGE
    assert message in stderr


def test_repository_that_is_a_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """--repository naming a regular file is refused."""
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    code, stderr = _run_cli(capsys, "--weights", "none", "--repository", str(not_a_dir))
    assert code == USAGE
    assert "not a directory" in stderr


def test_repository_that_is_not_writable(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """An unwritable repository location is refused (root ignores modes: use /sys there)."""
    if os.geteuid() == 0:
        repository = Path("/sys/visionai-export-test/repo")
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        repository = locked / "repo"
    code, stderr = _run_cli(
        capsys,
        *("--model", "efficientnet_lite0", "--weights", "none"),
        "--repository",
        str(repository),
    )
    assert code == USAGE
    assert "model repository" in stderr
    assert "not writable" in stderr or "cannot create" in stderr
    assert not repository.exists()


def test_invalid_model_name(capsys: pytest.CaptureFixture[str], repo: Path) -> None:
    """--name must not escape the repository or hide from Triton."""
    code, stderr = _run_cli(
        capsys, "--weights", "none", "--name", "../evil", "--repository", str(repo)
    )
    assert code == USAGE
    assert "invalid model name" in stderr


def test_offline_without_cached_weights_names_the_offline_choices(
    capsys: pytest.CaptureFixture[str],
    repo: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """--offline with an empty torch cache: exit 1 naming --weights PATH and efficientnet_lite0."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    code, stderr = _run_cli(capsys, "--offline", "--repository", str(repo))
    assert code == FAILURE
    assert "not in the cache" in stderr
    assert "--weights PATH" in stderr and "--model efficientnet_lite0" in stderr
    assert not repo.exists()


def test_failed_download_names_the_offline_choices(repo: Path, tmp_path: Path) -> None:
    """When the download fails (here: a proxy that refuses connections), exit 1 and say why."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    proxy = f"http://127.0.0.1:{closed_port}"
    env = {
        "TORCH_HOME": str(tmp_path / "torch_home"),
        "https_proxy": proxy,
        "HTTPS_PROXY": proxy,
        "no_proxy": "",
        "NO_PROXY": "",
    }
    result = run_export("--model", "resnet50", "--repository", str(repo), env=env, timeout=300)
    assert result.returncode == FAILURE
    assert "cannot download the IMAGENET1K_V2 weights for resnet50" in result.stderr
    assert "--weights PATH" in result.stderr and "--model efficientnet_lite0" in result.stderr
    assert "Traceback" not in result.stderr
