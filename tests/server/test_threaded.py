"""The thread-pool gRPC transport: its two lanes of threads keep streams and inference apart."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np

from onnxforge.builder import load_spec, reference
from onnxforge.client import InferenceClient
from onnxforge.protocol.generated import inference_pb2 as pb
from onnxforge.protocol.generated import inference_pb2_grpc as pb_grpc
from onnxforge.server import loop as event_loop
from onnxforge.server.app import Settings
from onnxforge.server.threaded import ThreadedServer
from tests.conftest import MODELS
from tests.server.conftest import ServerThread, make_repository
from tests.server.processes import ServeProcess
from tests.server.requests import output, raw_request

SPEC = load_spec(MODELS / "digits-mlp" / "spec.yaml")
X = np.random.default_rng(7).random((3, 64)).astype(np.float32)


def test_open_streams_more_than_inference_threads_do_not_starve_inference(
    tmp_path: Path,
) -> None:
    """With 2 inference threads, 6 open streams (each waiting for its next request) and a
    unary ModelInfer are all answered, right: streams have threads of their own."""
    server = ServerThread(
        Settings(
            repository=make_repository(tmp_path), port=0, threads=1, metrics_port=None,
            grpc_threads=2,
        )
    ).start()  # fmt: skip
    release = threading.Event()
    want = reference.forward(SPEC, X)

    def one_request_then_wait() -> Iterator[pb.ModelInferRequest]:
        yield raw_request("digits-mlp", X)
        release.wait(30)  # the stream stays open, waiting for its next request

    try:
        with grpc.insecure_channel(server.address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            streams = [stub.ModelStreamInfer(one_request_then_wait()) for _ in range(6)]
            firsts = [next(stream) for stream in streams]  # every stream is being served
            for first in firsts:
                assert not first.error_message
                np.testing.assert_allclose(
                    output(first.infer_response, "probabilities"), want, atol=1e-6
                )
            answer = stub.ModelInfer(raw_request("digits-mlp", X), timeout=10)
            np.testing.assert_allclose(output(answer, "probabilities"), want, atol=1e-6)
            ready = stub.ModelReady(pb.ModelReadyRequest(name="digits-mlp"), timeout=10)
            assert ready.ready
            release.set()
            for stream in streams:
                assert list(stream) == []  # ended by the client, nothing more
    finally:
        release.set()
        server.stop()


def test_the_transport_is_chosen_from_the_models_timed_at_load(tmp_path: Path) -> None:
    """grpc_threads None (the CLI's 'auto'): the thread pool when every model's one-row run
    timed within inline_us at load (digits-mlp: tens of microseconds, against 200), grpc.aio
    when one did not (inline_us 1: no run is that quick); both answer right."""
    repository = make_repository(tmp_path)
    want = reference.forward(SPEC, X)
    for inline_us, transport in ((200, ThreadedServer), (1, grpc.aio.Server)):
        server = ServerThread(
            Settings(repository=repository, port=0, threads=1, metrics_port=None,
                     inline_us=inline_us, grpc_threads=None)
        ).start()  # fmt: skip
        try:
            lone_ns = server.running.registry.get("digits-mlp").lone_run_ns
            assert lone_ns is not None and 0 < lone_ns < 200_000
            assert isinstance(server.running.server, transport)
            with grpc.insecure_channel(server.address) as channel:
                stub = pb_grpc.GRPCInferenceServiceStub(channel)
                answer = stub.ModelInfer(raw_request("digits-mlp", X), timeout=10)
            np.testing.assert_allclose(output(answer, "probabilities"), want, atol=1e-6)
        finally:
            server.stop()


def test_serve_says_which_transport_it_chose_and_refuses_a_bad_grpc_threads(
    tmp_path: Path,
) -> None:
    """Through the real CLI: the default is the event loop, 'auto' picks threads for
    digits-mlp (quick), a number picks threads, and the start-up line says which; a bad value
    is one line, exit 2."""
    repository = make_repository(tmp_path)
    loop = "uvloop" if event_loop.name() == "uvloop" else "asyncio"
    for extra, said in (
        ((), f"(gRPC on the event loop, {loop}"),
        (("--grpc-threads", "auto"), f"(gRPC on threads, {loop}"),
        (("--grpc-threads", "4"), "(gRPC on threads"),
    ):
        server = ServeProcess(repository, *extra)
        try:
            assert said in server.output
            with InferenceClient(server.url) as client:
                got = client.infer("digits-mlp", {"x": X})["probabilities"]
            np.testing.assert_allclose(got, reference.forward(SPEC, X), atol=1e-5, rtol=1e-4)
        finally:
            server.close()
    refused = subprocess.run(
        [sys.executable, "-m", "onnxforge", "serve", str(repository), "--grpc-threads", "many"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert refused.returncode == 2
    assert "expected a number (0 or more) or 'auto', got 'many'" in refused.stderr
    assert "Traceback" not in refused.stderr
