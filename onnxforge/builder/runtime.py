"""What the installed ONNX Runtime can run, found by asking it rather than by a table."""

from __future__ import annotations

import functools
from typing import Any

import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

MIN_OPSET = 17  # LayerNormalization and today's Softmax semantics exist from here on

# Every operator the graph builder may emit, with the attributes it sets.
_PROBE_OPS: tuple[tuple[str, int, dict[str, Any]], ...] = (
    ("MatMul", 2, {}),
    ("Add", 2, {}),
    ("Sub", 2, {}),
    ("Mul", 2, {}),
    ("Div", 2, {}),
    ("Relu", 1, {}),
    ("LeakyRelu", 1, {}),
    ("Sigmoid", 1, {}),
    ("Tanh", 1, {}),
    ("Softmax", 1, {"axis": -1}),
    ("LogSoftmax", 1, {"axis": -1}),
    ("Erf", 1, {}),
    ("Elu", 1, {}),
    ("Selu", 1, {}),
    ("Softplus", 1, {}),
    ("Softsign", 1, {}),
    ("HardSigmoid", 1, {}),
    ("Identity", 1, {}),
    ("Flatten", 1, {"axis": 1}),
)


def _probe_model(opset: int) -> onnx.ModelProto:
    nodes = [
        helper.make_node(op, ["x", "x"][:arity], [f"y{i}"], **attrs)
        for i, (op, arity, attrs) in enumerate(_PROBE_OPS)
    ]
    nodes += [
        helper.make_node("LayerNormalization", ["x", "s", "b"], ["ln"], axis=-1, epsilon=1e-5),
        helper.make_node("BatchNormalization", ["x", "s", "b", "b", "s"], ["bn"]),
        # The quantized variants: static QDQ (per tensor, per channel) and dynamic int8.
        helper.make_node("QuantizeLinear", ["x", "qs", "qz"], ["q"]),
        helper.make_node("DequantizeLinear", ["q", "qs", "qz"], ["dq"]),
        helper.make_node("DequantizeLinear", ["w8", "ws", "wz"], ["wdq"], axis=1),
        helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"]),
        helper.make_node("MatMulInteger", ["xq", "w8", "xz"], ["acc"]),
        helper.make_node("Cast", ["acc"], ["accf"], to=TensorProto.FLOAT),
    ]
    if opset >= 18:
        nodes.append(helper.make_node("Mish", ["x"], ["mish"]))
    if opset >= 20:
        nodes.append(helper.make_node("Gelu", ["x"], ["gelu"], approximate="tanh"))
    integer_outputs = {"q", "xq", "xz", "acc"}
    outputs = [out for node in nodes for out in node.output if out not in integer_outputs]
    graph = helper.make_graph(
        nodes,
        "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in outputs],
        initializer=[
            helper.make_tensor("s", TensorProto.FLOAT, [2], [1.0, 1.0]),
            helper.make_tensor("b", TensorProto.FLOAT, [2], [0.0, 0.0]),
            helper.make_tensor("qs", TensorProto.FLOAT, [], [0.1]),
            helper.make_tensor("qz", TensorProto.UINT8, [], [128]),
            helper.make_tensor("w8", TensorProto.INT8, [2, 2], [1, -2, 3, -4]),
            helper.make_tensor("ws", TensorProto.FLOAT, [2], [0.5, 0.25]),
            helper.make_tensor("wz", TensorProto.INT8, [2], [0, 0]),
        ],
    )
    return helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", opset)],
        ir_version=ir_version_for(opset),
    )


def ir_version_for(opset: int) -> int:
    """The oldest IR version that can carry ``opset``: the one runtimes are most likely to read."""
    return int(helper.find_min_ir_version_for([helper.make_opsetid("", opset)]))


@functools.cache
def newest_opset() -> int:
    """The newest default-domain opset for which ONNX Runtime runs every operator we emit.

    Quantization operators are part of the probe: a file must stay quantizable.
    """
    for opset in range(onnx.defs.onnx_opset_version(), MIN_OPSET - 1, -1):
        try:
            ort.InferenceSession(
                _probe_model(opset).SerializeToString(), providers=["CPUExecutionProvider"]
            )
        except Exception:
            continue
        return opset
    raise RuntimeError(f"the installed ONNX Runtime runs no opset >= {MIN_OPSET}")


def session(model: bytes | str, threads: int = 0) -> ort.InferenceSession:
    """A CPU session; ``threads=0`` lets ONNX Runtime choose."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
