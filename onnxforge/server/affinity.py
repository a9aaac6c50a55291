"""The event loop's thread on a core of its own choosing, every other thread free.

Why: the loop's thread runs every gRPC and HTTP request of the server through Python, and
left to the scheduler it moves between cores as it sleeps and wakes -- at one client,
every request -- onto whichever core its waker ran on, often the client's: its caches are
cold again at every request. Measured on 2 cores (``benchmarks/README.md``): pinned, a quick
model's lone client was answered 1.5x as fast (p50 0.32 ms against 0.53), and no load was
slower. The loop is one thread, so one core is all it can use anyway.

A thread inherits the affinity of the thread that starts it, so threads started later from
the pinned loop (executors, and the threads ONNX Runtime starts for a session opened on
them) would be pinned too: every executor the server makes runs :func:`unpin` first.
Several servers on one machine each pin to the CPU with the fewest threads pinned to it
alone (:func:`loop_cpus`), so their loops do not share a core while another has none.
Linux only (``os.sched_setaffinity``); elsewhere nothing is pinned.
"""

from __future__ import annotations

import collections
import os
from pathlib import Path

__all__ = ["loop_cpus", "pin_loop", "pinned_cpu", "pinned_threads", "unpin"]

PROC = Path("/proc")

# The CPUs this process may use, read before the loop's thread is pinned; None: not pinned.
_allowed: frozenset[int] | None = None
_pinned: int | None = None


def loop_cpus(count: int = 1, proc: Path = PROC) -> list[int]:
    """CPUs for ``count`` event loops (a server's, or one per worker): of the CPUs this
    process may run on, those that the fewest threads of this machine's programs are pinned
    to alone (the loops of servers already running among them), the last CPU first (the
    first tend to take more interrupts); round again when there are more loops than CPUs.
    Empty when there is a single CPU, or no affinity support here."""
    if not hasattr(os, "sched_getaffinity"):
        return []
    allowed = sorted(_allowed if _allowed is not None else os.sched_getaffinity(0))
    if len(allowed) < 2:
        return []
    taken = pinned_threads(proc)
    order = sorted(allowed, key=lambda cpu: (taken[cpu], -cpu))
    return [order[index % len(order)] for index in range(count)]


def pinned_threads(proc: Path = PROC) -> collections.Counter[int]:
    """Per CPU, the threads of programs (not the kernel's own) allowed on that CPU alone."""
    counts: collections.Counter[int] = collections.Counter()
    for process in proc.glob("[0-9]*"):
        try:
            if not (process / "cmdline").read_bytes():  # a kernel thread: one per CPU anyway
                continue
            tasks = list((process / "task").iterdir())
        except OSError:  # gone meanwhile, or not ours to read
            continue
        for task in tasks:
            cpus = _allowed_list(task / "status")
            if cpus is not None and len(cpus) == 1:
                counts[cpus[0]] += 1
    return counts


def _allowed_list(status: Path) -> list[int] | None:
    try:
        text = status.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("Cpus_allowed_list:"):
            cpus: list[int] = []
            for part in line.split(":", 1)[1].strip().split(","):
                first, _, last = part.partition("-")
                if first:
                    cpus.extend(range(int(first), int(last or first) + 1))
            return cpus
    return None


def pin_loop(cpu: int) -> None:
    """Pin the calling thread (the event loop's) to ``cpu``; later threads :func:`unpin`."""
    global _allowed, _pinned
    if _allowed is None:
        _allowed = frozenset(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})
    _pinned = cpu


def pinned_cpu() -> int | None:
    """The CPU the loop's thread was pinned to, or None."""
    return _pinned


def unpin() -> None:
    """Give the calling thread every CPU the process had before the loop was pinned (an
    executor's ``initializer``); nothing to do when nothing was pinned."""
    if _allowed is not None:
        os.sched_setaffinity(0, _allowed)
