"""The rows of an ONNX file's summary, and the metadata it records.

A file built from a spec (it records ``onnxforge.spec_sha256``) gets one row per layer: its
nodes grouped by the layer prefix of their names (``hidden/MatMul``, ``hidden/MatMul_quant``);
nodes whose names carry no prefix -- the quantizer's ``hidden_QuantizeLinear``, fp16's
``graph_input_cast0`` -- join the layer whose tensor they read (or, reading a graph input, the
layer that reads theirs). Any other file gets one row per node.

Each initializer is counted once, with the first row that reads it, in the role
``onnxgraph.Graph`` finds for it; a row's multiply-adds are the sum of its nodes'.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

import onnx
from onnx import helper

from onnxforge.builder import metadata
from onnxforge.builder.activations import ACTIVATIONS
from onnxforge.builder.onnxgraph import Graph, dtype_name, nbytes, opsets
from onnxforge.builder.summary import TIMES, Row, Summary, Tensor, format_activation

# ONNX operators that are one activation, and their attributes named as in the spec.
_ACTIVATION_OPS = {
    "Relu": "relu",
    "LeakyRelu": "leaky_relu",
    "Sigmoid": "sigmoid",
    "Tanh": "tanh",
    "Softmax": "softmax",
    "LogSoftmax": "log_softmax",
    "Gelu": "gelu",
    "Elu": "elu",
    "Selu": "selu",
    "Softplus": "softplus",
    "Softsign": "softsign",
    "HardSigmoid": "hard_sigmoid",
    "Mish": "mish",
}
# Activations the graph builder spells out in several nodes named ``<prefix>/<Name>/...``.
_COMPOSITE_ACTIVATIONS = {"Gelu": "gelu", "Silu": "silu", "Mish": "mish"}
# Nodes that move or re-encode a layer's result without computing a new one.
_HELPER_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "Cast"})


def summarize_model(model: onnx.ModelProto, path: str, file_bytes: int) -> Summary:
    """Rows, totals and recorded metadata of an ONNX model."""
    props = metadata.props(model)
    grouped = metadata.SPEC_SHA256 in props
    graph = Graph(model)
    groups = _layer_groups(graph) if grouped else [(graph.node_label(i), [i]) for i in graph.order]
    seen: set[str] = set()
    rows = tuple(_row(graph, name, nodes, seen, grouped) for name, nodes in groups)
    producer = " ".join(part for part in (model.producer_name, model.producer_version) if part)
    imported = opsets(model)
    return Summary(
        source="model",
        path=path,
        name=model.graph.name,
        grouped=grouped,
        inputs=tuple(graph.tensor(value.name) for value in graph.inputs),
        rows=rows,
        outputs=tuple(graph.tensor(value.name) for value in model.graph.output),
        opset=imported.get("ai.onnx"),
        opset_imports=imported,
        ir_version=model.ir_version,
        producer=producer,
        variant=props.get(metadata.VARIANT),
        spec_sha256=props.get(metadata.SPEC_SHA256),
        file_bytes=file_bytes,
        accuracy=_json_prop(props, metadata.ACCURACY),
        quantization=_json_prop(props, metadata.QUANTIZATION),
        metadata=props,
        description=model.doc_string,
    )


def _layer_groups(graph: Graph) -> list[tuple[str, list[int]]]:
    """Nodes by layer prefix; unprefixed nodes join the layer they read from (or feed)."""
    layer: dict[int, str] = {}
    for i, node in enumerate(graph.nodes):
        prefix, slash, _ = node.name.partition("/")
        if slash and prefix:
            layer[i] = prefix
    changed = True
    while changed:
        changed = False
        for i, node in enumerate(graph.nodes):
            if i in layer:
                continue
            near = [graph.producer[n][0] for n in node.input if n in graph.producer]
            near += [c for n in node.output for c, _ in graph.consumers.get(n, ())]
            found = next((layer[j] for j in near if j in layer), None)
            if found is not None:
                layer[i] = found
                changed = True
    groups: dict[str, list[int]] = {}
    for i in graph.order:
        groups.setdefault(layer.get(i, graph.node_label(i)), []).append(i)

    rank = {i: position for position, i in enumerate(graph.order)}

    def position(item: tuple[str, list[int]]) -> tuple[float, int]:
        depths = [graph.depth[i] for i in item[1] if i in graph.depth]
        return (min(depths) if depths else math.inf, rank[item[1][0]])

    return sorted(groups.items(), key=position)


def _row(graph: Graph, name: str, nodes: list[int], seen: set[str], grouped: bool) -> Row:
    """One row from ``nodes``; initializers already in ``seen`` are not counted again."""
    parameters = constants = quantization = 0
    by_dtype: Counter[str] = Counter()
    parameter_by_dtype: Counter[str] = Counter()
    for i in nodes:
        for tensor_name in graph.nodes[i].input:
            if tensor_name not in graph.initializers or tensor_name in seen:
                continue
            seen.add(tensor_name)
            tensor = graph.initializers[tensor_name]
            count = math.prod(tensor.dims)
            dtype = dtype_name(tensor.data_type)
            size = nbytes(tensor.data_type, count)
            by_dtype[dtype] += size
            role = graph.role(tensor_name)
            if role == "parameter":
                parameters += count
                parameter_by_dtype[dtype] += size
            else:
                constants += count
                quantization += count if role == "quantization" else 0
    main = [i for i in nodes if graph.nodes[i].op_type not in _HELPER_OPS] or nodes
    last = graph.nodes[main[-1]]
    macs = [graph.multiply_adds(graph.nodes[i]) for i in nodes]
    activation, params = _activation(graph, nodes, grouped)
    produced = {out for i in nodes for out in graph.nodes[i].output}
    return Row(
        name=name,
        kind=", ".join(_counted(graph.nodes[i].op_type for i in nodes)),
        output=graph.tensor(last.output[0]) if last.output else Tensor("", None, None),
        parameters=parameters,
        constants=constants,
        quantization_constants=quantization,
        parameter_bytes_by_dtype=dict(sorted(parameter_by_dtype.items())),
        bytes_by_dtype=dict(sorted(by_dtype.items())),
        multiply_adds=None if None in macs else sum(m for m in macs if m is not None),
        activation=format_activation(activation, params) if activation else None,
        activation_params=params,
        outputs=tuple(out for out in graph.output_names if out in produced),
        nodes=tuple(graph.node_label(i) for i in nodes),
    )


def _activation(
    graph: Graph, nodes: list[int], grouped: bool
) -> tuple[str | None, dict[str, float | str]]:
    names = [graph.nodes[i].name for i in nodes]
    parts = [name.split("/") for name in names]
    for part in parts if grouped else ():
        # ``hidden/Gelu/Erf``, ``hidden/Silu/Sigmoid``: the builder's spelled-out forms.
        if len(part) > 2 and part[1] in _COMPOSITE_ACTIVATIONS:
            found = _COMPOSITE_ACTIVATIONS[part[1]]
            if found == "gelu":
                tanh = any(p[1:] == ["Gelu", "Tanh"] for p in parts)
                return found, {"approximate": "tanh" if tanh else "none"}
            return found, {}
    for i in reversed(nodes):
        node = graph.nodes[i]
        if node.op_type in _ACTIVATION_OPS and node.domain in ("", "ai.onnx"):
            name = _ACTIVATION_OPS[node.op_type]
            attrs = {attr.name: helper.get_attribute_value(attr) for attr in node.attribute}
            params: dict[str, float | str] = {}
            for key, default in ACTIVATIONS[name].items():
                value = attrs.get(key, default)
                params[key] = value.decode() if isinstance(value, bytes) else value
            return name, params
    return None, {}


def _counted(ops: Iterable[str]) -> list[str]:
    """Op types in order of first appearance; a repeated one once, with its count."""
    counts = Counter(ops)
    return [op if n == 1 else f"{op}{TIMES}{n}" for op, n in counts.items()]


def _json_prop(props: Mapping[str, str], key: str) -> Any:
    if key not in props:
        return None
    try:
        return json.loads(props[key])
    except ValueError:
        return props[key]
