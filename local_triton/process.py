"""The one way servers are run here: start, wait for HTTP 200, stop the whole process group.

A ManagedProcess starts its command in a session of its own, so that a terminal's Ctrl-C
reaches only the runner, which then decides how the server stops, and so that stop() and
kill() reach every process the server spawned (gunicorn workers, Triton's Python stubs).
The child also gets the parent-death signal (local_triton.lifetime): a runner killed with
SIGKILL still takes its servers with it.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Protocol, Self, TypeVar

from local_triton.lifetime import die_with_parent
from local_triton.logs import LogPump, LogSink

HTTP_TIMEOUT_S = 2.0
POLL_INTERVAL_S = 0.25
STOP_TIMEOUT_S = 20.0
KILL_WAIT_S = 10.0
# Children can outlive their leader by a moment; this bounds the wait until they are gone.
GROUP_GONE_WAIT_S = 5.0
PUMP_DRAIN_S = 5.0
LOG_TAIL_LINES = 40
LOG_TAIL_BYTES = 64 * 1024
# Health checks only reach children on this machine: never through an HTTP(S)_PROXY.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class Running(Protocol):
    """Anything that can say whether it still runs (a ManagedProcess, a server)."""

    def is_running(self) -> bool:
        """True while the process has not exited."""
        ...


class ProcessError(RuntimeError):
    """A process could not be started, or exited or timed out before it was healthy."""


def http_status(url: str, timeout: float = HTTP_TIMEOUT_S) -> int | None:
    """Status of a GET on `url` (no proxy), or None when nothing answers within `timeout`."""
    try:
        with _DIRECT.open(url, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)
    except (OSError, http.client.HTTPException):  # refused, reset, timed out, half-started
        return None


class _StopsOnExit(ABC):
    """Leaving a `with` block stops: the exit shared by ManagedProcess and ManagedServer."""

    @abstractmethod
    def stop(self) -> int | None:
        """Stop; return the exit status (None: never started)."""

    def __exit__(self, *exc_info: object) -> None:
        """Stop, whether the block ended normally or by an exception (which propagates)."""
        self.stop()


class ManagedProcess(_StopsOnExit):
    """One run of a command in its own session: dies with its parent, stopped as a group."""

    def __init__(
        self,
        command: Sequence[str],
        *,
        name: str | None = None,
        cwd: str | Path | None = None,
        env: Mapping[str, str] | None = None,
        log_path: str | Path | None = None,
        log_sinks: Sequence[LogSink] | None = None,
        terminate_group: bool = True,
        error_type: type[ProcessError] = ProcessError,
    ) -> None:
        """Describe the run; nothing starts until start().

        Output (stdout and stderr) is appended to `log_path` when given. With `log_sinks`
        (even none) it is read line by line instead: kept for log_tail() and `pump`, and
        passed to each sink and to `log_path`. With neither, it goes where ours goes.
        `terminate_group=False` sends stop()'s SIGTERM to the leader only, for a server that
        stops its own children; `error_type` is what the failures raise.
        """
        if not command:
            raise ValueError("command must not be empty")
        self.command = list(command)
        self.name = name if name is not None else Path(self.command[0]).name
        self.cwd = cwd
        self.env = dict(env) if env is not None else None
        self.log_path = Path(log_path) if log_path is not None else None
        self.terminate_group = terminate_group
        self._log_sinks = list(log_sinks) if log_sinks is not None else None
        self._error_type = error_type
        self._process: subprocess.Popen[bytes] | None = None
        self._pump: LogPump | None = None
        self._log_handle: IO[Any] | None = None

    # -- state -----------------------------------------------------------------------------------

    @property
    def pid(self) -> int:
        """Process id of the leader (also its process group id); ProcessError before start()."""
        return self._started().pid

    @property
    def returncode(self) -> int | None:
        """Exit status once the leader ended (negative: killed by that signal), else None."""
        return self._process.poll() if self._process is not None else None

    def is_running(self) -> bool:
        """True while the leader is alive."""
        return self._process is not None and self._process.poll() is None

    def _started(self) -> subprocess.Popen[bytes]:
        """The leader's Popen; ProcessError before start()."""
        if self._process is None:
            raise self._error_type(f"{self.name} was not started")
        return self._process

    @property
    def pump(self) -> LogPump | None:
        """The line buffer of a run started with `log_sinks` (None otherwise)."""
        return self._pump

    # -- start -----------------------------------------------------------------------------------

    def start(self) -> Self:
        """Launch the command (no wait for health); ProcessError if it cannot be run."""
        if self._process is not None:
            raise self._error_type(f"{self.name} was already started (pid {self._process.pid})")
        stdout: int | IO[Any] | None = None
        sinks = self._log_sinks
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
        if sinks is not None:
            stdout = subprocess.PIPE
            if self.log_path is not None:
                # Line buffered: `tail -f` shows each line as the pump reads it.
                handle = self._log_handle = self.log_path.open("a", encoding="utf-8", buffering=1)
                sinks = [*sinks, lambda line: print(line, file=handle)]
        elif self.log_path is not None:
            # A file, never a pipe nobody reads: a full pipe would stall the server.
            stdout = self._log_handle = self.log_path.open("ab")
        try:
            self._process = subprocess.Popen(
                self.command,
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=subprocess.STDOUT if stdout is not None else None,
                start_new_session=True,
                # SIGTERM when we die, however we die: the server then stops cleanly and frees
                # its ports. The signal follows the forking thread (see die_with_parent).
                preexec_fn=die_with_parent(signal.SIGTERM),
            )
        except OSError as error:
            self._close_log()
            raise self._error_type(f"cannot run {self.command[0]}: {error}") from error
        if self._process.stdout is not None:
            self._pump = LogPump(self._process.stdout, sinks or [])
        elif sinks is None:
            self._close_log()  # the child holds its own descriptor of the file
        return self

    # -- health ----------------------------------------------------------------------------------

    def wait_until_healthy(
        self,
        url: str,
        timeout: float,
        poll_interval: float = POLL_INTERVAL_S,
        request_timeout: float = HTTP_TIMEOUT_S,
        *,
        alongside: Mapping[str, Running] | None = None,
    ) -> None:
        """Block until GET `url` answers 200; ProcessError with the log tail on exit or timeout.

        `alongside` names servers this one needs (the gateway needs Triton): one that exits
        meanwhile ends the wait at once instead of after `timeout`.
        """
        self._started()
        deadline = time.monotonic() + timeout
        while True:
            if not self.is_running():
                raise self._error_type(
                    f"{self.name} exited with status {self.returncode} before it was ready"
                    f"{self._log_note()}"
                )
            for what, needed in (alongside or {}).items():
                if not needed.is_running():
                    raise self._error_type(f"{what} exited while {self.name} was starting")
            if http_status(url, request_timeout) == 200:
                return
            if time.monotonic() >= deadline:
                raise self._error_type(
                    f"{self.name} was not ready at {url} after {timeout:.0f} s{self._log_note()}"
                )
            time.sleep(poll_interval)

    def _log_note(self) -> str:
        """Where the output is, and its last lines, for an error message."""
        if self._pump is None and self.log_path is None:
            return " (its output is above)"
        where = f" (log {self.log_path})" if self.log_path is not None else ""
        return f"{where}:\n{self.log_tail()}"

    # -- stop ------------------------------------------------------------------------------------

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM, SIGKILL the group after `timeout` s; return the exit status (None: unreaped)."""
        process = self._process
        if process is None:
            return None
        if process.poll() is None:
            self._signal(signal.SIGTERM, group=self.terminate_group)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL, group=True)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(KILL_WAIT_S)
        self._finish()
        return process.returncode

    def kill(self) -> int | None:
        """SIGKILL the whole group at once (a crash, for fault tests); return the exit status."""
        process = self._process
        if process is None:
            return None
        self._signal(signal.SIGKILL, group=True)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(KILL_WAIT_S)
        self._finish()
        return process.returncode

    def _signal(self, signum: int, *, group: bool) -> None:
        """Send `signum` to the process group, or to the leader only."""
        assert self._process is not None
        # Gone already, or (group) its id reused by someone else's group: nothing of ours left.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if group:
                os.killpg(self._process.pid, signum)
            else:
                self._process.send_signal(signum)

    def _finish(self) -> None:
        """After the leader exited: end stragglers of its group, drain and close the log."""
        assert self._process is not None
        # Children (gunicorn workers, Triton's stubs) normally exit with the leader; this ends
        # any that did not, so that none keeps a port, shared memory or CPU.
        deadline = time.monotonic() + GROUP_GONE_WAIT_S
        while True:
            try:
                os.killpg(self._process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                break
            if time.monotonic() >= deadline:
                break
            time.sleep(0.05)
        if self._pump is not None:
            self._pump.join(PUMP_DRAIN_S)
        self._close_log()

    def _close_log(self) -> None:
        """Close our handle on the log file, if one is open."""
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None

    # -- logs ------------------------------------------------------------------------------------

    def log_tail(self, lines: int | None = LOG_TAIL_LINES) -> str:
        """The last `lines` lines of output (all with None); '' when it is not captured."""
        if self._pump is not None:
            if not self.is_running():
                self._pump.join(2.0)  # an exited server's last words may still be in the pipe
            return self._pump.text(lines)
        if self.log_path is None:
            return ""
        try:
            with self.log_path.open("rb") as log:
                if lines is not None:
                    # The end of a long log is enough for a tail; never read it all.
                    log.seek(max(0, log.seek(0, os.SEEK_END) - LOG_TAIL_BYTES))
                text = log.read().decode("utf-8", errors="replace")
        except OSError:
            return ""
        return text if lines is None else "\n".join(text.splitlines()[-lines:])

    # -- context manager -------------------------------------------------------------------------

    def __enter__(self) -> Self:
        """Start (unless started already)."""
        return self if self._process is not None else self.start()


class ManagedServer(_StopsOnExit):
    """A server run as ManagedProcesses (TritonServer, GatewayServer): start, wait, stop."""

    #: How long `with server:` waits until it is ready.
    ready_timeout_s = 60.0
    _process: ManagedProcess | None = None

    @abstractmethod
    def start(self) -> object:
        """Launch a run without waiting."""

    @abstractmethod
    def wait_ready(self, timeout: float) -> None:
        """Block until ready; raise a ProcessError when it exits first or `timeout` s pass."""

    @property
    def pid(self) -> int | None:
        """Process id of the current (or last) run, or None before the first start."""
        return self._process.pid if self._process is not None else None

    @property
    def returncode(self) -> int | None:
        """Exit status of the last run once it ended (negative: killed by that signal)."""
        return self._process.returncode if self._process is not None else None

    def is_running(self) -> bool:
        """True while the current run is alive."""
        return self._process is not None and self._process.is_running()

    def __enter__(self) -> Self:
        """Start and wait (ready_timeout_s at most) until ready; stop again if it is not."""
        self.start()
        try:
            self.wait_ready(self.ready_timeout_s)
        except BaseException:
            self.stop()
            raise
        return self


ServerT = TypeVar("ServerT", bound=ManagedServer)


@contextlib.contextmanager
def serving(server: ServerT, timeout: float) -> Iterator[ServerT]:
    """Start `server`, wait (bounded) until it is ready, yield it, and always stop it."""
    server.start()
    try:
        server.wait_ready(timeout)
        yield server
    finally:
        server.stop()
