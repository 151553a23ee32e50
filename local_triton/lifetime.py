"""Children that die with their parent: Linux's parent-death signal (prctl PR_SET_PDEATHSIG).

A server started in a session of its own (so that a terminal's Ctrl-C reaches only its runner)
survives a runner killed with SIGKILL, by a supervisor or the OOM killer, and keeps its ports.
With the parent-death signal set in the child between fork and exec, the kernel sends it the
signal as soon as the runner is gone, however it went.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
from collections.abc import Callable

PR_SET_PDEATHSIG = 1


def _load_prctl() -> Callable[..., int] | None:
    """libc's prctl, loaded before any fork (nothing is imported between fork and exec)."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    prctl: Callable[..., int] = libc.prctl
    return prctl


_PRCTL = _load_prctl()


def die_with_parent(sig: signal.Signals = signal.SIGTERM) -> Callable[[], None] | None:
    """A Popen preexec_fn that has the child receive `sig` when its parent dies (None off Linux).

    The signal follows the *thread* that forked: start servers from a thread that lives as long
    as they should (the main thread, in everything here).
    """
    if _PRCTL is None:
        return None
    prctl = _PRCTL
    parent = os.getpid()

    def set_parent_death_signal() -> None:
        """Runs in the child after fork: arm the signal, then check the parent did not go first."""
        prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)

    return set_parent_death_signal
