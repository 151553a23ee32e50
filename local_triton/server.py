"""Start, watch and stop the real `tritonserver` binary from the nvidia-pytriton wheel."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from local_triton.backend_directory import ensure_backend_directory
from local_triton.distribution import TritonDistribution, find_distribution
from local_triton.environment import triton_environment
from local_triton.logs import LogPump, LogSink
from local_triton.ports import LOOPBACK, free_ports
from local_triton.process import (
    POLL_INTERVAL_S,
    ManagedProcess,
    ManagedServer,
    ProcessError,
    http_status,
)

ModelControlMode = Literal["none", "poll", "explicit"]
MODEL_CONTROL_MODES: tuple[ModelControlMode, ...] = ("none", "poll", "explicit")
SHM_DIR = Path("/dev/shm")
READY_TIMEOUT_S = 120.0
# How long stop() waits beyond Triton's own --exit-timeout-secs before it kills the group.
STOP_GRACE_S = 15


class TritonServerError(ProcessError):
    """Triton could not be started, did not become ready, or exited unexpectedly."""


@dataclass(frozen=True)
class TritonPorts:
    """The three ports one Triton server listens on (all on 127.0.0.1)."""

    http: int
    grpc: int
    metrics: int

    @classmethod
    def pick(
        cls, http: int | None = None, grpc: int | None = None, metrics: int | None = None
    ) -> TritonPorts:
        """Use the given ports and pick free ones for the rest."""
        spare = iter(free_ports(3))
        return cls(
            http=http if http is not None else next(spare),
            grpc=grpc if grpc is not None else next(spare),
            metrics=metrics if metrics is not None else next(spare),
        )


class TritonServer(ManagedServer):
    """One tritonserver process on a model repository; start/stop/kill/restart on fixed ports."""

    ready_timeout_s = READY_TIMEOUT_S

    def __init__(
        self,
        model_repository: str | Path,
        *,
        http_port: int | None = None,
        grpc_port: int | None = None,
        metrics_port: int | None = None,
        model_control_mode: ModelControlMode = "poll",
        poll_seconds: int = 1,
        load_models: Sequence[str] = (),
        load_all: bool = False,
        log_verbose: int = 0,
        exit_timeout_seconds: int = 3,
        strict_readiness: bool = True,
        exit_on_error: bool = True,
        extra_env: Mapping[str, str] | None = None,
        extra_args: Sequence[str] = (),
        log_sink: LogSink | None = None,
        log_file: str | Path | None = None,
        cache_root: Path | None = None,
    ) -> None:
        """Describe the server; nothing starts until start(). Ports left None are picked now."""
        if model_control_mode not in MODEL_CONTROL_MODES:
            raise ValueError(
                f"model_control_mode must be one of {MODEL_CONTROL_MODES}, "
                f"got {model_control_mode!r}"
            )
        if poll_seconds < 1:
            raise ValueError(f"poll_seconds must be at least 1, got {poll_seconds}")
        if (load_models or load_all) and model_control_mode != "explicit":
            raise ValueError("load_models/load_all only apply to model_control_mode='explicit'")
        if load_models and load_all:
            raise ValueError("give either load_models or load_all, not both")
        self.model_repository = Path(model_repository).resolve()
        if not self.model_repository.is_dir():
            raise ValueError(f"model repository {self.model_repository} is not a directory")
        self.ports = TritonPorts.pick(http_port, grpc_port, metrics_port)
        self.model_control_mode = model_control_mode
        self.poll_seconds = poll_seconds
        self.load_models = tuple(load_models)
        self.load_all = load_all
        self.log_verbose = log_verbose
        self.exit_timeout_seconds = exit_timeout_seconds
        self.strict_readiness = strict_readiness
        self.exit_on_error = exit_on_error
        self.extra_env = dict(extra_env or {})
        self.extra_args = tuple(extra_args)
        self.log_file = Path(log_file) if log_file is not None else None
        self.log_sink = log_sink
        self._cache_root = cache_root
        self._distribution: TritonDistribution | None = None
        # Each start gets its own shared-memory prefix, so a killed server's regions can be found.
        self._shm_prefix = ""

    # -- addresses -----------------------------------------------------------------------------

    @property
    def grpc_url(self) -> str:
        """'127.0.0.1:PORT', what tritonclient.grpc.InferenceServerClient takes."""
        return f"{LOOPBACK}:{self.ports.grpc}"

    @property
    def http_url(self) -> str:
        """'127.0.0.1:PORT', what tritonclient.http.InferenceServerClient takes."""
        return f"{LOOPBACK}:{self.ports.http}"

    @property
    def metrics_url(self) -> str:
        """Full URL of the Prometheus text endpoint."""
        return f"http://{LOOPBACK}:{self.ports.metrics}/metrics"

    # -- process -------------------------------------------------------------------------------

    @property
    def distribution(self) -> TritonDistribution:
        """The nvidia-pytriton files this server runs (located on first use)."""
        if self._distribution is None:
            self._distribution = find_distribution()
        return self._distribution

    def command(self, backend_directory: Path) -> list[str]:
        """The tritonserver command line for this configuration."""
        args = [
            str(self.distribution.binary),
            f"--model-repository={self.model_repository}",
            f"--backend-directory={backend_directory}",
            f"--model-control-mode={self.model_control_mode}",
            f"--http-address={LOOPBACK}",
            f"--http-port={self.ports.http}",
            f"--grpc-address={LOOPBACK}",
            f"--grpc-port={self.ports.grpc}",
            f"--metrics-address={LOOPBACK}",
            f"--metrics-port={self.ports.metrics}",
            f"--exit-timeout-secs={self.exit_timeout_seconds}",
            f"--strict-readiness={str(self.strict_readiness).lower()}",
            f"--exit-on-error={str(self.exit_on_error).lower()}",
            f"--log-verbose={self.log_verbose}",
            f"--backend-config=python,shm-region-prefix-name={self._shm_prefix or 'local_triton'}",
            # No GPU here: skip the pinned host memory pool Triton would try to allocate via CUDA.
            "--pinned-memory-pool-byte-size=0",
        ]
        if self.model_control_mode == "poll":
            args.append(f"--repository-poll-secs={self.poll_seconds}")
        if self.load_all:
            args.append("--load-model=*")
        args.extend(f"--load-model={name}" for name in self.load_models)
        args.extend(self.extra_args)
        return args

    @property
    def shm_prefix(self) -> str:
        """Name prefix of the Python backend's /dev/shm regions for the current run."""
        return self._shm_prefix

    def start(self) -> TritonServer:
        """Build the backend directory if needed and launch tritonserver (no wait for readiness)."""
        if self.is_running():
            raise TritonServerError(f"Triton is already running (pid {self.pid})")
        backend_directory = ensure_backend_directory(self.distribution, self._cache_root)
        self._shm_prefix = f"local_triton_{os.getpid()}_{secrets.token_hex(4)}"
        process = ManagedProcess(
            self.command(backend_directory),
            name="Triton",
            cwd=backend_directory,
            env=triton_environment(self.distribution, extra=self.extra_env),
            log_path=self.log_file,
            log_sinks=[self.log_sink] if self.log_sink is not None else [],
            # SIGTERM to tritonserver alone: it unloads the models and ends its Python stubs
            # itself; kill() and a stop past the grace period still reach the whole group.
            terminate_group=False,
            error_type=TritonServerError,
        )
        self._process = process.start()
        return self

    def is_ready(self) -> bool:
        """True when /v2/health/ready answers 200 (strict readiness: all loaded models ready)."""
        return http_status(self._ready_url) == 200

    @property
    def _ready_url(self) -> str:
        """Triton's readiness endpoint."""
        return f"http://{self.http_url}/v2/health/ready"

    def wait_ready(
        self, timeout: float = READY_TIMEOUT_S, poll_interval: float = POLL_INTERVAL_S
    ) -> None:
        """Block until Triton is ready; TritonServerError (with log tail) on exit or timeout."""
        if self._process is None:
            raise TritonServerError("Triton was not started")
        self._process.wait_until_healthy(self._ready_url, timeout, poll_interval)

    def stop(self, timeout: float | None = None) -> int | None:
        """SIGTERM, wait exit-timeout + grace (or `timeout`), then SIGKILL; return exit status."""
        if self._process is None:
            return None
        status = self._process.stop(
            timeout if timeout is not None else self.exit_timeout_seconds + STOP_GRACE_S
        )
        self._remove_shared_memory()
        return status

    def kill(self) -> None:
        """SIGKILL tritonserver and its Python stubs at once (a crash, for fault tests)."""
        if self._process is not None:
            self._process.kill()
            self._remove_shared_memory()

    def restart(self, timeout: float = READY_TIMEOUT_S) -> None:
        """Stop (if running), start again on the same ports and wait until ready."""
        self.stop()
        self.start()
        self.wait_ready(timeout)

    def _remove_shared_memory(self) -> None:
        """After the server exited: remove the Python backend's regions of this run."""
        if self._shm_prefix:
            for region in SHM_DIR.glob(f"{self._shm_prefix}*"):
                with contextlib.suppress(OSError):
                    region.unlink()

    # -- logs ------------------------------------------------------------------------------------

    def logs(self, last: int | None = None) -> str:
        """Triton's output so far (the last `last` lines, if given)."""
        pump = self._pump()
        return pump.text(last) if pump is not None else ""

    def log_lines(self, after: int = 0) -> list[str]:
        """Buffered log lines from position `after` (see log_mark) on."""
        pump = self._pump()
        return pump.lines_after(after) if pump is not None else []

    def log_mark(self) -> int:
        """A position in the log; pass it to wait_for_log(after=...) to only see later lines."""
        pump = self._pump()
        return pump.mark if pump is not None else 0

    def wait_for_log(self, pattern: str, timeout: float, after: int = 0) -> str | None:
        """The first log line at/after `after` matching regex `pattern`, or None after `timeout`."""
        pump = self._pump()
        return pump.wait_for(pattern, timeout, after) if pump is not None else None

    def _pump(self) -> LogPump | None:
        """The line buffer of the current (or last) run."""
        return self._process.pump if self._process is not None else None


def describe(server: TritonServer) -> str:
    """One line that says where a server listens."""
    return (
        f"Triton on {server.model_repository} ({server.model_control_mode} mode): "
        f"gRPC {server.grpc_url}, HTTP {server.http_url}, metrics {server.metrics_url}"
    )


#: The name the issue uses; the same class.
LocalTriton = TritonServer
