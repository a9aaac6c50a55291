"""NumPy emulation of what a quantized variant computes, with numbers read from its file.

The fp32 reference (``builder.reference``) says what the spec means; this module says what a
*quantized file* computes (``forward(spec, x, variant, quantized)``), so that tests can hold
ONNX Runtime to it tightly instead of only loosely to fp32. It walks the spec's layers like
the reference and reuses the reference's function for every layer and activation; only each
dense layer's matrix product is computed the way the variant's operators define it, with the
scales, zero points and quantized weights read from the file's initializers (found by
following the graph from the layer's ``<prefix>/MatMul`` or ``<prefix>/MatMul_quant`` node):

* ``int8-dynamic`` (``DynamicQuantizeLinear`` + ``MatMulInteger``): the input is quantized to
  uint8 with a scale and zero point computed from the *whole batch*
  (``(max(0, max x) - min(0, min x)) / 255``), so a row's result depends on the rows sent
  with it. The int32 product ``(xq - zx) @ (wq - zw)`` is cast to float32 and multiplied by
  ``x_scale * w_scale`` (float32; per tensor or per output unit), then the bias is added.
* ``int8-static`` (QDQ): the input goes through ``QuantizeLinear``/``DequantizeLinear`` with
  its calibrated scale and zero point, and the product of dequantized input and weight is
  computed as the integer product times ``x_scale * w_scale``: the exact value rounded once,
  as ONNX Runtime's integer kernels compute it. Every consumer of the quantized tensor sees
  the dequantized value, a graph output that exposes it included.
* ``fp16``: the parameters as the file stores them (float16), the input, each layer's output
  and a dense layer's MatMul and Add rounded to float16. (ONNX Runtime's CPU provider does
  not do this: lacking float16 kernels, it computes in float32 with the float16 parameters.)

``QuantizeLinear`` is ``saturate(rint(x / scale) + zero_point)``, the division in float32,
rounding half to even, clamped to the range of the zero point's type (uint8 0..255, int8
-128..127). The rescaling and the bias are float32 in the graph's order; other layers and
activations come from the float64 reference, rounded to float32 at the layer's end.

What ONNX Runtime does differently (measured in ``tests/builder/test_emulation.py``): it
fuses ``DQ -> MatMul -> Add -> [Relu] -> Q`` into ``QGemm``, which rounds the bias to int32
at scale ``x_scale * w_scale`` and requantizes with one multiplier, so an activation within
that rounding of a half step lands one step away (at most 1 in 4,000 activations of the
bundled models); and its exp/tanh/erf are approximations a few ulps from the reference's.
``quantized_activations`` gives the integers by their names in the file, to find where the
two part ways.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

import numpy as np
import onnx
from onnx import numpy_helper

from onnxforge.builder import reference
from onnxforge.builder.graph import layer_prefix
from onnxforge.builder.layout import QUANTIZED_VARIANTS, VARIANTS
from onnxforge.builder.spec import Layer, Spec

__all__ = [
    "dynamic_quantization",
    "forward",
    "forward_quantized",
    "quantize_linear",
    "quantized_activations",
]


def quantize_linear(x: np.ndarray, scale: np.ndarray, zero_point: np.ndarray) -> np.ndarray:
    """ONNX ``QuantizeLinear``: ``saturate(rint(x / scale) + zero_point)``, as int64 values.

    The division is float32, the rounding half to even, and the result is clamped to the
    range of ``zero_point``'s integer dtype (uint8: 0..255, int8: -128..127).
    """
    info = np.iinfo(zero_point.dtype)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        steps = np.rint(np.asarray(x, np.float32) / np.asarray(scale, np.float32))
        shifted = steps.astype(np.float64) + zero_point.astype(np.float64)
    return np.clip(np.nan_to_num(shifted), info.min, info.max).astype(np.int64)


def dynamic_quantization(x: np.ndarray) -> tuple[np.float32, np.uint8]:
    """ONNX ``DynamicQuantizeLinear``'s uint8 scale and zero point for the whole tensor ``x``.

    The range always includes 0; an all-zero tensor gets scale 1 (as ONNX Runtime does).
    """
    x = np.asarray(x, np.float32)
    low = np.minimum(np.float32(0), x.min())
    high = np.maximum(np.float32(0), x.max())
    scale = np.float32(1) if high == low else np.float32((high - low) / np.float32(255))
    zero = np.rint(np.clip(np.float32(0) - low / scale, 0, 255))
    return scale, np.uint8(zero)


_Trace = dict[str, np.ndarray]  # integer activations (and dynamic scales) by tensor name
_Dense = tuple[np.ndarray, np.ndarray]  # (what consumers of the input see, the layer output)


@dataclass(frozen=True)
class _QuantizedDense:
    """The numbers of one quantized dense product, read from the file."""

    names: tuple[str, ...]  # the file's names of the quantized input (and its scale, zp)
    weight: np.ndarray  # (in, out) integers as in the file
    weight_scale: np.ndarray  # float32, () or (out,)
    weight_zero_point: np.ndarray  # same shape, integer dtype
    input_scale: np.ndarray | None = None  # float32 () for int8-static; None: per batch
    input_zero_point: np.ndarray | None = None


class _File:
    """Initializers and nodes of a quantized model, looked up by name, with clear errors."""

    def __init__(self, model: onnx.ModelProto, variant: str, layout: str) -> None:
        self.variant = variant
        self.layout = layout
        self.initializers = {t.name: t for t in model.graph.initializer}
        self.nodes = {node.name: node for node in model.graph.node}
        self.producers = {out: node for node in model.graph.node for out in node.output}

    def array(self, name: str) -> np.ndarray:
        if name not in self.initializers:
            raise ValueError(f"the {self.variant} model has no initializer '{name}'")
        return numpy_helper.to_array(self.initializers[name])

    def node(self, name: str, op_type: str, layer: Layer) -> onnx.NodeProto:
        node = self.nodes.get(name)
        if node is None or node.op_type != op_type:
            found = "nothing" if node is None else f"a {node.op_type}"
            raise ValueError(
                f"{layer.label}: the {self.variant} model should have a {op_type} node "
                f"'{name}', found {found} (is it a {self.variant} file of this spec?)"
            )
        return node

    def producer(self, tensor: str, op_type: str, layer: Layer) -> onnx.NodeProto:
        node = self.producers.get(tensor)
        if node is None or node.op_type != op_type:
            found = "a graph input or initializer" if node is None else f"a {node.op_type}"
            raise ValueError(
                f"{layer.label}: in the {self.variant} model, '{tensor}' should come from a "
                f"{op_type} node, found {found}"
            )
        return node

    def dense_dynamic(self, layer: Layer) -> _QuantizedDense:
        node = self.node(f"{layer_prefix(layer)}/MatMul_quant", "MatMulInteger", layer)
        quantizer = self.producer(node.input[0], "DynamicQuantizeLinear", layer)
        weight_name = node.input[1]
        zero_point = (
            self.array(node.input[3]) if len(node.input) > 3 and node.input[3] else np.int8(0)
        )
        # ORT names the weight's scale after it (the Mul node that uses it has no fixed name).
        scale = self.array(weight_name.removesuffix("_quantized") + "_scale")
        return _QuantizedDense(
            tuple(quantizer.output), self.array(weight_name), scale, np.asarray(zero_point)
        )

    def dense_static(self, layer: Layer) -> _QuantizedDense:
        node = self.node(f"{layer_prefix(layer)}/MatMul", "MatMul", layer)
        x_dq = self.producer(node.input[0], "DequantizeLinear", layer)
        x_q = self.producer(x_dq.input[0], "QuantizeLinear", layer)
        w_dq = self.producer(node.input[1], "DequantizeLinear", layer)
        axis = next((a.i for a in w_dq.attribute if a.name == "axis"), 1)
        weight, scale, zero = (self.array(name) for name in w_dq.input[:3])
        if scale.size > 1 and axis % weight.ndim != 1:
            raise ValueError(
                f"{layer.label}: weight quantized along axis {axis}; only per tensor or per "
                "output unit (axis 1) can be emulated"
            )
        if tuple(x_q.input[1:3]) != tuple(x_dq.input[1:3]):
            raise ValueError(f"{layer.label}: QuantizeLinear and DequantizeLinear disagree")
        return _QuantizedDense(
            (x_q.output[0],),
            weight,
            scale,
            zero,
            self.array(x_q.input[1]),
            self.array(x_q.input[2]),
        )

    def fp16_layer(self, layer: Layer) -> Layer:
        """``layer`` with its parameters as the file stores them (float16, as float32)."""
        prefix = layer_prefix(layer)
        params = {}
        for key in layer.params:
            value = self.array(f"{prefix}/{key}").astype(np.float32)
            # The graph stores dense weights as (in, out); the spec's layout may differ.
            params[key] = value.T if key == "weight" and self.layout == "out_in" else value
        return replace(layer, params=params)


def _integer_product(xq: np.ndarray, zx: np.ndarray, dense: _QuantizedDense) -> np.ndarray:
    """``(xq - zx) @ (wq - zw)`` exactly, as int64, checked to fit the int32 accumulator."""
    # float64 holds every partial sum exactly (|terms| <= 255 * 255, far fewer than 2**37
    # of them), so BLAS gives the exact integer result in any summation order.
    left = xq.astype(np.float64) - zx.astype(np.float64)
    right = dense.weight.astype(np.float64) - dense.weight_zero_point.astype(np.float64)
    product = left @ right
    limit = np.iinfo(np.int32)
    if product.size and not limit.min <= product.min() <= product.max() <= limit.max:
        raise OverflowError("the integer product overflows int32, as it would in the runtime")
    return product.astype(np.int64)


def _rescaled(acc: np.ndarray, x_scale: np.ndarray, dense: _QuantizedDense) -> np.ndarray:
    # Mul(x_scale, w_scale) then Mul(Cast<float>(acc), that), both float32.
    multiplier = np.float32(x_scale) * dense.weight_scale.astype(np.float32)
    return np.asarray(acc.astype(np.float32) * multiplier)


def _activate(layer: Layer, summed: np.ndarray) -> np.ndarray:
    """The dense layer's Add (float32, when it has a bias) and activation."""
    if "bias" in layer.params:
        summed = summed + layer.params["bias"].astype(np.float32)
    return reference.activate(layer.activated(), summed.astype(np.float64)).astype(np.float32)


def _dense_dynamic(file: _File, layer: Layer, x: np.ndarray, trace: _Trace) -> _Dense:
    dense = file.dense_dynamic(layer)
    scale, zero = dynamic_quantization(x)
    zx = np.asarray(zero)
    xq = quantize_linear(x, np.asarray(scale), zx)
    trace.update(zip(dense.names, (xq, np.asarray(scale), zx), strict=True))
    acc = _integer_product(xq, zx, dense)
    return x, _activate(layer, _rescaled(acc, np.asarray(scale), dense))


def _dense_static(file: _File, layer: Layer, x: np.ndarray, trace: _Trace) -> _Dense:
    dense = file.dense_static(layer)
    assert dense.input_scale is not None and dense.input_zero_point is not None
    sx, zx = dense.input_scale.astype(np.float32), dense.input_zero_point
    xq = quantize_linear(x, sx, zx)
    trace[dense.names[0]] = xq
    dequantized = (xq - zx.astype(np.int64)).astype(np.float32) * sx
    acc = _integer_product(xq, zx, dense)
    return dequantized, _activate(layer, _rescaled(acc, sx, dense))


def _dense_fp16(file: _File, layer: Layer, x: np.ndarray, trace: _Trace) -> _Dense:
    weight = layer.params["weight"].astype(np.float64)
    if file.layout == "out_in":
        weight = weight.T
    # MatMul, Add and the activation each produce a float16 tensor.
    summed = _half(x.astype(np.float64) @ weight)
    if "bias" in layer.params:
        summed = _half(summed + layer.params["bias"])
    return x, _half(reference.activate(layer.activated(), summed.astype(np.float64)))


def _half(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return np.asarray(x).astype(np.float16).astype(np.float32)


_DENSE: Mapping[str, Callable[[_File, Layer, np.ndarray, _Trace], _Dense]] = {
    "int8-dynamic": _dense_dynamic,
    "int8-static": _dense_static,
    "fp16": _dense_fp16,
}


def _walk(
    spec: Spec, x: np.ndarray, variant: str, quantized: onnx.ModelProto
) -> tuple[list[np.ndarray], _Trace]:
    """The float32 output of every layer as the ``variant`` file computes it, and the trace.

    Where a QDQ pair sits on a tensor (int8-static), the layers that produced it report the
    dequantized value, as the file's graph outputs do.
    """
    if variant not in _DENSE:
        known = ", ".join(QUANTIZED_VARIANTS)
        raise ValueError(f"unknown quantized variant {variant!r} (known: {known})")
    x = np.asarray(x)
    if x.ndim != len(spec.input_shape) + 1 or tuple(x.shape[1:]) != spec.input_shape:
        expected = ", ".join(map(str, spec.input_shape))
        raise ValueError(f"input must have shape (batch, {expected}), got {x.shape}")
    file = _File(quantized, variant, spec.weight_layout)
    fp16 = variant == "fp16"
    value = _half(x) if fp16 else x.astype(np.float32)
    outputs: list[np.ndarray] = []
    trace: _Trace = {}
    with np.errstate(over="ignore", under="ignore"):
        for layer in spec.layers:
            if fp16:
                layer = file.fp16_layer(layer)
            if layer.type == "dense":
                seen, value = _DENSE[variant](file, layer, value, trace)
                _replace_trailing(spec, outputs, seen)
            else:
                computed = reference.LAYERS[layer.type](
                    layer, value.astype(np.float64), spec.weight_layout
                )
                value = _half(computed) if fp16 else computed.astype(np.float32)
            outputs.append(value)
    return outputs, trace


def _replace_trailing(spec: Spec, outputs: list[np.ndarray], seen: np.ndarray) -> None:
    """Give the tensor a dense layer consumed its quantized-dequantized value everywhere."""
    index = len(outputs) - 1
    while index >= 0:
        outputs[index] = seen
        if not _passes_through(spec.layers[index]):
            return
        index -= 1


def _passes_through(layer: Layer) -> bool:
    """Whether the layer's output is its input tensor itself (the graph has no node for it)."""
    if layer.type == "dropout":
        return True
    activation = layer.activation if layer.type == "activation" else None
    return activation is not None and activation.name == "identity"


def forward(
    spec: Spec, x: np.ndarray, variant: str, quantized: onnx.ModelProto | None = None
) -> np.ndarray:
    """The model output of ``variant``'s file for a batch ``x``, as float32.

    ``quantized`` is that file: its scales, zero points and weights are what is emulated. For
    ``fp32`` it is not needed: the answer is ``reference.forward(spec, x)``.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r} (known: {', '.join(VARIANTS)})")
    if variant == "fp32":
        return reference.forward(spec, x)
    if quantized is None:
        raise ValueError(
            f"variant {variant!r} needs its model: pass quantized=<the {variant} "
            "onnx.ModelProto>, whose scales, zero points and weights are emulated"
        )
    return forward_quantized(spec, x, variant, quantized)[spec.output_name]


def forward_quantized(
    spec: Spec, x: np.ndarray, variant: str, quantized: onnx.ModelProto
) -> dict[str, np.ndarray]:
    """Every graph output of the ``variant`` file by name, as float32, like ``reference.run``."""
    outputs, _ = _walk(spec, x, variant, quantized)
    return {name: outputs[spec.output_layer(name).index] for name in spec.output_names}


def quantized_activations(
    spec: Spec, x: np.ndarray, variant: str, quantized: onnx.ModelProto
) -> dict[str, np.ndarray]:
    """The integers each quantized MatMul consumed, by their tensor names in the file.

    For int8-static, the ``QuantizeLinear`` outputs; for int8-dynamic, the three outputs of
    each ``DynamicQuantizeLinear`` (values, scale, zero point). Add these names as graph
    outputs of the file to see where a runtime and this emulation part ways.
    """
    return _walk(spec, x, variant, quantized)[1]
