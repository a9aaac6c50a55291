"""Spec -> ``onnx.ModelProto``: one small function per layer type.

A dense layer is ``MatMul`` then ``Add`` then its activation, named after the layer
(``dense_0/MatMul``, ``dense_0/weight``), so the graph reads like the spec in Netron.
ONNX Runtime fuses these at load time; the file stays readable.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxforge.builder import metadata, runtime
from onnxforge.builder.schema import Activation
from onnxforge.builder.spec import Layer, Spec

BATCH = "batch"  # the symbolic name of the dynamic first dimension


class _Graph:
    """Collects nodes and initializers in the order they are made (which keeps bytes stable)."""

    def __init__(self, opset: int) -> None:
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []

    def constant(self, name: str, value: np.ndarray | float) -> str:
        array = np.asarray(value, dtype=np.float32)
        self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def node(self, op: str, inputs: list[str], name: str, **attrs: Any) -> str:
        self.nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
        return name

    def rename(self, old: str, new: str) -> None:
        for node in self.nodes:
            for names in (node.input, node.output):
                for i, tensor in enumerate(names):
                    if tensor == old:
                        names[i] = new


def _gelu(g: _Graph, x: str, prefix: str, approximate: str) -> str:
    if g.opset >= 20:
        return g.node("Gelu", [x], f"{prefix}/Gelu", approximate=approximate)
    half = g.constant(f"{prefix}/Gelu/half", 0.5)
    one = g.constant(f"{prefix}/Gelu/one", 1.0)
    if approximate == "tanh":
        cube = g.node(
            "Mul", [g.node("Mul", [x, x], f"{prefix}/Gelu/Square"), x], f"{prefix}/Gelu/Cube"
        )
        coef = g.constant(f"{prefix}/Gelu/coef", 0.044715)
        inner = g.node(
            "Add",
            [x, g.node("Mul", [cube, coef], f"{prefix}/Gelu/MulCoef")],
            f"{prefix}/Gelu/Inner",
        )
        scale = g.constant(f"{prefix}/Gelu/sqrt_2_over_pi", math.sqrt(2.0 / math.pi))
        core = g.node(
            "Tanh", [g.node("Mul", [inner, scale], f"{prefix}/Gelu/Scale")], f"{prefix}/Gelu/Tanh"
        )
    else:
        root2 = g.constant(f"{prefix}/Gelu/sqrt_2", math.sqrt(2.0))
        core = g.node(
            "Erf", [g.node("Div", [x, root2], f"{prefix}/Gelu/Div")], f"{prefix}/Gelu/Erf"
        )
    gate = g.node("Add", [core, one], f"{prefix}/Gelu/AddOne")
    return g.node(
        "Mul", [g.node("Mul", [x, gate], f"{prefix}/Gelu/Mul"), half], f"{prefix}/Gelu/Half"
    )


def _mish(g: _Graph, x: str, prefix: str) -> str:
    if g.opset >= 18:
        return g.node("Mish", [x], f"{prefix}/Mish")
    soft = g.node("Softplus", [x], f"{prefix}/Mish/Softplus")
    return g.node("Mul", [x, g.node("Tanh", [soft], f"{prefix}/Mish/Tanh")], f"{prefix}/Mish")


def _single(op: str, **fixed: object) -> Callable[..., str]:
    """An activation that is one ONNX operator, the spec's parameters as its attributes."""

    def emit(g: _Graph, x: str, prefix: str, **params: object) -> str:
        return g.node(op, [x], f"{prefix}/{op}", **fixed, **params)

    return emit


ACTIVATIONS: Mapping[str, Callable[..., str]] = {
    "identity": lambda g, x, prefix: x,
    "relu": _single("Relu"),
    "leaky_relu": _single("LeakyRelu"),
    "sigmoid": _single("Sigmoid"),
    "tanh": _single("Tanh"),
    "softmax": _single("Softmax", axis=-1),
    "log_softmax": _single("LogSoftmax", axis=-1),
    "gelu": _gelu,
    "elu": _single("Elu"),
    "selu": _single("Selu"),
    "softplus": _single("Softplus"),
    "softsign": _single("Softsign"),
    "hard_sigmoid": _single("HardSigmoid"),
    "silu": lambda g, x, prefix: g.node(
        "Mul", [x, g.node("Sigmoid", [x], f"{prefix}/Silu/Sigmoid")], f"{prefix}/Silu"
    ),
    "mish": _mish,
}


def _activate(g: _Graph, activation: Activation, x: str, prefix: str) -> str:
    return ACTIVATIONS[activation.name](g, x, prefix, **activation.params)


def _dense(g: _Graph, layer: Layer, x: str, prefix: str, layout: str) -> str:
    weight = layer.params["weight"]
    if layout == "out_in":
        weight = weight.T  # stored as (in, out) so that MatMul needs no Transpose node
    summed = g.node("MatMul", [x, g.constant(f"{prefix}/weight", weight)], f"{prefix}/MatMul")
    if "bias" not in layer.params:
        return _activate(g, layer.activated(), summed, prefix)
    biased = g.node(
        "Add", [summed, g.constant(f"{prefix}/bias", layer.params["bias"])], f"{prefix}/Add"
    )
    return _activate(g, layer.activated(), biased, prefix)


def _batchnorm(g: _Graph, layer: Layer, x: str, prefix: str, layout: str) -> str:
    inputs = [x] + [
        g.constant(f"{prefix}/{key}", layer.params[key]) for key in ("scale", "bias", "mean", "var")
    ]
    return g.node(
        "BatchNormalization", inputs, f"{prefix}/BatchNormalization", epsilon=layer.epsilon
    )


def _layernorm(g: _Graph, layer: Layer, x: str, prefix: str, layout: str) -> str:
    inputs = [x] + [g.constant(f"{prefix}/{key}", layer.params[key]) for key in ("scale", "bias")]
    return g.node(
        "LayerNormalization", inputs, f"{prefix}/LayerNormalization", axis=-1, epsilon=layer.epsilon
    )


def _normalize(g: _Graph, layer: Layer, x: str, prefix: str, layout: str) -> str:
    centred = g.node(
        "Sub", [x, g.constant(f"{prefix}/mean", layer.params["mean"])], f"{prefix}/Sub"
    )
    return g.node(
        "Div", [centred, g.constant(f"{prefix}/std", layer.params["std"])], f"{prefix}/Div"
    )


LAYERS: Mapping[str, Callable[[_Graph, Layer, str, str, str], str]] = {
    "dense": _dense,
    "activation": lambda g, layer, x, prefix, layout: _activate(g, layer.activated(), x, prefix),
    "batchnorm": _batchnorm,
    "layernorm": _layernorm,
    "dropout": lambda g, layer, x, prefix, layout: x,  # identity at inference: no node
    "normalize": _normalize,
    "flatten": lambda g, layer, x, prefix, layout: g.node(
        "Flatten", [x], f"{prefix}/Flatten", axis=1
    ),
}


def layer_prefix(layer: Layer) -> str:
    """``hidden`` for a named layer, ``dense_0`` for an unnamed one."""
    return layer.config.name or f"{layer.type}_{layer.index}"


def _value_info(name: str, shape: tuple[int, ...]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, [BATCH, *shape])


def _name_output(g: _Graph, tensor: str, name: str, graph_input: str, named: set[str]) -> None:
    """Make ``tensor`` available as graph output ``name``: rename it, or copy if it is taken."""
    if tensor == graph_input or tensor in named:
        g.nodes.append(helper.make_node("Identity", [tensor], [name], name=f"{name}/Identity"))
    else:
        g.rename(tensor, name)
    named.add(name)


def build(spec: Spec) -> onnx.ModelProto:
    """The fp32 ONNX model for ``spec``: checked, shapes inferred, bytes reproducible."""
    g = _Graph(spec.opset)
    tensors = []
    value = spec.input_name
    for layer in spec.layers:
        value = LAYERS[layer.type](g, layer, value, layer_prefix(layer), spec.weight_layout)
        tensors.append(value)
    named: set[str] = set()
    for name in spec.output_names:
        tensor = tensors[spec.output_layer(name).index]
        _name_output(g, tensor, name, spec.input_name, named)
        # Layers that pass their input through (dropout) share the tensor: follow the rename.
        tensors = [name if t == tensor else t for t in tensors]
    graph = helper.make_graph(
        g.nodes,
        spec.name,
        [_value_info(spec.input_name, spec.input_shape)],
        [_value_info(name, spec.output_layer(name).output_shape) for name in spec.output_names],
        initializer=g.initializers,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", spec.opset)],
        ir_version=runtime.ir_version_for(spec.opset),
        producer_name="onnxforge",
        producer_version=_version(),
        doc_string=spec.document.description,
    )
    props = {
        metadata.SPEC_SHA256: spec.sha256,
        metadata.VARIANT: "fp32",
        metadata.VERSION: _version(),
    }
    if spec.document.input.allow_non_finite:
        props[metadata.ALLOW_NON_FINITE] = "true"
    metadata.set_props(model, props)
    model = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    onnx.checker.check_model(model, full_check=True)
    return model


def _version() -> str:
    from onnxforge._version import __version__

    return __version__
