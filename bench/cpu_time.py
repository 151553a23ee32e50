"""Server CPU time from /proc: what a window cost the gateway's and Triton's processes.

Every server here runs in a process group of its own (local_triton.process.ManagedProcess:
a new session, the leader's pid is the group id), so summing utime + stime over the live
processes of that group covers gunicorn's master and workers, or tritonserver and its Python
backend stubs (where ONNX Runtime runs). Children reaped during a window move their time into
their parent's cutime + cstime, so those count too. Read before and after a window, the
difference divided by the images answered is the server CPU each image cost, whatever the
concurrency: the figure that says which path does the same work with less of the machine.

The whole machine's busy CPU (/proc/stat) is read too: what it used beyond these groups (and
the load generator, a few percent) is other work on the machine, which on a small box slows
ONNX Runtime's threads a lot; a window with a large `other_cores` is a disturbed one.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from bench.loadgen import Measurement

PROC = Path("/proc")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True)
class ProcStat:
    """One process's id, process group and CPU ticks (own and reaped children's)."""

    pid: int
    pgrp: int
    cpu_ticks: int


def parse_stat(text: str) -> ProcStat:
    """Parse a /proc/<pid>/stat line; ValueError when it is not one."""
    # The command name (field 2) may hold spaces and parentheses: the fixed fields start
    # after the last ')'. There, index 0 is field 3 (state), so field n is at n - 3.
    head, closing, rest = text.rpartition(")")
    if not closing:
        raise ValueError(f"not a /proc stat line: {text[:80]!r}")
    fields = rest.split()
    if len(fields) < 15:
        raise ValueError(f"a /proc stat line with {len(fields)} fields after the name")
    pid = int(head.split("(", 1)[0])
    # Fields 14-17: utime, stime, cutime, cstime (clock ticks).
    ticks = sum(int(value) for value in fields[11:15])
    return ProcStat(pid=pid, pgrp=int(fields[2]), cpu_ticks=ticks)


def group_cpu_s(pgid: int, proc: Path = PROC) -> float:
    """CPU seconds used so far by the live processes of process group `pgid`."""
    ticks = 0
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = parse_stat((entry / "stat").read_text(encoding="ascii", errors="replace"))
        except (OSError, ValueError):  # gone meanwhile, or unreadable: not ours to count
            continue
        if stat.pgrp == pgid:
            ticks += stat.cpu_ticks
    return ticks / CLOCK_TICKS


def machine_busy_s(text: str) -> float:
    """Busy CPU seconds of the whole machine from /proc/stat's text (all but idle and iowait)."""
    for line in text.splitlines():
        fields = line.split()
        if fields and fields[0] == "cpu":
            ticks = [int(value) for value in fields[1:]]
            # user nice system idle iowait irq softirq steal (guest time is inside user).
            busy = sum(ticks[:8]) - ticks[3] - ticks[4]
            return busy / CLOCK_TICKS
    raise ValueError("no cpu line in /proc/stat")


@dataclass(frozen=True)
class CpuSnapshot:
    """CPU seconds of each named process group at one moment (monotonic seconds), and the
    machine's busy seconds (None: /proc/stat unreadable)."""

    at_s: float
    groups: dict[str, float]
    machine_s: float | None = None


def snapshot(groups: Mapping[str, int], proc: Path = PROC) -> CpuSnapshot:
    """Read the CPU seconds of each named process group, and of the machine, now."""
    try:
        machine: float | None = machine_busy_s((proc / "stat").read_text(encoding="ascii"))
    except (OSError, ValueError):
        machine = None
    return CpuSnapshot(
        time.monotonic(), {name: group_cpu_s(pgid, proc) for name, pgid in groups.items()}, machine
    )


def cpu_use(before: CpuSnapshot, after: CpuSnapshot, images: int) -> dict[str, float]:
    """Server CPU between two snapshots: ms per image and cores busy, per group and in total.

    Keys: ``<group>_ms_per_image`` and ``<group>_cores`` for each group, ``total_...`` for
    their sum, ``images`` and ``span_s``, and with the machine's figures ``machine_cores`` and
    ``other_cores`` (busy beyond the groups: the load generator and anything else); empty when
    no image was answered or no time passed.
    """
    span = after.at_s - before.at_s
    if images <= 0 or span <= 0:
        return {}
    used = {name: after.groups[name] - before.groups[name] for name in before.groups}
    used["total"] = sum(used.values())
    figures: dict[str, float] = {}
    for name, seconds in used.items():
        figures[f"{name}_ms_per_image"] = round(seconds * 1000.0 / images, 3)
        figures[f"{name}_cores"] = round(seconds / span, 3)
    figures["images"] = float(images)
    figures["span_s"] = round(span, 3)
    if before.machine_s is not None and after.machine_s is not None:
        machine = (after.machine_s - before.machine_s) / span
        figures["machine_cores"] = round(machine, 3)
        figures["other_cores"] = round(max(0.0, machine - used["total"] / span), 3)
    return figures


def with_server_cpu(
    groups: Mapping[str, int],
    progress: Callable[[str], None],
    inner: Callable[[Callable[[], Measurement]], Measurement] | None = None,
) -> Callable[[Callable[[], Measurement]], Measurement]:
    """Wrap each window (and ``inner``'s wrapping) in CPU snapshots of the process groups.

    The images are every image answered while the load generator ran (warm-up, window and
    the requests in flight at its end, which it waits for), the same span as the snapshots.
    """

    def around(window: Callable[[], Measurement]) -> Measurement:
        before = snapshot(groups)
        measurement = inner(window) if inner is not None else window()
        after = snapshot(groups)
        images = measurement.answered * measurement.images_per_request
        measurement.server_cpu = cpu_use(before, after, images)
        if measurement.server_cpu:
            progress("    server CPU ms/image: " + describe(measurement.server_cpu))
        return measurement

    return around


def describe(figures: Mapping[str, float]) -> str:
    """``gateway 12.3, triton 80.1, total 92.4 (1.95 cores)`` from cpu_use's figures."""
    names = [key.removesuffix("_ms_per_image") for key in figures if key.endswith("_ms_per_image")]
    parts = ", ".join(f"{name} {figures[f'{name}_ms_per_image']:.1f}" for name in names)
    cores = figures.get("total_cores")
    text = parts + (f" ({cores:.2f} cores busy" if cores is not None else "")
    if cores is not None and "other_cores" in figures:
        text += f", {figures['other_cores']:.2f} more on the machine"
    return text + (")" if cores is not None else "")
