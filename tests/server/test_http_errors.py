"""HTTP/REST when things go wrong: bad bodies, wrong tensors, unknown models, limits, tokens.

Each failure must come back with its status (``errors.HTTP_STATUS``, 413 for a body over
the limit) and the KServe v2 body ``{"error": "..."}`` saying what was expected; and the
server must answer the next good request right (held to the NumPy reference).
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from onnxforge.builder import load_spec, reference
from tests.server.http_helpers import (
    HEADER_LENGTH,
    Answer,
    binary_body,
    call,
    json_tensor,
    write_model,
)
from tests.server.processes import ServeProcess

MAX_BYTES = 65536
MAX_ROWS = 8
TOKEN = "user-token-for-http-tests"
ADMIN = "admin-token-for-http-tests"
INFER = "/v2/models/tiny/infer"


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("http-errors")
    write_model(root, "tiny")
    return root


@pytest.fixture(scope="module")
def server(repository: Path) -> Iterator[ServeProcess]:
    limits = ("--max-message-bytes", str(MAX_BYTES), "--max-rows", str(MAX_ROWS))
    with ServeProcess(repository, *limits, "--no-model-control", http=True) as process:
        yield process


def post(server: ServeProcess, body: bytes, headers: dict[str, str] | None = None) -> Answer:
    return call(server.http_url, "POST", INFER, body, headers)


def infer_json(server: ServeProcess, *tensors: dict[str, object]) -> Answer:
    return post(server, json.dumps({"inputs": list(tensors)}).encode())


def assert_serves(server: ServeProcess, repository: Path) -> None:
    """The next good request is answered, and right."""
    x = np.random.default_rng(7).normal(size=(2, 4)).astype(np.float32)
    answer = infer_json(server, json_tensor("x", x))
    assert answer.status == 200, answer.body[:500]
    (y,) = [tensor for tensor in answer.json()["outputs"] if tensor["name"] == "y"]
    want = reference.forward(load_spec(repository / "tiny" / "spec.yaml"), x)
    np.testing.assert_allclose(np.reshape(y["data"], y["shape"]), want, atol=1e-5)


def x_tensor(**changes: object) -> dict[str, object]:
    tensor: dict[str, object] = {
        "name": "x",
        "shape": [1, 4],
        "datatype": "FP32",
        "data": [0.5, 1.0, -1.0, 2.0],
    }
    tensor.update(changes)
    return tensor


# ------------------------------------------------------------------ bad bodies: 400

BAD_BODIES = {
    "not JSON": (b'{"inputs": [', "the body is not JSON"),
    "not an object": (b"[1, 2]", "expected a JSON object (an inference request), got a list"),
    "no inputs": (b"{}", "'inputs' must be a non-empty list of tensors"),
    "misspelt key": (b'{"input": []}', "unknown key 'input' (known: id, parameters, inputs"),
    "not UTF-8": (b'{"inputs": "\xff"}', "the body is not JSON"),
    "nested too deep": (b"[" * 30000 + b"]" * 30000, "the body is not JSON"),
}


@pytest.mark.parametrize("case", sorted(BAD_BODIES))
def test_a_bad_body_is_400_saying_what_was_expected(
    server: ServeProcess, repository: Path, case: str
) -> None:
    body, expected = BAD_BODIES[case]
    answer = post(server, body)
    assert answer.status == 400
    assert expected in answer.error
    assert_serves(server, repository)


def test_a_non_json_body_is_answered_with_an_example_of_a_request(server: ServeProcess) -> None:
    error = post(server, b"x=1").error
    assert '"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32"' in error


BAD_TENSORS = {
    "wrong shape": (
        x_tensor(shape=[1, 5], data=[0.0] * 5),
        "input 'x': shape [1, 5] does not match the model's [N, 4]",
    ),
    "wrong datatype": (
        x_tensor(datatype="INT32", data=[1, 2, 3, 4]),
        "input 'x': datatype INT32 does not match the model's FP32",
    ),
    "unknown datatype": (x_tensor(datatype="FLOAT"), "'datatype' must be one of BOOL, UINT8"),
    "too few values": (
        x_tensor(data=[1.0, 2.0, 3.0]),
        "'data' holds 3 values, but shape [1, 4] needs 4",
    ),
    "a string for FP32": (
        x_tensor(data=[1.0, "2", 3.0, 4.0]),
        "FP32 takes numbers; 'data' value 1 is \"2\"",
    ),
    "a boolean for FP32": (
        x_tensor(data=[1.0, True, 3.0, 4.0]),
        "FP32 takes numbers; 'data' value 1 is true",
    ),
    "negative dimension": (x_tensor(shape=[-1, 4]), "negative dimension -1"),
    "no data": ({"name": "x", "shape": [1, 4], "datatype": "FP32"}, "needs 'data'"),
    "unknown input": (x_tensor(name="z"), "input 'z': model 'tiny' has no such input"),
    "NaN": (x_tensor(data=[1.0, float("nan"), 0.0, 0.0]), "NaN or Inf"),
}


@pytest.mark.parametrize("case", sorted(BAD_TENSORS))
def test_a_wrong_tensor_is_400_naming_the_input(
    server: ServeProcess, repository: Path, case: str
) -> None:
    tensor, expected = BAD_TENSORS[case]
    answer = infer_json(server, tensor)
    assert answer.status == 400
    assert expected in answer.error
    assert_serves(server, repository)


def test_binary_data_that_disagrees_with_its_sizes_is_400(
    server: ServeProcess, repository: Path
) -> None:
    x = np.zeros((1, 4), dtype=np.float32)
    body, headers = binary_body({"x": x})
    short = post(server, body[:-4], headers)
    assert short.status == 400
    assert "binary_data_size is 16 bytes, but only 12 bytes" in short.error
    extra = post(server, body + b"\0\0\0\0", headers)
    assert extra.status == 400
    assert "the body holds 20 bytes after the JSON" in extra.error
    bad_header = post(server, body, {HEADER_LENGTH: "lots"})
    assert bad_header.status == 400
    assert f"header {HEADER_LENGTH} must be the byte length of the JSON part" in bad_header.error
    assert_serves(server, repository)


def test_an_unsupported_parameter_is_refused_not_ignored(server: ServeProcess) -> None:
    assert server.http_port is not None
    with triton.InferenceServerClient(f"127.0.0.1:{server.http_port}") as client:
        tensor = triton.InferInput("x", [1, 4], "FP32")
        tensor.set_data_from_numpy(np.zeros((1, 4), dtype=np.float32))
        with pytest.raises(InferenceServerException) as error:
            client.infer(
                "tiny", [tensor], outputs=[triton.InferRequestedOutput("y", class_count=1)]
            )
    assert error.value.status() == "400"
    assert "classification outputs (class_count) are not supported" in error.value.message()


# ------------------------------------------------------------------ not found: 404, 405


def test_an_unknown_model_or_version_is_404(server: ServeProcess, repository: Path) -> None:
    unknown = call(server.http_url, "POST", "/v2/models/nothere/infer", b"{}")
    assert unknown.status == 404
    assert unknown.error == "model 'nothere' not found (available models: tiny)"
    version = call(server.http_url, "GET", "/v2/models/tiny/versions/7")
    assert version.status == 404
    assert "model 'tiny' version '7' not found" in version.error
    assert call(server.http_url, "GET", "/v2/models/nothere/config").status == 404
    assert call(server.http_url, "GET", "/v2/models/nothere/stats").status == 404
    assert_serves(server, repository)


def test_an_unknown_path_is_404_and_a_wrong_method_405_both_in_json(
    server: ServeProcess,
) -> None:
    path = call(server.http_url, "GET", "/v2/nothing")
    assert (path.status, path.error) == (404, "no such endpoint: GET /v2/nothing")
    method = call(server.http_url, "GET", INFER)
    assert (method.status, method.error) == (405, f"{INFER} does not take GET")
    assert "POST" in method.headers["allow"]


# ------------------------------------------------------------------ limits


def test_a_body_over_max_message_bytes_is_413_and_the_server_goes_on(
    server: ServeProcess, repository: Path
) -> None:
    values = [0.25] * (MAX_BYTES // 4)
    answer = infer_json(server, x_tensor(shape=[len(values) // 4, 4], data=values))
    assert answer.status == 413
    assert f"this server takes at most {MAX_BYTES} bytes (--max-message-bytes)" in answer.error
    assert_serves(server, repository)


def test_a_body_announced_over_the_limit_is_413_before_it_is_sent(
    server: ServeProcess, repository: Path
) -> None:
    assert server.http_port is not None
    connection = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=60)
    try:
        connection.putrequest("POST", INFER)
        connection.putheader("Content-Length", str(10 * MAX_BYTES))
        connection.putheader("Expect", "100-continue")  # as curl sends for large bodies
        connection.endheaders()  # and no body: the answer must come without it
        response = connection.getresponse()
        assert response.status == 413
        assert f"holds {10 * MAX_BYTES} bytes" in json.loads(response.read())["error"]
    finally:
        connection.close()
    assert_serves(server, repository)


def test_more_rows_than_max_rows_is_429(server: ServeProcess, repository: Path) -> None:
    rows = MAX_ROWS + 1
    answer = infer_json(server, x_tensor(shape=[rows, 4], data=[0.0] * (rows * 4)))
    assert answer.status == 429
    assert f"at most {MAX_ROWS} rows, this one holds {rows}" in answer.error
    assert_serves(server, repository)


def test_model_control_switched_off_is_403(server: ServeProcess, repository: Path) -> None:
    for action in ("load", "unload"):
        answer = call(server.http_url, "POST", f"/v2/repository/models/tiny/{action}", b"")
        assert answer.status == 403
        assert "model control is disabled on this server (--no-model-control)" in answer.error
    assert_serves(server, repository)


# ------------------------------------------------------------------ tokens


@pytest.fixture(scope="module")
def guarded(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    folder = tmp_path_factory.mktemp("tokens")
    (folder / "tokens").write_text(f"# users\n{TOKEN}\n")
    (folder / "admins").write_text(f"{ADMIN}\n")
    files = (
        "--auth-token-file",
        str(folder / "tokens"),
        "--admin-token-file",
        str(folder / "admins"),
    )
    with ServeProcess(repository, *files, http=True) as process:
        yield process


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_health_needs_no_token(guarded: ServeProcess) -> None:
    assert call(guarded.http_url, "GET", "/v2/health/live").status == 200
    assert call(guarded.http_url, "GET", "/v2/health/ready").status == 200


def test_calls_without_the_right_token_are_401(guarded: ServeProcess) -> None:
    body = json.dumps({"inputs": [x_tensor()]}).encode()
    missing = call(guarded.http_url, "POST", INFER, body)
    assert missing.status == 401
    assert "no token: send 'authorization: Bearer <token>'" in missing.error
    wrong = call(guarded.http_url, "POST", INFER, body, bearer("guess"))
    assert wrong.status == 401
    assert "a wrong token" in wrong.error
    assert call(guarded.http_url, "GET", "/v2/models/tiny").status == 401
    assert call(guarded.http_url, "GET", "/v2", headers=bearer(TOKEN)).status == 200
    assert call(guarded.http_url, "POST", INFER, body, bearer(TOKEN)).status == 200


def test_model_control_needs_an_admin_token(guarded: ServeProcess) -> None:
    load = "/v2/repository/models/tiny/load"
    user = call(guarded.http_url, "POST", load, b"", bearer(TOKEN))
    assert user.status == 401
    assert "model control needs an admin token" in user.error
    assert call(guarded.http_url, "POST", load, b"", bearer(ADMIN)).status == 200
    ready = call(guarded.http_url, "GET", "/v2/models/tiny/ready", headers=bearer(TOKEN))
    assert ready.status == 200


def test_tritonclient_sends_tokens_as_headers(guarded: ServeProcess) -> None:
    assert guarded.http_port is not None
    with triton.InferenceServerClient(f"127.0.0.1:{guarded.http_port}") as client:
        with pytest.raises(InferenceServerException) as error:
            client.get_model_metadata("tiny")
        assert error.value.status() == "401"
        assert client.get_model_metadata("tiny", headers=bearer(TOKEN))["name"] == "tiny"


# ------------------------------------------------------------------ a model that fails


def test_a_refused_model_makes_the_server_not_ready_until_unloaded(tmp_path: Path) -> None:
    write_model(tmp_path, "tiny")
    (tmp_path / "broken" / "1").mkdir(parents=True)
    (tmp_path / "broken" / "1" / "model.onnx").write_bytes(b"not an onnx file")
    with ServeProcess(tmp_path, http=True) as process:
        ready = call(process.http_url, "GET", "/v2/health/ready")
        assert (ready.status, ready.json()) == (400, {"ready": False})
        assert call(process.http_url, "GET", "/v2/models/broken/ready").status == 400
        assert call(process.http_url, "GET", "/v2/models/tiny/ready").status == 200
        index = call(process.http_url, "POST", "/v2/repository/index").json()
        (broken,) = [entry for entry in index if entry["name"] == "broken"]
        assert broken["state"] == "UNAVAILABLE" and broken["reason"]
        unload = call(process.http_url, "POST", "/v2/repository/models/broken/unload", b"{}")
        assert unload.status == 200
        ready = call(process.http_url, "GET", "/v2/health/ready")
        assert (ready.status, ready.json()) == (200, {"ready": True})
        assert_serves(process, tmp_path)
