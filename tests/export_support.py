"""Test helpers for the export tests: config files read with the contract, snapshots, launchers.

The contract's preprocessing itself is checked against torchvision in test_gateway_preprocess.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime
import pytest
import skimage.data
from PIL import Image

from model_contract import triton_config as contract_config
from model_contract.preprocessing import Preprocessing
from model_contract.preprocessing import preprocess as contract_preprocess
from tests.export_faults import PAUSE_MARKER
from tests.fixtures.models import REPO_ROOT, export_python

PAUSE_TIMEOUT_S = 300.0
CAT_CLASSES = {"tabby", "tiger cat", "Egyptian cat"}
COFFEE_CLASSES = {"espresso", "cup"}
# Photos with an ImageNet class, and the top-1 classes that name what they show.
real_photos = pytest.mark.parametrize(
    ("photo", "expected"),
    [(skimage.data.chelsea, CAT_CLASSES), (skimage.data.coffee, COFFEE_CLASSES)],
    ids=["chelsea-cat", "coffee-espresso"],
)


def parse_config(path: Path) -> Any:
    """A config.pbtxt file parsed with Triton's protobuf schema (fails where Triton would)."""
    return contract_config.parse_config(path.read_text(encoding="utf-8"))


def config_parameters(config: Any) -> dict[str, str]:
    """The string parameters of a parsed config."""
    return contract_config.parameters_of(config)


def preprocess(image: Image.Image, parameters: dict[str, str]) -> npt.NDArray[np.float32]:
    """The contract's preprocessing, as its config parameters describe it."""
    return contract_preprocess(image, Preprocessing.from_parameters(parameters))


def photo_logits(
    model_dir: Path, photo: npt.NDArray[np.uint8]
) -> tuple[npt.NDArray[np.float32], list[str]]:
    """Version 1's logits [1, classes] for a photo preprocessed per config.pbtxt, and its labels."""
    config = parse_config(model_dir / "config.pbtxt")
    batch = preprocess(Image.fromarray(photo), config_parameters(config))[np.newaxis]
    assert list(batch.shape[1:]) == list(config.input[0].dims)
    session = onnxruntime.InferenceSession(
        str(model_dir / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    (logits,) = session.run([config.output[0].name], {config.input[0].name: batch})
    labels = (model_dir / config.output[0].label_filename).read_text().splitlines()
    return logits, labels


def check_lite0_parameters(parameters: dict[str, str]) -> None:
    """A trained EfficientNet-Lite0's config: 256/224 bilinear, mean 0.498 / std 0.502."""
    assert parameters["preprocess_resize_size"] == "256"
    assert parameters["preprocess_crop_size"] == "224"
    assert parameters["preprocess_mean"] == "0.498,0.498,0.498"
    assert parameters["preprocess_std"] == "0.502,0.502,0.502"
    assert parameters["preprocess_interpolation"] == "bilinear"
    assert parameters["model_trained"] == "true"


def check_published_layout(model_dir: Path, golden: bool = True) -> None:
    """A model directory as the contract lays it out: config, labels and a complete version 1.

    `golden`: the version carries its golden/ references (every CLI export without --no-golden).
    """
    assert sorted(p.name for p in model_dir.iterdir()) == ["1", "config.pbtxt", "labels.txt"]
    assert sorted(p.name for p in (model_dir / "1").iterdir()) == [
        "export.json",
        *(["golden"] if golden else []),
        "labels.txt",
        "model.onnx",
    ]


def snapshot(root: Path) -> dict[str, tuple[int, int, int]]:
    """Every entry under root, dot entries included: relative path -> (inode, size, mtime_ns).

    Directories record only their inode: their mtime moves whenever an entry comes and goes
    (a staging dir created and removed again), which is not a change of the repository's content.
    """
    entries: dict[str, tuple[int, int, int]] = {}
    for directory, subdirs, files in os.walk(root):
        for name in subdirs:
            path = Path(directory) / name
            entries[str(path.relative_to(root))] = (path.lstat().st_ino, 0, 0)
        for name in files:
            path = Path(directory) / name
            info = path.lstat()
            entries[str(path.relative_to(root))] = (info.st_ino, info.st_size, info.st_mtime_ns)
    return entries


def version_dirs(model_dir: Path) -> list[str]:
    """The entry names Triton treats as versions (numeric directories), sorted numerically."""
    return sorted(
        (entry.name for entry in model_dir.iterdir() if entry.is_dir() and entry.name.isdigit()),
        key=int,
    )


def hidden_entries(model_dir: Path) -> list[str]:
    """Dot-prefixed entries (staging dirs, temp files) in a model directory."""
    return sorted(entry.name for entry in model_dir.iterdir() if entry.name.startswith("."))


def fault_command(fault: str, *args: str) -> list[str]:
    """The argv of `python -m tests.export_faults FAULT ARGS...` (the export CLI with a fault)."""
    return [export_python(), "-m", "tests.export_faults", fault, *args]


def _default_sigint() -> None:
    """In the child before exec: SIGINT's default disposition, so Ctrl-C is a KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class PausedExport:
    """The CLI started with the pause hook, its stderr collected by a reader thread."""

    def __init__(self, repository: Path, *args: str, new_session: bool = False) -> None:
        """Start `python -m export *args --repository repository`, paused before the commit."""
        self.process = subprocess.Popen(
            fault_command("pause", *args, "--repository", str(repository)),
            cwd=REPO_ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=new_session,
            # A test run started in the background (`make test &`) inherits SIGINT ignored,
            # and Python then never installs its Ctrl-C handler: the child gets it back.
            preexec_fn=_default_sigint,
        )
        self._lines: queue.Queue[str] = queue.Queue()
        self._seen: list[str] = []
        self._reader = threading.Thread(target=self._pump, daemon=True)
        self._reader.start()

    def _pump(self) -> None:
        """Forward stderr lines to the queue until the process closes it."""
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self._lines.put(line)

    def wait_for_pause(self) -> Path:
        """Block (bounded) until model.onnx is in staging; return its path."""
        deadline = time.monotonic() + PAUSE_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                line = self._lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                break
            self._seen.append(line)
            if line.startswith(PAUSE_MARKER):
                return Path(line[len(PAUSE_MARKER) :].strip())
        self.process.kill()
        self.process.wait(timeout=30)
        pytest.fail(f"the export never reached the pause point:\n{''.join(self._seen)}")

    def finish(self, timeout: float = 180) -> tuple[int, str]:
        """Wait for the exit; return the exit code and everything printed on stderr.

        Generous: on a loaded 2-core machine an interrupted export took over 60 s to unwind.
        """
        code = self.process.wait(timeout=timeout)
        self._reader.join(timeout=10)
        while not self._lines.empty():
            self._seen.append(self._lines.get_nowait())
        return code, "".join(self._seen)
