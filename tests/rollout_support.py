"""Helpers of the rollout tests: repositories, publishing, the stack, and per-version truth.

- `seed_repository(source, target, name)`: a repository whose model `name` has version 1 =
  a copy of the session's trained EfficientNet-Lite0 (golden set included).
- `publish_copy(...)`: publish a version directory under `name` the way export does (model-level
  config and labels first, then one rename of a complete directory), optionally altered.
- `RolloutStack`: real Triton (explicit mode) + the gateway under gunicorn with 2 workers and
  GATEWAY_ROLLOUT_DIR, with `cli(...)` running `python -m rollout` against them.
- `VersionTruth`: what direct ONNX Runtime on a version's own model.onnx, preprocessing and
  labels answers for an image: the reference every served answer is checked against.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import requests
from PIL import Image

from local_triton import TritonServer
from model_contract.files import CONFIG_FILE, LABELS_FILE, MODEL_FILE
from model_contract.labels import read_labels
from model_contract.preprocessing import preprocess
from model_contract.repository import version_preprocessing
from tests.fakes_gateway import data_url
from tests.fixtures.gateway import GatewayProcess
from tests.fixtures.models import REPO_ROOT, export_python
from tests.fixtures.triton import serve_explicit
from tests.reliability_support import LoadRun, run_clients

MODEL = "classifier"
CLI_TIMEOUT_S = 120.0


def _rename_config(text: str, name: str) -> str:
    lines = text.splitlines(keepends=True)
    return "".join(f'name: "{name}"\n' if line.startswith("name:") else line for line in lines)


def seed_repository(source_model_dir: Path, repository: Path, name: str = MODEL) -> Path:
    """`repository` with model `name` version 1 copied from `source_model_dir`'s version 1."""
    model_dir = repository / name
    model_dir.mkdir(parents=True)
    shutil.copytree(source_model_dir / "1", model_dir / "1")
    shutil.copy(source_model_dir / LABELS_FILE, model_dir / LABELS_FILE)
    config = (source_model_dir / CONFIG_FILE).read_text(encoding="utf-8")
    (model_dir / CONFIG_FILE).write_text(_rename_config(config, name), encoding="utf-8")
    return repository


def publish_copy(
    version_dir: Path,
    repository: Path,
    version: int,
    *,
    name: str = MODEL,
    alter: Callable[[Path], None] | None = None,
) -> Path:
    """Publish a copy of `version_dir` as `name`/`version` (altered by `alter` before it lands)."""
    model_dir = repository / name
    staging = model_dir / f".staging-{os.getpid()}-test-{secrets.token_hex(4)}"
    shutil.copytree(version_dir, staging)
    if alter is not None:
        alter(staging)
    config = (version_dir.parent / CONFIG_FILE).read_text(encoding="utf-8")
    (model_dir / CONFIG_FILE).write_text(_rename_config(config, name), encoding="utf-8")
    target = model_dir / str(version)
    os.rename(staging, target)
    return target


def perturb_model(version_dir: Path) -> None:
    """Alter model.onnx after export: scale the largest initializer (the classifier's weights)."""
    import onnx
    from onnx import numpy_helper

    path = version_dir / MODEL_FILE
    model = onnx.load(str(path))
    largest = max(model.graph.initializer, key=lambda tensor: int(np.prod(tensor.dims)))
    values = numpy_helper.to_array(largest).copy()
    values *= np.float32(0.5)
    largest.CopyFrom(numpy_helper.from_array(values, largest.name))
    onnx.save(model, str(path))


def shuffle_labels(version_dir: Path) -> None:
    """Replace the version's labels.txt with the same names in another order."""
    path = version_dir / LABELS_FILE
    names = read_labels(path)
    rotated = names[7:] + names[:7]
    path.write_text("\n".join(rotated) + "\n", encoding="utf-8")


@dataclass
class RolloutStack:
    """Triton (explicit mode) and a 2-worker gateway sharing a rollout directory."""

    repository: Path
    state_dir: Path
    triton: TritonServer
    gateway: GatewayProcess
    name: str = MODEL
    _truth: dict[str, VersionTruth] = field(default_factory=dict)

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run `python -m rollout` against this stack's state, repository and Triton."""
        command = [
            export_python(),
            "-m",
            "rollout",
            "--state-dir",
            str(self.state_dir),
            "--repository",
            str(self.repository),
            "--triton-url",
            self.triton.grpc_url,
            *args,
        ]
        result = subprocess.run(
            command,
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT_S,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"{command} failed ({result.returncode}):\n{result.stderr}")
        return result

    def status(self) -> dict[str, Any]:
        """`python -m rollout status MODEL --json` parsed."""
        return dict(json.loads(self.cli("status", self.name, "--json").stdout))

    def record(self) -> dict[str, Any]:
        """The model's rollout record file, as JSON (what every worker reads)."""
        path = self.state_dir / f"{self.name}.json"
        return dict(json.loads(path.read_text(encoding="utf-8"))) if path.exists() else {}

    def truth(self, version: str) -> VersionTruth:
        """Direct ONNX Runtime on `version` (cached)."""
        if version not in self._truth:
            self._truth[version] = VersionTruth(self.repository / self.name, version)
        return self._truth[version]


class VersionTruth:
    """One version's own model.onnx, preprocessing and labels, run directly."""

    def __init__(self, model_dir: Path, version: str) -> None:
        self.version = version
        preprocessing = version_preprocessing(model_dir, version)
        assert preprocessing is not None, f"version {version} records no preprocessing"
        self.preprocessing = preprocessing
        self.labels = read_labels(model_dir / version / LABELS_FILE)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        self.session = ort.InferenceSession(
            str(model_dir / version / MODEL_FILE), options, providers=["CPUExecutionProvider"]
        )
        self._answers: dict[bytes, list[tuple[str, float]]] = {}

    def top5(self, image: bytes) -> list[tuple[str, float]]:
        """(label, confidence %) of the five best classes, as the gateway would answer."""
        cached = self._answers.get(image)
        if cached is None:
            rgb = Image.open(io.BytesIO(image)).convert("RGB")
            tensor = preprocess(rgb, self.preprocessing)[np.newaxis]
            name = self.session.get_inputs()[0].name
            logits = np.asarray(self.session.run(None, {name: tensor})[0]).reshape(-1)
            values = np.exp(logits.astype(np.float64) - logits.max())
            probabilities = values / values.sum()
            order = np.argsort(-probabilities, kind="stable")[:5]
            cached = [(self.labels[i], float(probabilities[i]) * 100.0) for i in order]
            self._answers[image] = cached
        return cached

    def matches(self, image: bytes, answer: dict[str, Any], tolerance: float = 0.2) -> bool:
        """True when `answer` names this version's top-5 labels with confidences within %."""
        expected = self.top5(image)
        got = [(p["label"], float(p["confidence"])) for p in answer["predictions"]]
        if [label for label, _ in got] != [label for label, _ in expected]:
            # Near-ties may swap places between runtimes: accept only a swap of equal scores.
            return False
        return all(abs(a - b) <= tolerance for (_, a), (_, b) in zip(got, expected, strict=True))


def wait_state(
    stack: RolloutStack, check: Callable[[dict[str, Any]], bool], what: str, timeout_s: float
) -> dict[str, Any]:
    """Poll the rollout record until `check` holds; fail with the record and gateway logs."""
    deadline = time.monotonic() + timeout_s
    record: dict[str, Any] = {}
    while time.monotonic() < deadline:
        record = stack.record()
        if record and check(record):
            return record
        time.sleep(0.2)
    events = [f"{e['action']}: {e['detail']}" for e in record.get("events", [])]
    raise AssertionError(
        f"timed out after {timeout_s} s waiting for {what}; record phase "
        f"{record.get('phase')}, events {events}\n--- gateway log ---\n"
        f"{stack.gateway.logs()[-4000:]}"
    )


# -- Python-backend test models with golden references --------------------------------------------

_FLAKY_MODEL_PY = '''\
"""Like the reliability suite's tiny model, but once it served {healthy} requests, every
{every}rd request fails: a candidate that passes verification and then errors in canary."""
import json
import os
import site
import sys

for _path in os.environ.get("LOCAL_TRITON_PYTHONPATH", "").split(os.pathsep):
    if _path and _path not in sys.path:
        site.addsitedir(_path)

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.classes = int(config["output"][0]["dims"][0])
        self.served = 0

    def execute(self, requests):
        responses = []
        for request in requests:
            self.served += 1
            if self.served > {healthy} and self.served % {every} == 0:
                error = pb_utils.TritonError("injected failure of the flaky test model")
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=error))
                continue
            pixels = pb_utils.get_input_tensor_by_name(request, "input").as_numpy()
            means = pixels.reshape(pixels.shape[0], -1).mean(axis=1, keepdims=True)
            weights = np.arange(1, self.classes + 1, dtype=np.float32)
            logits = (means * weights).astype(np.float32)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("logits", logits)]))
        return responses
'''


def write_flaky_model(version_dir: Path, healthy: int = 30, every: int = 3) -> None:
    """Replace a Python test model's code by the flaky one (fails 1 in `every` after `healthy`)."""
    code = _FLAKY_MODEL_PY.replace("{healthy}", str(healthy)).replace("{every}", str(every))
    (version_dir / "model.py").write_text(code, encoding="utf-8")


def write_python_golden(model_dir: Path, version: str, photos: dict[str, bytes]) -> None:
    """Golden references of a reliability-suite Python model: its formula on the contract's
    preprocessing (the model's logits are the input's mean times 1..classes)."""
    from model_contract.golden import GoldenImage, GoldenSet, sha256_hex, top_k_of, write_golden
    from model_contract.preprocessing import Preprocessing
    from model_contract.triton_config import config_parameters

    parameters = config_parameters((model_dir / CONFIG_FILE).read_text(encoding="utf-8"))
    spec = Preprocessing.from_parameters(parameters)
    version_dir = model_dir / version
    labels_file = version_dir / LABELS_FILE
    labels = read_labels(labels_file)
    images = []
    stored: dict[str, bytes] = {}
    for source, data in photos.items():
        rgb = Image.open(io.BytesIO(data)).convert("RGB")
        mean = float(preprocess(rgb, spec).astype(np.float32).mean())
        logits = [float(np.float32(mean) * np.float32(k)) for k in range(1, len(labels) + 1)]
        top = top_k_of(logits)
        file = f"{source}.jpg"
        stored[file] = data
        images.append(
            GoldenImage(
                file=file,
                sha256=sha256_hex(data),
                top_k=top,
                top_labels=tuple(labels[i] for i in top),
                logits=tuple(logits),
                source=source,
            )
        )
    golden = GoldenSet(
        images=tuple(images),
        reference="the test model's formula (numpy float32)",
        labels_sha256=sha256_hex(labels_file.read_bytes()),
        # The gateway decodes large JPEGs in draft mode (GATEWAY_JPEG_DRAFT): at this model's
        # 8x8 input that moves the mean, and so every logit, by up to ~1 % of its scale.
        logit_tolerance=0.5,
    )
    write_golden(version_dir, golden, stored)


def leader_pid(stack: RolloutStack) -> int | None:
    """The gateway worker that holds the rollout controller's lock (from /proc/locks)."""
    inode = (stack.state_dir / ".controller.lock").stat().st_ino
    for line in Path("/proc/locks").read_text().splitlines():
        parts = line.split()
        # "1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF"
        if len(parts) >= 6 and parts[1] == "FLOCK" and parts[5].endswith(f":{inode}"):
            return int(parts[4])
    return None


# -- the stack and its load ---------------------------------------------------------------------

CLIENTS = 8
REQUEST_TIMEOUT_S = 30.0


def start_stack(
    repository: Path, tmp_path_factory: pytest.TempPathFactory, label: str
) -> Iterator[RolloutStack]:
    """Triton (explicit, the model loaded) and a 2-worker gateway with a rollout directory."""
    state_dir = repository.parent / "rollout"
    for triton in serve_explicit(repository, tmp_path_factory, label, load_models=(MODEL,)):
        workdir = tmp_path_factory.mktemp(f"gateway_{label}")
        (workdir / "metrics").mkdir()
        gateway = GatewayProcess(
            {
                "GATEWAY_WORKERS": "2",
                "GATEWAY_TRITON_URL": triton.grpc_url,
                "GATEWAY_MODEL_REPOSITORY": str(repository),
                "GATEWAY_DEFAULT_MODEL": MODEL,
                "GATEWAY_API_KEYS": "rollout-e2e-key-0123456789",
                "GATEWAY_ROLLOUT_DIR": str(state_dir),
                "GATEWAY_TRITON_TIMEOUT_S": "20",
                # The load repeats a few photos: every request must reach its version.
                "GATEWAY_CACHE": "off",
                "PROMETHEUS_MULTIPROC_DIR": str(workdir / "metrics"),
                "PYTHONUNBUFFERED": "1",
            },
            log_path=workdir / "gunicorn.log",
        )
        gateway.start()
        try:
            gateway.wait_ready(60)
            stack = RolloutStack(repository, state_dir, triton, gateway)
            wait_state(stack, lambda r: r.get("stable") == "1", "adoption of version 1", 60)
            yield stack
        finally:
            gateway.stop()


def sender(
    stack: RolloutStack, photos: list[bytes]
) -> Callable[[requests.Session, int], requests.Response]:
    """A run_clients `send` posting the photos in turn to /analyze (unpinned)."""
    payloads = [{"image": data_url(photo, "image/jpeg")} for photo in photos]

    def send(session: requests.Session, index: int) -> requests.Response:
        return session.post(
            f"{stack.gateway.url}/analyze",
            json=payloads[index % len(payloads)],
            headers=stack.gateway.headers,
            timeout=REQUEST_TIMEOUT_S,
        )

    return send


class Load:
    """8 clients in the background, their outcomes kept with each request's photo."""

    def __init__(self, stack: RolloutStack, photos: list[bytes], duration_s: float) -> None:
        self.run = LoadRun()
        self.stop = threading.Event()
        self.photos = photos
        self.thread = threading.Thread(
            target=run_clients,
            args=(CLIENTS, sender(stack, photos)),
            kwargs={"duration_s": duration_s, "stop": self.stop, "into": self.run},
            daemon=True,
        )
        self.started = time.monotonic()

    def __enter__(self) -> Load:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=REQUEST_TIMEOUT_S + 30)

    def versions(self, after: float = 0.0, before: float = float("inf")) -> dict[str | None, int]:
        """Answers per version among requests started in [`after`, `before`) (monotonic)."""
        counts: dict[str | None, int] = {}
        for outcome in list(self.run.outcomes):
            started = after <= outcome.started < before
            if started and outcome.status == 200 and outcome.body:
                version = outcome.body["model"]["version"]
                counts[version] = counts.get(version, 0) + 1
        return counts
