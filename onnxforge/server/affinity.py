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
Linux only (``os.sched_setaffinity``); elsewhere nothing is pinned.
"""

from __future__ import annotations

import os

__all__ = ["loop_cpu", "pin_loop", "pinned_cpu", "unpin"]

# The CPUs this process may use, read before the loop's thread is pinned; None: not pinned.
_allowed: frozenset[int] | None = None
_pinned: int | None = None


def loop_cpu(worker: int = 0) -> int | None:
    """The CPU for the loop of worker ``worker`` (0 without workers): the last of the
    CPUs this process may run on, the one before it for the next worker, and so on; None
    when there is only one CPU (or affinity is not supported here)."""
    if not hasattr(os, "sched_getaffinity"):
        return None
    cpus = sorted(_allowed if _allowed is not None else os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None
    return cpus[-1 - worker % len(cpus)]


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
