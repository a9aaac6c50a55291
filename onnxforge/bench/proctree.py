"""A process and everything it started, read from Linux ``/proc``.

Servers that hand requests to worker processes (MLServer's inference pool, ``--workers``)
spend part of their CPU outside the process that was started, so CPU per request must be
read over the whole tree: :func:`process_tree` lists a process and its descendants (by
parent id, one pass over ``/proc``), :func:`process_tree_cpu_seconds` sums their CPU time,
:func:`process_tree_rss_kib` their resident memory. Off Linux, or for a process that is gone,
the tree is empty and the sums are zero.
"""

from __future__ import annotations

import contextlib
import os
from collections import defaultdict
from pathlib import Path

from onnxforge.bench.machine import process_status

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of ``/proc/PID/stat`` after the command name (state is [0]); None if gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may itself hold spaces or ")".
    return text.rpartition(")")[2].split()


def _children() -> dict[int, list[int]]:
    """Every process's children, from each one's parent id (field 4 of its stat line)."""
    children: dict[int, list[int]] = defaultdict(list)
    with contextlib.suppress(OSError):
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            fields = _stat_fields(int(entry.name))
            if fields is not None:
                children[int(fields[1])].append(int(entry.name))
    return children


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants that are alive now, ``pid`` first; [] if ``pid`` is gone."""
    if _stat_fields(pid) is None:
        return []
    children = _children()
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, ()))
    return tree


def process_tree_cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) of ``pid`` and its live descendants, with the time of
    the children each of them has waited for (so a worker that exited still counts once
    its parent reaped it); 0.0 if ``pid`` is gone."""
    total = 0
    for member in process_tree(pid):
        fields = _stat_fields(member)
        if fields is not None:
            # utime, stime, cutime, cstime: fields 14-17 of stat, [11:15] after the name.
            total += sum(int(value) for value in fields[11:15])
    return total / _CLOCK_TICKS


def process_tree_rss_kib(pid: int) -> int:
    """Resident memory (VmRSS, KiB) summed over ``pid`` and its live descendants.

    Pages shared between them (a forked worker's copy-on-write memory) count once per
    process, so this is an upper bound of what the tree holds.
    """
    return sum(process_status(member).get("VmRSS", 0) for member in process_tree(pid))
