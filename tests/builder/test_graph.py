"""The built graph: valid, readable, fully shaped, deterministic, and runnable by ORT."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest

from onnxforge._version import __version__
from onnxforge.builder import build, load_spec, metadata, runtime
from tests.builder.runs import run_onnx
from tests.helpers import mlp_document

NAMED = {
    "name": "named",
    "input": {"name": "pixels", "shape": [8]},
    "output": {"name": "scores"},
    "expose": ["hidden"],
    "layers": [
        {"type": "normalize", "mean": 0.5, "std": 0.25},
        {"type": "dense", "name": "hidden", "units": 6, "activation": "relu"},
        {"type": "dropout", "rate": 0.5},
        {"type": "dense", "units": 3, "activation": "softmax"},
    ],
}


def test_dense_is_matmul_add_activation_with_readable_names(
    write_spec: Callable[..., Path],
) -> None:
    model = build(load_spec(write_spec(NAMED)))
    ops = [(node.op_type, node.name) for node in model.graph.node]
    assert ops == [
        ("Sub", "normalize_0/Sub"),
        ("Div", "normalize_0/Div"),
        ("MatMul", "hidden/MatMul"),
        ("Add", "hidden/Add"),
        ("Relu", "hidden/Relu"),
        ("MatMul", "dense_3/MatMul"),
        ("Add", "dense_3/Add"),
        ("Softmax", "dense_3/Softmax"),
    ]
    assert [init.name for init in model.graph.initializer] == [
        "normalize_0/mean",
        "normalize_0/std",
        "hidden/weight",
        "hidden/bias",
        "dense_3/weight",
        "dense_3/bias",
    ]
    assert [out.name for out in model.graph.output] == ["scores", "hidden"]
    assert [inp.name for inp in model.graph.input] == ["pixels"]


def test_checker_and_shape_inference_fill_every_intermediate(
    write_spec: Callable[..., Path],
) -> None:
    model = build(load_spec(write_spec(NAMED)))
    onnx.checker.check_model(model, full_check=True)
    inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    shapes = {
        info.name: [d.dim_param or d.dim_value for d in info.type.tensor_type.shape.dim]
        for info in [*inferred.graph.value_info, *inferred.graph.output]
    }
    produced = {out for node in model.graph.node for out in node.output}
    assert produced <= set(shapes), f"no shape for {produced - set(shapes)}"
    assert shapes["hidden/MatMul"] == ["batch", 6]
    assert shapes["scores"] == ["batch", 3]
    assert shapes["normalize_0/Div"] == ["batch", 8]


def test_batch_dimension_is_dynamic(write_spec: Callable[..., Path]) -> None:
    spec = load_spec(write_spec(NAMED))
    model = build(spec)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    for rows in (1, 7, 130):
        x = np.random.default_rng(rows).uniform(size=(rows, 8)).astype(np.float32)
        out = run_onnx(spec, x)
        assert out["scores"].shape == (rows, 3)
        assert out["hidden"].shape == (rows, 6)


def test_opset_and_ir_version_are_what_onnx_runtime_runs(write_spec: Callable[..., Path]) -> None:
    default = build(load_spec(write_spec(mlp_document())))
    assert default.opset_import[0].version == runtime.newest_opset()
    pinned = build(load_spec(write_spec(mlp_document(opset=17))))
    assert [(o.domain, o.version) for o in pinned.opset_import] == [("", 17)]
    assert pinned.ir_version == 8  # the IR version that introduced opset 17
    for model in (default, pinned):
        runtime.session(model.SerializeToString())  # loads: no exception


def test_metadata_records_hash_variant_and_version(write_spec: Callable[..., Path]) -> None:
    spec = load_spec(write_spec(mlp_document(description="two dense layers")))
    model = build(spec)
    props = metadata.props(model)
    assert props == {
        metadata.SPEC_SHA256: spec.sha256,
        metadata.VARIANT: "fp32",
        metadata.VERSION: __version__,
    }
    assert model.producer_name == "onnxforge" and model.producer_version == __version__
    assert model.doc_string == "two dense layers"


def test_spec_hash_follows_the_function_not_the_serving_settings(
    write_spec: Callable[..., Path],
) -> None:
    base = load_spec(write_spec(mlp_document())).sha256
    assert load_spec(write_spec(mlp_document(serving={"max_batch_size": 8}))).sha256 == base
    assert load_spec(write_spec(mlp_document(seed=1))).sha256 != base
    changed = mlp_document()
    changed["layers"][0]["activation"] = "tanh"
    assert load_spec(write_spec(changed)).sha256 != base


def test_building_twice_gives_identical_bytes(write_spec: Callable[..., Path]) -> None:
    path = write_spec(NAMED)
    first = build(load_spec(path)).SerializeToString()
    second = build(load_spec(path)).SerializeToString()
    assert first == second


@pytest.mark.parametrize("hash_seed", ["1", "2"])
def test_bytes_do_not_depend_on_the_process(
    hash_seed: str, write_spec: Callable[..., Path]
) -> None:
    path = write_spec(NAMED)
    here = hashlib.sha256(build(load_spec(path)).SerializeToString()).hexdigest()
    code = (
        "import hashlib, sys; from onnxforge.builder import build, load_spec; "
        "print(hashlib.sha256(build(load_spec(sys.argv[1])).SerializeToString()).hexdigest())"
    )
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    there = subprocess.run(
        [sys.executable, "-c", code, str(path)],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    ).stdout.strip()
    assert there == here


def test_out_in_weights_are_stored_transposed_for_matmul(write_spec: Callable[..., Path]) -> None:
    rng = np.random.default_rng(0)
    w_out_in = rng.normal(size=(3, 4)).astype(np.float32)
    bias = rng.normal(size=3).astype(np.float32)
    document = mlp_document(weight_layout="out_in", layers=[{"type": "dense", "units": 3}])
    model = build(load_spec(write_spec(document, {"0.weight": w_out_in, "0.bias": bias})))
    stored = onnx.numpy_helper.to_array(model.graph.initializer[0])
    np.testing.assert_array_equal(stored, w_out_in.T)


def test_exposing_a_pass_through_layer_adds_an_identity(write_spec: Callable[..., Path]) -> None:
    document = {**NAMED, "expose": ["hidden", "2"]}  # layer 2 is dropout: same tensor as hidden
    spec = load_spec(write_spec(document))
    model = build(spec)
    assert ("Identity", "2/Identity") in [(n.op_type, n.name) for n in model.graph.node]
    x = np.random.default_rng(0).uniform(size=(4, 8)).astype(np.float32)
    out = run_onnx(spec, x)
    np.testing.assert_array_equal(out["2"], out["hidden"])
