"""What a measurement ran on, and what processes used while it ran (Linux ``/proc``).

``machine_info()`` names the CPU and says how many cores this process may really use: the
logical CPUs, the ones its affinity mask allows, and the cgroup CPU quota (a container
limited to 2 cores of a 64-core host has 2 to use, whatever ``os.cpu_count()`` says).
``software_versions()`` lists the libraries a serving figure depends on. The process and
machine counters read ``/proc`` and return zeros or empty mappings elsewhere.
"""

from __future__ import annotations

import contextlib
import os
import platform
import time
from pathlib import Path

from onnxforge.cpus import affinity_cpus, cgroup_cpus, usable_cpus

#: CPU features that decide which int8 and fp16 kernels ONNX Runtime can use.
CPU_FLAGS = (
    "avx2",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx_vnni",
    "amx_int8",
    "f16c",
    "avx512_fp16",
    "avx512_bf16",
)
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def machine_info() -> dict[str, object]:
    """The CPU (model, vendor, flags) and how many cores there are to use."""
    info: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())  # the first CPU's lines
    flags = set(info.get("flags", "").split())
    return {
        "cpu_model": info.get("model name") or platform.processor() or "unknown",
        "cpu_vendor": info.get("vendor_id"),
        "cpu_family": info.get("cpu family"),
        "cpu_model_number": info.get("model"),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": affinity_cpus(),
        "cgroup_cpu_quota": cgroup_cpus(),
        "cores_to_use": usable_cpus(),
        "cpu_flags": {flag: flag in flags for flag in CPU_FLAGS},
        "platform": platform.platform(),
    }


def software_versions() -> dict[str, str]:
    """Python and the libraries serving depends on (those that are installed)."""
    versions = {"python": platform.python_version()}
    for name, module in (
        ("onnxforge", "onnxforge"),
        ("onnxruntime", "onnxruntime"),
        ("onnx", "onnx"),
        ("grpcio", "grpc"),
        ("protobuf", "google.protobuf"),
        ("numpy", "numpy"),
    ):
        with contextlib.suppress(ImportError):
            imported = __import__(module, fromlist=["__version__"])
            versions[name] = str(getattr(imported, "__version__", "unknown"))
    return versions


def process_status(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM, RssAnon, RssFile (KiB) and Threads of a process; empty if unreadable."""
    out = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "Threads"):
                out[key] = int(value.split()[0])
    return out


def process_cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system, all threads) a process has used; 0.0 if unreadable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def machine_busy() -> tuple[float, float]:
    """CPU seconds all CPUs have spent in processes, and in interrupts (apart).

    Interrupt time (mostly softirq: loopback TCP of our own requests) is charged to no
    process, so it would otherwise count as someone else's load.
    """
    try:
        first = Path("/proc/stat").read_text().split("\n", 1)[0]
    except OSError:
        return 0.0, 0.0
    values = [int(v) for v in first.split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq = values[:7]
    return (user + nice + system) / _CLOCK_TICKS, (irq + softirq) / _CLOCK_TICKS


def wait_quiet(limit_cores: float, max_wait: float, sample: float = 0.1) -> tuple[float, float]:
    """Wait (at most ``max_wait`` s) until the machine's busy cores drop below the limit.

    Meant for moments when our own processes are idle, so what is busy is someone else.
    Returns (seconds waited, busy cores in the last sample).
    """
    began = time.monotonic()
    while True:
        before, t0 = machine_busy()[0], time.monotonic()
        time.sleep(sample)
        cores = (machine_busy()[0] - before) / (time.monotonic() - t0)
        waited = time.monotonic() - began
        if cores < limit_cores or waited >= max_wait:
            return waited, cores
