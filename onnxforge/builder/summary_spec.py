"""The rows of a spec's summary: one per layer as written, counted from its shapes.

Every value counts as float32. A layer's parameters are the keys training gives it (as a
weights file holds them); the rest of its values are constants (a ``normalize`` layer's mean
and std, the neutral scale and shift of a layer declared ``affine: false``).
"""

from __future__ import annotations

import math

from onnxforge.builder import metadata
from onnxforge.builder.graph import build
from onnxforge.builder.onnxgraph import opsets
from onnxforge.builder.schema import Activation, BatchNormLayer, DenseLayer, LayerNormLayer
from onnxforge.builder.spec import Layer, Spec
from onnxforge.builder.summary import Row, Summary, Tensor, format_activation
from onnxforge.builder.weights import PARAMS


def summarize_spec(spec: Spec) -> Summary:
    """The spec's layers as written; file size, opset and IR version of its fp32 build."""
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
        opset_imports=opsets(model),
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
