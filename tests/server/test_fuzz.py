"""Fuzzing the server: randomised and mutated requests never break it.

Every request below -- valid ones mutated at random (datatypes, shapes, byte lengths,
inputs, names, versions, parameters, requested outputs), serialized requests with their
bytes mutated, random names for the other RPCs, random request streams -- must get a
proper gRPC status within the call's timeout: never INTERNAL or UNKNOWN (a bug escaped the
servicer) and never DEADLINE_EXCEEDED (a hang). An answer with OK must be well formed, and
after every example a known request is still answered with the reference's numbers.

Hypothesis runs with its normal randomness (new examples each run, failures replayed from
the local example database) but a fixed, small budget per test: the file stays fast.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import numpy as np
import pytest
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from onnxforge.builder import load_spec, reference
from onnxforge.protocol.generated import inference_pb2 as pb
from onnxforge.protocol.generated import inference_pb2_grpc as pb_grpc
from onnxforge.server.app import Settings
from onnxforge.server.validate import UNSUPPORTED_PARAMETERS
from tests.conftest import MODELS
from tests.server.conftest import ServerThread, make_repository
from tests.server.requests import output, raw_request

SPEC = load_spec(MODELS / "digits-mlp" / "spec.yaml")
SERVED = ("digits-mlp", "digits-mlp-fp16", "digits-mlp-int8-dynamic", "digits-mlp-int8-static")
OUTPUTS = {"probabilities": 10, "hidden": 32}
VERSIONS_OK = ("", "1")
TIMEOUT = 10.0  # seconds; a hang fails the call with DEADLINE_EXCEEDED

Code = grpc.StatusCode
ALLOWED = {
    Code.OK,
    Code.INVALID_ARGUMENT,
    Code.NOT_FOUND,
    Code.UNAVAILABLE,
    Code.RESOURCE_EXHAUSTED,
}
NEVER = {Code.INTERNAL, Code.UNKNOWN, Code.DEADLINE_EXCEEDED}
INTERNAL_MESSAGE = "internal error (see the server log)"  # what the stream says for a bug

DATATYPES = (
    "BOOL",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "FP16",
    "FP32",
    "FP64",
    "BYTES",
    "BF16",  # in the protocol's list, not supported here
)
ITEM_SIZE = {"BOOL": 1, "UINT8": 1, "INT8": 1, "UINT16": 2, "INT16": 2, "FP16": 2, "BF16": 2}
ITEM_SIZE |= {"UINT32": 4, "INT32": 4, "FP32": 4, "UINT64": 8, "INT64": 8, "FP64": 8}

FUZZ = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# The known request every example is followed by, and what it must answer.
X_GOOD = np.random.default_rng(7).uniform(size=(5, 64)).astype(np.float32)
WANT_GOOD = reference.forward(SPEC, X_GOOD)


# ----------------------------------------------------------------------------- plumbing


@pytest.fixture(scope="module")
def channel(served: ServerThread) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(served.address) as channel:
        yield channel


@pytest.fixture(scope="module")
def stub(channel: grpc.Channel) -> pb_grpc.GRPCInferenceServiceStub:
    return pb_grpc.GRPCInferenceServiceStub(channel)


def call(method: Callable[..., Any], request: Any) -> tuple[grpc.StatusCode, Any, str]:
    """(status code, response or None, details) of one unary call with a timeout."""
    try:
        return Code.OK, method(request, timeout=TIMEOUT), ""
    except grpc.RpcError as error:
        return error.code(), None, error.details() or ""


def assert_proper(code: grpc.StatusCode, details: str, what: object) -> None:
    assert code not in NEVER, f"{code.name} ({details!r}) for {what!r}"
    assert code in ALLOWED, f"unexpected {code.name} ({details!r}) for {what!r}"


def assert_still_serving(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    """The known request, answered with the reference's numbers."""
    code, response, details = call(stub.ModelInfer, raw_request("digits-mlp", X_GOOD))
    assert code == Code.OK, f"known request after fuzzing: {code.name} {details!r}"
    np.testing.assert_allclose(output(response, "probabilities"), WANT_GOOD, atol=1e-6)


# ------------------------------------------------------------------------- strategies

SPECIAL_NAMES = (
    "",
    " ",
    "digits-mlp ",
    " digits-mlp",
    "DIGITS-MLP",
    "digits_mlp",
    "digits-mlp\x00",
    "digits-mlp/1",
    "../digits-mlp",
    "../../etc/passwd",
    "/etc/passwd",
    "digits-mlp/../digits-mlp",
    ".",
    "..",
    "%s%s%n",
    "{name}",
    "'; DROP TABLE models; --",
    "\u00e9\u00e8\u4e2d\u6587\U0001f600",
    "\r\n",
    "a" * 200,
)
SPECIAL_VERSIONS = ("", "1", "0", "-1", "01", " 1", "1 ", "1.0", "2", "+1", "\u0661", "9" * 40)

names = st.one_of(st.sampled_from(SERVED), st.sampled_from(SPECIAL_NAMES), st.text(max_size=80))
versions = st.one_of(st.sampled_from(SPECIAL_VERSIONS), st.text(max_size=40))
unknown_names = st.one_of(st.sampled_from(SPECIAL_NAMES), st.text(max_size=80)).filter(
    lambda name: name not in SERVED
)
datatypes = st.one_of(st.sampled_from(DATATYPES), st.text(max_size=12))
dims = st.one_of(
    st.sampled_from([-(2**63), -(2**40), -2, -1, 0, 1, 2, 10, 64, 65, 2**31, 2**40, 2**63 - 1]),
    st.integers(-(2**63), 2**63 - 1),
    st.integers(-3, 70),
)
shapes = st.lists(dims, max_size=40)
text = st.text(max_size=40)

INFER_PARAMETERS = st.one_of(
    st.builds(pb.InferParameter, bool_param=st.booleans()),
    st.builds(pb.InferParameter, int64_param=st.integers(-(2**63), 2**63 - 1)),
    st.builds(pb.InferParameter, string_param=st.text(max_size=40)),
    st.builds(pb.InferParameter, double_param=st.floats()),
    st.builds(pb.InferParameter, uint64_param=st.integers(0, 2**64 - 1)),
    st.just(pb.InferParameter()),  # no kind set at all
)
parameter_maps = st.dictionaries(
    st.one_of(
        st.sampled_from([*UNSUPPORTED_PARAMETERS, "priority", "timeout", "binary_data_output", ""]),
        st.text(max_size=20),
    ),
    INFER_PARAMETERS,
    max_size=4,
)

TYPED_FIELDS = {
    "bool_contents": st.booleans(),
    "int_contents": st.integers(-(2**31), 2**31 - 1),
    "int64_contents": st.integers(-(2**63), 2**63 - 1),
    "uint_contents": st.integers(0, 2**32 - 1),
    "uint64_contents": st.integers(0, 2**64 - 1),
    "fp32_contents": st.floats(width=32),
    "fp64_contents": st.floats(),
    "bytes_contents": st.binary(max_size=12),
}


def fill(message: Any, mapping: dict[str, pb.InferParameter]) -> None:
    for key, value in mapping.items():
        message.parameters[key].CopyFrom(value)


@st.composite
def typed_contents(draw: st.DrawFn) -> pb.InferTensorContents:
    contents = pb.InferTensorContents()
    for field in draw(st.lists(st.sampled_from(sorted(TYPED_FIELDS)), min_size=1, max_size=2)):
        size = draw(st.sampled_from([0, 1, 63, 64, 65, 128]) | st.integers(0, 200))
        values = draw(st.lists(TYPED_FIELDS[field], min_size=size, max_size=size))
        getattr(contents, field).extend(values)
    return contents


@st.composite
def consistent_tensor(draw: st.DrawFn) -> tuple[str, list[int], bytes]:
    """A datatype, a small shape and raw bytes of exactly the size they need."""
    datatype = draw(st.sampled_from([d for d in DATATYPES if d != "BYTES"]))
    shape = draw(st.lists(st.integers(0, 70), min_size=0, max_size=3))
    size = math.prod(shape) * ITEM_SIZE[datatype]
    if size > 4096:
        shape, size = [1, 64], 64 * ITEM_SIZE[datatype]
    return datatype, shape, draw(st.binary(min_size=size, max_size=size))


class Case:
    """A request and what the fuzzer knows about it."""

    def __init__(self, request: pb.ModelInferRequest, mutations: list[str]) -> None:
        self.request = request
        self.mutations = mutations
        self.valid = True  # still a request the server must answer with OK

    def __repr__(self) -> str:
        return f"Case(mutations={self.mutations}, request={self.request!r:.2000})"

    def refused_parameters(self) -> bool:
        """A request or output parameter the server refuses rather than ignores."""
        keys = [*self.request.parameters]
        for requested in self.request.outputs:
            keys += [*requested.parameters]
        return any(key in UNSUPPORTED_PARAMETERS for key in keys)

    def expected(self) -> set[grpc.StatusCode]:
        request = self.request
        if request.model_name not in SERVED or request.model_version not in VERSIONS_OK:
            return {Code.NOT_FOUND}
        if self.valid and self.refused_parameters():
            return {Code.INVALID_ARGUMENT}
        if self.valid:
            return {Code.OK}
        return {Code.OK, Code.INVALID_ARGUMENT, Code.RESOURCE_EXHAUSTED}


# What each mutation does; those in KEEPS_VALID leave a valid request valid.
MUTATIONS = (
    "datatype",
    "shape",
    "rows_mismatch",
    "raw_bytes",
    "raw_count",
    "typed",
    "no_inputs",
    "duplicate_input",
    "extra_input",
    "input_name",
    "consistent_tensor",
    "non_finite",
    "model_name",
    "model_version",
    "parameters",
    "outputs",
    "id",
)
# The name and version decide NOT_FOUND before anything else is looked at.
KEEPS_VALID = {"parameters", "id", "model_name", "model_version"}


@st.composite
def infer_cases(draw: st.DrawFn, max_mutations: int = 3) -> Case:
    model = draw(st.sampled_from(SERVED))
    rows = draw(st.integers(1, 4))
    seed = draw(st.integers(0, 2**32 - 1))
    x = np.random.default_rng(seed).uniform(-4, 4, size=(rows, 64)).astype(np.float32)
    raw = draw(st.booleans())
    request = pb.ModelInferRequest(model_name=model, model_version=draw(st.sampled_from(["", "1"])))
    tensor = request.inputs.add(name="x", datatype="FP32", shape=[rows, 64])
    if raw:
        request.raw_input_contents.append(x.astype("<f4").tobytes())
    else:
        tensor.contents.fp32_contents.extend(x.ravel().tolist())
    mutations = draw(st.lists(st.sampled_from(MUTATIONS), max_size=max_mutations))
    case = Case(request, mutations)
    for mutation in mutations:
        mutate(draw, case, mutation)
    return case


def mutate(draw: st.DrawFn, case: Case, mutation: str) -> None:
    request = case.request
    inputs = request.inputs
    index = draw(st.integers(0, len(inputs) - 1)) if len(inputs) else None
    valid_before = case.valid
    if mutation not in KEEPS_VALID:
        case.valid = False
    if mutation == "datatype" and index is not None:
        inputs[index].datatype = draw(datatypes)
    elif mutation == "shape" and index is not None:
        del inputs[index].shape[:]
        inputs[index].shape.extend(draw(shapes))
    elif mutation == "rows_mismatch" and index is not None and inputs[index].shape:
        changed = inputs[index].shape[0] + draw(st.sampled_from([-1, 1, 2, 1000]))
        if -(2**63) <= changed < 2**63:  # an int64 on the wire
            inputs[index].shape[0] = changed
    elif mutation == "raw_bytes":
        for tensor in inputs:
            tensor.ClearField("contents")
        del request.raw_input_contents[:]
        for _ in inputs:
            size = draw(st.sampled_from([0, 1, 3, 255, 256, 257, 1024]) | st.integers(0, 2048))
            request.raw_input_contents.append(draw(st.binary(min_size=size, max_size=size)))
    elif mutation == "raw_count":
        if request.raw_input_contents and draw(st.booleans()):
            del request.raw_input_contents[:]
        else:
            request.raw_input_contents.extend(
                draw(st.lists(st.binary(max_size=300), min_size=1, max_size=3))
            )
    elif mutation == "typed" and index is not None:
        inputs[index].contents.CopyFrom(draw(typed_contents()))
    elif mutation == "no_inputs":
        del inputs[:]
        if draw(st.booleans()):
            del request.raw_input_contents[:]
    elif mutation == "duplicate_input" and index is not None:
        inputs.add().CopyFrom(inputs[index])
        if index < len(request.raw_input_contents):
            request.raw_input_contents.append(request.raw_input_contents[index])
    elif mutation == "extra_input":
        extra = inputs.add(
            name=draw(st.sampled_from(["x", "y", "probabilities", ""]) | text),
            datatype=draw(datatypes),
            shape=draw(st.lists(st.integers(-2, 70), max_size=4)),
        )
        if request.raw_input_contents or draw(st.booleans()):
            request.raw_input_contents.append(draw(st.binary(max_size=600)))
        else:
            extra.contents.CopyFrom(draw(typed_contents()))
    elif mutation == "input_name" and index is not None:
        inputs[index].name = draw(st.sampled_from(["", "X", "x ", "probabilities"]) | text)
    elif mutation == "consistent_tensor" and index is not None:
        datatype, shape, data = draw(consistent_tensor())
        inputs[index].datatype = datatype
        del inputs[index].shape[:]
        inputs[index].shape.extend(shape)
        inputs[index].ClearField("contents")
        if len(request.raw_input_contents) == len(inputs):
            request.raw_input_contents[index] = data
    elif mutation == "non_finite" and index is not None:
        value = draw(st.sampled_from([math.nan, math.inf, -math.inf]))
        if request.raw_input_contents and len(request.raw_input_contents) == len(inputs):
            data = bytearray(request.raw_input_contents[index])
            if len(data) >= 4:
                at = draw(st.integers(0, len(data) // 4 - 1)) * 4
                data[at : at + 4] = np.array([value], "<f4").tobytes()
                request.raw_input_contents[index] = bytes(data)
        else:
            values = inputs[index].contents.fp32_contents
            if len(values):
                values[draw(st.integers(0, len(values) - 1))] = value
    elif mutation == "model_name":
        request.model_name = draw(names)
    elif mutation == "model_version":
        request.model_version = draw(versions)
    elif mutation == "parameters":
        fill(request, draw(parameter_maps))
        for tensor in inputs:
            fill(tensor, draw(parameter_maps))
        for requested in request.outputs:
            fill(requested, draw(parameter_maps))
    elif mutation == "outputs":
        wanted = draw(
            st.lists(st.sampled_from([*OUTPUTS, "", "x", "PROBABILITIES"]) | text, max_size=4)
        )
        del request.outputs[:]
        for name in wanted:
            fill(request.outputs.add(name=name), draw(parameter_maps))
        if all(name in OUTPUTS for name in wanted) and len(set(wanted)) == len(wanted):
            case.valid = valid_before  # a selection of the model's outputs
    elif mutation == "id":
        request.id = draw(text)


def decoded_x(request: pb.ModelInferRequest) -> np.ndarray | None:
    """The request's x as the server should have read it (one FP32 input), else None."""
    if len(request.inputs) != 1 or request.inputs[0].datatype != "FP32":
        return None
    shape = tuple(request.inputs[0].shape)
    if request.raw_input_contents:
        data = np.frombuffer(request.raw_input_contents[0], "<f4")
    else:
        data = np.asarray(request.inputs[0].contents.fp32_contents, np.float32)
    return data.reshape(shape) if data.size == math.prod(shape) else None


def assert_well_formed(case: Case, response: pb.ModelInferResponse) -> None:
    request = case.request
    assert response.model_name == request.model_name
    assert response.model_version == "1"
    assert response.id == request.id
    wanted = [o.name for o in request.outputs] or list(OUTPUTS)
    assert [t.name for t in response.outputs] == wanted
    x = decoded_x(request)
    assert x is not None and x.ndim == 2 and x.shape[1] == 64, "OK for an input it cannot read"
    for tensor in response.outputs:
        assert tensor.datatype == "FP32"
        assert list(tensor.shape) == [x.shape[0], OUTPUTS[tensor.name]]
    count = [math.prod(t.shape) for t in response.outputs]
    if request.raw_input_contents:  # raw in, raw out
        assert [len(b) for b in response.raw_output_contents] == [4 * n for n in count]
        assert not any(t.contents.ListFields() for t in response.outputs)
    else:
        assert not response.raw_output_contents
        assert [len(t.contents.fp32_contents) for t in response.outputs] == count
    moderate = bool(np.isfinite(x).all()) and float(np.abs(x).max(initial=0)) <= 1e4
    if request.model_name == "digits-mlp" and "probabilities" in wanted and moderate:
        want = reference.forward(SPEC, np.asarray(x, np.float32))
        np.testing.assert_allclose(output(response, "probabilities"), want, atol=1e-5)


def check_infer(stub: pb_grpc.GRPCInferenceServiceStub, case: Case) -> None:
    code, response, details = call(stub.ModelInfer, case.request)
    event(f"ModelInfer: {code.name}")  # --hypothesis-show-statistics shows the spread
    assert_proper(code, details, case)
    assert code in case.expected(), f"{code.name} ({details!r}) for {case!r}"
    if code == Code.OK:
        assert_well_formed(case, response)
    elif code == Code.NOT_FOUND:
        assert "not found" in details, details
    elif case.expected() == {Code.INVALID_ARGUMENT}:
        assert "parameter" in details, details


# ------------------------------------------------------------------------------ tests


@settings(FUZZ, max_examples=20)
@given(case=infer_cases(max_mutations=0))
def test_valid_requests_are_answered_like_the_reference(
    stub: pb_grpc.GRPCInferenceServiceStub, case: Case
) -> None:
    """The oracle of the fuzz tests: the unmutated strategy's requests are all OK."""
    check_infer(stub, case)


@settings(FUZZ, max_examples=300)
@given(case=infer_cases())
def test_mutated_infer_requests_get_a_proper_status(
    stub: pb_grpc.GRPCInferenceServiceStub, case: Case
) -> None:
    check_infer(stub, case)
    assert_still_serving(stub)


@st.composite
def mutated_bytes(draw: st.DrawFn) -> bytes:
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=200))
    data = bytearray(draw(infer_cases(max_mutations=1)).request.SerializeToString())
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "append"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set" and data:
            data[at] = draw(st.integers(0, 255))
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 8))]
        elif kind == "truncate":
            del data[at:]
        elif kind == "append":
            data += draw(st.binary(min_size=1, max_size=16))
    return bytes(data)


@settings(FUZZ, max_examples=150)
@given(data=mutated_bytes())
def test_mutated_bytes_on_the_wire_get_a_proper_status(
    channel: grpc.Channel, stub: pb_grpc.GRPCInferenceServiceStub, data: bytes
) -> None:
    """Serialized requests with bytes flipped, inserted, deleted: decodable or not."""
    infer = channel.unary_unary(
        "/inference.GRPCInferenceService/ModelInfer",
        request_serializer=lambda data: data,
        response_deserializer=pb.ModelInferResponse.FromString,
    )
    code, _, details = call(infer, data)
    assert_proper(code, details, data)
    try:
        pb.ModelInferRequest.FromString(data)
    except DecodeError:
        assert code == Code.INVALID_ARGUMENT, f"{code.name} ({details!r}) for {data!r}"
    assert_still_serving(stub)


UNARY_DECODERS = {
    "ModelInfer": pb.ModelInferResponse,
    "ModelMetadata": pb.ModelMetadataResponse,
    "ModelReady": pb.ModelReadyResponse,
    "ModelStatistics": pb.ModelStatisticsResponse,
    "RepositoryIndex": pb.RepositoryIndexResponse,
}


def test_undecodable_messages_get_invalid_argument(channel: grpc.Channel) -> None:
    """Bytes that are no protobuf message of the method's type: the client sent garbage.

    The minimal inputs: a lone 0xff (an invalid tag) and a string field holding bad UTF-8.
    """
    failures = []
    for method, response in UNARY_DECODERS.items():
        rpc = channel.unary_unary(
            f"/inference.GRPCInferenceService/{method}",
            request_serializer=lambda data: data,
            response_deserializer=response.FromString,
        )
        for data in (b"\xff", b"\x0a\x01\xff"):
            code, _, details = call(rpc, data)
            if code != Code.INVALID_ARGUMENT:
                failures.append(f"{method}({data!r}): {code.name} {details!r}")
    assert not failures, "\n".join(failures)


def test_undecodable_message_in_a_stream_is_answered(channel: grpc.Channel) -> None:
    """A garbage message inside ModelStreamInfer: an error, never UNKNOWN or a hang."""
    stream = channel.stream_stream(
        "/inference.GRPCInferenceService/ModelStreamInfer",
        request_serializer=lambda data: data,
        response_deserializer=pb.ModelStreamInferResponse.FromString,
    )
    good = raw_request("digits-mlp", X_GOOD).SerializeToString()
    try:
        answers = list(stream(iter([good, b"\xff", good]), timeout=TIMEOUT))
    except grpc.RpcError as error:
        assert error.code() == Code.INVALID_ARGUMENT, f"{error.code().name}: {error.details()!r}"
    else:
        assert len(answers) == 3 and answers[1].error_message


def test_long_names_get_not_found_with_the_servers_message(
    stub: pb_grpc.GRPCInferenceServiceStub,
) -> None:
    """Names and fields of any length: the answer is the server's own status and message.

    Echoing a 20 kB name into the status message makes the trailers larger than the
    client accepts (16 kB by default); the client then reports RESOURCE_EXHAUSTED
    "received metadata size exceeds hard limit" instead of what the server meant.
    """
    long = "n" * 20_000
    x = raw_request("digits-mlp", X_GOOD)
    renamed, retyped, wrong_output = (pb.ModelInferRequest() for _ in range(3))
    for request in (renamed, retyped, wrong_output):
        request.CopyFrom(x)
    renamed.inputs[0].name = long
    retyped.inputs[0].datatype = long
    wrong_output.outputs.add(name=long)
    cases = {
        "ModelInfer model_name": (
            stub.ModelInfer,
            pb.ModelInferRequest(model_name=long),
            Code.NOT_FOUND,
        ),
        "ModelInfer model_version": (
            stub.ModelInfer,
            pb.ModelInferRequest(model_name="digits-mlp", model_version=long),
            Code.NOT_FOUND,
        ),
        "ModelInfer input name": (stub.ModelInfer, renamed, Code.INVALID_ARGUMENT),
        "ModelInfer datatype": (stub.ModelInfer, retyped, Code.INVALID_ARGUMENT),
        "ModelInfer output name": (stub.ModelInfer, wrong_output, Code.INVALID_ARGUMENT),
        "ModelMetadata name": (
            stub.ModelMetadata,
            pb.ModelMetadataRequest(name=long),
            Code.NOT_FOUND,
        ),
        "ModelStatistics name": (
            stub.ModelStatistics,
            pb.ModelStatisticsRequest(name=long),
            Code.NOT_FOUND,
        ),
        "RepositoryModelLoad name": (
            stub.RepositoryModelLoad,
            pb.RepositoryModelLoadRequest(model_name=long),
            Code.NOT_FOUND,
        ),
    }
    failures = []
    for label, (method, request, want) in cases.items():
        code, _, details = call(method, request)
        assert_proper(code, details, label)
        if code != want:
            failures.append(f"{label} ({len(long)} chars): {code.name} {details[:120]!r}")
    assert not failures, "\n".join(failures)
    assert_still_serving(stub)


def test_too_many_rows_and_too_large_messages_are_resource_exhausted(
    stub: pb_grpc.GRPCInferenceServiceStub,
) -> None:
    rows = pb.ModelInferRequest(model_name="digits-mlp")
    rows.inputs.add(name="x", datatype="FP32", shape=[65537, 64])
    rows.raw_input_contents.append(bytes(65537 * 64 * 4))
    code, _, details = call(stub.ModelInfer, rows)
    assert code == Code.RESOURCE_EXHAUSTED and "65536 rows" in details, details
    big = raw_request("digits-mlp", np.zeros((1, 64), np.float32))
    big.raw_input_contents[0] = bytes(64 * 2**20 + 1)  # over the 64 MiB message limit
    code, _, details = call(stub.ModelInfer, big)
    assert code == Code.RESOURCE_EXHAUSTED, (code, details)
    assert_still_serving(stub)


REPOSITORY_PARAMETERS = st.dictionaries(
    st.text(max_size=10),
    st.one_of(
        st.builds(pb.ModelRepositoryParameter, bool_param=st.booleans()),
        st.builds(pb.ModelRepositoryParameter, string_param=text),
        st.builds(pb.ModelRepositoryParameter, bytes_param=st.binary(max_size=20)),
        st.builds(pb.ModelRepositoryParameter, int64_param=st.integers(-(2**63), 2**63 - 1)),
    ),
    max_size=3,
)


@settings(FUZZ, max_examples=100)
@given(
    rpc=st.sampled_from(["metadata", "ready", "statistics", "load", "unload"]),
    name=names,
    version=versions,
    unknown=unknown_names,
    field=st.sampled_from(["model_name", "repository_name"]),
    parameters=REPOSITORY_PARAMETERS,
)
def test_other_rpcs_with_random_names_and_versions(
    stub: pb_grpc.GRPCInferenceServiceStub,
    rpc: str,
    name: str,
    version: str,
    unknown: str,
    field: str,
    parameters: dict[str, pb.ModelRepositoryParameter],
) -> None:
    """Metadata, readiness and statistics for any name; load/unload only for unknown ones."""
    exists = name in SERVED and version in VERSIONS_OK
    if rpc == "metadata":
        code, response, details = call(
            stub.ModelMetadata, pb.ModelMetadataRequest(name=name, version=version)
        )
        assert code == (Code.OK if exists else Code.NOT_FOUND), (code, details)
        if code == Code.OK:
            assert response.name == name and list(response.versions) == ["1"]
            assert [(t.name, t.datatype, list(t.shape)) for t in response.inputs] == [
                ("x", "FP32", [-1, 64])
            ]
    elif rpc == "ready":
        code, response, details = call(
            stub.ModelReady, pb.ModelReadyRequest(name=name, version=version)
        )
        assert code == Code.OK, (code, details)
        assert response.ready == exists
    elif rpc == "statistics":
        code, response, details = call(
            stub.ModelStatistics, pb.ModelStatisticsRequest(name=name, version=version)
        )
        assert code == (Code.OK if exists or not name else Code.NOT_FOUND), (code, details)
        if code == Code.OK:
            for stats in response.model_stats:
                assert not name or stats.name == name
                assert not version or stats.version == version
    else:  # never a model the shared server holds: those stay loaded
        load = rpc == "load"
        request = (pb.RepositoryModelLoadRequest if load else pb.RepositoryModelUnloadRequest)(
            **{field: unknown}
        )
        for key, value in parameters.items():
            request.parameters[key].CopyFrom(value)
        method = stub.RepositoryModelLoad if load else stub.RepositoryModelUnload
        code, _, details = call(method, request)
        assert code == Code.NOT_FOUND, (code, details)
    assert_proper(code, details, (rpc, name, version))
    assert_still_serving(stub)


@settings(FUZZ, max_examples=60)
@given(cases=st.lists(infer_cases(), max_size=6))
def test_streams_of_random_requests_are_answered_one_by_one(
    stub: pb_grpc.GRPCInferenceServiceStub, cases: list[Case]
) -> None:
    """Every request of a stream gets an answer or an error message; the stream ends OK."""
    try:
        answers = list(stub.ModelStreamInfer(iter([c.request for c in cases]), timeout=TIMEOUT))
    except grpc.RpcError as error:
        raise AssertionError(
            f"stream ended with {error.code().name} ({error.details()!r}) for {cases!r}"
        ) from None
    assert len(answers) == len(cases)
    for case, answer in zip(cases, answers, strict=True):
        # An error may carry an infer_response holding only the request's id (as Triton does).
        has_response = not answer.error_message
        assert has_response or not answer.infer_response.outputs, answer
        assert answer.infer_response.id == case.request.id or not answer.error_message, answer
        assert answer.error_message != INTERNAL_MESSAGE, case
        expected = case.expected()
        if has_response:
            assert answer.HasField("infer_response"), answer
            assert Code.OK in expected, (answer, case)
            assert_well_formed(case, answer.infer_response)
        else:
            assert expected != {Code.OK}, (answer.error_message, case)
            if expected == {Code.NOT_FOUND}:
                assert "not found" in answer.error_message, answer.error_message
    assert_still_serving(stub)


# --------------------------------------------------- load and unload on a server of our own


@pytest.fixture(scope="module")
def own_stub(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    """A server of this module's own, free to unload its models."""
    repository = make_repository(tmp_path_factory.mktemp("fuzz-repository"))
    server = ServerThread(Settings(repository=repository, port=0, threads=1, metrics_port=None))
    server.start()
    try:
        with grpc.insecure_channel(server.address) as channel:
            yield pb_grpc.GRPCInferenceServiceStub(channel)
    finally:
        server.stop()


@settings(FUZZ, max_examples=40)
@given(
    steps=st.lists(
        st.tuples(
            st.sampled_from(["load", "unload", "infer", "ready"]),
            st.sampled_from(SERVED) | unknown_names,
        ),
        max_size=8,
    )
)
def test_random_load_unload_and_infer_sequences(
    own_stub: pb_grpc.GRPCInferenceServiceStub, steps: list[tuple[str, str]]
) -> None:
    """Any order of load, unload, readiness and inference: the answers track the state."""
    stub = own_stub
    loaded = set(SERVED)
    for step, name in steps:
        known = name in SERVED
        if step == "load":
            code, _, details = call(
                stub.RepositoryModelLoad, pb.RepositoryModelLoadRequest(model_name=name)
            )
            assert code == (Code.OK if known else Code.NOT_FOUND), (step, name, details)
            if known:
                loaded.add(name)
        elif step == "unload":
            code, _, details = call(
                stub.RepositoryModelUnload, pb.RepositoryModelUnloadRequest(model_name=name)
            )
            assert code == (Code.OK if known else Code.NOT_FOUND), (step, name, details)
            loaded.discard(name)
        elif step == "infer":
            code, response, details = call(stub.ModelInfer, raw_request(name, X_GOOD))
            want = Code.OK if name in loaded else Code.UNAVAILABLE
            assert code == (want if known else Code.NOT_FOUND), (step, name, details)
            if code == Code.OK:
                got = output(response, "probabilities")
                assert got.shape == WANT_GOOD.shape
                assert np.abs(got - WANT_GOOD).max() < 0.2
        else:
            code, response, details = call(stub.ModelReady, pb.ModelReadyRequest(name=name))
            assert code == Code.OK and response.ready == (name in loaded), (name, details)
        assert_proper(code, details, (step, name))
    for name in SERVED:  # back to the start for the next example
        code, _, details = call(
            stub.RepositoryModelLoad, pb.RepositoryModelLoadRequest(model_name=name)
        )
        assert code == Code.OK, (name, details)
    assert_still_serving(stub)
