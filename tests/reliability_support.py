"""Helpers of the reliability and security suite: test models, load clients, figures, RSS.

- `write_python_model(...)`: a Triton Python-backend classifier for the gateway (preprocessing
  parameters, labels), tiny (3x8x8 input) and fast, or sleeping `sleep_s` per request.
- `fast_repository` / `fast_triton` (session fixtures): such models served by one Triton.
- `small_repository_v1` (session fixture): mobilenet_v3_small v1 published by the export CLI.
- `run_clients(...)`: N threads sending requests until a deadline or a stop event, every
  request with a timeout; returns one `Outcome` per request.
- `worker_rss(master_pid)`: resident memory of the gunicorn workers, from /proc.
- `env_int` / `env_float`: suite sizes overridable with RELIABILITY_* environment variables.

Figures are printed with `report(...)` (shown by `pytest -s` and in the slow run's log).
"""

from __future__ import annotations

import io
import os
import statistics
import textwrap
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
from PIL import Image

from local_triton import TritonServer
from tests.fakes_gateway import data_url
from tests.fixtures.models import SMALL_MODEL_ARGS, run_export
from tests.fixtures.triton import serve_explicit

FAST_MODEL = "fast"
SLOW_MODEL = "slow"  # sleeps SLOW_MODEL_SLEEP_S per request, one request at a time
SLOW_MODEL_SLEEP_S = 0.1
HUNG_MODEL = "hung"  # sleeps far longer than any gateway timeout in the suite
HUNG_MODEL_SLEEP_S = 60.0
TINY_CROP = 8
PHOTO_NAMES = ("chelsea", "coffee", "rocket", "astronaut")

_MODEL_PY = textwrap.dedent(
    '''\
    """A tiny classifier for the gateway's reliability tests; sleeps `sleep_s` per request."""
    import json
    import os
    import site
    import sys
    import time

    for _path in os.environ.get("LOCAL_TRITON_PYTHONPATH", "").split(os.pathsep):
        if _path and _path not in sys.path:
            site.addsitedir(_path)

    import numpy as np
    import triton_python_backend_utils as pb_utils


    class TritonPythonModel:
        def initialize(self, args):
            config = json.loads(args["model_config"])
            parameters = config.get("parameters", {})
            self.sleep_s = float(parameters.get("sleep_s", {}).get("string_value", "0"))
            self.classes = int(config["output"][0]["dims"][0])

        def execute(self, requests):
            responses = []
            for request in requests:
                pixels = pb_utils.get_input_tensor_by_name(request, "input").as_numpy()
                if self.sleep_s:
                    time.sleep(self.sleep_s)
                means = pixels.reshape(pixels.shape[0], -1).mean(axis=1, keepdims=True)
                weights = np.arange(1, self.classes + 1, dtype=np.float32)
                logits = (means * weights).astype(np.float32)
                responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("logits", logits)]))
            return responses
    '''
)


def write_python_model(
    repository: Path,
    name: str,
    *,
    sleep_s: float = 0.0,
    classes: int = 5,
    version: int = 1,
) -> Path:
    """Write a Python-backend model the gateway can serve (contract parameters and labels)."""
    model_dir = repository / name
    version_dir = model_dir / str(version)
    version_dir.mkdir(parents=True, exist_ok=True)
    (version_dir / "model.py").write_text(_MODEL_PY)
    labels = "".join(f"{name} class {i}\n" for i in range(classes))
    (model_dir / "labels.txt").write_text(labels)
    (version_dir / "labels.txt").write_text(labels)
    parameters = {
        "preprocess_resize_size": str(TINY_CROP),
        "preprocess_crop_size": str(TINY_CROP),
        "preprocess_mean": "0.485,0.456,0.406",
        "preprocess_std": "0.229,0.224,0.225",
        "preprocess_interpolation": "bilinear",
        "model_trained": "false",
        "sleep_s": str(sleep_s),
    }
    params = "".join(
        f'parameters {{ key: "{key}" value {{ string_value: "{value}" }} }}\n'
        for key, value in parameters.items()
    )
    # No dynamic batching: each request runs alone, so a sleeping model's capacity is exact.
    (model_dir / "config.pbtxt").write_text(
        f'name: "{name}"\n'
        'backend: "python"\n'
        "max_batch_size: 8\n"
        "instance_group [ { kind: KIND_CPU count: 1 } ]\n"
        f'input [ {{ name: "input" data_type: TYPE_FP32 format: FORMAT_NCHW '
        f"dims: [ 3, {TINY_CROP}, {TINY_CROP} ] }} ]\n"
        f'output [ {{ name: "logits" data_type: TYPE_FP32 dims: [ {classes} ] }} ]\n' + params
    )
    return model_dir


def write_test_models(repository: Path) -> Path:
    """The suite's repository: `fast`, `slow` (0.1 s a request) and `hung` (60 s)."""
    write_python_model(repository, FAST_MODEL)
    write_python_model(repository, SLOW_MODEL, sleep_s=SLOW_MODEL_SLEEP_S)
    write_python_model(repository, HUNG_MODEL, sleep_s=HUNG_MODEL_SLEEP_S)
    return repository


@pytest.fixture(scope="session")
def fast_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A read-only repository with the suite's Python-backend models."""
    return write_test_models(tmp_path_factory.mktemp("reliability_models"))


@pytest.fixture(scope="session")
def fast_triton(
    fast_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TritonServer]:
    """Triton (explicit mode) serving `fast` and `slow` for the session (never killed)."""
    yield from serve_explicit(
        fast_repository, tmp_path_factory, "reliability", load_models=(FAST_MODEL, SLOW_MODEL)
    )


@pytest.fixture(scope="session")
def small_repository_v1(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """mobilenet_v3_small version 1 (ImageNet labels, untrained), published by the CLI once.

    Read-only: tests copy it before publishing into it.
    """
    repository = tmp_path_factory.mktemp("small_models") / "model_repository"
    result = run_export(*SMALL_MODEL_ARGS, "--repository", str(repository), "--quiet")
    assert result.returncode == 0, result.stdout + result.stderr
    return repository


# -- photos ------------------------------------------------------------------------------------


def photo_jpeg(name: str, quality: int = 90) -> bytes:
    """One of scikit-image's real photos as JPEG bytes."""
    skdata = pytest.importorskip("skimage.data")
    buffer = io.BytesIO()
    Image.fromarray(getattr(skdata, name)()).save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def photo_payloads() -> list[dict[str, Any]]:
    """The four real photos as front-end JSON payloads."""
    return [{"image": data_url(photo_jpeg(name), "image/jpeg")} for name in PHOTO_NAMES]


# -- load --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """One request: when it started (monotonic), how long it took, and what came back."""

    started: float
    seconds: float
    status: int | None  # None: no HTTP answer (timeout, connection error)
    body: dict[str, Any] | None
    retry_after: str | None = None
    error: str | None = None  # the client-side exception, when there was no answer


Send = Callable[[requests.Session, int], requests.Response]


@dataclass
class LoadRun:
    """Outcomes of a run of concurrent clients, with figures."""

    outcomes: list[Outcome] = field(default_factory=list)
    wall_s: float = 0.0

    def statuses(self) -> dict[int | None, int]:
        """How many requests ended with each status (None: no answer)."""
        counts: dict[int | None, int] = {}
        for outcome in self.outcomes:
            counts[outcome.status] = counts.get(outcome.status, 0) + 1
        return counts

    def latencies(self, status: int | None = 200) -> list[float]:
        """Sorted latencies (s) of requests with ``status``."""
        return sorted(o.seconds for o in self.outcomes if o.status == status)


def percentile(values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile of sorted ``values`` (0.0 for none)."""
    if not values:
        return 0.0
    rank = min(len(values) - 1, max(0, round(fraction * len(values) + 0.5) - 1))
    return values[rank]


def run_clients(
    clients: int,
    send: Send,
    *,
    duration_s: float,
    stop: threading.Event | None = None,
    max_requests_per_client: int = 100_000,
    think_s: float = 0.0,
    into: LoadRun | None = None,
) -> LoadRun:
    """Run ``clients`` threads, each calling ``send`` until the deadline (or ``stop``).

    Every request must carry its own timeout (``send`` passes one); each loop is bounded by
    the deadline and by ``max_requests_per_client``. Outcomes are appended to ``into`` as
    they come (so another thread can watch them), or to a new LoadRun.
    """
    run = into if into is not None else LoadRun()
    lock = threading.Lock()
    deadline = time.monotonic() + duration_s
    stop = stop or threading.Event()

    def client(index: int) -> None:
        with requests.Session() as session:
            for count in range(max_requests_per_client):
                if stop.is_set() or time.monotonic() >= deadline:
                    return
                started = time.monotonic()
                try:
                    response = send(session, index * max_requests_per_client + count)
                except requests.RequestException as exc:
                    outcome = Outcome(
                        started, time.monotonic() - started, None, None, error=repr(exc)
                    )
                else:
                    outcome = Outcome(
                        started,
                        time.monotonic() - started,
                        response.status_code,
                        _json_or_none(response),
                        response.headers.get("Retry-After"),
                    )
                with lock:
                    run.outcomes.append(outcome)
                if think_s:
                    time.sleep(think_s)

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        # Bounded: a request ends by its own timeout; a minute of slack beyond the deadline.
        thread.join(timeout=max(0.0, deadline - time.monotonic()) + 60.0)
    stop.set()
    run.wall_s = time.monotonic() - started
    return run


def _json_or_none(response: requests.Response) -> dict[str, Any] | None:
    try:
        body = response.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def wait_for(what: str, check: Callable[[], bool], timeout_s: float, every_s: float = 0.2) -> float:
    """Poll ``check`` until true (bounded in time and count); return the seconds it took."""
    started = time.monotonic()
    for _ in range(int(timeout_s / every_s) + 2):
        if check():
            return time.monotonic() - started
        if time.monotonic() - started > timeout_s:
            break
        time.sleep(every_s)
    pytest.fail(f"timed out after {timeout_s} s waiting for {what}")


# -- processes ---------------------------------------------------------------------------------


def worker_pids(master_pid: int) -> list[int]:
    """The gunicorn workers: the master's child processes, from /proc."""
    children = Path(f"/proc/{master_pid}/task/{master_pid}/children")
    try:
        return [int(pid) for pid in children.read_text().split()]
    except OSError:
        return []


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid`` from /proc/<pid>/status (0 when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def wait_for_workers(master_pid: int, count: int, timeout_s: float = 60.0) -> list[int]:
    """Wait (bounded) until gunicorn has forked ``count`` workers; /health answering only
    proves that the first one is up."""
    wait_for(f"{count} gunicorn workers", lambda: len(worker_pids(master_pid)) >= count, timeout_s)
    return worker_pids(master_pid)


def worker_rss(master_pid: int) -> dict[int, int]:
    """RSS in bytes of each gunicorn worker of ``master_pid``."""
    return {pid: rss_bytes(pid) for pid in worker_pids(master_pid)}


# -- sizes and figures ---------------------------------------------------------------------------


def env_int(name: str, default: int) -> int:
    """An integer suite size from the environment (RELIABILITY_*), else ``default``."""
    raw = os.environ.get(name, "").strip()
    return int(raw) if raw else default


def env_float(name: str, default: float) -> float:
    """A float suite size from the environment (RELIABILITY_*), else ``default``."""
    raw = os.environ.get(name, "").strip()
    return float(raw) if raw else default


def summary(run: LoadRun) -> str:
    """One line of figures: requests, statuses, p50/p99 of the 200s, throughput."""
    ok = run.latencies(200)
    statuses = ", ".join(f"{k}: {v}" for k, v in sorted(run.statuses().items(), key=str))
    rate = len(run.outcomes) / run.wall_s if run.wall_s else 0.0
    return (
        f"{len(run.outcomes)} requests in {run.wall_s:.1f} s ({rate:.1f}/s); "
        f"statuses {{{statuses}}}; "
        f"200 p50 {percentile(ok, 0.5) * 1000:.0f} ms, p99 {percentile(ok, 0.99) * 1000:.0f} ms"
    )


def report(title: str, *lines: str) -> None:
    """Print figures for the run's log (pytest -s, or the captured output of a failure)."""
    print(f"\n[reliability] {title}")
    for line in lines:
        print(f"[reliability]   {line}")


def median(values: Sequence[float]) -> float:
    """The median (0.0 for none)."""
    return statistics.median(values) if values else 0.0
