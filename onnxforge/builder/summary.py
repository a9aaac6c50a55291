"""What a spec or an ONNX file holds: layers, shapes, parameters, bytes, multiply-adds, metadata.

``summarize(path)`` reads a spec (``.yaml``, ``.yml``, ``.json``) or an ONNX file and returns
a ``Summary``: one ``Row`` per layer and the totals, opset, IR version and recorded metadata.
Nothing here prints; ``onnxforge inspect`` draws tables and pictures from it.

**Rows.** For a spec, one row per layer as written. For a file built from a spec (it records
``onnxforge.spec_sha256``), nodes are grouped by the layer prefix of their names
(``hidden/MatMul``, ``hidden/MatMul_quant``); nodes whose names carry no prefix -- the
quantizer's ``hidden_QuantizeLinear``, fp16's ``graph_input_cast0`` -- join the layer whose
tensor they read (or, reading a graph input, the layer that reads theirs). For any other file,
one row per node.

**Numbers.** Each initializer is counted once, with the first row that reads it, as one of:

* a *parameter*: what training gives (weights, biases, norm scales and shifts, batchnorm
  statistics -- the keys a weights file holds); int8 weights count one byte each;
* a *constant*: fixed numbers -- scalars (gelu's 0.5 when spelled out in nodes), tensors
  read only by ``Sub`` or ``Div`` (a ``normalize`` layer's mean and std), and the scales and
  zero points of quantization (counted apart as well).

A spec counts its layers' values the same way, every value as float32, with two
differences from its file: a layer declared ``affine: false`` holds its neutral scale and
shift as constants (in a file they look like learned ones), and the scalars of activations
the builder spells out in several nodes are not counted.

Multiply-adds per row (per sample; the batch dimension excluded) count the multiplications an
inference kernel performs, each fused with its addition:

* dense / ``MatMul`` / ``Gemm`` and their int8 forms: inputs x units, times the product of any
  leading dimensions; the bias addition is part of them;
* normalize (``Div`` or ``Mul`` by a per-feature constant): one per element;
* batchnorm: one per element (the statistics folded into ``x * a + b``);
* layernorm: three per element (the square in the variance, x 1/sigma, x scale);
* activations, softmax, dropout, flatten and quantization steps: none.

Constant nodes (``Constant`` operators), sparse initializers and subgraphs are not counted.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx
from onnx import helper

from onnxforge.builder import metadata
from onnxforge.builder.activations import ACTIVATIONS
from onnxforge.builder.errors import ArtifactError
from onnxforge.builder.schema import Activation, BatchNormLayer, DenseLayer, LayerNormLayer
from onnxforge.builder.spec import Layer, Spec
from onnxforge.builder.weights import PARAMS

SPEC_SUFFIXES = (".yaml", ".yml", ".json")
TIMES = "\u00d7"  # the multiplication sign, in op counts (Mul, twice) and shapes (batch by 64)

Dim = int | str | None  # a size, a symbolic name ("batch"), or unknown
Shape = tuple[Dim, ...]

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
# Input slots holding scales and zero points, per quantized operator.
_QUANT_SLOTS: Mapping[str, frozenset[int]] = {
    "QuantizeLinear": frozenset({1, 2}),
    "DequantizeLinear": frozenset({1, 2}),
    "MatMulInteger": frozenset({2, 3}),
    "ConvInteger": frozenset({2, 3}),
    "DynamicQuantizeMatMul": frozenset({2, 3}),
    "MatMulIntegerToFloat": frozenset({2, 3, 4, 5}),
    "QLinearMatMul": frozenset({1, 2, 4, 5, 6, 7}),
    "QLinearConv": frozenset({1, 2, 4, 5, 6, 7}),
    "QGemm": frozenset({1, 2, 4, 5, 7, 8}),
}
_MATMUL_OPS = frozenset(
    {
        "MatMul",
        "MatMulInteger",
        "DynamicQuantizeMatMul",
        "MatMulIntegerToFloat",
        "QLinearMatMul",
        "FusedMatMul",
    }
)
_GEMM_OPS = frozenset({"Gemm", "QGemm", "FusedGemm"})
_FOUR_BIT = frozenset({"INT4", "UINT4", "FLOAT4E2M1"})


@dataclass(frozen=True)
class Tensor:
    name: str
    shape: Shape | None
    dtype: str | None

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": _listed(self.shape), "dtype": self.dtype}


@dataclass(frozen=True)
class Row:
    """One layer (or, for files not built from a spec, one node)."""

    name: str
    kind: str  # spec: the layer type; file: the node op types, in order
    output: Tensor
    parameters: int
    constants: int  # includes quantization constants
    quantization_constants: int
    parameter_bytes_by_dtype: Mapping[str, int]
    bytes_by_dtype: Mapping[str, int]  # parameters and constants
    multiply_adds: int | None  # per row; None: the shapes needed are unknown
    activation: str | None
    activation_params: Mapping[str, float | str] = field(default_factory=dict)
    outputs: tuple[str, ...] = ()  # graph outputs this row produces
    nodes: tuple[str, ...] = ()

    @property
    def parameter_bytes(self) -> int:
        return sum(self.parameter_bytes_by_dtype.values())

    @property
    def bytes(self) -> int:
        return sum(self.bytes_by_dtype.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "output": self.output.as_dict(),
            "parameters": self.parameters,
            "constants": self.constants,
            "quantization_constants": self.quantization_constants,
            "parameter_bytes": self.parameter_bytes,
            "parameter_bytes_by_dtype": dict(self.parameter_bytes_by_dtype),
            "bytes": self.bytes,
            "bytes_by_dtype": dict(self.bytes_by_dtype),
            "multiply_adds": self.multiply_adds,
            "activation": self.activation,
            "activation_params": dict(self.activation_params),
            "outputs": list(self.outputs),
            "nodes": list(self.nodes),
        }


@dataclass(frozen=True)
class Summary:
    """Everything ``onnxforge inspect`` shows about one spec or file."""

    source: str  # "spec" or "model"
    path: str
    name: str
    grouped: bool  # rows are layers (True) or single nodes (False)
    inputs: tuple[Tensor, ...]
    rows: tuple[Row, ...]
    outputs: tuple[Tensor, ...]
    opset: int | None
    opset_imports: Mapping[str, int]
    ir_version: int
    producer: str
    variant: str | None
    spec_sha256: str | None
    file_bytes: int  # the .onnx file (for a spec: its fp32 file, built in memory)
    accuracy: Any = None  # the recorded figures (parsed JSON; the raw text if it is not JSON)
    quantization: Any = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    variants: tuple[str, ...] = ()  # a spec's variants
    description: str = ""

    @property
    def totals(self) -> dict[str, Any]:
        by_dtype: Counter[str] = Counter()
        parameter_by_dtype: Counter[str] = Counter()
        for row in self.rows:
            by_dtype.update(row.bytes_by_dtype)
            parameter_by_dtype.update(row.parameter_bytes_by_dtype)
        known = [row.multiply_adds for row in self.rows if row.multiply_adds is not None]
        return {
            "parameters": sum(row.parameters for row in self.rows),
            "parameter_bytes": sum(parameter_by_dtype.values()),
            "parameter_bytes_by_dtype": dict(sorted(parameter_by_dtype.items())),
            "constants": sum(row.constants for row in self.rows),
            "quantization_constants": sum(row.quantization_constants for row in self.rows),
            "bytes": sum(by_dtype.values()),
            "bytes_by_dtype": dict(sorted(by_dtype.items())),
            "multiply_adds_per_row": sum(known),
            "multiply_adds_complete": len(known) == len(self.rows),
            "file_bytes": self.file_bytes,
        }

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "path": self.path,
            "name": self.name,
            "description": self.description,
            "rows_are": "layers" if self.grouped else "nodes",
            "inputs": [tensor.as_dict() for tensor in self.inputs],
            "layers": [row.as_dict() for row in self.rows],
            "outputs": [tensor.as_dict() for tensor in self.outputs],
            "totals": self.totals,
            "opset": self.opset,
            "opset_imports": dict(self.opset_imports),
            "ir_version": self.ir_version,
            "producer": self.producer,
            "variant": self.variant,
            "variants": list(self.variants),
            "spec_sha256": self.spec_sha256,
            "accuracy": self.accuracy,
            "quantization": self.quantization,
            "metadata": dict(self.metadata),
        }


def summarize(path: str | Path) -> Summary:
    """A spec (by its suffix) or an ONNX file; raises ``SpecError`` / ``ArtifactError``."""
    from onnxforge.builder.spec import load_spec

    path = Path(path)
    if path.suffix.lower() in SPEC_SUFFIXES:
        return summarize_spec(load_spec(path))
    return summarize_model(read_onnx(path), str(path), path.stat().st_size)


def format_activation(name: str, params: Mapping[str, float | str]) -> str:
    """``relu``, ``leaky_relu(alpha=0.1)``: numbers in their shortest exact-enough form."""
    if not params:
        return name
    shown = ", ".join(
        f"{key}={value:g}" if isinstance(value, float) else f"{key}={value}"
        for key, value in params.items()
    )
    return f"{name}({shown})"


# ------------------------------------------------------------------ specs


def summarize_spec(spec: Spec) -> Summary:
    """The spec's layers as written; file size, opset and IR version of its fp32 build."""
    from onnxforge.builder.graph import build

    model = build(spec)
    outputs_of: dict[int, list[str]] = {}
    for name in spec.output_names:
        outputs_of.setdefault(spec.output_layer(name).index, []).append(name)
    rows = tuple(_spec_row(layer, tuple(outputs_of.get(layer.index, ()))) for layer in spec.layers)
    props = metadata.props(model)
    return Summary(
        source="spec",
        path=str(spec.path) if spec.path else "<spec>",
        name=spec.name,
        grouped=True,
        inputs=(Tensor(spec.input_name, spec.input_shape, "float32"),),
        rows=rows,
        outputs=tuple(
            Tensor(name, spec.output_layer(name).output_shape, "float32")
            for name in spec.output_names
        ),
        opset=spec.opset,
        opset_imports=_opsets(model),
        ir_version=model.ir_version,
        producer=f"{model.producer_name} {model.producer_version}",
        variant=props.get(metadata.VARIANT),
        spec_sha256=spec.sha256,
        file_bytes=model.ByteSize(),
        metadata=props,
        variants=tuple(spec.document.variants),
        description=spec.document.description or "",
    )


def _learned(layer: Layer) -> set[str]:
    """The parameter keys training gives this layer (the rest are fixed constants)."""
    owned = set(PARAMS.get(layer.type, ()))
    config = layer.config
    if isinstance(config, DenseLayer) and not config.use_bias:
        owned.discard("bias")
    if isinstance(config, BatchNormLayer | LayerNormLayer) and not config.affine:
        owned -= {"scale", "bias"}
    if isinstance(config, LayerNormLayer) and not config.use_bias:
        owned.discard("bias")
    return owned


def _spec_multiply_adds(layer: Layer) -> int:
    elements = math.prod(layer.output_shape)
    if isinstance(layer.config, DenseLayer):
        return math.prod(layer.input_shape) * layer.config.units
    if layer.type in ("normalize", "batchnorm"):
        return elements
    if layer.type == "layernorm":
        return 3 * elements
    return 0


def _spec_row(layer: Layer, outputs: tuple[str, ...]) -> Row:
    learned = _learned(layer)
    parameters = sum(array.size for key, array in layer.params.items() if key in learned)
    constants = sum(array.size for key, array in layer.params.items() if key not in learned)
    activation: Activation | None = layer.activation
    if activation is not None and activation.name == "identity":
        activation = None
    params = activation.params if activation else {}
    return Row(
        name=layer.name,
        kind=layer.type,
        output=Tensor(outputs[0] if outputs else "", layer.output_shape, "float32"),
        parameters=parameters,
        constants=constants,
        quantization_constants=0,
        parameter_bytes_by_dtype={"float32": 4 * parameters} if parameters else {},
        bytes_by_dtype={"float32": 4 * (parameters + constants)} if layer.params else {},
        multiply_adds=_spec_multiply_adds(layer),
        activation=format_activation(activation.name, params) if activation else None,
        activation_params=params,
        outputs=outputs,
    )


# ------------------------------------------------------------------ ONNX files


def read_onnx(path: Path) -> onnx.ModelProto:
    """The file's model without its external data (sizes come from the shapes)."""
    if path.is_dir():
        raise ArtifactError(f"{path}: is a folder; give an ONNX file, a spec or a model name")
    if not path.is_file():
        raise ArtifactError(f"{path}: no such file")
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ArtifactError(f"{path}: cannot be read: {error.strerror or error}") from None
    model = onnx.ModelProto()
    expected = f"inspect reads ONNX files and specs ({', '.join(SPEC_SUFFIXES)})"
    try:
        model.ParseFromString(data)
    except Exception:
        raise ArtifactError(
            f"{path}: not an ONNX model (the bytes do not parse); {expected}"
        ) from None
    if model.ir_version <= 0 or not model.HasField("graph") or not model.opset_import:
        raise ArtifactError(
            f"{path}: not an ONNX model (no IR version, graph or opset); {expected}"
        )
    return model


def summarize_model(model: onnx.ModelProto, path: str, file_bytes: int) -> Summary:
    """Rows, totals and recorded metadata of an ONNX model."""
    props = metadata.props(model)
    grouped = metadata.SPEC_SHA256 in props
    graph = _Graph(model, grouped)
    groups = graph.layer_groups() if grouped else [(graph.node_label(i), [i]) for i in graph.order]
    seen: set[str] = set()
    rows = tuple(graph.row(name, nodes, seen) for name, nodes in groups)
    producer = " ".join(part for part in (model.producer_name, model.producer_version) if part)
    opsets = _opsets(model)
    return Summary(
        source="model",
        path=path,
        name=model.graph.name,
        grouped=grouped,
        inputs=tuple(graph.tensor(value.name) for value in graph.inputs),
        rows=rows,
        outputs=tuple(graph.tensor(value.name) for value in model.graph.output),
        opset=opsets.get("ai.onnx"),
        opset_imports=opsets,
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


class _Graph:
    """The node graph with inferred shapes, producers and consumers of every tensor."""

    def __init__(self, model: onnx.ModelProto, grouped: bool) -> None:
        self.grouped = grouped
        try:
            inferred = onnx.shape_inference.infer_shapes(model)
        except Exception:  # unknown domains, invalid graphs: use what the file records
            inferred = model
        g = inferred.graph
        self.nodes = list(g.node)
        self.initializers = {tensor.name: tensor for tensor in g.initializer}
        self.inputs = [value for value in g.input if value.name not in self.initializers]
        self.output_names = [value.name for value in g.output]
        self.values = {value.name: value for value in (*g.input, *g.value_info, *g.output)}
        self.producer: dict[str, tuple[int, int]] = {}
        self.consumers: dict[str, list[tuple[int, int]]] = {}
        for i, node in enumerate(self.nodes):
            for slot, name in enumerate(node.output):
                if name:
                    self.producer[name] = (i, slot)
            for slot, name in enumerate(node.input):
                if name:
                    self.consumers.setdefault(name, []).append((i, slot))
        self.order = self._topological()
        self.depth = self._depths()

    def _topological(self) -> list[int]:
        """Node indices in a dependency order, stable (files from some tools are not sorted)."""
        # What each node still waits for: tensors other nodes make (not inputs, not constants).
        waiting = {
            i: {name for name in node.input if name in self.producer}
            for i, node in enumerate(self.nodes)
        }
        order: list[int] = []
        ready = sorted(i for i, names in waiting.items() if not names)
        while ready:
            i = ready.pop(0)
            order.append(i)
            fresh = []
            for name in self.nodes[i].output:
                for j, _ in self.consumers.get(name, ()):
                    if j in waiting and name in waiting[j]:
                        waiting[j].discard(name)
                        if not waiting[j] and j not in order:
                            fresh.append(j)
            ready = sorted({*ready, *fresh})
        placed = set(order)
        return order + [i for i in range(len(self.nodes)) if i not in placed]  # cycles: as stored

    def _depths(self) -> dict[int, int]:
        """Distance from the graph inputs along the data path (nodes reading only constants
        have none)."""
        depth: dict[int, int] = {}
        inputs = {value.name for value in self.inputs}
        for i in self.order:
            node = self.nodes[i]
            reached = [0 for name in node.input if name in inputs]
            reached += [
                depth[self.producer[name][0]] + 1
                for name in node.input
                if name in self.producer and self.producer[name][0] in depth
            ]
            if reached:
                depth[i] = max(reached)
        return depth

    def node_label(self, i: int) -> str:
        return self.nodes[i].name or f"{self.nodes[i].op_type}#{i}"

    def layer_groups(self) -> list[tuple[str, list[int]]]:
        """Nodes by layer prefix; unprefixed nodes join the layer they read from (or feed)."""
        layer: dict[int, str] = {}
        for i, node in enumerate(self.nodes):
            prefix, slash, _ = node.name.partition("/")
            if slash and prefix:
                layer[i] = prefix
        changed = True
        while changed:
            changed = False
            for i, node in enumerate(self.nodes):
                if i in layer:
                    continue
                near = [self.producer[n][0] for n in node.input if n in self.producer]
                near += [c for n in node.output for c, _ in self.consumers.get(n, ())]
                found = next((layer[j] for j in near if j in layer), None)
                if found is not None:
                    layer[i] = found
                    changed = True
        groups: dict[str, list[int]] = {}
        for i in self.order:
            groups.setdefault(layer.get(i, self.node_label(i)), []).append(i)

        rank = {i: position for position, i in enumerate(self.order)}

        def position(item: tuple[str, list[int]]) -> tuple[float, int]:
            depths = [self.depth[i] for i in item[1] if i in self.depth]
            return (min(depths) if depths else math.inf, rank[item[1][0]])

        return sorted(groups.items(), key=position)

    def tensor(self, name: str) -> Tensor:
        value = self.values.get(name)
        if value is None or not value.type.HasField("tensor_type"):
            if name in self.initializers:
                init = self.initializers[name]
                return Tensor(name, tuple(init.dims), _dtype_name(init.data_type))
            return Tensor(name, None, None)
        tensor_type = value.type.tensor_type
        shape: Shape | None = None
        if tensor_type.HasField("shape"):
            shape = tuple(
                dim.dim_value
                if dim.HasField("dim_value")
                else (dim.dim_param if dim.HasField("dim_param") else None)
                for dim in tensor_type.shape.dim
            )
        return Tensor(name, shape, _dtype_name(tensor_type.elem_type))

    def shape(self, name: str) -> Shape | None:
        if name in self.initializers:
            return tuple(self.initializers[name].dims)
        return self.tensor(name).shape

    def row(self, name: str, nodes: list[int], seen: set[str]) -> Row:
        """One row from ``nodes``; initializers already in ``seen`` are not counted again."""
        parameters = constants = quantization = 0
        by_dtype: Counter[str] = Counter()
        parameter_by_dtype: Counter[str] = Counter()
        for i in nodes:
            for tensor_name in self.nodes[i].input:
                if tensor_name not in self.initializers or tensor_name in seen:
                    continue
                seen.add(tensor_name)
                tensor = self.initializers[tensor_name]
                count = math.prod(tensor.dims)
                dtype = _dtype_name(tensor.data_type)
                size = _nbytes(tensor.data_type, count)
                by_dtype[dtype] += size
                role = self._role(tensor_name)
                if role == "parameter":
                    parameters += count
                    parameter_by_dtype[dtype] += size
                else:
                    constants += count
                    quantization += count if role == "quantization" else 0
        main = [i for i in nodes if self.nodes[i].op_type not in _HELPER_OPS] or nodes
        last = self.nodes[main[-1]]
        macs = [self._multiply_adds(self.nodes[i]) for i in nodes]
        activation, params = self._activation(nodes)
        produced = {out for i in nodes for out in self.nodes[i].output}
        return Row(
            name=name,
            kind=", ".join(_counted(self.nodes[i].op_type for i in nodes)),
            output=self.tensor(last.output[0]) if last.output else Tensor("", None, None),
            parameters=parameters,
            constants=constants,
            quantization_constants=quantization,
            parameter_bytes_by_dtype=dict(sorted(parameter_by_dtype.items())),
            bytes_by_dtype=dict(sorted(by_dtype.items())),
            multiply_adds=None if None in macs else sum(m for m in macs if m is not None),
            activation=format_activation(activation, params) if activation else None,
            activation_params=params,
            outputs=tuple(out for out in self.output_names if out in produced),
            nodes=tuple(self.node_label(i) for i in nodes),
        )

    def _role(self, name: str) -> str:
        """``parameter``, ``constant`` (a scalar, or read by Sub / Div) or ``quantization``."""
        uses = self.consumers.get(name, [])
        if uses and all(self._quantization_use(i, slot) for i, slot in uses):
            return "quantization"
        if not self.initializers[name].dims:  # a number in a formula: gelu's 0.5, an epsilon
            return "constant"
        if uses and all(self.nodes[i].op_type in ("Sub", "Div") for i, _ in uses):
            return "constant"
        return "parameter"

    def _quantization_use(self, i: int, slot: int) -> bool:
        node = self.nodes[i]
        if slot in _QUANT_SLOTS.get(node.op_type, ()):
            return True
        # ONNX Runtime's dynamic MatMul: weight scale x the scale DynamicQuantizeLinear found.
        if node.op_type == "Mul":
            for other in node.input:
                source = self.producer.get(other)
                if source and self.nodes[source[0]].op_type == "DynamicQuantizeLinear":
                    return source[1] == 1
        return False

    def _per_row(self, name: str) -> int | None:
        """Elements per row of tensor ``name`` (None when its shape is not known)."""
        shape = self.shape(name)
        if shape is None or len(shape) < 1 or not all(isinstance(d, int) for d in shape[1:]):
            return None
        return math.prod(d for d in shape[1:] if isinstance(d, int))

    def _multiply_adds(self, node: onnx.NodeProto) -> int | None:
        op = node.op_type
        if op in _MATMUL_OPS or op in _GEMM_OPS or op == "Conv":
            a = self.shape(node.input[0])
            b = self.shape(node.input[3 if op in ("QLinearMatMul", "QGemm") else 1])
            out = self._per_row(node.output[0])
            if a is None or b is None or out is None or not a:
                return None
            if op == "Conv":  # each output element reads in_channels/groups x kernel inputs
                reduced: Dim = math.prod(d for d in b[1:] if isinstance(d, int))
                if not all(isinstance(d, int) for d in b[1:]):
                    reduced = None
            elif op in _GEMM_OPS:
                trans_a = any(attr.name == "transA" and attr.i for attr in node.attribute)
                reduced = a[0] if trans_a else a[-1]
            else:
                reduced = a[-1]
            return out * reduced if isinstance(reduced, int) else None
        if op == "BatchNormalization":
            return self._per_row(node.output[0])
        if op == "LayerNormalization":
            per_row = self._per_row(node.output[0])
            return None if per_row is None else 3 * per_row
        if op in ("Mul", "Div"):
            # A per-feature rescaling (a normalize layer); scalar constants belong to activations.
            scaled = any(
                n in self.initializers and len(self.initializers[n].dims) >= 1 for n in node.input
            )
            shape = self.shape(node.output[0])
            if scaled and shape is not None and len(shape) >= 2:
                return self._per_row(node.output[0])
        return 0

    def _activation(self, nodes: list[int]) -> tuple[str | None, dict[str, float | str]]:
        names = [self.nodes[i].name for i in nodes]
        parts = [name.split("/") for name in names]
        for part in parts if self.grouped else ():
            # ``hidden/Gelu/Erf``, ``hidden/Silu/Sigmoid``: the builder's spelled-out forms.
            if len(part) > 2 and part[1] in _COMPOSITE_ACTIVATIONS:
                found = _COMPOSITE_ACTIVATIONS[part[1]]
                if found == "gelu":
                    tanh = any(p[1:] == ["Gelu", "Tanh"] for p in parts)
                    return found, {"approximate": "tanh" if tanh else "none"}
                return found, {}
        for i in reversed(nodes):
            node = self.nodes[i]
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


def _dtype_name(data_type: int) -> str:
    try:
        return str(helper.tensor_dtype_to_np_dtype(data_type).name)
    except Exception:
        return onnx.TensorProto.DataType.Name(data_type).lower()


def _nbytes(data_type: int, count: int) -> int:
    name = onnx.TensorProto.DataType.Name(data_type)
    if name in _FOUR_BIT:
        return (count + 1) // 2
    try:
        return count * int(helper.tensor_dtype_to_np_dtype(data_type).itemsize)
    except Exception:  # strings and types without a fixed size
        return 0


def _opsets(model: onnx.ModelProto) -> dict[str, int]:
    return {(entry.domain or "ai.onnx"): entry.version for entry in model.opset_import}


def _json_prop(props: Mapping[str, str], key: str) -> Any:
    if key not in props:
        return None
    try:
        return json.loads(props[key])
    except ValueError:
        return props[key]


def _listed(shape: Sequence[Dim] | None) -> list[Dim] | None:
    return None if shape is None else list(shape)
