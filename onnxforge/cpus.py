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

__all__ = ["affinity_cpus", "cgroup_cpus", "intra_op_threads", "physical_cores", "usable_cpus"]

CGROUP = Path("/sys/fs/cgroup")
CPUS = Path("/sys/devices/system/cpu")


def affinity_cpus() -> int | None:
    """CPUs this process may run on (its affinity mask); None where that is not known."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return None


def physical_cores(root: Path = CPUS) -> int | None:
    """Physical cores among the CPUs this process may run on (hyper-threads of one core
    count once); None where the topology is not known."""
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    if cpus is None:
        return None
    cores = set()
    for cpu in cpus:
        topology = root / f"cpu{cpu}" / "topology"
        try:
            package = (topology / "physical_package_id").read_text().strip()
            core = (topology / "core_id").read_text().strip()
        except OSError:
            return None
        cores.add((package, core))
    return len(cores) or None


def intra_op_threads(workers: int = 1) -> int:
    """ONNX Runtime intra-op threads per session for each of ``workers`` processes.

    ONNX Runtime's own default is one thread per physical core of the affinity mask; it
    does not read the cgroup quota, so in a container limited to 2 cores of a 64-core host
    it would start 64 threads per session. This is that default capped by the quota
    (:func:`usable_cpus`), shared out among the workers, at least one each.
    """
    usable = usable_cpus()
    cores = min(physical_cores() or usable, usable)
    return max(1, cores // max(1, workers))


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
