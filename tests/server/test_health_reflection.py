"""onnxforge's own health and reflection services, through gRPC's own client code.

grpcio-health-checking's and grpcio-reflection's stubs never saw our generated code: what
they read is what any health probe or grpcurl reads (``onnxforge.protocol.pool`` says why
the services are ours).
"""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from onnxforge.protocol.generated import health_pb2 as own_health
from onnxforge.protocol.generated import health_pb2_grpc as own_health_grpc
from tests.server.conftest import ServerThread

WAIT = 60.0  # a bound on a hung call, not a timing expectation


def test_health_lists_the_server_the_liveness_service_and_every_model(
    served: ServerThread,
) -> None:
    with grpc.insecure_channel(served.address) as channel:
        # List is newer than the grpcio-health-checking that runs on protobuf 6: our stub.
        ours = own_health_grpc.HealthStub(channel)
        listed = ours.List(own_health.HealthListRequest(), timeout=WAIT).statuses
        health = health_pb2_grpc.HealthStub(channel)
        expected = {"", "inference.GRPCInferenceService", "onnxforge.Live", "digits-mlp"}
        assert expected <= set(listed)
        serving = own_health.HealthCheckResponse.SERVING
        assert all(listed[name].status == serving for name in expected)
        with pytest.raises(grpc.RpcError) as caught:
            health.Check(health_pb2.HealthCheckRequest(service="no-such"), timeout=WAIT)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_serves_the_model_config_messages_with_tritons_numbers(
    served: ServerThread,
) -> None:
    with grpc.insecure_channel(served.address) as channel:
        pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
        method = pool.FindServiceByName("inference.GRPCInferenceService").methods_by_name[
            "ModelConfig"
        ]
        assert method.output_type.full_name == "inference.ModelConfigResponse"
        config = pool.FindMessageTypeByName("inference.ModelConfig")
        numbers = {field.name: field.number for field in config.fields}
        assert (numbers["backend"], numbers["dynamic_batching"], numbers["parameters"]) == (
            17,
            11,
            14,
        )
        health = pool.FindServiceByName("grpc.health.v1.Health")
        assert set(health.methods_by_name) == {"Check", "List", "Watch"}


def test_a_question_reflection_cannot_answer_is_an_error_on_a_stream_that_stays_open(
    served: ServerThread,
) -> None:
    questions = [
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="no.such.Symbol"),
        reflection_pb2.ServerReflectionRequest(file_by_filename="no/such.proto"),
        reflection_pb2.ServerReflectionRequest(list_services=""),
    ]
    with grpc.insecure_channel(served.address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        answers = list(stub.ServerReflectionInfo(iter(questions), timeout=WAIT))
    assert [answer.WhichOneof("message_response") for answer in answers] == [
        "error_response",
        "error_response",
        "list_services_response",
    ]
    assert {answer.error_response.error_code for answer in answers[:2]} == {
        grpc.StatusCode.NOT_FOUND.value[0]
    }
    assert answers[0].original_request.file_containing_symbol == "no.such.Symbol"
    assert {service.name for service in answers[2].list_services_response.service} == {
        "inference.GRPCInferenceService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    }
