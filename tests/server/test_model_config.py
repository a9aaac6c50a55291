"""ModelConfig: a served model's configuration in Triton's JSON shape, from the data plane,
and through a real server by tritonclient.grpc and onnxforge.client, held to config.pbtxt."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tritonclient.grpc as triton_grpc
import yaml
from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2
from tritonclient.utils import InferenceServerException

from onnxforge.client import InferenceClient
from onnxforge.server.dataplane import DataPlane
from onnxforge.server.errors import ModelNotFound
from onnxforge.server.registry import Registry
from onnxforge.server.stats import Statistics
from tests.helpers import mlp_document
from tests.server.conftest import ServerThread


def _config(root: Path, name: str, version: str = "", **registry: Any) -> dict[str, Any]:
    async def main() -> dict[str, Any]:
        loaded = Registry(root, threads=1, **registry)
        await loaded.load_all()
        try:
            return await DataPlane(loaded, Statistics()).model_config(name, version)
        finally:
            await loaded.close()

    return asyncio.run(main())


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("model-config")
    (root / "tiny").mkdir()
    serving = {"max_batch_size": 8, "max_queue_delay_us": 250, "instances": 2}
    (root / "tiny" / "spec.yaml").write_text(yaml.safe_dump(mlp_document(serving=serving)))
    return root


def test_the_data_plane_answers_the_config_the_spec_asked_for(repository: Path) -> None:
    assert _config(repository, "tiny", "1") == {
        "name": "tiny",
        "platform": "onnxruntime_onnx",
        "backend": "onnxruntime",
        "version_policy": {"latest": {"num_versions": 1}},
        "max_batch_size": 8,
        "input": [{"name": "x", "data_type": "TYPE_FP32", "format": "FORMAT_NONE", "dims": [4]}],
        "output": [{"name": "y", "data_type": "TYPE_FP32", "dims": [2]}],
        "instance_group": [{"name": "tiny_0", "kind": "KIND_CPU", "count": 2}],
        "dynamic_batching": {"max_queue_delay_microseconds": 250},
        "default_model_filename": "model.onnx",
        "parameters": {},
    }


def test_without_a_batcher_the_config_has_no_dynamic_batching(repository: Path) -> None:
    config = _config(repository, "tiny", batching=False)
    assert "dynamic_batching" not in config
    assert config["max_batch_size"] == 8


def test_an_unknown_model_or_version_is_not_found(repository: Path) -> None:
    with pytest.raises(ModelNotFound, match="nothere"):
        _config(repository, "nothere")
    with pytest.raises(ModelNotFound, match="7"):
        _config(repository, "tiny", "7")


def test_a_loads_config_and_the_files_parameters_are_in_the_answer(
    repository: Path, tmp_path: Path
) -> None:
    """A model without a spec (its own config.pbtxt, with parameters), then a load's config."""
    plain = tmp_path / "plain"
    (plain / "1").mkdir(parents=True)
    _config(repository, "tiny")  # builds tiny
    (plain / "1" / "model.onnx").write_bytes(
        (repository / "tiny" / "1" / "model.onnx").read_bytes()
    )
    (plain / "config.pbtxt").write_text(
        'name: "plain"\nmax_batch_size: 0\n'
        'parameters { key: "owner" value { string_value: "team-a" } }\n'
        'parameters: { key: "note", value: { string_value: "x y" } }\n'
    )

    async def main() -> tuple[dict[str, Any], dict[str, Any]]:
        loaded = Registry(tmp_path, threads=1)
        await loaded.load_all()
        plane = DataPlane(loaded, Statistics())
        try:
            before = await plane.model_config("plain")
            config = {"max_batch_size": 4, "version_policy": {"all": {}}}
            config["instance_group"] = [{"count": 2}]
            await plane.load("plain", {"config": json.dumps(config)})
            return before, await plane.model_config("plain")
        finally:
            await loaded.close()

    before, after = asyncio.run(main())
    assert before["parameters"] == {
        "owner": {"string_value": "team-a"},
        "note": {"string_value": "x y"},
    }
    # max_batch_size 0: the batch dimension is listed, and nothing batches.
    assert (before["max_batch_size"], before["input"][0]["dims"]) == (0, [-1, 4])
    assert "dynamic_batching" not in before
    assert before["version_policy"] == {"latest": {"num_versions": 1}}
    assert (after["max_batch_size"], after["input"][0]["dims"]) == (4, [4])
    assert after["version_policy"] == {"all": {}}
    assert after["instance_group"][0]["count"] == 2
    assert after["parameters"] == before["parameters"]


# ------------------------------------------------------- through a real server, by tritonclient


def _on_disk(folder: Path) -> dict[str, Any]:
    """``config.pbtxt`` read by protobuf's own text parser into Triton's ``ModelConfig``, in
    the JSON shape tritonclient's ``as_json`` gives (our pbtxt reader plays no part)."""
    text = (folder / "config.pbtxt").read_text()
    parsed = text_format.Parse(text, model_config_pb2.ModelConfig())
    return json_format.MessageToDict(parsed, preserving_proto_field_name=True)


def _within(wanted: Any, got: Any) -> Any:
    """``got`` cut to the fields ``wanted`` has (in nested messages and lists too)."""
    if isinstance(wanted, dict) and isinstance(got, dict):
        return {key: _within(value, got.get(key)) for key, value in wanted.items()}
    if isinstance(wanted, list) and isinstance(got, list) and len(wanted) == len(got):
        return [_within(one, other) for one, other in zip(wanted, got, strict=True)]
    return got


@pytest.fixture(scope="module")
def triton(served: ServerThread) -> Iterator[Any]:
    client = triton_grpc.InferenceServerClient(served.address)
    yield client
    client.close()


@pytest.mark.parametrize("name", ["digits-mlp", "digits-mlp-int8-dynamic"])
def test_tritonclient_gets_every_field_of_config_pbtxt(
    served: ServerThread, triton: Any, name: str
) -> None:
    on_disk = _on_disk(served.settings.repository / name)
    got = triton.get_model_config(name, as_json=True)["config"]
    assert _within(on_disk, got) == on_disk  # the server may add fields (a group's name)
    assert on_disk.keys() >= {"name", "platform", "max_batch_size", "input", "output"}
    assert (got["backend"], got["default_model_filename"]) == ("onnxruntime", "model.onnx")


def test_tritonclient_decodes_the_message_with_its_own_types(
    served: ServerThread, triton: Any
) -> None:
    config = triton.get_model_config("digits-mlp").config
    assert isinstance(config, model_config_pb2.ModelConfig)
    assert config.max_batch_size == 64
    assert [(i.name, i.data_type, list(i.dims)) for i in config.input] == [
        ("x", model_config_pb2.TYPE_FP32, [64])
    ]
    assert [o.name for o in config.output] == ["probabilities", "hidden"]
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    assert config.version_policy.WhichOneof("policy_choice") == "latest"
    assert config.dynamic_batching.max_queue_delay_microseconds == 500


def test_an_unknown_model_is_not_found_for_tritonclient(triton: Any) -> None:
    with pytest.raises(InferenceServerException, match="model 'nope' not found") as caught:
        triton.get_model_config("nope")
    assert caught.value.status() == "StatusCode.NOT_FOUND"
    with pytest.raises(InferenceServerException, match="version '9' not found"):
        triton.get_model_config("digits-mlp", "9")


def test_onnxforge_client_gets_the_data_planes_json(served: ServerThread) -> None:
    with InferenceClient(served.address) as client:
        got = client.model_config("digits-mlp")
    on_disk = _on_disk(served.settings.repository / "digits-mlp")
    # Numbers as numbers (Triton's HTTP shape): dims [64], not ["64"].
    assert got["input"][0]["dims"] == [64] and on_disk["input"][0]["dims"] == ["64"]
    assert got["dynamic_batching"]["max_queue_delay_microseconds"] == 500
    assert (got["name"], got["max_batch_size"]) == ("digits-mlp", on_disk["max_batch_size"])
    assert [o["name"] for o in got["output"]] == [o["name"] for o in on_disk["output"]]
