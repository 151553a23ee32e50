"""The gateway under gunicorn, beside local_triton's TritonServer: THE gunicorn command line.

`make run`, the benchmark and the end-to-end tests all start the gateway through this class:
`python -m gunicorn -c gateway/gunicorn.conf.py gateway.wsgi:app` from the repository root,
configured by GATEWAY_* variables, run as a ManagedProcess (own process group, dies with its
parent, stopped as a group).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Self

from local_triton import free_port
from local_triton.process import (
    STOP_TIMEOUT_S,
    ManagedProcess,
    ManagedServer,
    ProcessError,
    Running,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
GUNICORN_CONFIG = REPO_ROOT / "gateway" / "gunicorn.conf.py"
WSGI_APP = "gateway.wsgi:app"
READY_TIMEOUT_S = 60.0


class GatewayServer(ManagedServer):
    """One gunicorn gateway on host:port, its settings laid over an environment."""

    ready_timeout_s = READY_TIMEOUT_S

    def __init__(
        self,
        settings: Mapping[str, str],
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        base_env: Mapping[str, str] | None = None,
        log_path: str | Path | None = None,
        ready_path: str = "/health",
    ) -> None:
        """Describe the gateway; nothing starts until start(). A port left None is picked now.

        `settings` (GATEWAY_*, PROMETHEUS_MULTIPROC_DIR, ...) go over `base_env` (default:
        this process's environment); GATEWAY_BIND comes from host and port. Output is appended
        to `log_path`, or goes where ours goes. wait_ready() polls `ready_path`: /health (the
        process answers) or /ready (Triton reachable and the default model ready).
        """
        self.host = host
        self.port = port if port is not None else free_port()
        self.env = {
            **(os.environ if base_env is None else base_env),
            **settings,
            "GATEWAY_BIND": f"{host}:{self.port}",
        }
        self.log_path = Path(log_path) if log_path is not None else None
        self.ready_path = ready_path

    @property
    def url(self) -> str:
        """Base URL, e.g. http://127.0.0.1:8080."""
        return f"http://{self.host}:{self.port}"

    @staticmethod
    def command() -> list[str]:
        """The gunicorn command line (run from the repository root)."""
        return [sys.executable, "-m", "gunicorn", "-c", str(GUNICORN_CONFIG), WSGI_APP]

    @property
    def process(self) -> ManagedProcess:
        """The gunicorn master's managed process (ProcessError before start())."""
        if self._process is None:
            raise ProcessError("the gateway was not started")
        return self._process

    def start(self) -> Self:
        """Launch gunicorn (no wait); ProcessError if it is running or cannot be run."""
        if self.is_running():
            raise ProcessError(f"the gateway is already running (pid {self.pid})")
        self._process = ManagedProcess(
            self.command(), name="the gateway", cwd=REPO_ROOT, env=self.env, log_path=self.log_path
        ).start()
        return self

    def wait_ready(
        self, timeout: float = READY_TIMEOUT_S, *, alongside: Mapping[str, Running] | None = None
    ) -> None:
        """Block until `ready_path` answers 200; ProcessError with the log tail on exit/timeout."""
        url = f"{self.url}{self.ready_path}"
        self.process.wait_until_healthy(url, timeout, alongside=alongside)

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM the group (gunicorn drains), SIGKILL after `timeout` s; return the status."""
        return self._process.stop(timeout) if self._process is not None else None

    def logs(self, last: int | None = None) -> str:
        """What gunicorn and the app wrote to `log_path` (the last `last` lines, if given)."""
        return self._process.log_tail(last) if self._process is not None else ""
