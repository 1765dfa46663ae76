"""Find and stop processes by their command line (no psutil needed), for the scripts
and tests that start Flower's long-lived processes."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path


def matching(*needles: str) -> set[int]:
    """PIDs whose command line contains every needle."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if all(n in command for n in needles):
            found.add(int(entry.name))
    return found


def children(pid: int) -> set[int]:
    """All descendants of ``pid``, including processes Flower detaches but tags with
    ``--parent-pid <pid>`` (a SuperNode's SuperExec)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = set(), {pid}
    while frontier:
        tagged = set().union(*(matching(f"--parent-pid {p} ") for p in frontier))
        frontier = ({p for p, parent in parents.items() if parent in frontier} | tagged) - found
        found |= frontier
    return found


def stop(pids: set[int], grace: float = 5.0) -> None:
    """SIGTERM ``pids`` and their descendants, then SIGKILL what is left."""
    targets = set(pids)
    for pid in pids:
        targets |= children(pid)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in targets:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(alive(p) for p in targets):
            time.sleep(0.1)


def alive(pid: int) -> bool:
    """Whether ``pid`` still runs (a zombie, exited but not yet reaped, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
