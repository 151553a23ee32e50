"""The gateway as a process: no torch imported, clear refusal to start, gunicorn settings."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.fixtures.models import REPO_ROOT

TIMEOUT_S = 60


def clean_env(**extra: str) -> dict[str, str]:
    """The current environment without GATEWAY_* variables, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.update(extra)
    return env


def run(args: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``args`` from the repository root with a clean gateway environment."""
    return subprocess.run(
        args, cwd=REPO_ROOT, env=clean_env(**env), capture_output=True, text=True, timeout=TIMEOUT_S
    )


def gunicorn(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``gunicorn -c gateway/gunicorn.conf.py *args`` with a clean gateway environment."""
    return run([sys.executable, "-m", "gunicorn", "-c", "gateway/gunicorn.conf.py", *args], **env)


def test_gateway_never_imports_torch() -> None:
    """Importing the WSGI app (what each gunicorn worker does) loads no torch."""
    code = "import sys, gateway.wsgi, gateway.triton; print('torch' in sys.modules)"
    result = run([sys.executable, "-c", code], GATEWAY_AUTH="off")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_wsgi_refuses_to_start_without_keys_with_a_sentence() -> None:
    """Auth on and no key: exit status 3 (gunicorn stops) and one clear line, no traceback."""
    result = run([sys.executable, "-c", "import gateway.wsgi"])
    assert result.returncode == 3
    assert "configuration error" in result.stderr and "GATEWAY_API_KEYS" in result.stderr
    assert "Traceback" not in result.stderr


def test_gunicorn_refuses_to_start_without_keys() -> None:
    """The master validates settings before forking workers."""
    result = gunicorn("gateway.wsgi:app", GATEWAY_BIND="127.0.0.1:0")
    assert result.returncode != 0
    assert "GATEWAY_API_KEYS" in result.stderr


def printed_gunicorn_config(**env: str) -> dict[str, str]:
    """What ``gunicorn --print-config`` reports with gateway/gunicorn.conf.py and ``env``."""
    result = gunicorn("--print-config", "gateway.wsgi:app", **env)
    assert result.returncode == 0, result.stderr
    return {
        name.strip(): value.strip()
        for name, sep, value in (line.partition("=") for line in result.stdout.splitlines())
        if sep
    }


def test_gunicorn_settings_come_from_the_environment() -> None:
    """Bind, workers and threads from env; gthread (JSON errors); access log without headers
    or query."""
    config = printed_gunicorn_config(
        GATEWAY_AUTH="off",  # --print-config also loads the app
        GATEWAY_BIND="127.0.0.1:9123",
        GATEWAY_WORKERS="3",
        GATEWAY_THREADS="6",
    )
    assert config["bind"] == "['127.0.0.1:9123']"
    assert (config["workers"], config["threads"]) == ("3", "6")
    assert config["worker_class"] == "gateway.gunicorn_worker.JsonErrorThreadWorker"
    assert config["preload_app"] == "False"
    assert "%(r)s" not in config["access_log_format"]  # request line would include the query
    assert "%({x-api-key}i)s" not in config["access_log_format"].lower()
    assert config["child_exit"] == "<child_exit()>"


def test_default_threads_leave_room_beyond_the_admission_gate() -> None:
    """Without GATEWAY_THREADS, threads = max in flight + max queue + spare, from the env."""
    settings = printed_gunicorn_config(
        GATEWAY_AUTH="off", GATEWAY_MAX_INFLIGHT="3", GATEWAY_MAX_QUEUE="5"
    )
    assert settings["threads"] == "12"


def test_gunicorn_and_the_app_share_the_admission_defaults() -> None:
    """gunicorn.conf.py's thread sizing uses the same in-flight and queue defaults as Settings."""
    from gateway.config import Settings

    threads = printed_gunicorn_config(GATEWAY_AUTH="off")["threads"]
    defaults = Settings.from_env({"GATEWAY_AUTH": "off"})
    assert int(threads) == defaults.max_inflight + defaults.max_queue + 4


def test_gunicorn_rejects_a_bad_worker_count() -> None:
    """A malformed GATEWAY_WORKERS is a clear error."""
    result = gunicorn("--print-config", "x:y", GATEWAY_WORKERS="many")
    assert result.returncode != 0
    assert "GATEWAY_WORKERS" in result.stderr
