"""The server's event loop: uvloop where installed, asyncio's own on request; a real server on
each answers the same."""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from onnxforge.builder import load_spec, reference
from onnxforge.client import InferenceClient
from onnxforge.server import loop as event_loop
from tests.conftest import MODELS
from tests.server.conftest import make_repository
from tests.server.processes import ServeProcess

SPEC = load_spec(MODELS / "digits-mlp" / "spec.yaml")
X = np.random.default_rng(11).random((5, 64)).astype(np.float32)
# A dependency everywhere but Windows (pyproject.toml): its absence elsewhere is a failure.
if sys.platform == "win32":
    pytest.skip("uvloop does not run on Windows", allow_module_level=True)


def test_run_uses_uvloop_and_ends_like_asyncio_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """The coroutine runs on uvloop's loop; a task it left running is cancelled at the end
    (as asyncio.run does), and no loop stays set afterwards."""
    monkeypatch.delenv(event_loop.ENV, raising=False)
    left: list[asyncio.Task[None]] = []

    async def main() -> str:
        left.append(asyncio.get_running_loop().create_task(asyncio.sleep(3600)))
        return type(asyncio.get_running_loop()).__module__

    assert event_loop.name() == "uvloop"
    assert event_loop.run(main()).startswith("uvloop")
    assert left[0].cancelled()
    with pytest.raises(RuntimeError):
        asyncio.get_running_loop()


def test_the_environment_variable_chooses_asyncio(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(event_loop.ENV, "asyncio")
    assert event_loop.loop_factory() is None
    assert event_loop.name() == "asyncio"

    async def main() -> str:
        return type(asyncio.get_running_loop()).__module__

    assert event_loop.run(main()).startswith("asyncio")


@pytest.mark.parametrize("chosen", ["uvloop", "asyncio"])
def test_a_real_server_on_either_loop_says_which_and_answers_right(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chosen: str
) -> None:
    if chosen == "asyncio":
        monkeypatch.setenv(event_loop.ENV, "asyncio")
    else:
        monkeypatch.delenv(event_loop.ENV, raising=False)
    server = ServeProcess(make_repository(tmp_path))
    try:
        said = rf"\(gRPC on the event loop, {chosen}( on CPU \d+)?, 1 intra-op thread per session\)"
        assert re.search(said, server.output), server.output
        with InferenceClient(server.url) as client:
            for rows in (1, 5):
                got = client.infer("digits-mlp", {"x": X[:rows]})["probabilities"]
                want = reference.forward(SPEC, X[:rows])
                np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-4)
    finally:
        server.close()
