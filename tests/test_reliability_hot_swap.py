"""Hot swap under load: `python -m export` publishes version 2 while 8 clients send requests.

In explicit mode (the new version goes live when the repository API's load is called), and,
in the full form (`make test-slow`), with Triton polling the repository. No request may
fail, every response names the version that answered it, and its labels are that version's:
version 2 is published with a different --labels file, so a mix-up of versions and labels
cannot go unseen.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
import requests
import tritonclient.grpc as grpcclient

from local_triton.server import ModelControlMode
from tests.fixtures.gateway import StartGateway
from tests.fixtures.models import SMALL_MODEL_ARGS, copy_repository, run_export
from tests.reliability_runs_support import patient_gateway
from tests.reliability_support import (
    LoadRun,
    env_float,
    env_int,
    photo_payloads,
    report,
    run_clients,
    summary,
    wait_for,
)

pytestmark = pytest.mark.e2e

MODEL = "mobilenet_v3_small"
HTTP_TIMEOUT_S = 30.0
SWAP_TIMEOUT_S = 90.0
AFTER_SWAP_S = 2.0
V2_LABELS = [f"swap class {i}" for i in range(12)]


# Explicit mode is production's (compose, Kubernetes); poll mode, which Triton's maintainers
# discourage in production, runs in `make test-slow` (test_local_triton_hot_swap.py still
# swaps in poll mode without failures in `make test`).
@pytest.mark.parametrize("mode", [pytest.param("poll", marks=pytest.mark.slow), "explicit"])
def test_hot_swap_under_load_fails_nothing_and_never_mixes_labels(
    mode: ModelControlMode,
    small_repository_v1: Path,
    tmp_path: Path,
    start_triton: Any,
    start_gateway: StartGateway,
) -> None:
    """8 clients during a publish + swap: 0 failures, each answer's labels match its version."""
    clients = env_int("RELIABILITY_SWAP_CLIENTS", 8)
    # A pause between a client's requests leaves the 2 cores some room for the export itself.
    think_s = env_float("RELIABILITY_SWAP_THINK_S", 0.1)
    repository = copy_repository(small_repository_v1, tmp_path)
    if mode == "poll":
        triton = start_triton(repository, mode="poll", poll_seconds=1)
    else:
        triton = start_triton(repository, mode="explicit", load_models=(MODEL,))
    gateway = patient_gateway(start_gateway, triton, repository, MODEL)
    labels = {
        "1": set((repository / MODEL / "1" / "labels.txt").read_text().splitlines()),
        "2": set(V2_LABELS),
    }
    labels_file = tmp_path / "v2_labels.txt"
    labels_file.write_text("\n".join(V2_LABELS) + "\n")
    payloads = photo_payloads()
    stop = threading.Event()
    run = LoadRun()

    def send(session: requests.Session, index: int) -> requests.Response:
        return session.post(
            f"{gateway.url}/analyze",
            json={**payloads[index % len(payloads)], "top_k": 5},
            headers=gateway.headers,
            timeout=HTTP_TIMEOUT_S,
        )

    def load() -> None:
        run_clients(clients, send, duration_s=300.0, stop=stop, think_s=think_s, into=run)

    loader = threading.Thread(target=load, daemon=True)
    loader.start()
    try:
        time.sleep(1.0)
        started = time.monotonic()
        result = run_export(
            *SMALL_MODEL_ARGS,
            "--labels",
            str(labels_file),
            "--repository",
            str(repository),
            "--quiet",
        )
        assert result.returncode == 0, result.stdout + result.stderr
        published_s = time.monotonic() - started
        if mode == "explicit":
            client = grpcclient.InferenceServerClient(triton.grpc_url)
            client.load_model(MODEL, client_timeout=120)
        swap_s = wait_for(
            "version 2 to answer",
            lambda: _latest_version(run) == "2",
            SWAP_TIMEOUT_S,
        )
        time.sleep(AFTER_SWAP_S)
    finally:
        stop.set()
        loader.join(timeout=HTTP_TIMEOUT_S + 70)
    versions = [o.body["model"]["version"] for o in run.outcomes if o.body and "model" in o.body]
    report(
        f"hot swap under load ({mode} mode): {clients} clients, {think_s} s between requests",
        summary(run),
        f"export took {published_s:.1f} s; version 2 answered {swap_s:.1f} s after it returned; "
        f"answers by version 1: {versions.count('1')}, by version 2: {versions.count('2')}",
    )
    failures = [o for o in run.outcomes if o.status != 200]
    assert not failures, f"{len(failures)} failed requests, e.g. {failures[0]}"
    assert {"1", "2"} <= set(versions)
    for outcome in run.outcomes:
        assert outcome.body is not None
        version = outcome.body["model"]["version"]
        names = {p["label"] for p in outcome.body["predictions"]}
        assert names <= labels[version], (version, names)
        assert outcome.body["label"] in labels[version]


def _latest_version(run: LoadRun) -> str | None:
    """The version named by the latest answer the clients got."""
    for outcome in reversed(run.outcomes[-5:]):
        if outcome.body and "model" in outcome.body:
            return str(outcome.body["model"]["version"])
    return None
