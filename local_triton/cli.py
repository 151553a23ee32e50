"""`python -m local_triton`: serve a model repository with the real Triton until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from local_triton.distribution import TritonNotInstalledError
from local_triton.logs import LogSink, WarningsOnly
from local_triton.server import MODEL_CONTROL_MODES, TritonServer, TritonServerError, describe


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = argparse.ArgumentParser(
        prog="python -m local_triton",
        description="Run the Triton Inference Server from the nvidia-pytriton wheel on a "
        "model repository (CPU only, with a Python-based 'onnxruntime' backend).",
    )
    parser.add_argument(
        "--model-repository", required=True, type=Path, help="model repository directory"
    )
    parser.add_argument(
        "--http-port", type=int, default=8000, help="HTTP port (0: pick a free one)"
    )
    parser.add_argument(
        "--grpc-port", type=int, default=8001, help="gRPC port (0: pick a free one)"
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=8002,
        help="Prometheus metrics port (0: pick a free one)",
    )
    parser.add_argument("--model-control-mode", choices=MODEL_CONTROL_MODES, default="poll")
    parser.add_argument(
        "--poll-seconds", type=int, default=5, help="repository poll interval in poll mode"
    )
    loading = parser.add_mutually_exclusive_group()
    loading.add_argument(
        "--load-model",
        action="append",
        default=[],
        metavar="NAME",
        help="explicit mode: load NAME at start",
    )
    loading.add_argument(
        "--load-all", action="store_true", help="explicit mode: load every model at start"
    )
    parser.add_argument(
        "--log-verbose", type=int, default=0, help="Triton's verbose log level (0 = off)"
    )
    parser.add_argument("--log-file", type=Path, help="also append Triton's whole log to this file")
    parser.add_argument(
        "--quiet",
        action="store_true",
        help="print only Triton's warnings and errors here (the rest still goes to --log-file)",
    )
    parser.add_argument(
        "--exit-timeout-secs", type=int, default=5, help="how long Triton drains in-flight requests"
    )
    parser.add_argument(
        "--ready-timeout", type=float, default=300.0, help="seconds to wait for readiness"
    )
    return parser


def _port(value: int) -> int | None:
    """0 means "pick a free port"."""
    return None if value == 0 else value


def terminal_sink(*, quiet: bool) -> LogSink:
    """Where Triton's log lines go on the terminal: all of them, or only warnings and errors."""

    def print_line(line: str) -> None:
        print(line, flush=True)

    return WarningsOnly(print_line) if quiet else print_line


def announce_ready(server: TritonServer) -> None:
    """Say on stderr that Triton is ready and where it listens (local_stack says it too)."""
    print(f"local_triton: ready. {describe(server)}", file=sys.stderr, flush=True)


def announce_stopped(status: int | None) -> None:
    """Say on stderr that Triton stopped, with its exit status."""
    print(f"local_triton: Triton stopped (exit status {status})", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Start Triton, print where it listens, forward its log, stop it cleanly on SIGINT/SIGTERM."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.load_model or args.load_all) and args.model_control_mode != "explicit":
        parser.error("--load-model/--load-all need --model-control-mode explicit")
    if args.poll_seconds < 1:
        parser.error("--poll-seconds must be at least 1")
    try:
        server = TritonServer(
            args.model_repository,
            http_port=_port(args.http_port),
            grpc_port=_port(args.grpc_port),
            metrics_port=_port(args.metrics_port),
            model_control_mode=args.model_control_mode,
            poll_seconds=args.poll_seconds,
            load_models=args.load_model,
            load_all=args.load_all,
            log_verbose=args.log_verbose,
            exit_timeout_seconds=args.exit_timeout_secs,
            log_sink=terminal_sink(quiet=args.quiet),
            log_file=args.log_file,
        )
    except (ValueError, TritonNotInstalledError) as error:
        print(f"local_triton: {error}", file=sys.stderr)
        return 2
    stop_requested = threading.Event()

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        print(f"local_triton: {name} received, stopping Triton", file=sys.stderr, flush=True)
        stop_requested.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            server.start()
        except (TritonNotInstalledError, TritonServerError) as error:
            print(f"local_triton: {error}", file=sys.stderr)
            return 2
        try:
            return _serve(server, stop_requested, args.ready_timeout)
        finally:
            announce_stopped(server.stop())
    finally:
        for sig, handler in previous.items():
            if handler is not None:  # None: a handler not set from Python, nothing to restore
                signal.signal(sig, handler)


def _serve(server: TritonServer, stop_requested: threading.Event, ready_timeout: float) -> int:
    """Wait for readiness, announce the addresses, then wait for a stop signal or Triton's exit."""
    try:
        server.wait_ready(ready_timeout)
    except TritonServerError as error:
        if stop_requested.is_set():
            return 0
        print(f"local_triton: {error}", file=sys.stderr)
        return 1
    announce_ready(server)
    while not stop_requested.wait(0.5):
        if not server.is_running():
            print(
                f"local_triton: Triton exited by itself (status {server.returncode})",
                file=sys.stderr,
            )
            return 1
    return 0
