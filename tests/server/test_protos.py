"""protos/inference.proto against the public KServe v2 / Triton specification.

The tables below are written from the public specification (Triton's grpc_service.proto,
whose core messages equal KServe's grpc_predict_v2.proto), not read from our file: a
renumbered or retyped field breaks every existing client, and these tests say which.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from onnxforge.protocol.generated import inference_pb2, inference_pb2_grpc

REPO_ROOT = Path(__file__).resolve().parents[2]
POOL = inference_pb2.DESCRIPTOR.pool
SERVICE = inference_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]

# (field name, number, type, repeated) per message, from the public specification.
# A type "m:Name" is a message field of type inference.Name; maps are repeated entries.
SPEC: dict[str, list[tuple[str, int, str, bool]]] = {
    "ServerLiveRequest": [],
    "ServerLiveResponse": [("live", 1, "bool", False)],
    "ServerReadyRequest": [],
    "ServerReadyResponse": [("ready", 1, "bool", False)],
    "ModelReadyRequest": [("name", 1, "string", False), ("version", 2, "string", False)],
    "ModelReadyResponse": [("ready", 1, "bool", False)],
    "ServerMetadataRequest": [],
    "ServerMetadataResponse": [
        ("name", 1, "string", False),
        ("version", 2, "string", False),
        ("extensions", 3, "string", True),
    ],
    "ModelMetadataRequest": [("name", 1, "string", False), ("version", 2, "string", False)],
    "ModelMetadataResponse": [
        ("name", 1, "string", False),
        ("versions", 2, "string", True),
        ("platform", 3, "string", False),
        ("inputs", 4, "m:ModelMetadataResponse.TensorMetadata", True),
        ("outputs", 5, "m:ModelMetadataResponse.TensorMetadata", True),
    ],
    "ModelMetadataResponse.TensorMetadata": [
        ("name", 1, "string", False),
        ("datatype", 2, "string", False),
        ("shape", 3, "int64", True),
    ],
    "InferParameter": [
        ("bool_param", 1, "bool", False),
        ("int64_param", 2, "int64", False),
        ("string_param", 3, "string", False),
        ("double_param", 4, "double", False),
        ("uint64_param", 5, "uint64", False),
    ],
    "InferTensorContents": [
        ("bool_contents", 1, "bool", True),
        ("int_contents", 2, "int32", True),
        ("int64_contents", 3, "int64", True),
        ("uint_contents", 4, "uint32", True),
        ("uint64_contents", 5, "uint64", True),
        ("fp32_contents", 6, "float", True),
        ("fp64_contents", 7, "double", True),
        ("bytes_contents", 8, "bytes", True),
    ],
    "ModelInferRequest": [
        ("model_name", 1, "string", False),
        ("model_version", 2, "string", False),
        ("id", 3, "string", False),
        ("parameters", 4, "m:ModelInferRequest.ParametersEntry", True),
        ("inputs", 5, "m:ModelInferRequest.InferInputTensor", True),
        ("outputs", 6, "m:ModelInferRequest.InferRequestedOutputTensor", True),
        ("raw_input_contents", 7, "bytes", True),
    ],
    "ModelInferRequest.InferInputTensor": [
        ("name", 1, "string", False),
        ("datatype", 2, "string", False),
        ("shape", 3, "int64", True),
        ("parameters", 4, "m:ModelInferRequest.InferInputTensor.ParametersEntry", True),
        ("contents", 5, "m:InferTensorContents", False),
    ],
    "ModelInferRequest.InferRequestedOutputTensor": [
        ("name", 1, "string", False),
        ("parameters", 2, "m:ModelInferRequest.InferRequestedOutputTensor.ParametersEntry", True),
    ],
    "ModelInferResponse": [
        ("model_name", 1, "string", False),
        ("model_version", 2, "string", False),
        ("id", 3, "string", False),
        ("parameters", 4, "m:ModelInferResponse.ParametersEntry", True),
        ("outputs", 5, "m:ModelInferResponse.InferOutputTensor", True),
        ("raw_output_contents", 6, "bytes", True),
    ],
    "ModelInferResponse.InferOutputTensor": [
        ("name", 1, "string", False),
        ("datatype", 2, "string", False),
        ("shape", 3, "int64", True),
        ("parameters", 4, "m:ModelInferResponse.InferOutputTensor.ParametersEntry", True),
        ("contents", 5, "m:InferTensorContents", False),
    ],
    "ModelStreamInferResponse": [
        ("error_message", 1, "string", False),
        ("infer_response", 2, "m:ModelInferResponse", False),
    ],
    "ModelStatisticsRequest": [("name", 1, "string", False), ("version", 2, "string", False)],
    "StatisticDuration": [("count", 1, "uint64", False), ("ns", 2, "uint64", False)],
    "InferStatistics": [
        ("success", 1, "m:StatisticDuration", False),
        ("fail", 2, "m:StatisticDuration", False),
        ("queue", 3, "m:StatisticDuration", False),
        ("compute_input", 4, "m:StatisticDuration", False),
        ("compute_infer", 5, "m:StatisticDuration", False),
        ("compute_output", 6, "m:StatisticDuration", False),
        ("cache_hit", 7, "m:StatisticDuration", False),
        ("cache_miss", 8, "m:StatisticDuration", False),
    ],
    "InferResponseStatistics": [
        ("compute_infer", 1, "m:StatisticDuration", False),
        ("compute_output", 2, "m:StatisticDuration", False),
        ("success", 3, "m:StatisticDuration", False),
        ("fail", 4, "m:StatisticDuration", False),
        ("empty_response", 5, "m:StatisticDuration", False),
    ],
    "InferBatchStatistics": [
        ("batch_size", 1, "uint64", False),
        ("compute_input", 2, "m:StatisticDuration", False),
        ("compute_infer", 3, "m:StatisticDuration", False),
        ("compute_output", 4, "m:StatisticDuration", False),
    ],
    "MemoryUsage": [
        ("type", 1, "string", False),
        ("id", 2, "int64", False),
        ("byte_size", 3, "uint64", False),
    ],
    "ModelStatistics": [
        ("name", 1, "string", False),
        ("version", 2, "string", False),
        ("last_inference", 3, "uint64", False),
        ("inference_count", 4, "uint64", False),
        ("execution_count", 5, "uint64", False),
        ("inference_stats", 6, "m:InferStatistics", False),
        ("batch_stats", 7, "m:InferBatchStatistics", True),
        ("memory_usage", 8, "m:MemoryUsage", True),
        ("response_stats", 9, "m:ModelStatistics.ResponseStatsEntry", True),
    ],
    "ModelStatisticsResponse": [("model_stats", 1, "m:ModelStatistics", True)],
    "ModelRepositoryParameter": [
        ("bool_param", 1, "bool", False),
        ("int64_param", 2, "int64", False),
        ("string_param", 3, "string", False),
        ("bytes_param", 4, "bytes", False),
    ],
    "RepositoryIndexRequest": [
        ("repository_name", 1, "string", False),
        ("ready", 2, "bool", False),
    ],
    "RepositoryIndexResponse": [("models", 1, "m:RepositoryIndexResponse.ModelIndex", True)],
    "RepositoryIndexResponse.ModelIndex": [
        ("name", 1, "string", False),
        ("version", 2, "string", False),
        ("state", 3, "string", False),
        ("reason", 4, "string", False),
    ],
    "RepositoryModelLoadRequest": [
        ("repository_name", 1, "string", False),
        ("model_name", 2, "string", False),
        ("parameters", 3, "m:RepositoryModelLoadRequest.ParametersEntry", True),
    ],
    "RepositoryModelLoadResponse": [],
    "RepositoryModelUnloadRequest": [
        ("repository_name", 1, "string", False),
        ("model_name", 2, "string", False),
        ("parameters", 3, "m:RepositoryModelUnloadRequest.ParametersEntry", True),
    ],
    "RepositoryModelUnloadResponse": [],
    # ModelConfig: the part of Triton's model_config.proto that onnxforge fills.
    "ModelConfigRequest": [("name", 1, "string", False), ("version", 2, "string", False)],
    "ModelConfigResponse": [("config", 1, "m:ModelConfig", False)],
    "ModelConfig": [
        ("name", 1, "string", False),
        ("platform", 2, "string", False),
        ("backend", 17, "string", False),
        ("version_policy", 3, "m:ModelVersionPolicy", False),
        ("max_batch_size", 4, "int32", False),
        ("input", 5, "m:ModelInput", True),
        ("output", 6, "m:ModelOutput", True),
        ("instance_group", 7, "m:ModelInstanceGroup", True),
        ("default_model_filename", 8, "string", False),
        ("dynamic_batching", 11, "m:ModelDynamicBatching", False),
        ("parameters", 14, "m:ModelConfig.ParametersEntry", True),
    ],
    "ModelVersionPolicy": [
        ("latest", 1, "m:ModelVersionPolicy.Latest", False),
        ("all", 2, "m:ModelVersionPolicy.All", False),
        ("specific", 3, "m:ModelVersionPolicy.Specific", False),
    ],
    "ModelVersionPolicy.Latest": [("num_versions", 1, "uint32", False)],
    "ModelVersionPolicy.All": [],
    "ModelVersionPolicy.Specific": [("versions", 1, "int64", True)],
    "ModelInput": [
        ("name", 1, "string", False),
        ("data_type", 2, "e:DataType", False),
        ("format", 3, "e:ModelInput.Format", False),
        ("dims", 4, "int64", True),
        ("is_shape_tensor", 6, "bool", False),
        ("allow_ragged_batch", 7, "bool", False),
        ("optional", 8, "bool", False),
    ],
    "ModelOutput": [
        ("name", 1, "string", False),
        ("data_type", 2, "e:DataType", False),
        ("dims", 3, "int64", True),
        ("label_filename", 4, "string", False),
        ("is_shape_tensor", 6, "bool", False),
    ],
    "ModelInstanceGroup": [
        ("name", 1, "string", False),
        ("kind", 4, "e:ModelInstanceGroup.Kind", False),
        ("count", 2, "int32", False),
        ("gpus", 3, "int32", True),
    ],
    "ModelDynamicBatching": [
        ("preferred_batch_size", 1, "int32", True),
        ("max_queue_delay_microseconds", 2, "uint64", False),
        ("preserve_ordering", 3, "bool", False),
    ],
    "ModelParameter": [("string_value", 1, "string", False)],
}

# Enum values of model_config.proto, by number.
ENUMS: dict[str, dict[str, int]] = {
    "DataType": {
        "TYPE_INVALID": 0,
        "TYPE_BOOL": 1,
        "TYPE_UINT8": 2,
        "TYPE_UINT16": 3,
        "TYPE_UINT32": 4,
        "TYPE_UINT64": 5,
        "TYPE_INT8": 6,
        "TYPE_INT16": 7,
        "TYPE_INT32": 8,
        "TYPE_INT64": 9,
        "TYPE_FP16": 10,
        "TYPE_FP32": 11,
        "TYPE_FP64": 12,
        "TYPE_STRING": 13,
        "TYPE_BF16": 14,
    },
    "ModelInput.Format": {"FORMAT_NONE": 0, "FORMAT_NHWC": 1, "FORMAT_NCHW": 2},
    "ModelInstanceGroup.Kind": {"KIND_AUTO": 0, "KIND_GPU": 1, "KIND_CPU": 2, "KIND_MODEL": 3},
}

# Map fields: value type of each map<string, V>.
MAPS: dict[str, str] = {
    "ModelInferRequest.ParametersEntry": "InferParameter",
    "ModelInferRequest.InferInputTensor.ParametersEntry": "InferParameter",
    "ModelInferRequest.InferRequestedOutputTensor.ParametersEntry": "InferParameter",
    "ModelInferResponse.ParametersEntry": "InferParameter",
    "ModelInferResponse.InferOutputTensor.ParametersEntry": "InferParameter",
    "ModelStatistics.ResponseStatsEntry": "InferResponseStatistics",
    "RepositoryModelLoadRequest.ParametersEntry": "ModelRepositoryParameter",
    "RepositoryModelUnloadRequest.ParametersEntry": "ModelRepositoryParameter",
    "ModelConfig.ParametersEntry": "ModelParameter",
}

# rpc name -> (request, response, client streaming, server streaming)
RPCS: dict[str, tuple[str, str, bool, bool]] = {
    "ServerLive": ("ServerLiveRequest", "ServerLiveResponse", False, False),
    "ServerReady": ("ServerReadyRequest", "ServerReadyResponse", False, False),
    "ModelReady": ("ModelReadyRequest", "ModelReadyResponse", False, False),
    "ServerMetadata": ("ServerMetadataRequest", "ServerMetadataResponse", False, False),
    "ModelMetadata": ("ModelMetadataRequest", "ModelMetadataResponse", False, False),
    "ModelInfer": ("ModelInferRequest", "ModelInferResponse", False, False),
    "ModelStreamInfer": ("ModelInferRequest", "ModelStreamInferResponse", True, True),
    "ModelConfig": ("ModelConfigRequest", "ModelConfigResponse", False, False),
    "ModelStatistics": ("ModelStatisticsRequest", "ModelStatisticsResponse", False, False),
    "RepositoryIndex": ("RepositoryIndexRequest", "RepositoryIndexResponse", False, False),
    "RepositoryModelLoad": (
        "RepositoryModelLoadRequest",
        "RepositoryModelLoadResponse",
        False,
        False,
    ),
    "RepositoryModelUnload": (
        "RepositoryModelUnloadRequest",
        "RepositoryModelUnloadResponse",
        False,
        False,
    ),
}

_SCALAR_TYPES = {
    "bool": FieldDescriptor.TYPE_BOOL,
    "string": FieldDescriptor.TYPE_STRING,
    "bytes": FieldDescriptor.TYPE_BYTES,
    "int32": FieldDescriptor.TYPE_INT32,
    "int64": FieldDescriptor.TYPE_INT64,
    "uint32": FieldDescriptor.TYPE_UINT32,
    "uint64": FieldDescriptor.TYPE_UINT64,
    "float": FieldDescriptor.TYPE_FLOAT,
    "double": FieldDescriptor.TYPE_DOUBLE,
}


def _message(name: str) -> Descriptor:
    return POOL.FindMessageTypeByName(f"inference.{name}")


def test_generated_code_matches_the_proto_file() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "generate_protos.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr + result.stdout


def test_generated_modules_import_without_warnings() -> None:
    code = "import onnxforge.protocol.generated." + ", onnxforge.protocol.generated.".join(
        f"{name}_pb2_grpc" for name in ("inference", "health", "reflection")
    )
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", code],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_grpc_module_imports_the_message_module_of_its_package() -> None:
    assert inference_pb2_grpc.inference__pb2 is inference_pb2


def test_package_and_file() -> None:
    assert inference_pb2.DESCRIPTOR.package == "inference"
    file_proto = descriptor_pb2.FileDescriptorProto()
    inference_pb2.DESCRIPTOR.CopyToProto(file_proto)
    assert file_proto.syntax == "proto3"  # repeated numbers packed, as clients send them
    assert SERVICE.full_name == "inference.GRPCInferenceService"


@pytest.mark.parametrize(
    ("message", "field", "number"),
    [
        ("ModelInferRequest", "raw_input_contents", 7),
        ("ModelInferResponse", "raw_output_contents", 6),
        ("InferTensorContents", "fp32_contents", 6),
        ("InferTensorContents", "bytes_contents", 8),
        ("ModelInferRequest.InferInputTensor", "contents", 5),
        ("ModelStreamInferResponse", "infer_response", 2),
        ("InferParameter", "uint64_param", 5),
    ],
)
def test_key_field_numbers(message: str, field: str, number: int) -> None:
    assert _message(message).fields_by_name[field].number == number


@pytest.mark.parametrize("message", sorted(SPEC))
def test_message_fields_match_the_public_specification(message: str) -> None:
    descriptor = _message(message)
    actual = {
        field.name: (
            field.number,
            f"m:{field.message_type.full_name.removeprefix('inference.')}"
            if field.type == FieldDescriptor.TYPE_MESSAGE
            else f"e:{field.enum_type.full_name.removeprefix('inference.')}"
            if field.type == FieldDescriptor.TYPE_ENUM
            else next(k for k, v in _SCALAR_TYPES.items() if v == field.type),
            field.is_repeated,
        )
        for field in descriptor.fields
    }
    expected = {name: (number, kind, repeated) for name, number, kind, repeated in SPEC[message]}
    assert actual == expected


def test_every_message_of_the_file_is_in_the_specification_table() -> None:
    def walk(descriptor: Descriptor) -> list[str]:
        own = [descriptor.full_name.removeprefix("inference.")]
        return own + [name for nested in descriptor.nested_types for name in walk(nested)]

    names = {
        name
        for top in inference_pb2.DESCRIPTOR.message_types_by_name.values()
        for name in walk(top)
    }
    assert names == set(SPEC) | set(MAPS)


@pytest.mark.parametrize("enum", sorted(ENUMS))
def test_enum_values_match_the_public_specification(enum: str) -> None:
    descriptor = POOL.FindEnumTypeByName(f"inference.{enum}")
    assert {value.name: value.number for value in descriptor.values} == ENUMS[enum]


@pytest.mark.parametrize(("entry", "value_type"), sorted(MAPS.items()))
def test_map_fields_are_string_keyed(entry: str, value_type: str) -> None:
    descriptor = _message(entry)
    assert descriptor.GetOptions().map_entry
    key, value = descriptor.fields_by_name["key"], descriptor.fields_by_name["value"]
    assert (key.number, key.type) == (1, FieldDescriptor.TYPE_STRING)
    assert (value.number, value.message_type.full_name) == (2, f"inference.{value_type}")


@pytest.mark.parametrize("message", ["InferParameter", "ModelRepositoryParameter"])
def test_parameter_values_are_one_oneof(message: str) -> None:
    descriptor = _message(message)
    assert [oneof.name for oneof in descriptor.oneofs] == ["parameter_choice"]
    assert {f.name for f in descriptor.oneofs[0].fields} == set(descriptor.fields_by_name)


def test_service_has_exactly_the_specified_rpcs() -> None:
    assert {method.name for method in SERVICE.methods} == set(RPCS)


@pytest.mark.parametrize("rpc", sorted(RPCS))
def test_rpc_signature(rpc: str) -> None:
    request, response, client_streaming, server_streaming = RPCS[rpc]
    method = SERVICE.methods_by_name[rpc]
    assert method.input_type.full_name == f"inference.{request}"
    assert method.output_type.full_name == f"inference.{response}"
    assert method.client_streaming is client_streaming
    assert method.server_streaming is server_streaming


def test_generated_stub_uses_the_public_method_paths() -> None:
    class RecordingChannel:
        def __init__(self) -> None:
            self.paths: list[str] = []

        def _record(self, path: str, *args: object, **kwargs: object) -> None:
            self.paths.append(path)

        unary_unary = stream_stream = unary_stream = stream_unary = _record

    channel = RecordingChannel()
    inference_pb2_grpc.GRPCInferenceServiceStub(channel)
    assert sorted(channel.paths) == sorted(f"/inference.GRPCInferenceService/{rpc}" for rpc in RPCS)
