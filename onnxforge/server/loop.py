"""The event loop a server process runs on: uvloop where it is installed, asyncio's own
otherwise (Windows, or ``ONNXFORGE_EVENT_LOOP=asyncio``).

Why uvloop: every gRPC call, HTTP request and batch hand-off of the server passes through
the loop, and on a model whose ``session.run`` takes microseconds the loop's own work is
most of a request's cost. Measured on 2 cores with 32 clients of a small model
(``benchmarks/README.md``): 8-10% less server CPU per request and 10-12% more requests
answered than on asyncio's loop, for the same answers. grpc.aio and aiohttp both run on it.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

__all__ = ["ENV", "loop_factory", "name", "run"]

ENV = "ONNXFORGE_EVENT_LOOP"  # "asyncio": asyncio's own loop even where uvloop is installed
T = TypeVar("T")


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop factory, or None for asyncio's own loop."""
    if os.environ.get(ENV, "").strip().lower() == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def name() -> str:
    """Which loop :func:`run` uses, for the start-up line."""
    return "asyncio" if loop_factory() is None else "uvloop"


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)`` on the loop :func:`loop_factory` chooses."""
    if loop_factory() is None:
        return asyncio.run(main)
    import uvloop

    return uvloop.run(main)
