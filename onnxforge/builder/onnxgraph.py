"""What an ONNX graph says: its inputs, shapes, dtypes and opsets, who makes and reads each
tensor, what each initializer is, and how many multiply-adds each node performs.

The functions read what the file states (``graph_inputs``, ``value_dims``, ``opsets``,
``dtype_name``): ``export-edge``'s manifest and ``quantize``'s look at a foreign file's input
use them as ``inspect`` does. ``Graph`` adds what inference and bookkeeping find:

* shapes inferred by ONNX (where inference fails -- unknown domains, invalid graphs -- what
  the file records);
* a dependency order of the nodes (stable; files from some tools are not sorted) and each
  node's distance from the graph inputs;
* each initializer's role: a *parameter* (what training gives), a *constant* (a scalar, or a
  tensor read only by ``Sub`` or ``Div``), or a *quantization* scale or zero point;
* multiply-adds per row of each node (the batch dimension excluded): ``MatMul`` / ``Gemm`` /
  ``Conv`` and their int8 forms reduce over their inputs; ``BatchNormalization`` and a
  per-feature ``Mul`` or ``Div`` one per element; ``LayerNormalization`` three; everything
  else none. ``None`` where the shapes needed are unknown.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import onnx
from onnx import helper

from onnxforge.builder.summary import Dim, Shape, Tensor

__all__ = ["Graph", "dtype_name", "graph_inputs", "nbytes", "opsets", "value_dims"]

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


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """The inputs a caller feeds (old files also list their initializers as inputs)."""
    initializers = {tensor.name for tensor in model.graph.initializer}
    return [value for value in model.graph.input if value.name not in initializers]


def value_dims(value: onnx.ValueInfoProto) -> Shape | None:
    """A tensor's dimensions as the file states them: a size, a symbolic name (``"batch"``)
    or None where neither is given; None for no shape or a value that is not a tensor."""
    if not value.type.HasField("tensor_type") or not value.type.tensor_type.HasField("shape"):
        return None
    return tuple(
        dim.dim_value
        if dim.HasField("dim_value")
        else (dim.dim_param if dim.HasField("dim_param") else None)
        for dim in value.type.tensor_type.shape.dim
    )


def dtype_name(data_type: int) -> str:
    """NumPy's name for an ONNX element type (``float32``), else ONNX's, lowercased."""
    try:
        return str(helper.tensor_dtype_to_np_dtype(data_type).name)
    except Exception:
        return onnx.TensorProto.DataType.Name(data_type).lower()


def nbytes(data_type: int, count: int) -> int:
    """Bytes that ``count`` elements of ``data_type`` take (4-bit types: two a byte)."""
    name = onnx.TensorProto.DataType.Name(data_type)
    if name in _FOUR_BIT:
        return (count + 1) // 2
    try:
        return count * int(helper.tensor_dtype_to_np_dtype(data_type).itemsize)
    except Exception:  # strings and types without a fixed size
        return 0


def opsets(model: onnx.ModelProto) -> dict[str, int]:
    """The opset of each domain the model imports (the default domain as ``ai.onnx``)."""
    return {(entry.domain or "ai.onnx"): entry.version for entry in model.opset_import}


class Graph:
    """The node graph with inferred shapes, producers and consumers of every tensor."""

    def __init__(self, model: onnx.ModelProto) -> None:
        try:
            inferred = onnx.shape_inference.infer_shapes(model)
        except Exception:  # unknown domains, invalid graphs: use what the file records
            inferred = model
        g = inferred.graph
        self.nodes = list(g.node)
        self.initializers = {tensor.name: tensor for tensor in g.initializer}
        self.inputs = graph_inputs(inferred)
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

    def tensor(self, name: str) -> Tensor:
        value = self.values.get(name)
        if value is None or not value.type.HasField("tensor_type"):
            if name in self.initializers:
                init = self.initializers[name]
                return Tensor(name, tuple(init.dims), dtype_name(init.data_type))
            return Tensor(name, None, None)
        return Tensor(name, value_dims(value), dtype_name(value.type.tensor_type.elem_type))

    def shape(self, name: str) -> Shape | None:
        if name in self.initializers:
            return tuple(self.initializers[name].dims)
        return self.tensor(name).shape

    def role(self, name: str) -> str:
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

    def per_row(self, name: str) -> int | None:
        """Elements per row of tensor ``name`` (None when its shape is not known)."""
        shape = self.shape(name)
        if shape is None or len(shape) < 1 or not all(isinstance(d, int) for d in shape[1:]):
            return None
        return math.prod(d for d in shape[1:] if isinstance(d, int))

    def multiply_adds(self, node: onnx.NodeProto) -> int | None:
        op = node.op_type
        if op in _MATMUL_OPS or op in _GEMM_OPS or op == "Conv":
            a = self.shape(node.input[0])
            b = self.shape(node.input[3 if op in ("QLinearMatMul", "QGemm") else 1])
            out = self.per_row(node.output[0])
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
            return self.per_row(node.output[0])
        if op == "LayerNormalization":
            per_row = self.per_row(node.output[0])
            return None if per_row is None else 3 * per_row
        if op in ("Mul", "Div"):
            # A per-feature rescaling (a normalize layer); scalar constants belong to activations.
            scaled = any(
                n in self.initializers and len(self.initializers[n].dims) >= 1 for n in node.input
            )
            shape = self.shape(node.output[0])
            if scaled and shape is not None and len(shape) >= 2:
                return self.per_row(node.output[0])
        return 0
