"""ModelConfig: a served model's configuration in Triton's JSON shape, from the data plane."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import yaml

from onnxforge.server.dataplane import DataPlane
from onnxforge.server.errors import ModelNotFound
from onnxforge.server.registry import Registry
from onnxforge.server.stats import Statistics
from tests.helpers import mlp_document


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
