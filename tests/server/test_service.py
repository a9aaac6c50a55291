"""The server end to end over real gRPC: metadata, inference, errors, model control."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import numpy as np
import pytest

from onnxforge.builder import load_spec, reference
from onnxforge.builder.accuracy import HELD_OUT_SEED, figures, shortfalls
from onnxforge.builder.samples import sample_inputs
from onnxforge.builder.schema import Budget
from onnxforge.protocol.generated import inference_pb2 as pb
from tests.conftest import MODELS
from tests.server.conftest import ServerThread
from tests.server.requests import output, raw_request

SPEC = load_spec(MODELS / "digits-mlp" / "spec.yaml")
VARIANTS = ("digits-mlp-fp16", "digits-mlp-int8-dynamic", "digits-mlp-int8-static")


def rows(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(size=(n, 64)).astype(np.float32)


def test_server_builds_missing_models_and_is_ready(stub: Any) -> None:
    assert stub.ServerLive(pb.ServerLiveRequest()).live
    assert stub.ServerReady(pb.ServerReadyRequest()).ready
    for name in ("digits-mlp", *VARIANTS):
        assert stub.ModelReady(pb.ModelReadyRequest(name=name)).ready, name
    meta = stub.ServerMetadata(pb.ServerMetadataRequest())
    assert meta.name == "onnxforge" and "model_repository" in meta.extensions


def test_model_metadata(stub: Any) -> None:
    meta = stub.ModelMetadata(pb.ModelMetadataRequest(name="digits-mlp"))
    assert meta.platform == "onnxruntime_onnx" and list(meta.versions) == ["1"]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [("x", "FP32", [-1, 64])]
    assert [(t.name, list(t.shape)) for t in meta.outputs] == [
        ("probabilities", [-1, 10]),
        ("hidden", [-1, 32]),
    ]
    _, call = stub.ModelMetadata.with_call(pb.ModelMetadataRequest(name="digits-mlp-int8-static"))
    headers = dict(call.initial_metadata())
    assert headers["x-onnxforge-variant"] == "int8-static"
    accuracy = json.loads(headers["x-onnxforge-accuracy"])
    assert accuracy["outputs"]["probabilities"]["argmax_agreement"] >= 0.95


def test_infer_raw_matches_the_reference(stub: Any) -> None:
    x = rows(7, 1)
    response = stub.ModelInfer(raw_request("digits-mlp", x, id="req-42"))
    assert response.id == "req-42" and response.model_version == "1"
    assert len(response.raw_output_contents) == 2  # raw in, raw out
    want = reference.run(SPEC, x)
    np.testing.assert_allclose(output(response, "probabilities"), want["probabilities"], atol=1e-6)
    np.testing.assert_allclose(output(response, "hidden"), want["hidden"], atol=1e-5)


def test_infer_typed_with_selected_outputs(stub: Any) -> None:
    x = rows(3, 2)
    request = pb.ModelInferRequest(model_name="digits-mlp", model_version="1")
    tensor = request.inputs.add(name="x", datatype="FP32", shape=[3, 64])
    tensor.contents.fp32_contents.extend(x.ravel().tolist())
    request.outputs.add(name="hidden")
    response = stub.ModelInfer(request)
    assert [t.name for t in response.outputs] == ["hidden"]
    assert not response.raw_output_contents  # typed in, typed out
    np.testing.assert_allclose(
        output(response, "hidden"), reference.run(SPEC, x)["hidden"], atol=1e-5
    )


def _recorded_accuracy(stub: Any, model: str) -> dict[str, Any]:
    """What the build measured for ``model`` and recorded in its file, as the server sends it."""
    _, call = stub.ModelMetadata.with_call(pb.ModelMetadataRequest(name=model))
    record: dict[str, Any] = json.loads(dict(call.initial_metadata())["x-onnxforge-accuracy"])
    return record


@pytest.mark.parametrize("model", VARIANTS)
def test_variants_answer_with_their_recorded_error_within_budget(stub: Any, model: str) -> None:
    """Served on the rows the build measured on, each variant's answers are exactly as far
    from the NumPy reference as its recorded figures say, and inside its recorded budget."""
    record = _recorded_accuracy(stub, model)
    rows = record["rows"]
    # Without the user's data the build measures on synthetic rows: these, drawn again.
    assert rows["synthetic"] and f"seed {HELD_OUT_SEED} " in rows["source"], rows
    x = sample_inputs(SPEC, rows["count"], seed=HELD_OUT_SEED)
    response = stub.ModelInfer(raw_request(model, x))
    want = reference.run(SPEC, x)
    served = {
        name: figures(output(response, name), want[name], SPEC.is_classifier(name))
        for name in record["outputs"]
    }
    assert set(served) == set(want)
    # The same file on the same rows: the build's figures again (to ONNX Runtime's rounding,
    # which may differ between sessions; an argmax may flip on a near tie).
    for name, recorded in record["outputs"].items():
        got = served[name]
        assert got.max_abs == pytest.approx(recorded["max_abs"], rel=1e-4, abs=1e-6), name
        assert got.mean_abs == pytest.approx(recorded["mean_abs"], rel=1e-4, abs=1e-6), name
        assert got.cosine == pytest.approx(recorded["cosine"], abs=1e-6), name
        if recorded["argmax_agreement"] is None:
            assert got.argmax_agreement is None, name
        else:
            one_row = 1 / rows["count"]
            assert got.argmax_agreement == pytest.approx(recorded["argmax_agreement"], abs=one_row)
    checked = served[record["checked_output"]]
    assert shortfalls(checked, Budget(**record["budget"])) == []


def _code(call: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as error:
        call()
    return error.value.code(), error.value.details()


def test_bad_requests_get_the_right_status_and_a_clear_message(stub: Any) -> None:
    x = rows(2, 4)
    cases = {
        "unknown model": (raw_request("nope", x), grpc.StatusCode.NOT_FOUND, "model 'nope'"),
        "unknown version": (
            raw_request("digits-mlp", x, model_version="7"),
            grpc.StatusCode.NOT_FOUND,
            "version '7'",
        ),
        "wrong shape": (
            raw_request("digits-mlp", rows(2, 4)[:, :10].copy()),
            grpc.StatusCode.INVALID_ARGUMENT,
            "does not match the model's [N, 64]",
        ),
        "nan": (
            raw_request("digits-mlp", np.full((1, 64), np.nan, np.float32)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "NaN or Inf",
        ),
    }
    for what, (request, code, fragment) in cases.items():
        got_code, details = _code(lambda r=request: stub.ModelInfer(r))
        assert got_code == code, what
        assert fragment in details, (what, details)
    wrong_type = raw_request("digits-mlp", x)
    wrong_type.inputs[0].datatype = "FP64"
    code, details = _code(lambda: stub.ModelInfer(wrong_type))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "x" in details
    short = raw_request("digits-mlp", x)
    short.raw_input_contents[0] = short.raw_input_contents[0][:-4]
    code, details = _code(lambda: stub.ModelInfer(short))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "512" in details
    unknown_output = raw_request("digits-mlp", x)
    unknown_output.outputs.add(name="logits")
    code, details = _code(lambda: stub.ModelInfer(unknown_output))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "no output 'logits'" in details
    # And the server keeps serving.
    good = stub.ModelInfer(raw_request("digits-mlp", x))
    np.testing.assert_allclose(output(good, "probabilities"), reference.forward(SPEC, x), atol=1e-6)


def test_many_concurrent_clients_each_get_their_own_answer(served: ServerThread) -> None:
    def client(seed: int) -> None:
        with grpc.insecure_channel(served.address) as channel:
            from onnxforge.protocol.generated import inference_pb2_grpc as pb_grpc

            own = pb_grpc.GRPCInferenceServiceStub(channel)
            for round_ in range(5):
                n = 1 + (seed + round_) % 4
                x = rows(n, 1000 * seed + round_)
                request = raw_request("digits-mlp", x)
                if seed % 2:
                    request.outputs.add(name="hidden")
                response = own.ModelInfer(request)
                name = "hidden" if seed % 2 else "probabilities"
                assert [t.name for t in response.outputs] == (
                    [name] if seed % 2 else ["probabilities", "hidden"]
                )
                np.testing.assert_allclose(
                    output(response, name), reference.run(SPEC, x)[name], atol=1e-5
                )

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(client, range(32)))


def test_stream_infer_answers_each_request(stub: Any) -> None:
    inputs = [rows(2, 10 + i) for i in range(3)]
    requests = [raw_request("digits-mlp", x, id=str(i)) for i, x in enumerate(inputs)]
    requests.insert(1, raw_request("nope", inputs[0]))
    answers = list(stub.ModelStreamInfer(iter(requests)))
    assert answers[1].error_message.startswith("model 'nope' not found")
    good = [a.infer_response for a in answers if not a.error_message]
    assert [r.id for r in good] == ["0", "1", "2"]
    for response, x in zip(good, inputs, strict=True):
        np.testing.assert_allclose(
            output(response, "probabilities"), reference.forward(SPEC, x), atol=1e-6
        )


def test_statistics_count_what_was_served(stub: Any) -> None:
    before = stub.ModelStatistics(pb.ModelStatisticsRequest(name="digits-mlp-fp16"))
    count = before.model_stats[0].inference_stats.success.count if before.model_stats else 0
    for i in range(3):
        stub.ModelInfer(raw_request("digits-mlp-fp16", rows(2, 50 + i)))
    after = stub.ModelStatistics(pb.ModelStatisticsRequest(name="digits-mlp-fp16"))
    [stats] = after.model_stats
    assert stats.inference_stats.success.count == count + 3
    assert stats.inference_count >= 6 and stats.inference_stats.success.ns > 0
    assert sum(b.compute_infer.count for b in stats.batch_stats) == stats.execution_count


def test_unload_and_load_at_run_time(stub: Any) -> None:
    stub.RepositoryModelUnload(
        pb.RepositoryModelUnloadRequest(model_name="digits-mlp-int8-dynamic")
    )
    assert not stub.ModelReady(pb.ModelReadyRequest(name="digits-mlp-int8-dynamic")).ready
    index = {m.name: m for m in stub.RepositoryIndex(pb.RepositoryIndexRequest()).models}
    assert index["digits-mlp-int8-dynamic"].state == "UNAVAILABLE"
    assert index["digits-mlp-int8-dynamic"].reason == "unloaded"
    code, _ = _code(lambda: stub.ModelInfer(raw_request("digits-mlp-int8-dynamic", rows(1, 0))))
    assert code == grpc.StatusCode.UNAVAILABLE
    stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="digits-mlp-int8-dynamic"))
    assert stub.ModelReady(pb.ModelReadyRequest(name="digits-mlp-int8-dynamic")).ready
    code, details = _code(
        lambda: stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="../etc"))
    )
    assert code == grpc.StatusCode.NOT_FOUND and "model '../etc' not found" in details
