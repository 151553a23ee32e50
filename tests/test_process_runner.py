"""local_triton.process: the one process runner, on real small Python processes."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from local_triton import free_port
from local_triton.logs import LogSink
from local_triton.process import ManagedProcess, ManagedServer, ProcessError, http_status, serving
from tests.fixtures.models import REPO_ROOT
from tests.fixtures.triton import group_alive, process_alive

# Generous: a Python start on a loaded 2-core machine can take seconds.
UP_TIMEOUT_S = 60.0
GONE_TIMEOUT_S = 15.0


def _python(code: str) -> list[str]:
    """A command that runs `code` (dedented) with this interpreter."""
    return [sys.executable, "-c", textwrap.dedent(code)]


def _gone_within(pid: int, timeout_s: float) -> bool:
    """Wait (bounded) until `pid` has exited."""
    deadline = time.monotonic() + timeout_s
    while process_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.fixture
def http_server(tmp_path: Path) -> Iterator[tuple[ManagedProcess, str]]:
    """`python -m http.server` on a free port, logged to a file; stopped at teardown."""
    port = free_port()
    process = ManagedProcess(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        name="http.server",
        cwd=tmp_path,
        log_path=tmp_path / "logs" / "http.log",
    )
    with process:
        yield process, f"http://127.0.0.1:{port}"


def test_wait_until_healthy_then_stop_returns_the_exit_status(
    http_server: tuple[ManagedProcess, str], tmp_path: Path
) -> None:
    """An HTTP server is healthy once / answers 200; stop() ends it by SIGTERM and says so."""
    process, url = http_server
    process.wait_until_healthy(url + "/", UP_TIMEOUT_S)
    assert process.is_running() and process.pid > 0 and process.returncode is None
    assert http_status(url + "/missing") == 404
    assert "GET / " in process.log_tail()  # the access log reached the file
    assert process.stop() == -signal.SIGTERM
    assert not process.is_running() and process.returncode == -signal.SIGTERM
    assert http_status(url + "/", timeout=1) is None
    assert process.stop() == -signal.SIGTERM, "a second stop is harmless"


def test_exit_before_healthy_fails_fast_with_the_log_tail(tmp_path: Path) -> None:
    """A process that dies first raises at once, naming its status, log file and last lines."""
    log = tmp_path / "doomed.log"
    process = ManagedProcess(
        _python("print('cannot start: no model', flush=True); raise SystemExit(3)"),
        name="doomed",
        log_path=log,
    ).start()
    started = time.monotonic()
    with pytest.raises(ProcessError, match="cannot start: no model") as error:
        process.wait_until_healthy(f"http://127.0.0.1:{free_port()}/", timeout=120)
    assert time.monotonic() - started < 60, "it waited for the timeout instead of the exit"
    assert "doomed exited with status 3" in str(error.value) and str(log) in str(error.value)
    assert process.stop() == 3


def test_timeout_names_the_url(tmp_path: Path) -> None:
    """Nothing ever answers: ProcessError after the timeout; the process is still running."""
    process = ManagedProcess(_python("import time; time.sleep(120)"), name="silent")
    url = f"http://127.0.0.1:{free_port()}/health"
    with process:
        with pytest.raises(ProcessError, match=f"silent was not ready at {url} after 1 s"):
            process.wait_until_healthy(url, timeout=1.0, poll_interval=0.1)
        assert process.is_running()


def test_stop_kills_a_process_that_ignores_sigterm(tmp_path: Path) -> None:
    """SIGTERM ignored: stop(timeout) escalates to SIGKILL after the grace period."""
    lines: list[str] = []
    process = ManagedProcess(
        _python(
            """
            import signal, time
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            print("ignoring SIGTERM", flush=True)
            time.sleep(120)
            """
        ),
        log_sinks=[lines.append],
    ).start()
    assert process.pump is not None
    assert process.pump.wait_for("ignoring SIGTERM", UP_TIMEOUT_S) is not None
    started = time.monotonic()
    assert process.stop(timeout=1.0) == -signal.SIGKILL
    assert time.monotonic() - started < 20
    assert lines == ["ignoring SIGTERM"], "each line went to the sink"


_PARENT_OF_A_SLEEPER = """
    import signal, subprocess, sys, time
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    print(child.pid, flush=True)
    time.sleep(120)
"""


@pytest.mark.parametrize("terminate_group", [True, False])
def test_stop_leaves_nothing_of_the_group(tmp_path: Path, terminate_group: bool) -> None:
    """After stop() no process of the group is left, whether SIGTERM went to all or the leader."""
    process = ManagedProcess(
        _python(_PARENT_OF_A_SLEEPER), log_sinks=[], terminate_group=terminate_group
    ).start()
    assert process.pump is not None
    line = process.pump.wait_for(r"^\d+$", UP_TIMEOUT_S)
    assert line is not None, process.log_tail()
    child = int(line)
    assert process.stop() == 0, "the leader handled SIGTERM"
    assert _gone_within(child, GONE_TIMEOUT_S)
    assert not group_alive(process.pid)


def test_kill_is_sigkill_to_the_whole_group(tmp_path: Path) -> None:
    """kill() ends the leader and its children at once, by SIGKILL."""
    process = ManagedProcess(_python(_PARENT_OF_A_SLEEPER), log_sinks=[]).start()
    assert process.pump is not None
    line = process.pump.wait_for(r"^\d+$", UP_TIMEOUT_S)
    assert line is not None, process.log_tail()
    assert process.kill() == -signal.SIGKILL
    assert _gone_within(int(line), GONE_TIMEOUT_S)


def test_a_sigkilled_parent_takes_the_process_with_it(tmp_path: Path) -> None:
    """The parent-death signal: a runner killed by SIGKILL still ends what it started."""
    runner = subprocess.Popen(
        _python(
            """
            import sys, time
            from local_triton.process import ManagedProcess
            sleeper = [sys.executable, "-c", "import time; time.sleep(120)"]
            print(ManagedProcess(sleeper).start().pid, flush=True)
            time.sleep(120)
            """
        ),
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert runner.stdout is not None
        child = int(runner.stdout.readline())
        assert process_alive(child)
        runner.kill()
        runner.wait(timeout=10)
        assert _gone_within(child, GONE_TIMEOUT_S), "the child outlived its SIGKILLed parent"
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.wait(timeout=10)


def test_log_file_is_appended_and_tailed(tmp_path: Path) -> None:
    """Output is appended to log_path (earlier runs stay); log_tail(n) gives the last n lines."""
    log = tmp_path / "app.log"
    log.write_text("an earlier run\n")
    code = "for i in range(100): print('line', i)"
    sinks: list[LogSink] = []
    for piped in (None, sinks):
        process = ManagedProcess(_python(code), log_path=log, log_sinks=piped).start()
        _wait_exit(process)
        assert process.log_tail(2) == "line 98\nline 99"
    text = log.read_text()
    assert text.startswith("an earlier run\nline 0\n") and text.count("line 99\n") == 2


def _wait_exit(process: ManagedProcess) -> None:
    """Wait (bounded) until `process` exits by itself, then reap it with stop()."""
    deadline = time.monotonic() + UP_TIMEOUT_S
    while process.is_running() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process.stop() == 0


def test_start_errors(tmp_path: Path) -> None:
    """A missing program and a second start() raise ProcessError (or the given error type)."""

    class CustomError(ProcessError):
        """A caller's own error type."""

    with pytest.raises(CustomError, match="cannot run"):
        ManagedProcess([str(tmp_path / "no-such-program")], error_type=CustomError).start()
    sleeper = ManagedProcess(_python("import time; time.sleep(120)"))
    with sleeper, pytest.raises(ProcessError, match="already started"):
        sleeper.start()
    with pytest.raises(ProcessError, match="was not started"):
        ManagedProcess(["true"]).wait_until_healthy("http://127.0.0.1:9/", 1)


class _RecordingServer(ManagedServer):
    """A stand-in server for serving(): records calls; wait_ready may fail."""

    def __init__(self, fail: bool) -> None:
        """Fail in wait_ready when `fail`."""
        self.calls: list[str] = []
        self.fail = fail

    def start(self) -> None:
        """Record the start."""
        self.calls.append("start")

    def wait_ready(self, timeout: float) -> None:
        """Record the wait; raise when told to."""
        self.calls.append(f"wait {timeout:g}")
        if self.fail:
            raise ProcessError("never ready")

    def stop(self) -> None:
        """Record the stop."""
        self.calls.append("stop")


def test_serving_always_stops() -> None:
    """serving() starts, waits with the timeout, yields, and stops, also when the wait fails."""
    ok = _RecordingServer(fail=False)
    with serving(ok, 7) as server:
        assert server is ok and ok.calls == ["start", "wait 7"]
    assert ok.calls == ["start", "wait 7", "stop"]
    failing = _RecordingServer(fail=True)
    with pytest.raises(ProcessError, match="never ready"), serving(failing, 3):
        pytest.fail("serving() yielded a server that was not ready")
    assert failing.calls == ["start", "wait 3", "stop"]
