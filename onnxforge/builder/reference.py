"""The NumPy forward pass: what a spec computes, written straight from the spec.

This module never reads an ONNX graph: it is the independent oracle every built file is
checked against. It computes in float64 (so its own rounding is negligible next to a
float32 runtime's) and returns float32, the model's output dtype. Each activation and
layer is one small function in an explicit table.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import numpy as np

from onnxforge.builder.schema import Activation
from onnxforge.builder.spec import Layer, Spec

_erf = np.vectorize(math.erf, otypes=[np.float64])


def _sigmoid(x: np.ndarray) -> np.ndarray:
    # exp of -|x| never overflows; the two branches are the same function.
    e = np.exp(-np.abs(x))
    return np.asarray(np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e)))


def _softplus(x: np.ndarray) -> np.ndarray:
    return np.asarray(np.logaddexp(0.0, x))


def _log_softmax(x: np.ndarray) -> np.ndarray:
    shifted = x - x.max(axis=-1, keepdims=True)
    return np.asarray(shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True)))


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return np.asarray(e / e.sum(axis=-1, keepdims=True))


def _elu(x: np.ndarray, alpha: float) -> np.ndarray:
    return np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0.0)))


def _gelu(x: np.ndarray, approximate: str) -> np.ndarray:
    if approximate == "tanh":
        return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))
    return np.asarray(0.5 * x * (1.0 + _erf(x / math.sqrt(2.0))))


ACTIVATIONS: Mapping[str, Callable[..., np.ndarray]] = {
    "identity": lambda x: x,
    "relu": lambda x: np.maximum(x, 0.0),
    "leaky_relu": lambda x, alpha: np.where(x >= 0, x, alpha * x),
    "sigmoid": _sigmoid,
    "tanh": np.tanh,
    "softmax": _softmax,
    "log_softmax": _log_softmax,
    "gelu": _gelu,
    "elu": _elu,
    "selu": lambda x, alpha, gamma: gamma * _elu(x, alpha),
    "softplus": _softplus,
    "softsign": lambda x: x / (1.0 + np.abs(x)),
    "hard_sigmoid": lambda x, alpha, beta: np.clip(alpha * x + beta, 0.0, 1.0),
    "silu": lambda x: x * _sigmoid(x),
    "mish": lambda x: x * np.tanh(_softplus(x)),
}


def activate(activation: Activation, x: np.ndarray) -> np.ndarray:
    return ACTIVATIONS[activation.name](x, **activation.params)


def _param(layer: Layer, key: str) -> np.ndarray:
    return layer.params[key].astype(np.float64)


def _dense(layer: Layer, x: np.ndarray, layout: str) -> np.ndarray:
    weight = _param(layer, "weight")
    # out_in is PyTorch's nn.Linear: y = x W^T + b.
    summed = x @ weight if layout == "in_out" else x @ weight.T
    if "bias" in layer.params:
        summed = summed + _param(layer, "bias")
    return activate(layer.activated(), summed)


def _batchnorm(layer: Layer, x: np.ndarray, layout: str) -> np.ndarray:
    # Parameters index the channel axis (axis 1 of the batched tensor).
    axes = (-1,) + (1,) * (x.ndim - 2)

    def shaped(key: str) -> np.ndarray:
        return _param(layer, key).reshape(axes)

    scale = shaped("scale") / np.sqrt(shaped("var") + layer.epsilon)
    return np.asarray((x - shaped("mean")) * scale + shaped("bias"))


def _layernorm(layer: Layer, x: np.ndarray, layout: str) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    normed = (x - mean) / np.sqrt(var + layer.epsilon)
    return np.asarray(normed * _param(layer, "scale") + _param(layer, "bias"))


LAYERS: Mapping[str, Callable[[Layer, np.ndarray, str], np.ndarray]] = {
    "dense": _dense,
    "activation": lambda layer, x, layout: activate(layer.activated(), x),
    "batchnorm": _batchnorm,
    "layernorm": _layernorm,
    "dropout": lambda layer, x, layout: x,  # identity at inference
    "normalize": lambda layer, x, layout: (x - _param(layer, "mean")) / _param(layer, "std"),
    "flatten": lambda layer, x, layout: x.reshape(x.shape[0], -1),
}


def layer_outputs(spec: Spec, x: np.ndarray) -> list[np.ndarray]:
    """The float64 output of every layer, in order: where two implementations part ways."""
    x = np.asarray(x)
    expected = spec.input_shape
    if x.ndim != len(expected) + 1 or tuple(x.shape[1:]) != expected:
        raise ValueError(
            f"input must have shape (batch, {', '.join(map(str, expected))}), got {x.shape}"
        )
    value = x.astype(np.float64)
    outputs = []
    with np.errstate(over="ignore", under="ignore"):
        for layer in spec.layers:
            value = LAYERS[layer.type](layer, value, spec.weight_layout)
            outputs.append(value)
    return outputs


def run(spec: Spec, x: np.ndarray) -> dict[str, np.ndarray]:
    """Every graph output by name (the model output, then exposed layers), as float32."""
    outputs = layer_outputs(spec, x)
    with np.errstate(over="ignore"):
        return {
            name: outputs[spec.output_layer(name).index].astype(np.float32)
            for name in spec.output_names
        }


def forward(spec: Spec, x: np.ndarray) -> np.ndarray:
    """The model's output for a batch ``x`` of shape (batch, *input shape), as float32.

    What a quantized variant's file computes is ``builder.emulate.forward``'s to say: it
    reads that file's scales, zero points and weights; this pass reads no file.
    """
    with np.errstate(over="ignore"):
        return layer_outputs(spec, x)[-1].astype(np.float32)
