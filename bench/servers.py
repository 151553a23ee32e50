"""Starting and stopping the servers under test: subprocesses in own sessions, logged to files.

Every server (Triton, the gateway under gunicorn, the seed baseline) is started the same
way: ``sys.executable -m ...`` from the repository root, output to a log file (never a pipe
that could fill up and stall it), readiness polled over HTTP with a bounded wait, and
stopped by signalling its own process group (it and the children it spawned, nothing else).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path

from local_triton.lifetime import die_with_parent

REPO_ROOT = Path(__file__).resolve().parent.parent
POLL_INTERVAL_S = 0.25
STOP_TIMEOUT_S = 20.0
LOG_TAIL_LINES = 25


class ServerError(Exception):
    """A server did not start or become ready; the message carries the tail of its log."""


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class ServerProcess:
    """A started server: its process (a session leader) and its log file."""

    def __init__(self, name: str, command: Sequence[str], env: Mapping[str, str], log_path: Path):
        """Start `command` in a new session with stdout and stderr going to `log_path`."""
        self.name = name
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("wb") as log:
            self.process = subprocess.Popen(
                list(command),
                cwd=REPO_ROOT,
                env=dict(env),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                # A bench killed midway must not leave servers holding ports and CPU.
                preexec_fn=die_with_parent(signal.SIGTERM),
            )

    def log_tail(self) -> str:
        """Return the last lines of the server's log."""
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(lines[-LOG_TAIL_LINES:])

    def wait_ready(self, url: str, timeout_s: float) -> None:
        """Poll `url` until it answers 200; raise ServerError if the process exits or times out."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerError(
                    f"{self.name} exited with status {self.process.returncode} before ready; "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(POLL_INTERVAL_S)
        raise ServerError(
            f"{self.name} was not ready at {url} after {timeout_s:.0f} s; "
            f"log {self.log_path}:\n{self.log_tail()}"
        )

    def _signal_group(self, signum: int) -> None:
        with suppress(ProcessLookupError):
            os.killpg(self.process.pid, signum)

    def stop(self) -> None:
        """Stop the server's process group: SIGTERM, then SIGKILL after a bounded wait."""
        if self.process.poll() is None:
            self._signal_group(signal.SIGTERM)
            with suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=STOP_TIMEOUT_S)
        # Children (gunicorn workers, tritonserver) may outlive their parent by a moment.
        self._signal_group(signal.SIGKILL)
        if self.process.poll() is None:
            self.process.wait(timeout=5)


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
    server = ServerProcess(name, command, env, log_path)
    try:
        server.wait_ready(ready_url, timeout_s)
        yield server
    finally:
        server.stop()
