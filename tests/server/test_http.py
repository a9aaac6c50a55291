"""KServe v2 HTTP/REST against a real ``onnxforge serve`` process: tritonclient.http and plain HTTP.

Every inference answer is held to the NumPy reference (``builder.reference``), whichever
way the tensors travelled (JSON flat or nested, binary in, binary out). Metadata is held to
the spec and the built file, statistics and metrics to the requests the test sent.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from onnxforge.builder import load_spec, reference
from onnxforge.builder.metadata import SPEC_SHA256
from onnxforge.builder.spec import Spec
from tests.server.http_helpers import (
    HEADER_LENGTH,
    binary_body,
    call,
    json_tensor,
    outputs_of,
    write_model,
)
from tests.server.processes import ServeProcess

ATOL = 1e-5
MAX_BATCH = 16


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("http-repo")
    write_model(root, "tiny", serving={"max_batch_size": MAX_BATCH})
    write_model(root, "spare", seed=3)
    return root


@pytest.fixture(scope="module")
def server(repository: Path) -> Iterator[ServeProcess]:
    with ServeProcess(repository, http=True) as process:
        yield process


@pytest.fixture(scope="module")
def spec(repository: Path) -> Spec:
    return load_spec(repository / "tiny" / "spec.yaml")


@pytest.fixture(scope="module")
def client(server: ServeProcess) -> Iterator[triton.InferenceServerClient]:
    assert server.http_port is not None
    with triton.InferenceServerClient(f"127.0.0.1:{server.http_port}") as made:
        yield made


def rows(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(count, 4)).astype(np.float32)


def assert_reference(spec: Spec, x: np.ndarray, got: dict[str, np.ndarray]) -> None:
    want = reference.run(spec, x)
    assert sorted(got) == sorted(want)
    for name in want:
        assert got[name].shape == want[name].shape, name
        np.testing.assert_allclose(got[name], want[name], atol=ATOL, err_msg=name)


# ------------------------------------------------------------------ health and metadata


def test_health_live_and_ready_are_200_with_the_state_in_the_body(server: ServeProcess) -> None:
    live = call(server.http_url, "GET", "/v2/health/live")
    ready = call(server.http_url, "GET", "/v2/health/ready")
    assert (live.status, live.json()) == (200, {"live": True})
    assert (ready.status, ready.json()) == (200, {"ready": True})
    model = call(server.http_url, "GET", "/v2/models/tiny/versions/1/ready")
    assert (model.status, model.json()) == (200, {"ready": True})


def test_tritonclient_sees_a_live_and_ready_server(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("tiny")
    assert not client.is_model_ready("nothere")


def test_server_metadata_names_the_binary_tensor_extension(
    client: triton.InferenceServerClient,
) -> None:
    metadata = client.get_server_metadata()
    assert metadata["name"] == "onnxforge"
    assert "binary_tensor_data" in metadata["extensions"]
    assert "model_repository" in metadata["extensions"]


def test_model_metadata_is_the_models_tensors_with_the_variant_headers(
    server: ServeProcess, repository: Path
) -> None:
    answer = call(server.http_url, "GET", "/v2/models/tiny")
    assert answer.status == 200
    assert answer.json() == {
        "name": "tiny",
        "versions": ["1"],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [
            {"name": "y", "datatype": "FP32", "shape": [-1, 2]},
            {"name": "hidden", "datatype": "FP32", "shape": [-1, 3]},
        ],
    }
    recorded = {
        prop.key: prop.value
        for prop in onnx.load(repository / "tiny" / "1" / "model.onnx").metadata_props
    }
    assert answer.headers["x-onnxforge-variant"] == "fp32"
    assert answer.headers["x-onnxforge-spec-sha256"] == recorded[SPEC_SHA256]
    versioned = call(server.http_url, "GET", "/v2/models/tiny/versions/1")
    assert versioned.json() == answer.json()


def test_model_config_is_tritons_json_for_the_served_model(
    client: triton.InferenceServerClient,
) -> None:
    config = client.get_model_config("tiny")
    assert config["name"] == "tiny"
    assert config["platform"] == "onnxruntime_onnx"
    assert config["max_batch_size"] == MAX_BATCH
    assert config["input"] == [
        {"name": "x", "data_type": "TYPE_FP32", "dims": [4], "format": "FORMAT_NONE"}
    ]
    assert [output["name"] for output in config["output"]] == ["y", "hidden"]
    assert client.get_model_config("tiny", "1") == config


# ------------------------------------------------------------------ inference


@pytest.mark.parametrize("nested", [False, True], ids=["flat", "nested"])
def test_json_inference_equals_the_reference(
    server: ServeProcess, spec: Spec, nested: bool
) -> None:
    x = rows(5, seed=1)
    body = json.dumps({"id": "r-1", "inputs": [json_tensor("x", x, nested=nested)]}).encode()
    answer = call(server.http_url, "POST", "/v2/models/tiny/infer", body)
    assert answer.headers["content-type"].startswith("application/json")
    assert HEADER_LENGTH.lower() not in answer.headers
    document = answer.json()
    assert (document["model_name"], document["model_version"], document["id"]) == (
        "tiny",
        "1",
        "r-1",
    )
    assert_reference(spec, x, outputs_of(answer))


def test_a_large_json_request_equals_the_reference(server: ServeProcess, spec: Spec) -> None:
    x = rows(6000, seed=6)  # a body of ~500 kB and 30000 values back: read and written aside
    body = json.dumps({"inputs": [json_tensor("x", x)]}).encode()
    assert len(body) > 256 * 1024
    answer = call(server.http_url, "POST", "/v2/models/tiny/infer", body)
    assert_reference(spec, x, outputs_of(answer))


@pytest.mark.parametrize("binary_in", [False, True], ids=["json-in", "binary-in"])
@pytest.mark.parametrize("binary_out", [False, True], ids=["json-out", "binary-out"])
def test_tritonclient_inference_equals_the_reference(
    client: triton.InferenceServerClient, spec: Spec, binary_in: bool, binary_out: bool
) -> None:
    x = rows(3, seed=2)
    tensor = triton.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary_in)
    wanted = [triton.InferRequestedOutput(name, binary_data=binary_out) for name in ("y", "hidden")]
    result = client.infer("tiny", [tensor], outputs=wanted, model_version="1")
    sizes = [
        "binary_data_size" in output.get("parameters", {})
        for output in result.get_response()["outputs"]
    ]
    assert sizes == [binary_out, binary_out]
    got = {name: result.as_numpy(name) for name in ("y", "hidden")}
    assert_reference(spec, x, got)


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_a_compressed_request_is_read_as_sent(
    client: triton.InferenceServerClient, spec: Spec, algorithm: str
) -> None:
    x = rows(3, seed=8)
    tensor = triton.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=True)
    result = client.infer("tiny", [tensor], request_compression_algorithm=algorithm)
    assert_reference(spec, x, {name: result.as_numpy(name) for name in ("y", "hidden")})


def test_binary_data_output_answers_every_output_in_binary(
    server: ServeProcess, spec: Spec
) -> None:
    x = rows(4, seed=3)
    body, headers = binary_body({"x": x}, {"parameters": {"binary_data_output": True}})
    answer = call(server.http_url, "POST", "/v2/models/tiny/infer", body, headers)
    assert answer.headers["content-type"] == "application/octet-stream"
    header = json.loads(answer.body[: int(answer.headers[HEADER_LENGTH.lower()])])
    assert [output["parameters"]["binary_data_size"] for output in header["outputs"]] == [
        4 * 2 * 4,
        4 * 3 * 4,
    ]
    assert_reference(spec, x, outputs_of(answer))


def test_an_output_can_be_asked_for_alone_and_in_json_despite_binary_data_output(
    server: ServeProcess, spec: Spec
) -> None:
    x = rows(2, seed=4)
    document = {
        "parameters": {"binary_data_output": True},
        "outputs": [{"name": "hidden", "parameters": {"binary_data": False}}],
    }
    body, headers = binary_body({"x": x}, document)
    answer = call(server.http_url, "POST", "/v2/models/tiny/infer", body, headers)
    got = outputs_of(answer)
    assert list(got) == ["hidden"]
    assert "data" in answer.json()["outputs"][0]
    np.testing.assert_allclose(got["hidden"], reference.run(spec, x)["hidden"], atol=ATOL)


# ------------------------------------------------------------------ repository control


def test_unload_and_load_through_http_change_what_serves(
    client: triton.InferenceServerClient, repository: Path
) -> None:
    spare = load_spec(repository / "spare" / "spec.yaml")
    x = rows(2, seed=5)
    client.unload_model("spare")
    try:
        assert not client.is_model_ready("spare")
        assert client.is_server_ready()  # unloaded on purpose, as Triton counts it
        index = {entry["name"]: entry for entry in client.get_model_repository_index()}
        assert index["spare"]["state"] == "UNAVAILABLE"
        assert index["tiny"]["state"] == "READY"
        with pytest.raises(InferenceServerException) as error:
            client.infer("spare", [_input(x)])
        # UNAVAILABLE, as gRPC answers: the model exists but does not serve now.
        assert error.value.status() == "503"
        assert "model 'spare' is not ready" in error.value.message()
    finally:
        client.load_model("spare")
    assert client.is_model_ready("spare")
    result = client.infer("spare", [_input(x)])
    np.testing.assert_allclose(result.as_numpy("y"), reference.forward(spare, x), atol=ATOL)


def test_a_load_with_a_config_applies_it(client: triton.InferenceServerClient) -> None:
    client.load_model("spare", config=json.dumps({"max_batch_size": 8}))
    try:
        assert client.get_model_config("spare")["max_batch_size"] == 8
    finally:
        client.load_model("spare")  # back to config.pbtxt
    assert client.get_model_config("spare")["max_batch_size"] != 8


def test_the_ready_only_index_lists_ready_models(server: ServeProcess) -> None:
    answer = call(server.http_url, "POST", "/v2/repository/index", b'{"ready": true}')
    assert answer.status == 200
    assert {entry["name"] for entry in answer.json()} == {"tiny", "spare"}
    assert all(entry["state"] == "READY" for entry in answer.json())


def _input(x: np.ndarray) -> triton.InferInput:
    tensor = triton.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return tensor


# ------------------------------------------------------------------ statistics and metrics


def _metrics_port(server: ServeProcess) -> int:
    found = re.search(r"metrics: http://127\.0\.0\.1:(\d+)/metrics", server.output)
    assert found, server.output[-2000:]
    return int(found.group(1))


def _ok_requests(server: ServeProcess, model: str) -> float:
    text = call(f"http://127.0.0.1:{_metrics_port(server)}", "GET", "/metrics").body.decode()
    pattern = rf'onnxforge_requests_total{{model="{model}",status="OK"}} (\S+)'
    found = re.search(pattern, text)
    return float(found.group(1)) if found else 0.0


def test_statistics_and_metrics_count_the_http_requests(
    client: triton.InferenceServerClient, server: ServeProcess
) -> None:
    def tiny() -> dict[str, object]:
        (stats,) = client.get_inference_statistics("tiny", "1")["model_stats"]
        assert isinstance(stats, dict)
        return stats

    before, metric_before = tiny(), _ok_requests(server, "tiny")
    for seed in range(3):
        client.infer("tiny", [_input(rows(2, seed))])
    after = tiny()
    assert after["inference_count"] == before["inference_count"] + 6  # type: ignore[operator]
    success = after["inference_stats"]["success"]["count"]  # type: ignore[index]
    assert success == before["inference_stats"]["success"]["count"] + 3  # type: ignore[index]
    assert _ok_requests(server, "tiny") == metric_before + 3
    every = client.get_inference_statistics()["model_stats"]
    assert {(stats["name"], stats["version"]) for stats in every} >= {("tiny", "1"), ("spare", "1")}
    for key in ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output"):
        assert set(after["inference_stats"][key]) == {"count", "ns"}  # type: ignore[index]


def test_the_metrics_port_answers_only_metrics(server: ServeProcess) -> None:
    metrics = f"http://127.0.0.1:{_metrics_port(server)}"
    assert call(metrics, "GET", "/metrics").status == 200
    for path in ("/v2/health/ready", "/", "/metricsx"):
        assert call(metrics, "GET", path).status == 404, path


def test_grpc_and_http_serve_one_data_plane(
    client: triton.InferenceServerClient, server: ServeProcess, spec: Spec
) -> None:
    import tritonclient.grpc as grpc_triton

    x = rows(3, seed=9)
    before = client.get_inference_statistics("tiny", "1")["model_stats"][0]
    with grpc_triton.InferenceServerClient(server.url) as grpc_client:
        tensor = grpc_triton.InferInput("x", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        answer = grpc_client.infer("tiny", [tensor])
        np.testing.assert_allclose(answer.as_numpy("y"), reference.forward(spec, x), atol=ATOL)
        client.unload_model("spare")  # over HTTP; seen over gRPC
        try:
            assert not grpc_client.is_model_ready("spare")
        finally:
            client.load_model("spare")
        assert grpc_client.is_model_ready("spare")
    after = client.get_inference_statistics("tiny", "1")["model_stats"][0]
    assert after["inference_count"] == before["inference_count"] + 3
