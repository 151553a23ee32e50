"""`python -m local_stack` (what `make run` runs): from an empty repository to answered requests."""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import json
import os
import queue
import shlex
import signal
import stat
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image
from skimage import data as skimage_data

from local_stack import cli as stack_cli
from local_triton import free_port
from local_triton.logs import WarningsOnly
from tests.fixtures.models import REPO_ROOT

UP_TIMEOUT_S = 300.0
CAT_CLASSES = {"tabby", "tiger cat", "Egyptian cat"}
API_KEY = "stack-test-key"
FALLBACK_NOTICE = "[stack] serving efficientnet_lite0 instead of resnet50: "
HISTORY_SECRET = "stack-test-history-secret"
HISTORY_NOTICE = "[stack] history: "
ROLLOUT_NOTICE = "[stack] Rollout: "
RECORD_TIMEOUT_S = 30.0
Stack = tuple[str, str, list[str], subprocess.Popen[str]]


def _chelsea_data_url() -> str:
    buffer = io.BytesIO()
    photo = skimage_data.chelsea()  # type: ignore[no-untyped-call]
    Image.fromarray(photo).save(buffer, format="JPEG", quality=90)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def _offline_environment(tmp_path: Path) -> dict[str, str]:
    """Proxies on a closed port (no download can start) and an empty torch cache."""
    closed = f"http://127.0.0.1:{free_port()}"
    torch_home = tmp_path / "torch-home"
    torch_home.mkdir()
    return {
        "HTTPS_PROXY": closed,
        "HTTP_PROXY": closed,
        "https_proxy": closed,
        "http_proxy": closed,
        "NO_PROXY": "127.0.0.1,localhost",  # the stack's own loopback traffic (health, gRPC)
        "no_proxy": "127.0.0.1,localhost",
        "TORCH_HOME": str(torch_home),
    }


def _stack_command(tmp_path: Path, port: int, model_args: Sequence[str]) -> list[str]:
    """`python -m local_stack` on an empty repository under tmp_path and free Triton ports, its
    rollout records (when on) in tmp_path/rollout, not in the clone's .cache/."""
    return [
        sys.executable,
        "-m",
        "local_stack",
        *model_args,
        "--repository",
        str(tmp_path / "repository"),
        "--rollout-dir",
        str(tmp_path / "rollout"),
        "--triton-log",
        str(tmp_path / "triton.log"),
        "--port",
        str(port),
        "--triton-http-port",
        str(free_port()),
        "--triton-grpc-port",
        str(free_port()),
        "--triton-metrics-port",
        str(free_port()),
    ]


def _stack_environment(overrides: Mapping[str, str]) -> dict[str, str]:
    """This environment minus GATEWAY_* and proxy exemptions, plus the test key and overrides."""
    dropped = ("GATEWAY_", "NO_PROXY", "no_proxy")
    environment = {k: v for k, v in os.environ.items() if not k.startswith(dropped)}
    environment.update(GATEWAY_API_KEYS=API_KEY, PYTHONUNBUFFERED="1", **overrides)
    return environment


@contextlib.contextmanager
def _started_stack(
    tmp_path: Path, model_args: Sequence[str], env: Mapping[str, str]
) -> Iterator[Stack]:
    """Start the stack and wait until it says it is up; yield url, key, output, process."""
    port = free_port()
    process = subprocess.Popen(
        _stack_command(tmp_path, port, model_args),
        cwd=REPO_ROOT,
        env=_stack_environment(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    stack_lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            if line.startswith("[stack]"):
                stack_lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    try:
        deadline = time.monotonic() + UP_TIMEOUT_S
        while True:
            remaining = deadline - time.monotonic()
            assert remaining > 0, "the stack did not come up:\n" + "".join(lines[-40:])
            assert process.poll() is None, "the stack exited:\n" + "".join(lines[-40:])
            try:
                if "is up" in stack_lines.get(timeout=min(remaining, 1.0)):
                    break
            except queue.Empty:
                continue
        yield f"http://127.0.0.1:{port}", API_KEY, lines, process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def _history_environment(tmp_path: Path) -> dict[str, str]:
    """History in a fresh, unmigrated SQLite file under tmp_path, with a secret of its own
    (so the test writes nothing into the clone's .cache/)."""
    return {
        "GATEWAY_HISTORY_URL": f"sqlite:///{tmp_path / 'history.sqlite'}",
        "GATEWAY_HISTORY_SECRET": HISTORY_SECRET,
    }


@pytest.fixture
def running_stack(tmp_path: Path) -> Iterator[Stack]:
    """The stack asked for efficientnet_lite0 explicitly, on an empty repository, its history
    in a new SQLite file."""
    environment = _history_environment(tmp_path)
    with _started_stack(tmp_path, ["--model", "efficientnet_lite0"], environment) as stack:
        yield stack


@pytest.fixture
def offline_default_stack(tmp_path: Path) -> Iterator[Stack]:
    """The stack with no --model, an empty repository, no network, an empty torch cache,
    --no-history and --no-rollout."""
    arguments = ["--no-history", "--no-rollout"]
    with _started_stack(tmp_path, arguments, _offline_environment(tmp_path)) as stack:
        yield stack


def _analyze_chelsea(url: str, api_key: str) -> dict[str, object]:
    """POST skimage's cat photo to /analyze and return the JSON answer."""
    request = urllib.request.Request(
        f"{url}/analyze",
        data=json.dumps({"image": _chelsea_data_url()}).encode(),
        headers={"Content-Type": "application/json", "X-API-Key": api_key},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        answer: dict[str, object] = json.load(response)
    return answer


def _get_json(url: str, api_key: str) -> dict[str, object]:
    """GET a gateway URL with the API key and return the JSON answer."""
    request = urllib.request.Request(url, headers={"X-API-Key": api_key})
    with urllib.request.urlopen(request, timeout=60) as response:
        answer: dict[str, object] = json.load(response)
    return answer


@pytest.mark.e2e
def test_run_command_exports_then_serves_analyze_and_stops_cleanly(
    running_stack: Stack, tmp_path: Path
) -> None:
    """Empty repository: export, serve /analyze, Triton's info log only in its file, SIGTERM."""
    url, api_key, lines, process = running_stack
    assert (tmp_path / "repository" / "efficientnet_lite0" / "1" / "model.onnx").is_file()
    output = "".join(lines)
    assert "exporting it first" in output
    assert "curl" in output and api_key not in output, "a configured key must not be echoed"
    assert FALLBACK_NOTICE not in output, "an explicit --model is served as asked"

    log_file = tmp_path / "triton.log"
    notices = [line for line in lines if line.startswith("[stack] Triton's full log: ")]
    assert len(notices) == 1 and str(log_file) in notices[0]
    assert "| Model " not in output and "+------" not in output, "Triton's info tables"
    assert "local_triton: ready." in output
    log = log_file.read_text()
    assert "| Model " in log and "+------" in log and "| efficientnet_lite0 | 1 " in log

    answer = _analyze_chelsea(url, api_key)
    assert answer["mode"] == "real"
    assert answer["label"] in CAT_CLASSES
    assert answer["model"] == {"name": "efficientnet_lite0", "version": "1"}

    # History: the stack migrated the new database, so the answer was stored and reads back.
    history_notices = [line for line in lines if line.startswith(HISTORY_NOTICE)]
    assert len(history_notices) == 1, output
    assert str(tmp_path / "history.sqlite") in history_notices[0]
    assert "--no-history" in history_notices[0]
    assert isinstance(answer["id"], str) and answer["id"], answer
    stored = _get_json(f"{url}/analyses/{answer['id']}", api_key)
    assert stored["id"] == answer["id"]
    assert stored["label"] == answer["label"] and stored["model"] == answer["model"]
    assert stored["predictions"] == answer["predictions"]

    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0
    deadline = time.monotonic() + 10  # the reader thread drains the last lines
    while "Triton stopped" not in "".join(lines) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "[stack] stopping" in "".join(lines)
    assert "Triton stopped" in "".join(lines)


def _wait_for_record(path: Path, process: subprocess.Popen[str]) -> dict[str, object]:
    """The rollout record at `path` once the controller has written it (JSON)."""
    deadline = time.monotonic() + RECORD_TIMEOUT_S
    while not path.is_file():
        assert process.poll() is None, "the stack exited"
        assert time.monotonic() < deadline, f"no rollout record at {path}"
        time.sleep(0.2)
    record: dict[str, object] = json.loads(path.read_text(encoding="utf-8"))
    return record


@pytest.mark.e2e
def test_run_command_adopts_the_served_model_for_rollout(
    running_stack: Stack, tmp_path: Path
) -> None:
    """Rollout is on by default: Triton in explicit mode, the served version adopted as stable
    in a record under --rollout-dir, and the printed command shows that record."""
    url, api_key, lines, process = running_stack
    state_dir = tmp_path / "rollout"
    record = _wait_for_record(state_dir / "efficientnet_lite0.json", process)
    assert record["model"] == "efficientnet_lite0"
    assert record["stable"] == "1" and record["candidate"] is None, record
    assert "MODE_EXPLICIT" in (tmp_path / "triton.log").read_text(), "explicit model control"

    notices = [line for line in lines if line.startswith(ROLLOUT_NOTICE)]
    assert len(notices) == 1, "".join(lines)
    assert notices[0].startswith("[stack] Rollout: on") and str(state_dir) in notices[0]
    assert "--no-rollout" in notices[0]
    command = notices[0].split("see them: ", 1)[1].split("  (off", 1)[0]
    assert command.startswith(".venv/bin/python -m rollout --state-dir ")
    assert command.endswith(" status")
    # As printed, from the clone, with no GATEWAY_* setting: the command says where all is.
    status = subprocess.run(
        [*shlex.split(command), "efficientnet_lite0"],
        cwd=REPO_ROOT,
        env={k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert status.returncode == 0, status.stdout + status.stderr
    assert "efficientnet_lite0" in status.stdout and "stable" in status.stdout, status.stdout

    # Unpinned requests are routed to the recorded stable.
    assert _analyze_chelsea(url, api_key)["model"] == {"name": "efficientnet_lite0", "version": "1"}


@pytest.mark.e2e
def test_default_model_offline_falls_back_to_lite0_with_one_notice(
    offline_default_stack: Stack, tmp_path: Path
) -> None:
    """No --model, no ResNet50 weights and no network: Lite0 is exported, served and announced;
    --no-rollout keeps Triton in poll mode and writes no rollout record."""
    url, api_key, lines, _ = offline_default_stack
    assert sorted(path.name for path in (tmp_path / "repository").iterdir()) == [
        "efficientnet_lite0"
    ]
    notices = [line for line in lines if line.startswith(FALLBACK_NOTICE)]
    assert len(notices) == 1, "".join(lines)
    assert "cannot be downloaded" in notices[0] and "make run MODEL=resnet50" in notices[0]

    answer = _analyze_chelsea(url, api_key)
    assert answer["label"] in CAT_CLASSES
    assert answer["model"] == {"name": "efficientnet_lite0", "version": "1"}
    # --no-history: nothing stored, and the stack says so.
    assert "id" not in answer
    assert "[stack] history: off (--no-history)\n" in lines
    # --no-rollout: Triton polls the repository as before rollout, and no record is kept.
    assert stack_cli.ROLLOUT_OFF_NOTICE.format(reason="--no-rollout") + "\n" in lines
    assert "MODE_POLL" in (tmp_path / "triton.log").read_text()
    assert not (tmp_path / "rollout").exists(), "--no-rollout wins over --rollout-dir"


def test_explicit_resnet50_offline_fails_without_fallback(tmp_path: Path) -> None:
    """--model resnet50 with no weights to be had exits 1 with the export's message, no Lite0."""
    result = subprocess.run(
        _stack_command(tmp_path, free_port(), ["--model", "resnet50"]),
        cwd=REPO_ROOT,
        env=_stack_environment(_offline_environment(tmp_path)),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 1, result.stdout
    assert "cannot download the" in result.stdout and "weights for resnet50" in result.stdout
    assert "[stack] error: exporting 'resnet50' failed" in result.stdout
    assert FALLBACK_NOTICE not in result.stdout
    assert not (tmp_path / "repository" / "efficientnet_lite0").exists()


def _stack_args(*argv: str) -> argparse.Namespace:
    """local_stack's parsed command line."""
    return stack_cli.parse_args(list(argv))


def test_triton_is_quiet_unless_verbose(tmp_path: Path) -> None:
    """Triton always logs to the file; the terminal filter is dropped only by --verbose."""
    log_file = tmp_path / "triton.log"
    quiet = stack_cli.triton_server(_stack_args(), tmp_path, log_file)
    verbose = stack_cli.triton_server(_stack_args("--verbose"), tmp_path, log_file)
    for server in (quiet, verbose):
        assert server.log_file == log_file
    assert isinstance(quiet.log_sink, WarningsOnly)
    assert verbose.log_sink is not None and not isinstance(verbose.log_sink, WarningsOnly)
    assert _stack_args().model is None, "no --model means: choose automatically"


def test_cached_weights_need_no_network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A weights file already in torch's cache makes ResNet50 available without any probe."""
    cached = tmp_path / "hub" / "checkpoints" / "resnet50-x.pth"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"weights")
    monkeypatch.setattr(
        "export.sources.pretrained_weights_location",
        lambda architecture: (f"http://127.0.0.1:{free_port()}/resnet50-x.pth", cached),
    )
    assert stack_cli.weights_unavailable("resnet50") is None


def test_reachable_weights_url_means_available(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not cached but the URL answers: ResNet50 is exported (downloaded) as before."""

    class Weights(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(206)
            self.send_header("Content-Length", "1")
            self.end_headers()
            self.wfile.write(b"w")

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Weights)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/resnet50-x.pth"
    monkeypatch.setattr(
        "export.sources.pretrained_weights_location",
        lambda architecture: (url, tmp_path / "absent.pth"),
    )
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    try:
        assert stack_cli.weights_unavailable("resnet50") is None
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def dev_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The stack's development files (history database, history secret) under tmp_path."""
    cache = tmp_path / "cache"
    monkeypatch.setattr(stack_cli, "DEV_HISTORY_DB", cache / "history.sqlite")
    monkeypatch.setattr(stack_cli, "DEV_HISTORY_SECRET_FILE", cache / "dev-history-secret")
    return cache


def test_history_defaults_to_sqlite_in_the_cache_with_a_generated_secret(dev_cache: Path) -> None:
    """Nothing configured: SQLite in .cache/, and a secret generated there once, mode 0600."""
    choice = stack_cli.history_choice(False, {})
    database, secret_file = dev_cache / "history.sqlite", dev_cache / "dev-history-secret"
    assert choice.enabled and choice.url == f"sqlite:///{database}"
    assert choice.settings == {
        "GATEWAY_HISTORY_URL": choice.url,
        "GATEWAY_HISTORY_SECRET_FILE": str(secret_file),
    }
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(database.stat().st_mode) == 0o600, "the answers are private too"
    secret = secret_file.read_text().strip()
    assert len(secret) >= 16
    assert stack_cli.history_choice(False, {}).settings == choice.settings
    assert secret_file.read_text().strip() == secret, "generated once, then kept"
    assert choice.notice.startswith(HISTORY_NOTICE) and "\n" not in choice.notice
    assert str(database) in choice.notice
    assert "--no-history" in choice.notice and "GATEWAY_HISTORY_URL=" in choice.notice


def test_configured_history_url_and_secret_are_kept(dev_cache: Path) -> None:
    """A GATEWAY_HISTORY_URL of the user's is used as is (inherited, never echoed: it may hold
    a password); a configured secret or secret file means no generated one."""
    url = "postgresql+psycopg://visionai:hunter2-password@db.example:5432/visionai"
    for secret in ({"GATEWAY_HISTORY_SECRET": "s" * 16}, {"GATEWAY_HISTORY_SECRET_FILE": "/s"}):
        choice = stack_cli.history_choice(False, {"GATEWAY_HISTORY_URL": url, **secret})
        assert choice.enabled and choice.url == url
        assert choice.settings == {}, "the gateway inherits the user's settings unchanged"
        assert "hunter2" not in choice.notice and "postgresql database" in choice.notice
    assert not dev_cache.exists(), "neither a database nor a secret was made"
    own_url = stack_cli.history_choice(False, {"GATEWAY_HISTORY_URL": url})
    assert own_url.settings == {
        "GATEWAY_HISTORY_SECRET_FILE": str(dev_cache / "dev-history-secret")
    }


@pytest.mark.parametrize(
    "no_history, environ, reason",
    [
        (False, {"GATEWAY_HISTORY_URL": ""}, "GATEWAY_HISTORY_URL="),
        (False, {"GATEWAY_HISTORY_URL": "  "}, "GATEWAY_HISTORY_URL="),
        (True, {}, "--no-history"),
        (True, {"GATEWAY_HISTORY_URL": "sqlite:///x.sqlite"}, "--no-history"),
    ],
)
def test_history_is_off_with_an_empty_url_or_no_history(
    dev_cache: Path, no_history: bool, environ: dict[str, str], reason: str
) -> None:
    """An explicitly empty GATEWAY_HISTORY_URL or --no-history: off, the URL set empty for the
    gateway (so an inherited one cannot turn it on), and nothing made in .cache/."""
    choice = stack_cli.history_choice(no_history, environ)
    assert not choice.enabled
    assert choice.settings == {"GATEWAY_HISTORY_URL": ""}
    assert choice.notice == f"[stack] history: off ({reason})"
    assert not dev_cache.exists()
    stack_cli.migrate_history(choice)  # nothing to migrate: returns at once
    assert not dev_cache.exists()


def test_no_history_flag_and_gateway_settings(tmp_path: Path) -> None:
    """--no-history parses; the choice's settings go over the gateway's environment."""
    assert _stack_args("--no-history").no_history and not _stack_args().no_history
    server = stack_cli.gateway_server(
        _stack_args(), tmp_path, "m", "key", {"GATEWAY_HISTORY_URL": ""}
    )
    assert server.env["GATEWAY_HISTORY_URL"] == ""
    assert server.env["GATEWAY_API_KEYS"]


def test_triton_runs_in_explicit_mode_with_rollout_and_polls_without(tmp_path: Path) -> None:
    """With a model to load (rollout on): explicit mode, that model loaded at start, no poll
    flag; without (--no-rollout): poll mode every few seconds, as before rollout."""
    log_file = tmp_path / "triton.log"
    explicit = stack_cli.triton_server(_stack_args(), tmp_path, log_file, "efficientnet_lite0")
    assert explicit.model_control_mode == "explicit"
    assert explicit.load_models == ("efficientnet_lite0",) and not explicit.load_all
    polled = stack_cli.triton_server(_stack_args("--no-rollout"), tmp_path, log_file)
    assert polled.model_control_mode == "poll"
    assert polled.poll_seconds == stack_cli.TRITON_POLL_SECONDS and not polled.load_models


@pytest.fixture
def rollout_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The stack's default repository and rollout directory under tmp_path."""
    monkeypatch.setattr(stack_cli, "DEFAULT_REPOSITORY", tmp_path / "model_repository")
    monkeypatch.setattr(stack_cli, "DEV_ROLLOUT_DIR", tmp_path / "cache" / "rollout")
    (tmp_path / "model_repository").mkdir()
    return tmp_path / "cache"


def test_rollout_defaults_to_the_cache_and_says_how_to_see_it(rollout_cache: Path) -> None:
    """Default: records in .cache/rollout (made), GATEWAY_ROLLOUT_DIR for the gateway, and one
    line with the command that shows them (Triton's port named when not the CLI's default)."""
    repository = stack_cli.DEFAULT_REPOSITORY.resolve()
    directory = rollout_cache / "rollout"
    choice = stack_cli.rollout_choice(_stack_args(), repository, {})
    assert choice.enabled and choice.directory == directory and directory.is_dir()
    assert choice.settings == {"GATEWAY_ROLLOUT_DIR": str(directory)}
    assert choice.notice.startswith("[stack] Rollout: on") and "\n" not in choice.notice
    command = f".venv/bin/python -m rollout --state-dir {directory} status"
    assert f"records in {directory}; see them: {command}" in choice.notice
    assert "--no-rollout" in choice.notice

    other_port = stack_cli.rollout_choice(_stack_args("--triton-grpc-port", "9001"), repository, {})
    assert f"--state-dir {directory} --triton-url 127.0.0.1:9001 status" in other_port.notice


def test_rollout_directory_follows_the_repository_or_the_settings(
    rollout_cache: Path, tmp_path: Path
) -> None:
    """Another --repository gets records of its own (named in the command); GATEWAY_ROLLOUT_DIR
    and --rollout-dir choose the directory, the flag first."""
    other = (tmp_path / "other-repository").resolve()
    first = stack_cli.rollout_choice(_stack_args(), other, {})
    assert first.directory is not None and first.directory.parent == rollout_cache
    assert first.directory != rollout_cache / "rollout"
    assert stack_cli.rollout_choice(_stack_args(), other, {}).directory == first.directory
    assert stack_cli.rollout_choice(_stack_args(), tmp_path / "third", {}).directory not in (
        first.directory,
        rollout_cache / "rollout",
    )
    assert f"--repository {other} status" in first.notice

    configured = {"GATEWAY_ROLLOUT_DIR": str(tmp_path / "from-env")}
    from_env = stack_cli.rollout_choice(_stack_args(), other, configured)
    assert from_env.directory == tmp_path / "from-env"
    flagged = _stack_args("--rollout-dir", str(tmp_path / "from-flag"))
    assert stack_cli.rollout_choice(flagged, other, configured).directory == (
        tmp_path / "from-flag"
    )


@pytest.mark.parametrize(
    "argv, environ, reason",
    [
        (("--no-rollout",), {}, "--no-rollout"),
        (("--no-rollout",), {"GATEWAY_ROLLOUT_DIR": "/somewhere"}, "--no-rollout"),
        ((), {"GATEWAY_ROLLOUT_DIR": ""}, "GATEWAY_ROLLOUT_DIR="),
        ((), {"GATEWAY_ROLLOUT_DIR": " "}, "GATEWAY_ROLLOUT_DIR="),
    ],
)
def test_rollout_is_off_with_no_rollout_or_an_empty_dir(
    rollout_cache: Path, argv: tuple[str, ...], environ: dict[str, str], reason: str
) -> None:
    """--no-rollout or an empty GATEWAY_ROLLOUT_DIR: off, the variable set empty for the gateway
    (so an inherited one cannot turn it on over a polling Triton), nothing made."""
    choice = stack_cli.rollout_choice(_stack_args(*argv), stack_cli.DEFAULT_REPOSITORY, environ)
    assert not choice.enabled
    assert choice.settings == {"GATEWAY_ROLLOUT_DIR": ""}
    assert choice.notice.startswith(f"[stack] Rollout: off ({reason}): Triton polls")
    assert "unchecked" in choice.notice
    assert not rollout_cache.exists()
    server = stack_cli.gateway_server(
        _stack_args(), stack_cli.DEFAULT_REPOSITORY, "m", "key", None, choice.settings
    )
    assert server.env["GATEWAY_ROLLOUT_DIR"] == ""


def test_rollout_directory_inside_the_repository_is_refused(tmp_path: Path) -> None:
    """Records inside the model repository would be seen by Triton: a StackError, not a start."""
    repository = (tmp_path / "repository").resolve()
    inside = _stack_args("--rollout-dir", str(repository / "rollout"))
    with pytest.raises(stack_cli.StackError, match="inside the model repository"):
        stack_cli.rollout_choice(inside, repository, {})
    assert not (repository / "rollout").exists()


def test_migrate_history_upgrades_a_new_sqlite_database(tmp_path: Path) -> None:
    """The migration (`python -m gateway.history upgrade`) leaves the schema current."""
    from gateway.history.store import HistoryStore

    url = f"sqlite:///{tmp_path / 'history.sqlite'}"
    stack_cli.migrate_history(stack_cli.HistoryChoice(url))
    store = HistoryStore(url, 5.0)
    try:
        store.check_schema()  # raises SchemaMismatch when not current
    finally:
        store.dispose()
    stack_cli.migrate_history(stack_cli.HistoryChoice(url))  # again: a no-op


def test_a_database_that_cannot_be_migrated_stops_the_stack(tmp_path: Path) -> None:
    """A migration failure is one StackError naming the problem and how to run without history."""
    url = f"sqlite:///{tmp_path / 'missing-folder' / 'history.sqlite'}"
    with pytest.raises(stack_cli.StackError, match="could not be migrated") as error:
        stack_cli.migrate_history(stack_cli.HistoryChoice(url))
    assert "--no-history" in str(error.value)
