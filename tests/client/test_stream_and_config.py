"""The client's streaming, model configuration, addresses and advice, against a real server.

One server for the module, on a repository of one small spec (built by the server at
start), guarded by a token: every client here passes it, but the one that shows what an
error says when it is missing.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml

from onnxforge.builder import load_spec, reference
from onnxforge.client import (
    AsyncInferenceClient,
    InferenceClient,
    InferenceServerError,
    ModelNotFound,
    StreamResult,
    Unauthenticated,
    Unavailable,
)
from onnxforge.client.connection import address
from onnxforge.server.app import Settings
from onnxforge.server.security import Security
from tests.helpers import mlp_document
from tests.server.conftest import ServerThread

TOKEN = "stream-and-config-token"
ROWS = [np.random.default_rng(seed).normal(size=(seed, 4)).astype(np.float32) for seed in (1, 3, 2)]


@pytest.fixture(scope="module")
def spec_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("repository") / "tiny"
    folder.mkdir()
    serving = {"max_batch_size": 16, "max_queue_delay_us": 300, "instances": 1}
    (folder / "spec.yaml").write_text(yaml.safe_dump(mlp_document(seed=3, serving=serving)))
    return folder / "spec.yaml"


@pytest.fixture(scope="module")
def server(spec_path: Path) -> Iterator[ServerThread]:
    settings = Settings(
        repository=spec_path.parent.parent,
        port=0,
        metrics_port=None,
        threads=1,
        security=Security(tokens=(TOKEN,)),
    )
    running = ServerThread(settings).start()
    yield running
    running.stop()


@pytest.fixture
def client(server: ServerThread) -> Iterator[InferenceClient]:
    with InferenceClient(server.address, token=TOKEN) as opened:
        yield opened


def expected(spec_path: Path) -> list[np.ndarray]:
    spec = load_spec(spec_path)
    return [reference.forward(spec, rows) for rows in ROWS]


# ------------------------------------------------------------------------ streaming


def test_a_stream_answers_each_request_in_order_as_the_reference(
    client: InferenceClient, spec_path: Path
) -> None:
    results = list(client.stream("tiny", ({"x": rows} for rows in ROWS)))
    assert [result.request_id for result in results] == ["0", "1", "2"]
    for result, want in zip(results, expected(spec_path), strict=True):
        assert result.error is None
        np.testing.assert_allclose(result.result()["y"], want, atol=1e-6)


def test_a_failed_request_does_not_end_the_stream(client: InferenceClient, spec_path: Path) -> None:
    requests = [{"x": ROWS[0]}, {"x": ROWS[1][:, :3].copy()}, {"x": ROWS[2]}]
    first, failed, last = client.stream("tiny", requests)
    want = expected(spec_path)
    np.testing.assert_allclose(first.result()["y"], want[0], atol=1e-6)
    np.testing.assert_allclose(last.result()["y"], want[2], atol=1e-6)
    assert failed.request_id == "1" and failed.outputs is None and failed.error is not None
    # The stream's answer carries the message but no status.
    assert failed.error.code == "UNKNOWN"
    assert "input 'x': shape [3, 3] does not match the model's [N, 4]" in failed.error.message
    with pytest.raises(InferenceServerError, match="does not match"):
        failed.result()


def test_a_stream_to_an_unknown_model_answers_each_request_with_its_error(
    client: InferenceClient,
) -> None:
    results = list(client.stream("no-such-model", [{"x": ROWS[0]}, {"x": ROWS[1]}]))
    assert [r.request_id for r in results] == ["0", "1"]
    assert all(
        r.error is not None and "'no-such-model' not found" in r.error.message for r in results
    )


def test_an_input_that_cannot_be_sent_is_raised_after_the_answers_before_it(
    client: InferenceClient, spec_path: Path
) -> None:
    received: list[StreamResult] = []
    with pytest.raises(ValueError, match="input 'x': NumPy dtype complex64"):
        for result in client.stream("tiny", [{"x": ROWS[0]}, {"x": ROWS[1].astype(np.complex64)}]):
            received.append(result)
    assert [r.request_id for r in received] == ["0"]
    np.testing.assert_allclose(received[0].result()["y"], expected(spec_path)[0], atol=1e-6)


def test_the_async_stream_takes_async_and_plain_iterables(
    server: ServerThread, spec_path: Path
) -> None:
    async def produce() -> AsyncIterator[dict[str, np.ndarray]]:
        for rows in ROWS:
            await asyncio.sleep(0)  # a producer that awaits between requests
            yield {"x": rows}

    async def session() -> tuple[list[StreamResult], list[StreamResult]]:
        async with AsyncInferenceClient(server.address, token=TOKEN) as client:
            from_async = [result async for result in client.stream("tiny", produce())]
            plain = [{"x": rows} for rows in ROWS]
            from_list = [result async for result in client.stream("tiny", plain, ["y"])]
            return from_async, from_list

    for results in asyncio.run(session()):
        assert [r.request_id for r in results] == ["0", "1", "2"]
        for result, want in zip(results, expected(spec_path), strict=True):
            np.testing.assert_allclose(result.result()["y"], want, atol=1e-6)


# ------------------------------------------------------------------- model config


def test_model_config_is_what_the_spec_asked_for(client: InferenceClient) -> None:
    config = client.model_config("tiny")
    assert (config["name"], config["platform"], config["backend"]) == (
        "tiny",
        "onnxruntime_onnx",
        "onnxruntime",
    )
    assert config["max_batch_size"] == 16
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 300
    assert config["version_policy"] == {"latest": {"num_versions": 1}}
    assert [(t["name"], t["data_type"], t["dims"]) for t in config["input"]] == [
        ("x", "TYPE_FP32", [4])
    ]
    assert [(t["name"], t["data_type"], t["dims"]) for t in config["output"]] == [
        ("y", "TYPE_FP32", [2])
    ]
    assert [(g["kind"], g["count"]) for g in config["instance_group"]] == [("KIND_CPU", 1)]
    assert config["parameters"] == {}
    with pytest.raises(ModelNotFound, match="'no-such-model' not found"):
        client.model_config("no-such-model")


def test_the_async_model_config_is_the_same(client: InferenceClient, server: ServerThread) -> None:
    async def session() -> dict[str, object]:
        async with AsyncInferenceClient(server.address, token=TOKEN) as aio:
            return await aio.model_config("tiny", "1")

    assert asyncio.run(session()) == client.model_config("tiny")


# ---------------------------------------------------------------- address, advice


@pytest.mark.parametrize(
    ("url", "target"),
    [
        ("localhost", "localhost:8001"),
        ("10.1.2.3", "10.1.2.3:8001"),
        ("localhost:9000", "localhost:9000"),
        ("::1", "[::1]:8001"),
        ("[::1]", "[::1]:8001"),
        ("[::1]:9000", "[::1]:9000"),
        ("dns:///example.org:443", "dns:///example.org:443"),
        ("unix:/tmp/socket", "unix:/tmp/socket"),
    ],
)
def test_an_address_without_a_port_means_8001(url: str, target: str) -> None:
    assert address(url) == target


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_no_server_at_the_address_asks_whether_one_is_running() -> None:
    port = _closed_port()
    with InferenceClient(f"127.0.0.1:{port}") as client, pytest.raises(Unavailable) as caught:
        client.live()
    assert caught.value.code == "UNAVAILABLE"
    assert f"is `onnxforge serve` running on 127.0.0.1:{port}" in caught.value.message


def test_a_missing_token_says_to_pass_one(server: ServerThread) -> None:
    with InferenceClient(server.address) as client, pytest.raises(Unauthenticated) as caught:
        client.infer("tiny", {"x": ROWS[0]})
    assert caught.value.code == "UNAUTHENTICATED"
    assert "pass token=" in caught.value.message
