"""``builder.onnxfile``: the one reader of ONNX files, its one-line errors, external data."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from onnx.external_data_helper import uses_external_data

from onnxforge.builder import build, load_spec
from onnxforge.builder.errors import ArtifactError
from onnxforge.builder.layout import model_path, version_path
from onnxforge.builder.onnxfile import locate, read
from onnxforge.builder.repository import read_model
from tests.conftest import MODELS, CliResult

DIGITS = MODELS / "digits-mlp" / "spec.yaml"


@pytest.fixture(scope="module")
def digits() -> onnx.ModelProto:
    return build(load_spec(DIGITS))


def _error(path: Path, **options: bool) -> str:
    with pytest.raises(ArtifactError) as error:
        read(path, **options)
    message = str(error.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    return message.removeprefix(f"{path}: ")


def test_each_way_a_file_can_be_wrong_has_its_own_line(tmp_path: Path) -> None:
    assert _error(tmp_path / "missing.onnx") == "file not found"
    assert _error(tmp_path / "missing.onnx", built=True) == (
        "not built (run `onnxforge build` first)"
    )
    assert _error(tmp_path) == "is a folder, not an ONNX file"
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\xff\xfe not a model")
    assert _error(garbage) == "not a readable ONNX model: the bytes do not parse"
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    assert _error(empty) == "not a readable ONNX model: no IR version, graph or opset"


def test_a_good_file_is_read_with_its_bytes(tmp_path: Path, digits: onnx.ModelProto) -> None:
    path = tmp_path / "model.onnx"
    onnx.save(digits, str(path))
    file = read(path)
    assert file.data == path.read_bytes()
    assert file.model == digits
    assert read_model(path) == digits


def _with_external_data(folder: Path, model: onnx.ModelProto) -> Path:
    """``model`` saved with every initializer in ``weights.bin`` beside it."""
    path = folder / "model.onnx"
    copy = onnx.ModelProto()
    copy.CopyFrom(model)  # saving moves the tensors' data out of the model it is given
    onnx.save(copy, str(path), save_as_external_data=True, location="weights.bin", size_threshold=0)
    return path


def test_external_data_is_brought_in_or_left_alone(tmp_path: Path, digits: onnx.ModelProto) -> None:
    path = _with_external_data(tmp_path, digits)
    stored = {t.name: numpy_helper.to_array(t) for t in digits.graph.initializer}

    whole = read(path)
    assert not any(uses_external_data(t) for t in whole.model.graph.initializer)
    from_bytes = onnx.load_from_string(whole.data)
    for tensor in from_bytes.graph.initializer:
        np.testing.assert_array_equal(numpy_helper.to_array(tensor), stored[tensor.name])
    assert len(whole.data) > path.stat().st_size  # the weights are in the bytes now

    graph_only = read(path, external_data=False)
    assert graph_only.data == path.read_bytes()
    assert all(uses_external_data(t) for t in graph_only.model.graph.initializer)


def test_missing_external_data_is_one_line(tmp_path: Path, digits: onnx.ModelProto) -> None:
    path = _with_external_data(tmp_path, digits)
    (tmp_path / "weights.bin").unlink()
    assert _error(path).startswith("its external data cannot be read: ")
    assert read(path, external_data=False).model.graph.name == digits.graph.name


def test_locate_finds_a_model_by_name_or_says_where_it_looked(
    tmp_path: Path, digits: onnx.ModelProto
) -> None:
    given = tmp_path / "file.onnx"
    assert locate(str(given), tmp_path) == given  # a path is taken as given, even if missing
    newest = version_path(tmp_path, "digits-mlp", 3)
    newest.parent.mkdir(parents=True)
    onnx.save(digits, str(newest))
    assert locate("digits-mlp", tmp_path) == newest == model_path(tmp_path, "digits-mlp")
    with pytest.raises(ArtifactError, match=r"^other: no such file, and no model of that name"):
        locate("other", tmp_path)


@pytest.mark.parametrize(
    "command",
    [
        ("quantize", "{model}", "--variant", "fp16", "-o", "{out}/q.onnx"),
        ("export-edge", "{model}", "--out", "{out}/edge"),
        ("inspect", "{model}"),
    ],
    ids=lambda command: command[0],
)
def test_a_missing_file_is_not_found_in_every_command(
    run_cli: Callable[..., CliResult], tmp_path: Path, command: tuple[str, ...]
) -> None:
    """A path the user typed that does not exist is "file not found", never "not built"."""
    model = tmp_path / "nothere.onnx"
    result = run_cli(*(part.format(model=model, out=tmp_path) for part in command))
    assert result.code == 2 and result.out == ""
    assert result.err == f"onnxforge: error: {model}: file not found\n"
    assert sorted(tmp_path.iterdir()) == []
