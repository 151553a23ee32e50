"""The bench's own servers (the seed baseline), run like every server here: a ManagedProcess.

Triton and the gateway are local_triton's TritonServer and local_stack's GatewayServer; the
seed baseline is started from the repository root, its output appended to a log file (never
a pipe that could fill up and stall it), readiness polled over HTTP with a bounded wait, and
stopped by signalling its own process group (see local_triton.process).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from local_triton.process import ManagedProcess, ProcessError

__all__ = ["REPO_ROOT", "ServerError", "ServerProcess", "running"]

REPO_ROOT = Path(__file__).resolve().parent.parent


class ServerError(ProcessError):
    """A server did not start, become ready or answer as expected; the message says why."""


class ServerProcess(ManagedProcess):
    """A server started at once from the repository root, its output appended to `log_path`."""

    def __init__(
        self, name: str, command: Sequence[str], env: Mapping[str, str], log_path: Path
    ) -> None:
        """Start `command` with environment `env` in a session of its own."""
        super().__init__(
            command, name=name, cwd=REPO_ROOT, env=env, log_path=log_path, error_type=ServerError
        )
        self.start()

    def wait_ready(self, url: str, timeout_s: float) -> None:
        """Poll `url` until it answers 200; ServerError with the log tail on exit or timeout."""
        self.wait_until_healthy(url, timeout_s)


@contextmanager
def running(
    name: str,
    command: Sequence[str],
    env: Mapping[str, str],
    log_path: Path,
    ready_url: str,
    timeout_s: float,
) -> Iterator[ServerProcess]:
    """Start a server, wait until `ready_url` answers 200, yield it, and always stop it."""
    with ServerProcess(name, command, env, log_path) as server:
        server.wait_ready(ready_url, timeout_s)
        yield server
