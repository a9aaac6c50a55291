"""How many cores this process may really use: logical CPUs, its affinity mask, the cgroup quota.

A container limited to 2 cores of a 64-core host has 2 to use, whatever ``os.cpu_count()``
says; the server sizes ``--workers auto`` and its thread defaults from this, and the
benchmarks report it. Standard library only.
"""

from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path

__all__ = ["affinity_cpus", "cgroup_cpus", "usable_cpus"]

CGROUP = Path("/sys/fs/cgroup")


def affinity_cpus() -> int | None:
    """CPUs this process may run on (its affinity mask); None where that is not known."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return None


def cgroup_cpus(root: Path = CGROUP) -> float | None:
    """The cgroup's CPU quota in cores (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``); None: no limit."""
    for relative in _cgroup_paths():
        for folder in (root / relative.lstrip("/"), root / "cpu" / relative.lstrip("/"), root):
            quota = _quota(folder)
            if quota is not None:
                return quota
    return None


def _cgroup_paths() -> list[str]:
    """This process's cgroup paths for the cpu controller (v2's unified path included)."""
    paths = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            if controllers == "" or "cpu" in controllers.split(","):
                paths.append(path)
    return paths or ["/"]


def _quota(folder: Path) -> float | None:
    with contextlib.suppress(OSError, ValueError):
        quota, period = (folder / "cpu.max").read_text().split()
        return None if quota == "max" else int(quota) / int(period)
    with contextlib.suppress(OSError, ValueError):
        quota_us = int((folder / "cpu.cfs_quota_us").read_text())
        period_us = int((folder / "cpu.cfs_period_us").read_text())
        return None if quota_us <= 0 else quota_us / period_us
    return None


def usable_cpus() -> int:
    """Whole cores this process can keep busy: logical CPUs, affinity and cgroup quota."""
    counts: list[float] = [os.cpu_count() or 1]
    for limit in (affinity_cpus(), cgroup_cpus()):
        if limit is not None:
            counts.append(limit)
    return max(1, math.ceil(min(counts)))
