"""Terminal filter for Triton's log (`local_triton --quiet`, what local_stack uses by default)."""

from __future__ import annotations

import pytest

from local_triton.cli import terminal_sink
from local_triton.logs import WarningsOnly

# Real lines of a CPU-only Triton start with one model, with a stub's raw output added.
STARTUP_LOG = [
    'I1202 14:59:38.548662 14312 pinned_memory_manager.cc:283] "Pinned memory pool disabled"',
    'E1202 14:59:38.548914 14312 server.cc:241] "CudaDriverHelper has not been initialized."',
    'I1202 14:59:38.549921 14312 model_lifecycle.cc:472] "loading: efficientnet_lite0:1"',
    "I1202 14:59:40.036181 14312 server.cc:674] ",
    "+--------------------+---------+--------+",
    "| Model              | Version | Status |",
    "+--------------------+---------+--------+",
    "| efficientnet_lite0 | 1       | READY  |",
    "+--------------------+---------+--------+",
    "",
    "Error: Failed to initialize NVML",
    'W1202 14:59:40.036911 14312 metrics.cc:798] "DCGM unable to start: DCGM initialization error"',
    "W1202 14:59:41.000001 14312 model_repository_manager.cc:1] \"failed to poll model 'bad'\"",
    "E1202 14:59:41.000002 14312 model_lifecycle.cc:2] ",
    "+------+---------------------+",
    "| bad  | UNAVAILABLE: broken |",
    "+------+---------------------+",
    "Traceback (most recent call last):",
    'I1202 14:59:42.000000 14312 http_server.cc:4713] "Started HTTPService at 127.0.0.1:8000"',
    "Signal (15) received.",
]


def _filtered(lines: list[str]) -> list[str]:
    """The lines WarningsOnly lets through, in order."""
    shown: list[str] = []
    sink = WarningsOnly(shown.append)
    for line in lines:
        sink(line)
    return shown


def test_quiet_terminal_shows_warnings_errors_and_unprefixed_text_only() -> None:
    """Info records and their tables go; W/E records (with tables) and free text stay."""
    assert _filtered(STARTUP_LOG) == [
        STARTUP_LOG[12],
        "E1202 14:59:41.000002 14312 model_lifecycle.cc:2] ",
        "+------+---------------------+",
        "| bad  | UNAVAILABLE: broken |",
        "+------+---------------------+",
        "Traceback (most recent call last):",
        "Signal (15) received.",
    ]


def test_lines_before_any_record_are_shown() -> None:
    """Output that precedes Triton's first record (a crash message) is not swallowed."""
    assert _filtered(["| odd |", "", "boom"]) == ["| odd |", "", "boom"]


@pytest.mark.parametrize("quiet", [True, False])
def test_terminal_sink_filters_only_when_quiet(
    quiet: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    """--quiet prints the filtered log; without it (local_stack --verbose) every line is printed."""
    sink = terminal_sink(quiet=quiet)
    for line in STARTUP_LOG:
        sink(line)
    printed = capsys.readouterr().out.splitlines()
    assert printed == (_filtered(STARTUP_LOG) if quiet else STARTUP_LOG)
