"""``onnxforge build`` writes a Triton-compatible repository, and only when something changed."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import yaml
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format

from onnxforge.builder import load_spec, metadata, reference, runtime
from tests.helpers import mlp_document

F = descriptor_pb2.FieldDescriptorProto


def _triton_model_config() -> Any:
    """The part of Triton's ModelConfig message that config.pbtxt uses, built at run time."""
    file = descriptor_pb2.FileDescriptorProto(name="mc.proto", package="inference", syntax="proto3")
    enum = file.enum_type.add(name="DataType")
    for number, name in enumerate(["TYPE_INVALID", "TYPE_BOOL", "TYPE_UINT8"]):
        enum.value.add(name=name, number=number)
    for number, name in [(10, "TYPE_FP16"), (11, "TYPE_FP32"), (9, "TYPE_INT64")]:
        enum.value.add(name=name, number=number)

    def message(name: str, fields: list[tuple[str, int, int, str | None, bool]]) -> None:
        msg = file.message_type.add(name=name)
        for field_name, number, kind, type_name, repeated in fields:
            field = msg.field.add(name=field_name, number=number, type=kind)
            field.label = F.LABEL_REPEATED if repeated else F.LABEL_OPTIONAL
            if type_name:
                field.type_name = f".inference.{type_name}"
        if name == "ModelInstanceGroup":
            kind = msg.enum_type.add(name="Kind")
            for number, value in enumerate(["KIND_AUTO", "KIND_GPU", "KIND_CPU", "KIND_MODEL"]):
                kind.value.add(name=value, number=number)

    tensor = [
        ("name", 1, F.TYPE_STRING, None, False),
        ("data_type", 2, F.TYPE_ENUM, "DataType", False),
        ("dims", 3, F.TYPE_INT64, None, True),
    ]
    message("ModelInput", tensor)
    message("ModelOutput", tensor)
    message(
        "ModelInstanceGroup",
        [
            ("count", 2, F.TYPE_INT32, None, False),
            ("kind", 4, F.TYPE_ENUM, "ModelInstanceGroup.Kind", False),
        ],
    )
    message(
        "ModelDynamicBatching", [("max_queue_delay_microseconds", 2, F.TYPE_UINT64, None, False)]
    )
    # Triton nests these in ModelVersionPolicy; text format only sees the field names.
    message("PolicyLatest", [("num_versions", 1, F.TYPE_UINT32, None, False)])
    message("PolicyAll", [])
    message("PolicySpecific", [("versions", 1, F.TYPE_INT64, None, True)])
    message(
        "ModelVersionPolicy",
        [
            ("latest", 1, F.TYPE_MESSAGE, "PolicyLatest", False),
            ("all", 2, F.TYPE_MESSAGE, "PolicyAll", False),
            ("specific", 3, F.TYPE_MESSAGE, "PolicySpecific", False),
        ],
    )
    message(
        "ModelConfig",
        [
            ("name", 1, F.TYPE_STRING, None, False),
            ("version_policy", 3, F.TYPE_MESSAGE, "ModelVersionPolicy", False),
            ("platform", 2, F.TYPE_STRING, None, False),
            ("max_batch_size", 4, F.TYPE_INT32, None, False),
            ("input", 5, F.TYPE_MESSAGE, "ModelInput", True),
            ("output", 6, F.TYPE_MESSAGE, "ModelOutput", True),
            ("instance_group", 7, F.TYPE_MESSAGE, "ModelInstanceGroup", True),
            ("dynamic_batching", 11, F.TYPE_MESSAGE, "ModelDynamicBatching", False),
        ],
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("inference.ModelConfig"))


ModelConfig = _triton_model_config()


def _parse_config(path: Path) -> Any:
    return text_format.Parse(path.read_text(), ModelConfig())


def test_build_writes_model_and_triton_config(
    write_spec: Callable[..., Path], run_cli: Callable[..., Any], tmp_path: Path
) -> None:
    document = mlp_document(
        expose=["0"], serving={"max_batch_size": 16, "max_queue_delay_us": 250, "instances": 2}
    )
    spec_path = write_spec(document)
    repo = tmp_path / "repo"
    result = run_cli("build", spec_path, "--repository", repo)
    assert result.code == 0, result.err
    model_file = repo / "tiny" / "1" / "model.onnx"
    model = onnx.load(str(model_file))
    assert metadata.props(model)[metadata.SPEC_SHA256] == load_spec(spec_path).sha256

    config = _parse_config(repo / "tiny" / "config.pbtxt")
    assert config.name == "tiny"
    assert config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 16
    assert config.dynamic_batching.max_queue_delay_microseconds == 250
    assert [(i.name, list(i.dims)) for i in config.input] == [("x", [4])]
    assert [(o.name, list(o.dims)) for o in config.output] == [("y", [2]), ("0", [3])]
    assert {t.data_type for t in [*config.input, *config.output]} == {11}  # TYPE_FP32
    assert config.instance_group[0].count == 2 and config.instance_group[0].kind == 2  # KIND_CPU
    # The names and dims in the config are the model file's own.
    assert [o.name for o in model.graph.output] == [o.name for o in config.output]


def test_unbatched_config_lists_the_batch_dimension(
    write_spec: Callable[..., Path], run_cli: Callable[..., Any], tmp_path: Path
) -> None:
    spec_path = write_spec(mlp_document(serving={"max_batch_size": 0}))
    assert run_cli("build", spec_path, "-r", tmp_path).code == 0
    config = _parse_config(tmp_path / "tiny" / "config.pbtxt")
    assert config.max_batch_size == 0
    assert not config.HasField("dynamic_batching")
    assert list(config.input[0].dims) == [-1, 4]


def test_rebuilding_an_unchanged_spec_touches_nothing(
    write_spec: Callable[..., Path], run_cli: Callable[..., Any], tmp_path: Path
) -> None:
    spec_path = write_spec(mlp_document())
    assert run_cli("build", spec_path, "-r", tmp_path).code == 0
    files = [tmp_path / "tiny" / "1" / "model.onnx", tmp_path / "tiny" / "config.pbtxt"]
    before = [(f.stat().st_ino, f.stat().st_mtime_ns) for f in files]
    again = run_cli("build", spec_path, "-r", tmp_path)
    assert again.code == 0 and "unchanged" in again.out
    assert [(f.stat().st_ino, f.stat().st_mtime_ns) for f in files] == before
    assert sorted(p.name for p in (tmp_path / "tiny").rglob("*")) == [
        "1",
        "config.pbtxt",
        "model.onnx",
    ]  # no temporary files left behind


def test_changed_weights_become_a_new_version(
    write_spec: Callable[..., Path], run_cli: Callable[..., Any], tmp_path: Path
) -> None:
    spec_path = write_spec(mlp_document())
    assert run_cli("build", spec_path, "-r", tmp_path).code == 0
    model_file = tmp_path / "tiny" / "1" / "model.onnx"
    old = model_file.read_bytes()
    document = yaml.safe_load(spec_path.read_text())
    document["seed"] = 3
    spec_path.write_text(yaml.safe_dump(document))
    result = run_cli("build", spec_path, "-r", tmp_path)
    assert result.code == 0 and "new version 2" in result.out
    assert model_file.read_bytes() == old  # version 1 is left as it was
    x = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
    session = runtime.session(str(tmp_path / "tiny" / "2" / "model.onnx"))
    np.testing.assert_allclose(
        session.run(["y"], {"x": x})[0], reference.forward(load_spec(spec_path), x), atol=1e-6
    )


def test_build_without_specs_builds_every_spec_in_the_repository(
    run_cli: Callable[..., Any], tmp_path: Path
) -> None:
    for name in ("alpha", "beta"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "spec.yaml").write_text(yaml.safe_dump(mlp_document(name=name)))
    result = run_cli("build", "--repository", tmp_path, "--json")
    assert result.code == 0, result.err
    assert (tmp_path / "alpha" / "1" / "model.onnx").is_file()
    assert (tmp_path / "beta" / "1" / "model.onnx").is_file()
    assert '"model": "alpha"' in result.out and '"model": "beta"' in result.out


def test_two_specs_with_one_model_name_are_refused(
    write_spec: Callable[..., Path], run_cli: Callable[..., Any], tmp_path: Path
) -> None:
    first, second = write_spec(mlp_document()), write_spec(mlp_document())
    result = run_cli("build", first, second, "-r", tmp_path / "repo")
    assert result.code == 2
    assert "'tiny' is also the name of the model in" in result.err
    assert not (tmp_path / "repo").exists()


@pytest.mark.parametrize("layout", ["in_out", "out_in"])
def test_written_file_runs_like_the_reference(
    layout: str, write_spec: Callable[..., Path], run_cli: Callable[..., Any], tmp_path: Path
) -> None:
    spec_path = write_spec(mlp_document(weight_layout=layout, seed=11))
    assert run_cli("build", spec_path, "-r", tmp_path).code == 0
    session = runtime.session(str(tmp_path / "tiny" / "1" / "model.onnx"))
    x = np.random.default_rng(1).normal(size=(50, 4)).astype(np.float32)
    np.testing.assert_allclose(
        session.run(["y"], {"x": x})[0],
        reference.forward(load_spec(spec_path), x),
        atol=1e-6,
        rtol=1e-5,
    )
