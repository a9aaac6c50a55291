"""Small helpers shared across test modules: test data, and waiting on observed state.

``wait_until`` is how a test waits for something another thread or process does: it polls
the observed state (never sleeps a fixed time and hopes) and fails, saying what it waited
for and what it last saw, when the bound runs out.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

WAIT_SECONDS = 30.0  # the default bound on every wait for a condition
POLL_SECONDS = 0.01


def mlp_document(**overrides: Any) -> dict[str, Any]:
    """A small valid spec document to start tests from."""
    document: dict[str, Any] = {
        "name": "tiny",
        "input": {"name": "x", "shape": [4]},
        "output": {"name": "y"},
        "layers": [
            {"type": "dense", "units": 3, "activation": "relu"},
            {"type": "dense", "units": 2, "activation": "softmax"},
        ],
    }
    document.update(overrides)
    return document


def wait_until(check: Callable[[], T], what: str, seconds: float = WAIT_SECONDS) -> T:
    """Poll ``check()`` until it returns something true, and return that.

    Raises AssertionError naming ``what`` and the last value seen after ``seconds``.
    """
    deadline = time.monotonic() + seconds
    while True:
        last = check()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"not reached within {seconds:g} s: {what} (last: {last!r})")
        time.sleep(POLL_SECONDS)


async def wait_until_async(check: Callable[[], T], what: str, seconds: float = WAIT_SECONDS) -> T:
    """``wait_until`` for a coroutine: polls between turns of the event loop."""
    deadline = time.monotonic() + seconds
    while True:
        last = check()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"not reached within {seconds:g} s: {what} (last: {last!r})")
        await asyncio.sleep(POLL_SECONDS)
