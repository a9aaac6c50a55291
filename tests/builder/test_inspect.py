"""``onnxforge inspect``: the numbers it shows are counted from the spec and the file."""

from __future__ import annotations

import json
import math
import struct
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import matplotlib.image
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxforge.builder import build, load_spec, metadata, reference, runtime
from onnxforge.builder.accuracy import figures
from onnxforge.builder.graph import layer_prefix
from onnxforge.builder.quantize import quantize
from onnxforge.builder.repository import model_path
from onnxforge.builder.spec import Spec
from onnxforge.builder.summary import summarize
from tests.conftest import MODELS, CliResult

DIGITS = MODELS / "digits-mlp" / "spec.yaml"


Inspect = Callable[..., str]


@pytest.fixture
def invoke(run_cli: Callable[..., CliResult]) -> Inspect:
    """``onnxforge inspect ARGS...`` through the command line; its stdout (exit code 0)."""

    def run(*args: str | Path) -> str:
        result = run_cli("inspect", *args)
        assert result.code == 0, result
        return result.out

    return run


@pytest.fixture
def as_json(invoke: Inspect) -> Callable[..., dict[str, Any]]:
    def run(*args: str | Path) -> dict[str, Any]:
        document = json.loads(invoke(*args, "--json"))
        assert isinstance(document, dict)
        return document

    return run


@pytest.fixture(scope="module")
def digits() -> Spec:
    return load_spec(DIGITS)


@pytest.fixture(scope="module")
def fp32_file(digits: Spec, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("fp32") / "model.onnx"
    onnx.save(build(digits), str(path))
    return path


@pytest.fixture(scope="module")
def int8_file(
    digits: Spec, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, dict[str, Any]]:
    """The int8-dynamic variant with figures measured against the reference, as build records."""
    model = quantize(build(digits), "int8-dynamic")
    x = np.random.default_rng(3).uniform(size=(64, 64)).astype(np.float32)
    got = runtime.session(model.SerializeToString()).run(None, {digits.input_name: x})
    outputs = reference.run(digits, x)
    names = [output.name for output in model.graph.output]
    accuracy = {
        "samples": len(x),
        "reference": "fp32",
        "checked_output": digits.output_name,
        "budget": {"cosine": 0.99, "argmax_agreement": 0.95},
        "outputs": {
            name: asdict(figures(value, outputs[name], digits.is_classifier(name)))
            for name, value in zip(names, got, strict=True)
        },
    }
    metadata.set_props(
        model,
        {
            metadata.VARIANT: "int8-dynamic",
            metadata.SPEC_SHA256: digits.sha256,
            metadata.ACCURACY: json.dumps(accuracy, sort_keys=True),
            metadata.QUANTIZATION: json.dumps({"variant": "int8-dynamic", "per_channel": False}),
        },
    )
    path = tmp_path_factory.mktemp("int8") / "model.onnx"
    onnx.save(model, str(path))
    return path, accuracy


def dense_counts(spec: Spec) -> tuple[int, int]:
    """Parameters and multiply-adds per row of the dense layers, from the spec's shapes."""
    parameters = multiply_adds = 0
    for layer in spec.layers:
        if layer.type == "dense":
            inputs, units = layer.input_shape[-1], layer.output_shape[-1]
            parameters += inputs * units + units
            multiply_adds += math.prod(layer.input_shape[:-1]) * inputs * units
    return parameters, multiply_adds


# ------------------------------------------------------------------ specs


def test_spec_rows_and_totals_are_counted_from_its_shapes(digits: Spec) -> None:
    parameters, dense_multiply_adds = dense_counts(digits)
    assert parameters == 64 * 32 + 32 + 32 * 10 + 10
    assert dense_multiply_adds == 64 * 32 + 32 * 10
    features = digits.input_shape[-1]
    summary = summarize(DIGITS)
    totals = summary.totals
    assert totals["parameters"] == parameters
    assert totals["parameter_bytes"] == 4 * parameters
    # The normalize layer: one multiply-add per element ((x - mean) / std), and its mean and
    # std are constants (written in the spec, not trained).
    assert totals["multiply_adds_per_row"] == dense_multiply_adds + features
    assert totals["constants"] == 2 * features
    assert totals["bytes"] == 4 * (parameters + 2 * features)
    assert totals["file_bytes"] == len(build(digits).SerializeToString())

    rows = summary.rows
    assert [row.name for row in rows] == [layer.name for layer in digits.layers]
    assert [row.kind for row in rows] == [layer.type for layer in digits.layers]
    assert [row.output.shape for row in rows] == [layer.output_shape for layer in digits.layers]
    assert [row.activation for row in rows] == [None, "relu", "softmax"]
    assert [row.parameters for row in rows] == [0, 64 * 32 + 32, 32 * 10 + 10]
    assert [row.multiply_adds for row in rows] == [features, 64 * 32, 32 * 10]
    assert [row.outputs for row in rows] == [(), ("hidden",), ("probabilities",)]

    assert summary.opset == digits.opset
    assert summary.ir_version == runtime.ir_version_for(digits.opset)
    assert [tensor.name for tensor in summary.outputs] == list(digits.output_names)
    assert summary.spec_sha256 == digits.sha256


def test_spec_table_shows_the_layers_and_totals(digits: Spec, invoke: Inspect) -> None:
    text = invoke(DIGITS)
    lines = text.splitlines()
    hidden = next(line for line in lines if line.startswith("│ hidden"))
    assert [cell.strip() for cell in hidden.strip("│").split("│")] == [
        "hidden",
        "dense",
        "32",
        "2,080",
        "—",
        "8,320 float32",
        "2,048",
        "relu",
    ]
    total = next(line for line in lines if line.startswith("│ total"))
    assert "2,410" in total and "2,432" in total and "10,152 float32" in total
    assert f"ai.onnx {digits.opset}; IR version {runtime.ir_version_for(digits.opset)}" in text
    assert "probabilities (10), hidden (32)" in text


def test_activation_parameters_nd_inputs_and_norm_layers_match_the_built_file(
    write_spec: Callable[..., Path], tmp_path: Path
) -> None:
    path = write_spec(
        {
            "name": "nd",
            "input": {"name": "x", "shape": [3, 4]},
            "output": {"name": "y"},
            "layers": [
                {"type": "layernorm"},
                {"type": "dense", "units": 5, "activation": {"name": "leaky_relu", "alpha": 0.1}},
                {"type": "batchnorm"},
                {"type": "flatten"},
                {"type": "dense", "units": 2, "activation": "elu"},
            ],
        }
    )
    spec = load_spec(path)
    summary = summarize(path)
    rows = summary.rows
    assert [row.activation for row in rows] == [
        None,
        "leaky_relu(alpha=0.1)",
        None,
        None,
        "elu(alpha=1)",
    ]
    assert rows[1].activation_params == {"alpha": 0.1}
    # layernorm: 3 per element; dense over (3, 4): 3 rows of 4 x 5; batchnorm over (3, 5): 1
    # per element (its 4 vectors of 3 channels are parameters); dense 15 x 2.
    assert [row.multiply_adds for row in rows] == [3 * 12, 3 * 4 * 5, 15, 0, 15 * 2]
    assert [row.parameters for row in rows] == [4 + 4, 4 * 5 + 5, 4 * 3, 0, 15 * 2 + 2]

    file = tmp_path / "nd.onnx"
    onnx.save(build(spec), str(file))
    from_file = summarize(file)
    for key in ("parameters", "parameter_bytes", "multiply_adds_per_row", "constants"):
        assert from_file.totals[key] == summary.totals[key], key
    assert [row.name for row in from_file.rows] == [layer_prefix(layer) for layer in spec.layers]
    assert [row.activation for row in from_file.rows] == [row.activation for row in rows]
    assert [row.output.shape for row in from_file.rows] == [
        ("batch", *layer.output_shape) for layer in spec.layers
    ]


# ------------------------------------------------------------------ files


def test_fp32_file_has_the_spec_totals(digits: Spec, fp32_file: Path) -> None:
    spec_totals = summarize(DIGITS).totals
    summary = summarize(fp32_file)
    totals = summary.totals
    for key in ("parameters", "parameter_bytes", "constants", "bytes", "multiply_adds_per_row"):
        assert totals[key] == spec_totals[key], key
    assert totals["file_bytes"] == fp32_file.stat().st_size == spec_totals["file_bytes"]
    assert summary.grouped
    assert [row.name for row in summary.rows] == [layer_prefix(layer) for layer in digits.layers]
    assert [row.kind for row in summary.rows] == [
        "Sub, Div",
        "MatMul, Add, Relu",
        "MatMul, Add, Softmax",
    ]
    assert [row.output.shape for row in summary.rows] == [
        ("batch", 64),
        ("batch", 32),
        ("batch", 10),
    ]
    assert [row.outputs for row in summary.rows] == [(), ("hidden",), ("probabilities",)]
    assert summary.variant == "fp32"
    assert summary.spec_sha256 == digits.sha256
    assert summary.accuracy is None


def test_int8_variant_counts_one_byte_per_weight_and_shows_recorded_accuracy(
    fp32_file: Path,
    int8_file: tuple[Path, dict[str, Any]],
    invoke: Inspect,
    as_json: Callable[..., dict[str, Any]],
) -> None:
    path, accuracy = int8_file
    fp32 = summarize(fp32_file).totals
    document = as_json(path)
    totals = document["totals"]
    assert totals["parameters"] == fp32["parameters"]
    weights = 64 * 32 + 32 * 10
    assert totals["parameter_bytes_by_dtype"] == {"int8": weights, "float32": 4 * (32 + 10)}
    assert totals["parameter_bytes"] < fp32["parameter_bytes"]
    assert totals["bytes"] < fp32["bytes"]
    assert totals["file_bytes"] == path.stat().st_size < fp32["file_bytes"]
    # One scale (float32) and one zero point (int8) per quantized MatMul.
    assert totals["quantization_constants"] == 4
    assert totals["multiply_adds_per_row"] == fp32["multiply_adds_per_row"]
    assert [row["name"] for row in document["layers"]] == ["normalize_0", "hidden", "dense_2"]
    assert "MatMulInteger" in document["layers"][1]["kind"]
    assert document["variant"] == "int8-dynamic"
    recorded = json.loads(metadata.props(onnx.load(str(path)))[metadata.ACCURACY])
    assert document["accuracy"] == recorded == json.loads(json.dumps(accuracy))
    assert document["quantization"] == {"variant": "int8-dynamic", "per_channel": False}

    text = invoke(path)
    assert "variant        int8-dynamic" in text
    table = text.split("recorded accuracy vs fp32 on 64 held-out rows")[1]
    for name, measured in accuracy["outputs"].items():
        row = next(line for line in table.splitlines() if line.startswith(f"│ {name}"))
        for value in measured.values():
            assert (f"{value:.6g}" if value is not None else "—") in row
    budget = next(line for line in table.splitlines() if line.startswith("│ budget"))
    assert "≥ 0.99" in budget and "≥ 0.95" in budget


def test_model_name_is_looked_up_in_the_repository(
    fp32_file: Path, tmp_path: Path, as_json: Callable[..., dict[str, Any]]
) -> None:
    target = model_path(tmp_path, "digits-mlp")
    target.parent.mkdir(parents=True)
    target.write_bytes(fp32_file.read_bytes())
    document = as_json("digits-mlp", "--repository", tmp_path)
    assert document["path"] == str(target)
    assert document["totals"]["parameters"] == summarize(fp32_file).totals["parameters"]


def foreign_model() -> onnx.ModelProto:
    """A PyTorch-like export: Gemm with transposed weights, unnamed nodes, no onnxforge metadata."""
    rng = np.random.default_rng(0)
    initializers = [
        numpy_helper.from_array(rng.normal(size=(8, 5)).astype(np.float32), "fc1.weight"),
        numpy_helper.from_array(np.zeros(8, np.float32), "fc1.bias"),
        numpy_helper.from_array(rng.normal(size=(3, 8)).astype(np.float32), "fc2.weight"),
    ]
    nodes = [
        helper.make_node("Gemm", ["input", "fc1.weight", "fc1.bias"], ["h"], "/fc1/Gemm", transB=1),
        helper.make_node("LeakyRelu", ["h"], ["a"], alpha=0.2),
        helper.make_node("Gemm", ["a", "fc2.weight"], ["logits"], "/fc2/Gemm [b]", transB=1),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        "torch_jit",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 5])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 3])],
        initializer=initializers,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="pytorch"
    )
    onnx.checker.check_model(model)
    return model


def test_file_not_built_by_onnxforge_gets_one_row_per_node(
    tmp_path: Path, invoke: Inspect, as_json: Callable[..., dict[str, Any]]
) -> None:
    path = tmp_path / "torch.onnx"
    onnx.save(foreign_model(), str(path))
    document = as_json(path)
    assert document["rows_are"] == "nodes"
    rows = document["layers"]
    assert [row["name"] for row in rows] == [
        "/fc1/Gemm",
        "LeakyRelu#1",
        "/fc2/Gemm [b]",
        "Softmax#3",
    ]
    assert [row["parameters"] for row in rows] == [8 * 5 + 8, 0, 3 * 8, 0]
    assert [row["multiply_adds"] for row in rows] == [5 * 8, 0, 8 * 3, 0]
    assert [row["activation"] for row in rows] == [None, "leaky_relu(alpha=0.2)", None, "softmax"]
    assert [row["output"]["shape"] for row in rows] == [["N", 8], ["N", 8], ["N", 3], ["N", 3]]
    assert document["totals"]["parameters"] == 8 * 5 + 8 + 3 * 8
    assert document["totals"]["bytes_by_dtype"] == {"float32": 4 * (8 * 5 + 8 + 3 * 8)}
    assert (document["opset"], document["producer"], document["variant"]) == (17, "pytorch", None)
    assert document["accuracy"] is None
    text = invoke(path)
    assert "one row per node" in text
    assert "│ /fc2/Gemm [b] " in text  # names are shown as written, not read as markup


# ------------------------------------------------------------------ pictures


def test_graph_png_is_a_png(tmp_path: Path, fp32_file: Path, invoke: Inspect) -> None:
    picture = tmp_path / "digits.png"
    output = invoke(fp32_file, "--graph", picture)
    assert f"graph: {picture}" in output
    data = picture.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])  # the IHDR chunk
    pixels = matplotlib.image.imread(picture)  # decodes: the file is whole
    assert pixels.shape[:2] == (height, width) and width > 0 and height > 0
    assert (pixels[..., :3] < 0.5).any()  # something is drawn on the white page


def test_graph_svg_is_xml_naming_every_layer(
    tmp_path: Path, digits: Spec, as_json: Callable[..., dict[str, Any]]
) -> None:
    picture = tmp_path / "digits.svg"
    document = as_json(DIGITS, "--graph", picture)
    assert document["graph"] == str(picture)
    root = ET.parse(picture).getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    texts = " ".join(node.text or "" for node in root.iter("{http://www.w3.org/2000/svg}text"))
    for name in ("input x", "normalize", "hidden · dense", "output hidden", "output probabilities"):
        assert name in texts
    assert "2,080 params · 2,048 mult-adds" in texts


def test_graph_of_a_long_file_is_cut_short(tmp_path: Path, invoke: Inspect) -> None:
    nodes = [helper.make_node("Relu", [f"t{i}"], [f"t{i + 1}"]) for i in range(130)]
    graph = helper.make_graph(
        nodes,
        "long",
        [helper.make_tensor_value_info("t0", TensorProto.FLOAT, ["N", 2])],
        [helper.make_tensor_value_info("t130", TensorProto.FLOAT, ["N", 2])],
    )
    path = tmp_path / "long.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    picture = tmp_path / "long.svg"
    invoke(path, "--graph", picture)
    texts = [
        node.text for node in ET.parse(picture).getroot().iter("{http://www.w3.org/2000/svg}text")
    ]
    assert "… 10 more" in texts


# ------------------------------------------------------------------ errors


def _fails(run_cli: Callable[..., CliResult], *args: str | Path) -> str:
    result = run_cli("inspect", *args)
    assert result.code == 2, result
    assert result.out == ""
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("onnxforge: error: "), result.err
    return lines[0]


def test_errors_are_one_line_and_exit_2(
    run_cli: Callable[..., CliResult], tmp_path: Path, fp32_file: Path
) -> None:
    assert "missing.onnx: file not found" in _fails(run_cli, tmp_path / "missing.onnx")
    assert "missing.yaml: file not found" in _fails(run_cli, tmp_path / "missing.yaml")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\xff\xfe not a model")
    assert "garbage.onnx: not a readable ONNX model" in _fails(run_cli, garbage)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    assert "notes.txt: not a readable ONNX model" in _fails(run_cli, text)
    bad_spec = tmp_path / "spec.yaml"
    bad_spec.write_text("name: [unclosed\n")
    assert "spec.yaml: not valid YAML" in _fails(run_cli, bad_spec)
    assert "no model of that name" in _fails(run_cli, "no-such-model", "-r", tmp_path)
    assert "is a folder" in _fails(run_cli, tmp_path)
    message = _fails(run_cli, fp32_file, "--graph", tmp_path / "graph.jpg")
    assert "--graph" in message and ".svg or .png" in message
    assert not (tmp_path / "graph.jpg").exists()


def test_graph_without_matplotlib_says_what_to_install(
    run_cli: Callable[..., CliResult], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for module in [name for name in sys.modules if name.split(".")[0] == "matplotlib"]:
        monkeypatch.setitem(sys.modules, module, None)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    message = _fails(run_cli, DIGITS, "--graph", tmp_path / "graph.png")
    assert "matplotlib" in message and "pip install -e '.[bench]'" in message
    assert not (tmp_path / "graph.png").exists()
