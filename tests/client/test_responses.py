"""Answers the client cannot decode: its own error, naming the output, never the input.

A stand-in server answers every call with a response built by the test, malformed on
purpose, the way a faulty or foreign server could.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import numpy as np
import pytest

from onnxforge.client import AsyncInferenceClient, InferenceClient, InvalidResponse
from onnxforge.protocol.generated import inference_pb2 as pb
from onnxforge.protocol.generated import inference_pb2_grpc as pb_grpc

X = np.zeros((1, 4), np.float32)
Output = pb.ModelInferResponse.InferOutputTensor


class StandIn(pb_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    """Answers ModelInfer with ``response`` and ModelMetadata with ``headers``."""

    def __init__(self) -> None:
        self.response = pb.ModelInferResponse()
        self.headers: list[tuple[str, str]] = []

    def ModelInfer(self, request: pb.ModelInferRequest, context: Any) -> pb.ModelInferResponse:
        return self.response

    def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: Any
    ) -> pb.ModelMetadataResponse:
        context.send_initial_metadata(self.headers)
        return pb.ModelMetadataResponse(name=request.name)


@pytest.fixture(scope="module")
def stand_in() -> Iterator[tuple[StandIn, str]]:
    servicer = StandIn()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, f"127.0.0.1:{port}"
    server.stop(grace=None)


def _answered(stand_in: tuple[StandIn, str], response: pb.ModelInferResponse) -> InvalidResponse:
    servicer, address = stand_in
    servicer.response = response
    with InferenceClient(address) as client, pytest.raises(InvalidResponse) as error:
        client.infer("m", {"x": X})
    return error.value


def test_raw_bytes_of_the_wrong_length_name_the_output(stand_in: tuple[StandIn, str]) -> None:
    response = pb.ModelInferResponse(
        outputs=[Output(name="probabilities", datatype="FP32", shape=[1, 10])],
        raw_output_contents=[b"\x00" * 12],
    )
    error = _answered(stand_in, response)
    assert error.code == "INTERNAL" and error.output == "probabilities"
    assert error.message == (
        "output 'probabilities': raw contents hold 12 bytes, but shape [1, 10] of FP32 "
        "needs 40 bytes (10 elements x 4 bytes)"
    )
    assert "input" not in error.message
    assert not isinstance(error.__context__, grpc.RpcError)


@pytest.mark.parametrize(
    ("output", "message"),
    [
        (
            Output(name="p", datatype="FP32", shape=[2], contents=pb.InferTensorContents()),
            r"^output 'p': no data, but shape \[2\] needs 2 values "
            r"\(in contents.fp32_contents or raw_output_contents\)$",
        ),
        (
            Output(name="p", datatype="FP8", shape=[2]),
            r"^output 'p': unknown datatype 'FP8' \(known: BOOL, ",
        ),
        (
            Output(name="p", datatype="FP32", shape=[-1, 2]),
            r"^output 'p': shape \[-1, 2\] has a negative dimension -1 at index 0; "
            r"dimensions of a response must be >= 0$",
        ),
        (
            Output(
                name="p",
                datatype="INT8",
                shape=[2],
                contents=pb.InferTensorContents(int_contents=[1, 999]),
            ),
            r"^output 'p': contents.int_contents value 999 at index 1 is out of range for INT8",
        ),
    ],
)
def test_bad_typed_outputs_name_the_output(
    stand_in: tuple[StandIn, str], output: Any, message: str
) -> None:
    error = _answered(stand_in, pb.ModelInferResponse(outputs=[output]))
    assert error.output == "p" and error.message == f"output 'p': {error.reason}"
    assert re.search(message, error.message), error.message


def test_raw_entries_that_do_not_match_the_outputs_are_an_invalid_response(
    stand_in: tuple[StandIn, str],
) -> None:
    response = pb.ModelInferResponse(
        outputs=[Output(name="a", datatype="FP32", shape=[1]), Output(name="b", datatype="FP32")],
        raw_output_contents=[b"\x00" * 4],
    )
    error = _answered(stand_in, response)
    assert error.output is None
    assert error.message == (
        "invalid response: raw_output_contents has 1 entries but the response has 2 outputs; "
        "send one entry per output, in the order of outputs"
    )


def test_the_async_client_raises_the_same(stand_in: tuple[StandIn, str]) -> None:
    servicer, address = stand_in
    servicer.response = pb.ModelInferResponse(
        outputs=[Output(name="y", datatype="BOOL", shape=[2])], raw_output_contents=[b"\x00\x05"]
    )

    async def ask() -> InvalidResponse:
        async with AsyncInferenceClient(address) as client:
            with pytest.raises(InvalidResponse) as error:
                await client.infer("m", {"x": X})
            return error.value

    error = asyncio.run(ask())
    assert error.message == "output 'y': raw BOOL element 1 is byte 5; BOOL bytes must be 0 or 1"


def test_a_well_formed_answer_decodes(stand_in: tuple[StandIn, str]) -> None:
    servicer, address = stand_in
    servicer.response = pb.ModelInferResponse(
        outputs=[Output(name="y", datatype="INT64", shape=[2])],
        raw_output_contents=[np.array([7, -1], "<i8").tobytes()],
    )
    with InferenceClient(address) as client:
        got = client.infer("m", {"x": X})
    np.testing.assert_array_equal(got["y"], [7, -1])


def test_an_accuracy_header_that_is_not_json_is_an_invalid_response(
    stand_in: tuple[StandIn, str],
) -> None:
    servicer, address = stand_in
    servicer.headers = [("x-onnxforge-variant", "fp16"), ("x-onnxforge-accuracy", "{oops")]
    try:
        with InferenceClient(address) as client:
            with pytest.raises(InvalidResponse, match="header x-onnxforge-accuracy is not JSON"):
                client.model_info("m")
            _, headers = client.metadata_with_headers("m")  # the raw headers still readable
            assert headers["x-onnxforge-accuracy"] == "{oops"
    finally:
        servicer.headers = []
    with InferenceClient(address) as client:
        info = client.model_info("m")
    assert (info.variant, info.accuracy, info.spec_sha256) == (None, None, None)
