"""The client against a real server: answers, typed errors, repository control, statistics.

One server for the module, on a repository of one small spec with an int8 variant, built
twice with different seeds: versions 1 and 2 on disk, version 2 served (latest 1). Tests
that unload or reload a model put it back.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import yaml

from onnxforge.builder import load_spec, reference
from onnxforge.client import (
    AsyncInferenceClient,
    DeadlineExceeded,
    InferenceClient,
    InferenceServerError,
    InvalidInput,
    ModelNotFound,
    ResourceExhausted,
    Unavailable,
)
from onnxforge.protocol.generated import inference_pb2 as pb
from onnxforge.server.app import Settings
from tests.helpers import mlp_document
from tests.server.conftest import ServerThread

VARIANT = "tiny-int8-dynamic"
X = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)


@pytest.fixture(scope="module")
def specs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The spec of each version, by version; the repository's spec.yaml is version 2's."""
    folder = tmp_path_factory.mktemp("repository") / "tiny"
    folder.mkdir()
    found = {}
    for version, seed in (("1", 0), ("2", 1)):
        document = mlp_document(variants=["fp32", "int8-dynamic"], seed=seed)
        found[version] = folder.parent / f"spec-{version}.yaml"
        found[version].write_text(yaml.safe_dump(document))
        (folder / "spec.yaml").write_text(yaml.safe_dump(document))
        build = [sys.executable, "-m", "onnxforge", "-q", "build", str(folder / "spec.yaml")]
        subprocess.run([*build, "-r", str(folder.parent)], check=True, timeout=300)
    assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == ["1", "2"]
    return found


@pytest.fixture(scope="module")
def spec_path(specs: dict[str, Path]) -> Path:
    return specs["2"]


@pytest.fixture(scope="module")
def server(specs: dict[str, Path]) -> Iterator[ServerThread]:
    settings = Settings(repository=specs["2"].parent, port=0, metrics_port=None, threads=1)
    running = ServerThread(settings).start()
    yield running
    running.stop()


@pytest.fixture
def client(server: ServerThread) -> Iterator[InferenceClient]:
    with InferenceClient(server.address) as opened:
        yield opened


def assert_no_grpc_inside(error: InferenceServerError) -> None:
    assert not isinstance(error, grpc.RpcError)
    assert error.__cause__ is None and error.__context__ is None


# ------------------------------------------------------------------------ answers


def test_infer_answers_as_the_reference(client: InferenceClient, spec_path: Path) -> None:
    got = client.infer("tiny", {"x": X})
    assert list(got) == ["y"] and got["y"].dtype == np.dtype("<f4")
    np.testing.assert_allclose(got["y"], reference.forward(load_spec(spec_path), X), atol=1e-6)
    assert client.live() and client.ready() and client.ready("tiny")
    assert client.server_metadata().name == "onnxforge"


def test_model_info_carries_variant_accuracy_and_spec_hash(
    client: InferenceClient, spec_path: Path
) -> None:
    sha256 = load_spec(spec_path).sha256
    plain = client.model_info("tiny")
    assert (plain.name, plain.versions, plain.variant) == ("tiny", ["2"], "fp32")
    assert plain.spec_sha256 == sha256
    assert [(t.name, t.datatype, list(t.shape)) for t in plain.metadata.inputs] == [
        ("x", "FP32", [-1, 4])
    ]
    variant = client.model_info(VARIANT, "2")
    assert (variant.variant, variant.spec_sha256) == ("int8-dynamic", sha256)
    assert variant.accuracy is not None and "y" in variant.accuracy["outputs"]
    _, headers = client.metadata_with_headers(VARIANT)
    assert (
        headers["x-onnxforge-variant"] == "int8-dynamic" == variant.headers["x-onnxforge-variant"]
    )


# ----------------------------------------------------------------- typed errors


def test_an_unknown_model_is_model_not_found(client: InferenceClient) -> None:
    with pytest.raises(ModelNotFound) as error:
        client.infer("no-such-model", {"x": X})
    assert error.value.code == "NOT_FOUND"
    assert "model 'no-such-model' not found" in error.value.message
    assert_no_grpc_inside(error.value)
    with pytest.raises(ModelNotFound, match="version '7'"):
        client.metadata("tiny", "7")


def test_a_wrong_input_is_invalid_input_naming_it(client: InferenceClient) -> None:
    with pytest.raises(InvalidInput) as error:
        client.infer("tiny", {"x": X[:, :3].copy()})
    assert error.value.code == "INVALID_ARGUMENT"
    assert "input 'x': shape [5, 3] does not match the model's [N, 4]" in error.value.message
    assert_no_grpc_inside(error.value)
    with pytest.raises(InvalidInput, match="input 'x': datatype FP64 does not match"):
        client.infer("tiny", {"x": X.astype(np.float64)})


def test_an_array_the_protocol_cannot_carry_is_refused_before_sending(
    client: InferenceClient,
) -> None:
    with pytest.raises(ValueError, match="input 'x': NumPy dtype complex64 has no protocol"):
        client.infer("tiny", {"x": X.astype(np.complex64)})


def test_an_unloaded_model_is_unavailable_until_loaded(client: InferenceClient) -> None:
    client.unload(VARIANT)
    try:
        assert not client.ready(VARIANT)
        with pytest.raises(Unavailable) as error:
            client.infer(VARIANT, {"x": X})
        assert error.value.code == "UNAVAILABLE" and VARIANT in error.value.message
        assert_no_grpc_inside(error.value)
        index = {entry.name: entry for entry in client.repository_index()}
        assert index[VARIANT].state == "UNAVAILABLE" and index["tiny"].state == "READY"
        assert [entry.name for entry in client.repository_index(ready=True)] == ["tiny"]
    finally:
        client.load(VARIANT)
    assert client.ready(VARIANT)
    assert client.infer(VARIANT, {"x": X})["y"].shape == (5, 2)


def test_a_message_over_the_clients_limit_is_resource_exhausted(server: ServerThread) -> None:
    with (
        InferenceClient(server.address, max_message_bytes=256) as small,
        pytest.raises(ResourceExhausted) as error,
    ):
        small.infer("tiny", {"x": np.zeros((64, 4), np.float32)})
    assert error.value.code == "RESOURCE_EXHAUSTED"


def test_a_passed_deadline_is_deadline_exceeded(client: InferenceClient) -> None:
    # A 1 us deadline has passed before any answer can come back -- except when gRPC's timer,
    # coarser than that, fires after a fast local answer: so a few tries, not one.
    for _ in range(50):
        try:
            client.infer("tiny", {"x": X}, timeout=1e-6)
        except DeadlineExceeded as error:
            assert error.code == "DEADLINE_EXCEEDED"
            return
    raise AssertionError("50 calls with a 1 us deadline all answered")


# ------------------------------------------------------ repository and statistics


def _stats(client: InferenceClient, model: str) -> pb.ModelStatistics:
    (found,) = client.statistics(model)
    assert (found.name, found.version) == (model, "2")
    return found


def test_statistics_count_what_was_answered(client: InferenceClient) -> None:
    before = _stats(client, "tiny")
    for rows in (2, 3, 4):
        client.infer("tiny", {"x": X[:rows]})
    after = _stats(client, "tiny")
    assert after.inference_count - before.inference_count == 9  # rows
    assert after.inference_stats.success.count - before.inference_stats.success.count == 3
    assert after.execution_count - before.execution_count == 3  # one after another: no merging
    assert after.inference_stats.success.ns > before.inference_stats.success.ns
    assert after.last_inference >= before.last_inference > 0
    everything = {(s.name, s.version) for s in client.statistics()}
    assert {("tiny", "2"), (VARIANT, "2")} <= everything
    with pytest.raises(ModelNotFound):
        client.statistics("no-such-model")


def test_a_load_applies_its_config_and_refuses_a_bad_one(
    client: InferenceClient, specs: dict[str, Path]
) -> None:
    want = {v: reference.forward(load_spec(path), X) for v, path in specs.items()}
    client.load("tiny", {"version_policy": {"all": {}}})
    try:
        assert client.model_info("tiny").versions == ["1", "2"]
        for version in ("1", "2"):
            got = client.infer("tiny", {"x": X}, version=version)["y"]
            np.testing.assert_allclose(got, want[version], atol=1e-6)
            sha256 = client.model_info("tiny", version).spec_sha256
            assert sha256 == load_spec(specs[version]).sha256
        with pytest.raises(InvalidInput, match="config field 'input'") as error:
            client.load("tiny", '{"input": []}')
        assert error.value.code == "INVALID_ARGUMENT"
        with pytest.raises(ModelNotFound):
            client.load("no-such-model")
    finally:
        client.load("tiny")  # the folder's own config again: latest 1
    assert client.model_info("tiny").versions == ["2"]
    with pytest.raises(ModelNotFound, match="available versions: 2"):
        client.infer("tiny", {"x": X}, version="1")
    np.testing.assert_allclose(client.infer("tiny", {"x": X})["y"], want["2"], atol=1e-6)


# ------------------------------------------------------------------------ asyncio


def test_the_async_client_has_the_same_answers_and_errors(
    server: ServerThread, spec_path: Path
) -> None:
    want = reference.forward(load_spec(spec_path), X)

    async def session() -> None:
        async with AsyncInferenceClient(server.address) as client:
            answers = await asyncio.gather(*(client.infer("tiny", {"x": X}) for _ in range(4)))
            for answer in answers:
                np.testing.assert_allclose(answer["y"], want, atol=1e-6)
            assert await client.live() and await client.ready("tiny")
            info = await client.model_info(VARIANT)
            assert info.variant == "int8-dynamic" and info.accuracy is not None
            _, headers = await client.metadata_with_headers("tiny")
            assert headers["x-onnxforge-variant"] == "fp32"
            assert {m.name for m in await client.repository_index()} == {"tiny", VARIANT}
            with pytest.raises(ModelNotFound) as missing:
                await client.infer("no-such-model", {"x": X})
            assert_no_grpc_inside(missing.value)
            with pytest.raises(InvalidInput, match="input 'x'"):
                await client.infer("tiny", {"x": X[:, :3].copy()})
            await client.unload(VARIANT)
            try:
                with pytest.raises(Unavailable):
                    await client.infer(VARIANT, {"x": X})
            finally:
                await client.load(VARIANT)
            before = (await client.statistics(VARIANT))[0].inference_count
            await client.infer(VARIANT, {"x": X})
            assert (await client.statistics(VARIANT))[0].inference_count == before + 5

    asyncio.run(session())
