"""Every layer type, built and run in ONNX Runtime, against the NumPy reference."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from onnxforge.builder import SpecError, build, load_spec, reference
from tests.builder.cases import Case, layer_cases
from tests.builder.runs import assert_close, run_onnx

CASES = layer_cases()


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_layer_matches_reference(case: Case, write_spec: Callable[..., Path]) -> None:
    spec = load_spec(write_spec(case.document, case.weights))
    got = run_onnx(spec, case.inputs)["output"]
    want = reference.forward(spec, case.inputs)
    assert got.shape == (len(case.inputs), *spec.output_shape)
    assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_reference_dense_is_the_weighted_sum(write_spec: Callable[..., Path]) -> None:
    w = np.array([[1.0, -2.0], [0.5, 3.0], [0.0, 1.0]], dtype=np.float32)
    b = np.array([0.25, -1.0], dtype=np.float32)
    path = write_spec(
        {"name": "sum", "input": {"shape": [3]}, "layers": [{"type": "dense", "units": 2}]},
        {"0.weight": w, "0.bias": b},
    )
    x = np.array([[1.0, 2.0, 3.0]], dtype=np.float32)
    # 1*1 + 2*0.5 + 3*0 + 0.25 = 2.25 ; 1*-2 + 2*3 + 3*1 - 1 = 6
    np.testing.assert_array_equal(reference.forward(load_spec(path), x), [[2.25, 6.0]])
    np.testing.assert_allclose(run_onnx(load_spec(path), x)["output"], [[2.25, 6.0]])


def test_batchnorm_uses_running_statistics(write_spec: Callable[..., Path]) -> None:
    params = {
        "0.scale": np.array([2.0, 1.0], np.float32),
        "0.bias": np.array([1.0, 0.0], np.float32),
        "0.mean": np.array([3.0, -1.0], np.float32),
        "0.var": np.array([4.0, 0.25], np.float32),
    }
    path = write_spec(
        {
            "name": "bn",
            "input": {"shape": [2]},
            "layers": [{"type": "batchnorm", "epsilon": 1e-12}],
        },
        params,
    )
    x = np.array([[5.0, 0.0]], dtype=np.float32)
    # (5-3)/2*2+1 = 3 ; (0+1)/0.5*1+0 = 2 ; independent of the batch's own statistics
    np.testing.assert_allclose(reference.forward(load_spec(path), x), [[3.0, 2.0]], rtol=1e-6)
    np.testing.assert_allclose(run_onnx(load_spec(path), x)["output"], [[3.0, 2.0]], rtol=1e-6)


def test_seeded_initialisation_is_deterministic_and_scaled(
    write_spec: Callable[..., Path],
) -> None:
    document = {
        "name": "init",
        "seed": 5,
        "input": {"shape": [400]},
        "layers": [
            {"type": "dense", "units": 300, "init": "he_normal"},
            {"type": "dense", "units": 10, "init": "glorot_uniform"},
        ],
    }
    first, second = load_spec(write_spec(document)), load_spec(write_spec(document))
    for a, b in zip(first.layers, second.layers, strict=True):
        np.testing.assert_array_equal(a.params["weight"], b.params["weight"])
    he = first.layers[0].params["weight"]
    assert abs(he.std() - np.sqrt(2 / 400)) < 0.02 * np.sqrt(2 / 400)
    glorot = first.layers[1].params["weight"]
    limit = np.sqrt(6 / (300 + 10))
    assert glorot.max() <= limit and glorot.min() >= -limit and glorot.max() > 0.9 * limit
    np.testing.assert_array_equal(first.layers[0].params["bias"], np.zeros(300))
    other = load_spec(write_spec({**document, "seed": 6}))
    assert not np.array_equal(other.layers[0].params["weight"], he)


def test_layers_without_bias_or_affine_parameters(write_spec: Callable[..., Path]) -> None:
    rng = np.random.default_rng(2)
    document = {
        "name": "plain",
        "input": {"shape": [5]},
        "layers": [
            {"type": "dense", "units": 4, "use_bias": False, "activation": "tanh"},
            {"type": "batchnorm", "affine": False},
            {"type": "layernorm", "use_bias": False},
        ],
    }
    weights = {
        "0.weight": rng.normal(size=(5, 4)).astype(np.float32),
        "1.running_mean": rng.normal(size=4).astype(np.float32),
        "1.running_var": rng.uniform(0.5, 2, size=4).astype(np.float32),
        "2.weight": rng.normal(size=4).astype(np.float32),
    }
    spec = load_spec(write_spec(document, weights))
    model = build(spec)
    assert [n.op_type for n in model.graph.node][:2] == ["MatMul", "Tanh"]  # no Add for no bias
    x = rng.normal(size=(6, 5)).astype(np.float32)
    h = np.tanh(x.astype(np.float64) @ weights["0.weight"])
    h = (h - weights["1.running_mean"]) / np.sqrt(weights["1.running_var"] + 1e-5)
    h = (h - h.mean(-1, keepdims=True)) / np.sqrt(h.var(-1, keepdims=True) + 1e-5)
    want = h * weights["2.weight"]
    np.testing.assert_allclose(reference.forward(spec, x), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(run_onnx(spec, x)["output"], want, rtol=1e-5, atol=1e-5)


def test_a_parameter_the_layer_does_not_take_is_refused(write_spec: Callable[..., Path]) -> None:
    document = {
        "name": "plain",
        "input": {"shape": [5]},
        "layers": [{"type": "dense", "units": 4, "use_bias": False}],
    }
    weights = {"0.weight": np.ones((5, 4), np.float32), "0.bias": np.ones(4, np.float32)}
    with pytest.raises(SpecError, match=r"holds '0.bias', but the layer is declared without bias"):
        load_spec(write_spec(document, weights))
