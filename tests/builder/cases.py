"""Conformance cases: small specs with inputs, replayed against the reference and ONNX Runtime.

Each case is a spec document plus the rows to feed it. The same list serves every backend
(the fp32 file, later the quantized variants with their own tolerances).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from onnxforge.builder.activations import ACTIVATIONS

# Values where naive formulas overflow, underflow or lose precision, in float32 range.
EXTREMES = np.array(
    [-1e30, -1e4, -100.0, -88.7, -30.0, -1.0, -1e-7, 0.0, 1e-7, 1.0, 30.0, 88.7, 100.0, 1e4, 1e30],
    dtype=np.float32,
)
FEATURES = EXTREMES.size


@dataclass(frozen=True)
class Case:
    id: str
    document: dict[str, Any]
    inputs: np.ndarray
    weights: dict[str, np.ndarray] | None = field(default=None)


def _rows(seed: int, rows: int = 32, features: int = FEATURES, scale: float = 3.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(rows, features)) * scale).astype(np.float32)


def activation_variants() -> list[tuple[str, Any]]:
    """Every activation, once with defaults and once more for each non-default parameter."""
    variants: list[tuple[str, Any]] = [(name, name) for name in ACTIVATIONS]
    variants += [
        ("leaky_relu-alpha0.2", {"name": "leaky_relu", "alpha": 0.2}),
        ("elu-alpha0.5", {"name": "elu", "alpha": 0.5}),
        ("selu-custom", {"name": "selu", "alpha": 1.5, "gamma": 1.1}),
        ("hard_sigmoid-pytorch", {"name": "hard_sigmoid", "alpha": 1 / 6, "beta": 0.5}),
        ("gelu-tanh", {"name": "gelu", "approximate": "tanh"}),
    ]
    return variants


def activation_case(case_id: str, activation: Any, opset: int | None = None) -> Case:
    """An activation layer alone, fed random rows and a row of extreme values."""
    document: dict[str, Any] = {
        "name": "act",
        "input": {"name": "x", "shape": [FEATURES]},
        "output": {"name": "y"},
        "layers": [{"type": "activation", "activation": activation}],
    }
    if opset is not None:
        document["opset"] = opset
    inputs = np.concatenate([EXTREMES[np.newaxis], -EXTREMES[np.newaxis], _rows(1)])
    return Case(case_id, document, inputs)


def layer_cases() -> list[Case]:
    """One case per layer type, with parameters that are not the identity."""
    rng = np.random.default_rng(7)
    features = 6

    def doc(name: str, layers: list[dict[str, Any]], shape: list[int] | None = None) -> dict:
        return {
            "name": name,
            "input": {"name": "x", "shape": shape or [features]},
            "layers": layers,
        }

    norm_weights = {
        "0.scale": rng.uniform(0.5, 2, features).astype(np.float32),
        "0.bias": rng.normal(size=features).astype(np.float32),
        "0.mean": rng.normal(size=features).astype(np.float32),
        "0.var": rng.uniform(0.1, 3, features).astype(np.float32),
    }
    ln_weights = {key: norm_weights[key] for key in ("0.scale", "0.bias")}
    dense_weights = {
        "0.weight": rng.normal(size=(features, 5)).astype(np.float32),
        "0.bias": rng.normal(size=5).astype(np.float32),
    }
    return [
        Case(
            "dense",
            doc("dense", [{"type": "dense", "units": 5}]),
            _rows(2, features=6),
            dense_weights,
        ),
        Case(
            "dense-seeded-init",
            doc(
                "dense-init",
                [
                    {"type": "dense", "units": 9, "activation": "tanh", "init": "he_uniform"},
                    {"type": "dense", "units": 3, "init": "lecun_normal"},
                ],
            ),
            _rows(3, features=6),
        ),
        Case(
            "batchnorm",
            doc("bn", [{"type": "batchnorm", "epsilon": 1e-3}]),
            _rows(4, features=6),
            norm_weights,
        ),
        Case(
            "batchnorm-3d",
            doc("bn3", [{"type": "batchnorm"}], shape=[6, 4]),
            _rows(5, features=24).reshape(-1, 6, 4),
            norm_weights,
        ),
        Case(
            "layernorm",
            doc("ln", [{"type": "layernorm", "epsilon": 1e-4}]),
            _rows(6, features=6, scale=50.0),
            ln_weights,
        ),
        Case("dropout", doc("drop", [{"type": "dropout", "rate": 0.3}]), _rows(8, features=6)),
        Case(
            "normalize-vector",
            doc(
                "norm",
                [
                    {
                        "type": "normalize",
                        "mean": [0.5, -1, 2, 0, 0, 3],
                        "std": [2, 0.5, 1, 1, 3, 0.25],
                    },
                ],
            ),
            _rows(9, features=6),
        ),
        Case(
            "normalize-scalar",
            doc("norm1", [{"type": "normalize", "mean": 1.5, "std": 4}]),
            _rows(10, features=6),
        ),
        Case(
            "flatten",
            doc(
                "flat",
                [
                    {"type": "flatten"},
                    {"type": "dense", "units": 4, "activation": "relu"},
                ],
                shape=[2, 3],
            ),
            _rows(11, features=6).reshape(-1, 2, 3),
        ),
        Case(
            "dense-3d",
            doc("dense3", [{"type": "dense", "units": 3, "activation": "softmax"}], shape=[4, 6]),
            _rows(12, features=24).reshape(-1, 4, 6),
        ),
    ]
