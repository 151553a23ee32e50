"""Test-only launcher: the export CLI with a fault right before a version is committed.

`python -m tests.export_faults raise|pause EXPORT_ARGS...` runs `python -m export EXPORT_ARGS`
with `VersionPublisher.commit` replaced: `raise` simulates a crash with model.onnx written in
staging; `pause` prints PAUSE_MARKER and the staging model's path, then waits (bounded) to be
killed. The shipped export package has no hook for this: the seam lives here.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import Any

from export.publish import VersionPublisher

PAUSE_MARKER = "fault injection: paused after writing"
PAUSE_LIMIT_S = 120.0
FAULTS = ("raise", "pause")


class InjectedFault(RuntimeError):
    """The simulated crash (not an ExportError, so the CLI fails as on a real crash)."""


def arm(fault: str) -> None:
    """Replace VersionPublisher.commit with one that fails as `fault` says."""
    if fault not in FAULTS:
        raise SystemExit(f"usage: python -m tests.export_faults {{{','.join(FAULTS)}}} ARGS...")

    def faulty_commit(self: VersionPublisher, *args: Any, **kwargs: Any) -> Any:
        """Fail instead of committing, with model.onnx already in staging."""
        if fault == "raise":
            raise InjectedFault(f"simulated crash after writing {self.onnx_path}")
        sys.stderr.write(f"{PAUSE_MARKER} {self.onnx_path}\n")
        sys.stderr.flush()
        time.sleep(PAUSE_LIMIT_S)
        raise InjectedFault("nobody interrupted the pause")

    VersionPublisher.commit = faulty_commit  # type: ignore[method-assign]


def main(argv: Sequence[str]) -> int:
    """Arm the fault named by argv[0], then run the export CLI on the rest."""
    from export.cli import main as export_main

    arm(argv[0] if argv else "")
    return export_main(list(argv[1:]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
