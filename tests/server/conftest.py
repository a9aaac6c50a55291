"""A real gRPC server on 127.0.0.1 and a port of its own, in a background thread."""

from __future__ import annotations

import asyncio
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from onnxforge.protocol.generated import inference_pb2_grpc as pb_grpc
from onnxforge.server.app import Running, Settings, create_server
from tests.conftest import MODELS


class ServerThread:
    """Runs ``create_server`` on an event loop of its own until ``stop()``."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.running: Running | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.running = self.loop.run_until_complete(create_server(self.settings))
        except BaseException as error:
            self.error = error
        finally:
            self.ready.set()
        if self.running is not None:
            self.loop.run_forever()
        pending = asyncio.all_tasks(self.loop)
        for task in pending:
            task.cancel()
        self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        self.loop.close()

    def start(self) -> ServerThread:
        self.thread.start()
        self.ready.wait(120)
        if self.error is not None:
            raise self.error
        return self

    @property
    def address(self) -> str:
        assert self.running is not None
        return f"127.0.0.1:{self.running.port}"

    def call(self, coroutine: object) -> object:
        """Run a coroutine on the server's loop (e.g. registry.unload) and wait for it."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(60)  # type: ignore[arg-type]

    def stop(self, grace: float = 5.0) -> None:
        if self.running is not None:
            self.call(self.running.stop(grace))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)


def make_repository(folder: Path) -> Path:
    """A repository holding only specs: the server must build every model itself."""
    for name in ("digits-mlp",):
        target = folder / name
        target.mkdir(parents=True)
        for file in ("spec.yaml", "weights.npz"):
            shutil.copy(MODELS / name / file, target / file)
    return folder


# The public gRPC port on grpc.aio (the default, --grpc-threads 0) and on its thread pool:
# the same answers either way.
@pytest.fixture(scope="session", params=[16, 0], ids=["grpc-threads", "grpc-aio"])
def served(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[ServerThread]:
    repository = make_repository(tmp_path_factory.mktemp("served"))
    settings = Settings(
        repository=repository, port=0, threads=1, metrics_port=0, grpc_threads=request.param
    )
    server = ServerThread(settings).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def stub(served: ServerThread) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(served.address) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)
