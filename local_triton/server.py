"""Start, watch and stop the real `tritonserver` binary from the nvidia-pytriton wheel."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Literal

from local_triton.backend_directory import ensure_backend_directory
from local_triton.distribution import TritonDistribution, find_distribution
from local_triton.environment import triton_environment
from local_triton.lifetime import die_with_parent
from local_triton.logs import LogPump, LogSink
from local_triton.ports import LOOPBACK, free_ports

ModelControlMode = Literal["none", "poll", "explicit"]
MODEL_CONTROL_MODES: tuple[ModelControlMode, ...] = ("none", "poll", "explicit")
SHM_DIR = Path("/dev/shm")
HTTP_TIMEOUT_S = 2.0


class TritonServerError(RuntimeError):
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


class TritonServer:
    """One tritonserver process on a model repository; start/stop/kill/restart on fixed ports."""

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
        self._log_sink = log_sink
        self._cache_root = cache_root
        self._distribution: TritonDistribution | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._pump: LogPump | None = None
        self._log_handle: IO[str] | None = None
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

    @property
    def pid(self) -> int | None:
        """Process id of the running tritonserver, or None."""
        return self._process.pid if self._process is not None else None

    @property
    def returncode(self) -> int | None:
        """Exit status of the last process once it ended (negative: killed by that signal)."""
        return self._process.poll() if self._process is not None else None

    def is_running(self) -> bool:
        """True while the tritonserver process is alive."""
        return self._process is not None and self._process.poll() is None

    def start(self) -> TritonServer:
        """Build the backend directory if needed and launch tritonserver (no wait for readiness)."""
        if self.is_running():
            raise TritonServerError(f"Triton is already running (pid {self.pid})")
        backend_directory = ensure_backend_directory(self.distribution, self._cache_root)
        self._shm_prefix = f"local_triton_{os.getpid()}_{secrets.token_hex(4)}"
        env = triton_environment(self.distribution, extra=self.extra_env)
        sinks: list[LogSink] = []
        if self._log_sink is not None:
            sinks.append(self._log_sink)
        if self.log_file is not None:
            self.log_file.parent.mkdir(parents=True, exist_ok=True)
            self._log_handle = self.log_file.open("a", encoding="utf-8", buffering=1)
            handle = self._log_handle
            sinks.append(lambda line: print(line, file=handle))
        command = self.command(backend_directory)
        try:
            self._process = subprocess.Popen(
                command,
                env=env,
                cwd=backend_directory,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                # Own process group: a terminal's Ctrl-C reaches us, and we decide how Triton stops;
                # kill() can also reach the Python stubs Triton spawned. SIGTERM when we die,
                # however we die: Triton then shuts down cleanly and frees its ports.
                start_new_session=True,
                preexec_fn=die_with_parent(signal.SIGTERM),
            )
        except OSError as error:
            self._close_log_file()
            raise TritonServerError(f"cannot run {command[0]}: {error}") from error
        assert self._process.stdout is not None
        self._pump = LogPump(self._process.stdout, sinks)
        return self

    def is_ready(self) -> bool:
        """True when /v2/health/ready answers 200 (strict readiness: all loaded models ready)."""
        return self._http_status("/v2/health/ready") == 200

    def _http_status(self, path: str) -> int | None:
        """HTTP status of a GET on Triton's HTTP port, None when nothing answers."""
        try:
            with urllib.request.urlopen(
                f"http://{self.http_url}{path}", timeout=HTTP_TIMEOUT_S
            ) as response:
                return int(response.status)
        except urllib.error.HTTPError as error:
            return int(error.code)
        except (OSError, urllib.error.URLError):
            return None

    def wait_ready(self, timeout: float = 120.0, poll_interval: float = 0.25) -> None:
        """Block until Triton is ready; TritonServerError (with log tail) on exit or timeout."""
        deadline = time.monotonic() + timeout
        while True:
            if not self.is_running():
                raise TritonServerError(
                    f"Triton exited with status {self.returncode} before it was ready:\n"
                    f"{self.logs(last=40)}"
                )
            if self.is_ready():
                return
            if time.monotonic() >= deadline:
                raise TritonServerError(
                    f"Triton was not ready after {timeout:.0f} s:\n{self.logs(last=40)}"
                )
            time.sleep(poll_interval)

    def stop(self, timeout: float | None = None) -> int | None:
        """SIGTERM, wait exit-timeout + grace (or `timeout`), then SIGKILL; return exit status."""
        process = self._process
        if process is None:
            return None
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout if timeout is not None else self.exit_timeout_seconds + 15)
            except subprocess.TimeoutExpired:
                self._kill_group(process)
                process.wait(10)
        self._finish(process)
        return process.returncode

    def kill(self) -> None:
        """SIGKILL tritonserver and its Python stubs at once (a crash, for fault tests)."""
        process = self._process
        if process is None:
            return
        self._kill_group(process)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(10)
        self._finish(process)

    def restart(self, timeout: float = 120.0) -> None:
        """Stop (if running), start again on the same ports and wait until ready."""
        self.stop()
        self.start()
        self.wait_ready(timeout)

    def _kill_group(self, process: subprocess.Popen[bytes], wait_s: float = 5.0) -> None:
        """SIGKILL the server's process group (Triton and its stubs).

        Once Triton itself has been reaped, wait (bounded) until its stubs are gone as well.
        """
        deadline = time.monotonic() + wait_s
        while True:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                return
            if process.poll() is None or time.monotonic() >= deadline:
                return  # Triton still to be reaped by the caller's wait(), or time is up
            time.sleep(0.05)

    def _finish(self, process: subprocess.Popen[bytes]) -> None:
        """After the server exited: end stray stubs, drain the log, remove shared memory."""
        self._kill_group(process)  # stubs normally exit with Triton; this catches any that did not
        if self._pump is not None:
            self._pump.join(5)
        self._close_log_file()
        if self._shm_prefix:
            for region in SHM_DIR.glob(f"{self._shm_prefix}*"):
                with contextlib.suppress(OSError):
                    region.unlink()

    def _close_log_file(self) -> None:
        """Close the log file, if one is open."""
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None

    # -- logs ------------------------------------------------------------------------------------

    def logs(self, last: int | None = None) -> str:
        """Triton's output so far (the last `last` lines, if given)."""
        return self._pump.text(last) if self._pump is not None else ""

    def log_lines(self, after: int = 0) -> list[str]:
        """Buffered log lines from position `after` (see log_mark) on."""
        return self._pump.lines_after(after) if self._pump is not None else []

    def log_mark(self) -> int:
        """A position in the log; pass it to wait_for_log(after=...) to only see later lines."""
        return self._pump.mark if self._pump is not None else 0

    def wait_for_log(self, pattern: str, timeout: float, after: int = 0) -> str | None:
        """The first log line at/after `after` matching regex `pattern`, or None after `timeout`."""
        if self._pump is None:
            return None
        return self._pump.wait_for(pattern, timeout, after)

    # -- context manager -----------------------------------------------------------------------

    def __enter__(self) -> TritonServer:
        """Start and wait until ready."""
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Stop the server."""
        self.stop()


def describe(server: TritonServer) -> str:
    """One line that says where a server listens."""
    return (
        f"Triton on {server.model_repository} ({server.model_control_mode} mode): "
        f"gRPC {server.grpc_url}, HTTP {server.http_url}, metrics {server.metrics_url}"
    )


#: The name the issue uses; the same class.
LocalTriton = TritonServer
