"""`python -m local_stack`: publish the model if missing, start Triton and the gateway.

Then print how to call it.

This is what `make run` runs. It is for a developer's machine: production runs the same
pieces from docker-compose.yml.
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

REPO_ROOT = Path(__file__).resolve().parent.parent
DEV_KEY_FILE = REPO_ROOT / ".cache" / "dev-api-key"
READY_TIMEOUT_S = 180.0


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
        default="resnet50",
        help="model to serve by default; exported first when the repository lacks it "
        "(offline: efficientnet_lite0). Default: %(default)s",
    )
    parser.add_argument(
        "--repository",
        type=Path,
        default=REPO_ROOT / "model_repository",
        help="Triton model repository. Default: %(default)s",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="gateway bind address. Default: %(default)s"
    )
    parser.add_argument("--port", type=int, default=8080, help="gateway port. Default: %(default)s")
    parser.add_argument("--triton-http-port", type=int, default=8000)
    parser.add_argument("--triton-grpc-port", type=int, default=8001)
    parser.add_argument("--triton-metrics-port", type=int, default=8002)
    return parser.parse_args(argv)


def has_published_version(repository: Path, model: str) -> bool:
    """Tell whether `repository/model` holds a config and at least one numbered version."""
    model_dir = repository / model
    if not (model_dir / "config.pbtxt").is_file():
        return False
    return any(entry.is_dir() and entry.name.isdigit() for entry in model_dir.iterdir())


def export_model(repository: Path, model: str) -> None:
    """Publish `model` into `repository` with `python -m export`, streaming its progress."""
    print(f"[stack] {repository}/{model} has no published version: exporting it first", flush=True)
    command = [sys.executable, "-m", "export", "--model", model, "--repository", str(repository)]
    if subprocess.run(command, cwd=REPO_ROOT, check=False).returncode != 0:
        raise StackError(
            f"exporting {model!r} failed (see above). Offline, serve the bundled pretrained model "
            "instead: `make run MODEL=efficientnet_lite0`."
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


def wait_for_http_ok(url: str, what: str, processes: Sequence[subprocess.Popen[bytes]]) -> None:
    """Poll `url` until it answers 200, a watched process dies, or READY_TIMEOUT_S passes."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        for process in processes:
            if process.poll() is not None:
                raise StackError(
                    f"{what} did not come up: a process exited with {process.returncode}"
                )
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise StackError(f"{what} was not ready at {url} after {READY_TIMEOUT_S:.0f} s")


def stop(processes: Sequence[subprocess.Popen[bytes]]) -> None:
    """Stop the processes gently, then forcefully after a bounded wait."""
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


def run(args: argparse.Namespace) -> None:
    """Bring the stack up and keep it running until interrupted."""
    repository = args.repository.resolve()
    repository.mkdir(parents=True, exist_ok=True)
    if not has_published_version(repository, args.model):
        export_model(repository, args.model)

    triton = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "local_triton",
            "--model-repository",
            str(repository),
            "--model-control-mode",
            "poll",
            "--http-port",
            str(args.triton_http_port),
            "--grpc-port",
            str(args.triton_grpc_port),
            "--metrics-port",
            str(args.triton_metrics_port),
        ],
        cwd=REPO_ROOT,
    )
    processes: list[subprocess.Popen[bytes]] = [triton]

    def on_signal(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    try:
        wait_for_http_ok(
            f"http://127.0.0.1:{args.triton_http_port}/v2/health/ready", "Triton", processes
        )
        api_key = dev_api_key()
        # A key the operator configured is not echoed; a generated development key is shown.
        shown_key = "$GATEWAY_API_KEY" if os.environ.get("GATEWAY_API_KEYS") else api_key
        metrics_dir = tempfile.mkdtemp(prefix="visionai-metrics-")
        gateway_env = {
            **os.environ,
            "GATEWAY_TRITON_URL": f"127.0.0.1:{args.triton_grpc_port}",
            "GATEWAY_DEFAULT_MODEL": args.model,
            "GATEWAY_MODEL_REPOSITORY": str(repository),
            "GATEWAY_API_KEYS": os.environ.get("GATEWAY_API_KEYS") or api_key,
            "GATEWAY_BIND": f"{args.host}:{args.port}",
            "PROMETHEUS_MULTIPROC_DIR": metrics_dir,
        }
        gateway = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "-c",
                "gateway/gunicorn.conf.py",
                "gateway.wsgi:app",
            ],
            cwd=REPO_ROOT,
            env=gateway_env,
        )
        processes.append(gateway)
        base = f"http://{args.host}:{args.port}"
        wait_for_http_ok(f"{base}/ready", "The gateway", processes)
        print(
            f"\n[stack] VisionAI Serving is up: gateway {base}  (Triton gRPC 127.0.0.1:"
            f"{args.triton_grpc_port}, metrics {base}/metrics)\n"
            f"[stack] API key: {shown_key}  (GATEWAY_API_KEYS, or generated in {DEV_KEY_FILE})\n"
            f"[stack] Try it:\n"
            f"  curl -s -H 'X-API-Key: {shown_key}' -F image=@photo.jpg {base}/analyze\n"
            f"[stack] Ctrl-C stops everything.\n",
            flush=True,
        )
        while all(process.poll() is None for process in processes):
            time.sleep(1)
        raise StackError("a component exited unexpectedly (see its log above)")
    except KeyboardInterrupt:
        print("\n[stack] stopping", flush=True)
    finally:
        stop(processes)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the stack; print expected failures as one message, not a traceback."""
    try:
        run(parse_args(argv))
    except StackError as error:
        print(f"[stack] error: {error}", file=sys.stderr)
        return 1
    return 0
