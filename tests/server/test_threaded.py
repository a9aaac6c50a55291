"""The thread-pool gRPC transport: its two lanes of threads keep streams and inference apart."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np

from onnxforge.builder import load_spec, reference
from onnxforge.protocol.generated import inference_pb2 as pb
from onnxforge.protocol.generated import inference_pb2_grpc as pb_grpc
from onnxforge.server.app import Settings
from tests.conftest import MODELS
from tests.server.conftest import ServerThread, make_repository
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
