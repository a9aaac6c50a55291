"""Clients that never saw our code: tritonclient, reflection, gRPC health, Prometheus.

tritonclient's generated protobuf code registers the same names (``inference.ModelInferRequest``
...) as ``onnxforge.protocol.generated``, so it cannot be imported here: it runs in a subprocess
(``interop_tritonclient.py``) that prints JSON and saves the arrays it received, and every
check happens in this process against ``builder.reference``.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from google.protobuf import descriptor_pool, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from prometheus_client.parser import text_string_to_metric_families

from onnxforge.builder import load_spec, reference
from onnxforge.protocol.generated import inference_pb2 as pb
from onnxforge.protocol.generated import inference_pb2_grpc as pb_grpc
from onnxforge.server.app import Settings
from tests.conftest import MODELS, REPO_ROOT
from tests.server.conftest import ServerThread, make_repository
from tests.server.requests import raw_request

SPEC = load_spec(MODELS / "digits-mlp" / "spec.yaml")
SCRIPT = Path(__file__).with_name("interop_tritonclient.py")
SERVICE = "inference.GRPCInferenceService"
HEALTH = health_pb2.HealthCheckResponse
WAIT = 60.0  # bound on a hung call; no test depends on timing

needs_tritonclient = pytest.mark.skipif(
    importlib.util.find_spec("tritonclient") is None,
    reason="tritonclient is not installed (pip install 'tritonclient[grpc,http]>=2.73,<3'); "
    "its script runs in a subprocess, so importorskip cannot say",
)


def rows(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(size=(n, 64)).astype(np.float32)


@pytest.fixture(scope="module")
def private(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    """A server of this module's own, for tests that unload models."""
    repository = make_repository(tmp_path_factory.mktemp("interop"))
    server = ServerThread(
        Settings(repository=repository, port=0, threads=1, metrics_port=None)
    ).start()
    yield server
    server.stop()


# ---------------------------------------------------------------------- tritonclient


def run_tritonclient(address: str, folder: Path, scenario: str, x: np.ndarray) -> dict[str, Any]:
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "x.npy", x)
    done = subprocess.run(
        [sys.executable, str(SCRIPT.relative_to(REPO_ROOT)), address, str(folder), scenario],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    try:
        results: dict[str, Any] = json.loads(done.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"no JSON from {SCRIPT.name}: {done.stdout!r}\n{done.stderr}")
    broken = {k: v for k, v in results.items() if isinstance(v, dict) and "exception" in v}
    assert not broken, json.dumps(broken, indent=1)
    return results


class Triton:
    """What the tritonclient script printed and the arrays it saved."""

    def __init__(self, results: dict[str, Any], folder: Path, x: np.ndarray) -> None:
        self.results, self.folder, self.x = results, folder, x

    def __getitem__(self, step: str) -> Any:
        return self.results[step]

    def array(self, step: str, output: str) -> np.ndarray:
        return np.load(self.folder / f"{step}.{output}.npy")

    def check(
        self,
        step: str,
        x: np.ndarray,
        outputs: tuple[str, ...],
        described: dict[str, Any] | None = None,
    ) -> None:
        """The answer (the step's, unless ``described``) has exactly ``outputs``, each
        matching the reference; the arrays are in ``<step>.<output>.npy``."""
        if described is None:
            described = self.results[step]
        assert isinstance(described, dict), (step, described)
        want = reference.run(SPEC, x)
        names = [o["name"] for o in described.get("outputs", [])]
        assert names == list(outputs), (step, described)
        for tensor in described["outputs"]:
            assert tensor["datatype"] == "FP32"
            assert tensor["shape"] == list(want[tensor["name"]].shape)
            got = self.array(step, tensor["name"])
            assert got.dtype == np.float32
            np.testing.assert_allclose(got, want[tensor["name"]], atol=1e-5, err_msg=step)


def refused(answer: Any, status: str | None, fragment: str) -> None:
    assert isinstance(answer, dict) and answer.get("status") == status, answer
    assert fragment in answer["message"], answer


@pytest.fixture(scope="module")
def triton(served: ServerThread, tmp_path_factory: pytest.TempPathFactory) -> Triton:
    folder = tmp_path_factory.mktemp("tritonclient")
    x = rows(5, 2024)
    return Triton(run_tritonclient(served.address, folder, "serve", x), folder, x)


@needs_tritonclient
def test_tritonclient_health_and_metadata(triton: Triton) -> None:
    assert triton["live"] is True and triton["ready"] is True
    assert triton["model_ready"] is True and triton["model_ready_unknown"] is False
    meta = triton["server_metadata"]
    assert meta["name"] == "onnxforge" and "model_repository" in meta["extensions"]
    model = triton["model_metadata"]
    assert (model["name"], model["versions"], model["platform"]) == (
        "digits-mlp",
        ["1"],
        "onnxruntime_onnx",
    )
    # int64 fields come back as strings from tritonclient's MessageToJson.
    assert [(t["name"], t["datatype"], t["shape"]) for t in model["inputs"]] == [
        ("x", "FP32", ["-1", "64"])
    ]
    assert [(t["name"], t["datatype"], t["shape"]) for t in model["outputs"]] == [
        ("probabilities", "FP32", ["-1", "10"]),
        ("hidden", "FP32", ["-1", "32"]),
    ]
    index = {m["name"]: m for m in triton["repository_index"]["models"]}
    assert {"digits-mlp", "digits-mlp-fp16"} <= set(index)
    assert index["digits-mlp"]["state"] == "READY" and index["digits-mlp"]["version"] == "1"


@needs_tritonclient
def test_tritonclient_infer_matches_the_reference(triton: Triton) -> None:
    x = triton.x
    assert triton["infer_all"]["id"] == "all"
    assert (triton["infer_all"]["model_name"], triton["infer_all"]["model_version"]) == (
        "digits-mlp",
        "1",
    )
    triton.check("infer_all", x, ("probabilities", "hidden"))
    triton.check("infer_both", x, ("hidden", "probabilities"))  # in the order asked for
    triton.check("infer_one", x[:1], ("hidden",))
    triton.check("infer_gzip", x, ("probabilities", "hidden"))
    triton.check("after_errors", x[:2], ("probabilities", "hidden"))


@needs_tritonclient
def test_tritonclient_async_infer_and_streams(triton: Triton) -> None:
    x = triton.x
    assert triton["async_infer"]["id"] == "async-1"
    triton.check("async_infer", x, ("probabilities", "hidden"))
    # start_stream / async_stream_infer: s0, a request for an unknown model, s1, s2.
    stream = triton["stream"]
    assert [answer.get("id") for answer in stream] == ["s0", None, "s1", "s2"]
    # A stream error travels as error_message only: tritonclient has no status for it.
    refused(stream[1], None, "model 'nope' not found")
    for index, n in ((0, 1), (2, 2), (3, 3)):
        triton.check(f"stream{index}", x[:n], ("probabilities", "hidden"), stream[index])
    aio = triton["aio"]
    assert aio["live"] is True and aio["model_ready"] is True
    assert aio["infer"]["id"] == "aio-1"
    triton.check("aio_infer", x, ("probabilities", "hidden"), aio["infer"])
    assert [answer["id"] for answer in aio["stream"]] == ["a0", "a1"]
    for index, answer in enumerate(aio["stream"]):
        triton.check(f"aio_stream{index}", x[: index + 1], ("probabilities", "hidden"), answer)


@needs_tritonclient
def test_tritonclient_sees_the_right_status_and_message(triton: Triton) -> None:
    refused(triton["unknown_model"], "StatusCode.NOT_FOUND", "model 'nope' not found")
    refused(triton["unknown_version"], "StatusCode.NOT_FOUND", "version '7' not found")
    refused(
        triton["wrong_shape"],
        "StatusCode.INVALID_ARGUMENT",
        "input 'x': shape [5, 10] does not match the model's [N, 64]",
    )
    refused(
        triton["wrong_datatype"],
        "StatusCode.INVALID_ARGUMENT",
        "input 'x': datatype FP64 does not match the model's FP32",
    )
    refused(triton["unknown_output"], "StatusCode.INVALID_ARGUMENT", "no output 'logits'")
    refused(triton["metadata_unknown"], "StatusCode.NOT_FOUND", "model 'nope' not found")
    refused(triton["model_config_unknown"], "StatusCode.NOT_FOUND", "model 'nope' not found")
    # The full comparison with config.pbtxt is tests/server/test_model_config.py's.
    config = triton["model_config"]["config"]
    assert (config["name"], config["platform"]) == ("digits-mlp", "onnxruntime_onnx")


@needs_tritonclient
def test_tritonclient_statistics_count_exactly_what_it_sent(triton: Triton) -> None:
    def stats(step: str) -> dict[str, int]:
        found = triton[step].get("model_stats", [])
        if not found:
            return {"success": 0, "fail": 0, "rows": 0}
        [model] = found
        assert (model["name"], model["version"]) == ("digits-mlp", "1")
        inference = model["inference_stats"]
        return {
            "success": int(inference.get("success", {}).get("count", 0)),
            "fail": int(inference.get("fail", {}).get("count", 0)),
            "rows": int(model.get("inference_count", 0)),
        }

    before, after, sent = stats("stats_before"), stats("stats_after"), triton["sent"]
    assert sent["success"] == 12 and sent["fail"] == 3  # the script's own count
    assert {key: after[key] - before[key] for key in after} == sent


@needs_tritonclient
def test_tritonclient_unloads_and_loads_a_model(private: ServerThread, tmp_path: Path) -> None:
    x = rows(5, 7)
    control = run_tritonclient(private.address, tmp_path, "control", x)
    assert control["unload"] is None and control["load"] is None  # no error
    assert control["ready_after_unload"] is False
    index = {m["name"]: m for m in control["index_after_unload"]["models"]}
    assert index["digits-mlp-fp16"]["state"] == "UNAVAILABLE"
    assert index["digits-mlp-fp16"]["reason"] == "unloaded"
    assert index["digits-mlp"]["state"] == "READY"
    refused(
        control["infer_after_unload"],
        "StatusCode.UNAVAILABLE",
        "model 'digits-mlp-fp16' is not ready: unloaded",
    )
    assert control["ready_after_load"] is True
    got = np.load(tmp_path / "infer_after_load.probabilities.npy")
    assert np.abs(got - reference.forward(SPEC, x)).max() < 0.2  # fp16 weights
    refused(control["load_unknown"], "StatusCode.NOT_FOUND", "model 'no-such-model' not found")
    refused(control["unload_unknown"], "StatusCode.NOT_FOUND", "model 'no-such-model' not found")


# ------------------------------------------------------------------------ reflection

# Field numbers of the public specification (Triton's grpc_service.proto, KServe's
# grpc_predict_v2.proto): the wire format that every existing client was generated from.
PUBLIC_FIELDS = {
    "inference.ModelInferRequest": {
        "model_name": 1,
        "model_version": 2,
        "id": 3,
        "parameters": 4,
        "inputs": 5,
        "outputs": 6,
        "raw_input_contents": 7,
    },
    "inference.ModelInferRequest.InferInputTensor": {
        "name": 1,
        "datatype": 2,
        "shape": 3,
        "parameters": 4,
        "contents": 5,
    },
    "inference.ModelInferResponse": {
        "model_name": 1,
        "model_version": 2,
        "id": 3,
        "parameters": 4,
        "outputs": 5,
        "raw_output_contents": 6,
    },
    "inference.InferTensorContents": {
        "bool_contents": 1,
        "int_contents": 2,
        "int64_contents": 3,
        "uint_contents": 4,
        "uint64_contents": 5,
        "fp32_contents": 6,
        "fp64_contents": 7,
        "bytes_contents": 8,
    },
    "inference.ModelStreamInferResponse": {"error_message": 1, "infer_response": 2},
}


def test_reflection_describes_the_services_without_the_proto(served: ServerThread) -> None:
    with grpc.insecure_channel(served.address) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = set(database.get_services())
        assert {SERVICE, "grpc.health.v1.Health"} <= services
        # A pool of its own: what reflection serves, nothing from onnxforge.protocol.generated.
        pool = descriptor_pool.DescriptorPool(database)
        service = pool.FindServiceByName(SERVICE)
        assert {
            "ServerLive",
            "ServerReady",
            "ModelReady",
            "ServerMetadata",
            "ModelMetadata",
            "ModelInfer",
            "ModelStreamInfer",
            "ModelStatistics",
            "RepositoryIndex",
            "RepositoryModelLoad",
            "RepositoryModelUnload",
        } <= set(service.methods_by_name)
        stream = service.methods_by_name["ModelStreamInfer"]
        assert stream.client_streaming and stream.server_streaming
        for name, fields in PUBLIC_FIELDS.items():
            descriptor = pool.FindMessageTypeByName(name)
            assert descriptor is not pb.ModelInferRequest.DESCRIPTOR
            assert {f.name: f.number for f in descriptor.fields} == fields, name
        raw = pool.FindMessageTypeByName("inference.ModelInferRequest").fields_by_name[
            "raw_input_contents"
        ]
        assert raw.number == 7 and raw.type == raw.TYPE_BYTES


def test_a_client_built_from_reflection_alone_infers(served: ServerThread) -> None:
    x = rows(3, 11)
    with grpc.insecure_channel(served.address) as channel:
        pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
        method = pool.FindServiceByName(SERVICE).methods_by_name["ModelInfer"]
        Request = message_factory.GetMessageClass(method.input_type)
        Response = message_factory.GetMessageClass(method.output_type)
        assert Request is not pb.ModelInferRequest
        request = Request(model_name="digits-mlp", id="dynamic")
        request.inputs.add(name="x", datatype="FP32", shape=[3, 64])
        request.raw_input_contents.append(x.astype("<f4").tobytes())
        request.outputs.add(name="probabilities")
        infer = channel.unary_unary(
            f"/{SERVICE}/ModelInfer",
            request_serializer=Request.SerializeToString,
            response_deserializer=Response.FromString,
        )
        response = infer(request, timeout=WAIT)
    assert type(response) is Response and response.id == "dynamic"
    [tensor] = response.outputs
    assert (tensor.name, tensor.datatype, list(tensor.shape)) == ("probabilities", "FP32", [3, 10])
    got = np.frombuffer(response.raw_output_contents[0], "<f4").reshape(3, 10)
    np.testing.assert_allclose(got, reference.forward(SPEC, x), atol=1e-6)


# ---------------------------------------------------------------------------- health


def check(stub: health_pb2_grpc.HealthStub, service: str) -> int:
    request = health_pb2.HealthCheckRequest(service=service)
    return int(stub.Check(request, timeout=WAIT).status)


def test_health_check_for_the_server_the_service_and_each_model(served: ServerThread) -> None:
    with grpc.insecure_channel(served.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", SERVICE, "digits-mlp", "digits-mlp-int8-static"):
            assert check(stub, service) == HEALTH.SERVING, service
        with pytest.raises(grpc.RpcError) as error:
            check(stub, "no-such-model")
        assert error.value.code() == grpc.StatusCode.NOT_FOUND


def test_health_follows_unload_and_load(private: ServerThread) -> None:
    name = "digits-mlp-int8-static"
    with grpc.insecure_channel(private.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        inference = pb_grpc.GRPCInferenceServiceStub(channel)
        watch = health.Watch(health_pb2.HealthCheckRequest(service=name), timeout=WAIT)
        try:
            assert next(watch).status == HEALTH.SERVING  # the current status, at once
            inference.RepositoryModelUnload(
                pb.RepositoryModelUnloadRequest(model_name=name), timeout=WAIT
            )
            assert check(health, name) == HEALTH.NOT_SERVING
            assert next(watch).status == HEALTH.NOT_SERVING
            assert check(health, "digits-mlp") == HEALTH.SERVING  # the others still serve
            inference.RepositoryModelLoad(
                pb.RepositoryModelLoadRequest(model_name=name), timeout=WAIT
            )
            assert check(health, name) == HEALTH.SERVING
            assert next(watch).status == HEALTH.SERVING
        finally:
            watch.cancel()
        assert check(health, "") == HEALTH.SERVING
        assert check(health, SERVICE) == HEALTH.SERVING


def test_health_watch_streams_the_current_status(served: ServerThread) -> None:
    with grpc.insecure_channel(served.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service, status in (
            ("", HEALTH.SERVING),
            ("digits-mlp", HEALTH.SERVING),
            ("no-such-model", HEALTH.SERVICE_UNKNOWN),  # Watch answers, Check refuses
        ):
            watch = stub.Watch(health_pb2.HealthCheckRequest(service=service), timeout=WAIT)
            try:
                assert next(watch).status == status, service
            finally:
                watch.cancel()


# --------------------------------------------------------------------------- metrics


def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    url = f"http://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=WAIT) as answer:
        text = answer.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_prometheus_metrics_count_what_was_served(served: ServerThread) -> None:
    assert served.running is not None and served.running.metrics_port
    port = served.running.metrics_port
    ok = ("onnxforge_requests_total", frozenset({("model", "digits-mlp"), ("status", "OK")}))
    bad = (
        "onnxforge_requests_total",
        frozenset({("model", "digits-mlp"), ("status", "INVALID_ARGUMENT")}),
    )
    batches = ("onnxforge_batch_rows_count", frozenset({("model", "digits-mlp")}))
    before = scrape(port)
    with grpc.insecure_channel(served.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for i in range(4):
            stub.ModelInfer(raw_request("digits-mlp", rows(1 + i, 300 + i)), timeout=WAIT)
        with pytest.raises(grpc.RpcError) as error:
            stub.ModelInfer(raw_request("digits-mlp", rows(2, 9)[:, :10].copy()), timeout=WAIT)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        index = stub.RepositoryIndex(pb.RepositoryIndexRequest(), timeout=WAIT)
    after = scrape(port)
    assert after[ok] - before.get(ok, 0.0) == 4
    assert after[bad] - before.get(bad, 0.0) == 1
    assert after[batches] > before.get(batches, 0.0) and after[batches] > 0
    buckets = [
        value
        for (name, labels), value in after.items()
        if name == "onnxforge_batch_rows_bucket" and ("model", "digits-mlp") in labels
    ]
    assert buckets and max(buckets) == after[batches]  # the +Inf bucket holds every run
    ready = {model.name for model in index.models if model.state == "READY"}
    assert after[("onnxforge_models_loaded", frozenset())] == len(ready) > 0


# ------------------------------------------------------------ what Triton does and we do not


def test_a_stream_error_answer_carries_the_request_id(served: ServerThread) -> None:
    """Triton repopulates ``infer_response.id`` in a ModelStreamInfer error answer "so that
    the client knows which request failed" (server/src/grpc/stream_infer_handler.cc); a
    client pairing answers with requests by id needs it."""
    requests = [
        raw_request("digits-mlp", rows(1, 1), id="first"),
        raw_request("nope", rows(1, 2), id="the-bad-one"),
        raw_request("digits-mlp", rows(1, 3), id="last"),
    ]
    with grpc.insecure_channel(served.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        answers = list(stub.ModelStreamInfer(iter(requests), timeout=WAIT))
    assert [bool(a.error_message) for a in answers] == [False, True, False]
    assert "model 'nope' not found" in answers[1].error_message
    assert [a.infer_response.id for a in answers] == ["first", "the-bad-one", "last"]
