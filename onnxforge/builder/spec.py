"""A validated, immutable network: layers with their shapes and parameters resolved.

``load_spec(path)`` is the front door: it parses the file (``builder.parse``), checks that
the layers fit together, reads or initialises every parameter (``builder.weights``), and
fixes the opset. What comes out is all the graph builder and the NumPy reference need.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import numpy as np

from onnxforge.builder import runtime
from onnxforge.builder.activations import CLASSIFIER_ACTIVATIONS
from onnxforge.builder.errors import SpecError
from onnxforge.builder.schema import (
    MAX_DIM,
    Activation,
    ActivationLayer,
    BatchNormLayer,
    DenseLayer,
    Document,
    FlattenLayer,
    LayerConfig,
    LayerNormLayer,
    NormalizeLayer,
)
from onnxforge.builder.weights import PARAMS, WeightsFile, default_params, load_npz

MAX_PARAMETERS = 2**29  # 2 GB of float32: protobuf's limit for one ONNX file


@dataclass(frozen=True)
class Layer:
    """One layer: its config as written, its position and name, shapes and parameters.

    Shapes exclude the batch dimension. Parameters are read-only float32 arrays in the
    layout the spec declares (dense weights are (in, out) for ``in_out``, (out, in) for
    ``out_in``).
    """

    index: int
    name: str
    config: LayerConfig
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    params: Mapping[str, np.ndarray] = field(default_factory=dict)

    @property
    def type(self) -> str:
        return self.config.type

    @property
    def label(self) -> str:
        return f'layers[{self.index}] ({self.type} "{self.name}")'

    @property
    def activation(self) -> Activation | None:
        if isinstance(self.config, DenseLayer | ActivationLayer):
            return self.config.activation
        return None

    @property
    def epsilon(self) -> float:
        """The variance floor of a batchnorm or layernorm layer."""
        assert isinstance(self.config, BatchNormLayer | LayerNormLayer), self.label
        return self.config.epsilon

    def activated(self) -> Activation:
        """The activation of a dense or activation layer."""
        assert self.activation is not None, self.label
        return self.activation


@dataclass(frozen=True)
class Spec:
    """A whole network, ready to build or to run in the reference."""

    document: Document
    path: Path | None
    layers: tuple[Layer, ...]
    opset: int
    sha256: str

    @property
    def name(self) -> str:
        return self.document.name

    @property
    def input_name(self) -> str:
        return self.document.input.name

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.document.input.shape)

    @property
    def output_name(self) -> str:
        return self.document.output.name

    @property
    def output_shape(self) -> tuple[int, ...]:
        return self.layers[-1].output_shape

    @property
    def weight_layout(self) -> str:
        return self.document.weight_layout

    @property
    def exposed(self) -> tuple[Layer, ...]:
        """Layers whose outputs are extra graph outputs, named after the layer."""
        by_name = {layer.name: layer for layer in self.layers}
        return tuple(by_name[name] for name in self.document.expose)

    @property
    def output_names(self) -> tuple[str, ...]:
        return (self.output_name, *(layer.name for layer in self.exposed))

    def is_classifier(self, output: str) -> bool:
        """Whether ``output`` holds class scores (softmax / log_softmax): argmax means a label."""
        activation = self.output_layer(output).activation
        return activation is not None and activation.name in CLASSIFIER_ACTIVATIONS

    def output_layer(self, output: str) -> Layer:
        """The layer whose result a graph output carries."""
        if output == self.output_name:
            return self.layers[-1]
        return next(layer for layer in self.exposed if layer.name == output)


def load_spec(path: str | Path) -> Spec:
    """Read, validate and resolve a spec file; raises ``SpecError`` with one clear line."""
    from onnxforge.builder.parse import read_document

    path = Path(path)
    document, _ = read_document(path)
    return resolve(document, path)


def resolve(document: Document, path: Path | None = None) -> Spec:
    """Check that the layers fit together and attach every parameter."""
    file = str(path) if path else "<spec>"
    weights = None
    if document.weights is not None:
        weights_path = (path.parent if path else Path.cwd()) / document.weights
        weights = WeightsFile(load_npz(weights_path, file), Path(document.weights).name, file)
    names = _layer_names(document, file)
    layers: list[Layer] = []
    shape = tuple(document.input.shape)
    total = 0
    for index, (config, name) in enumerate(zip(document.layers, names, strict=True)):
        label = f'layers[{index}] ({config.type} "{name}")'
        out_shape, shapes = _shapes(config, shape, document.weight_layout, file, label)
        # Refuse sizes no ONNX file can hold before allocating anything.
        total += sum(math.prod(dims) for dims in shapes.values())
        if total > MAX_PARAMETERS:
            raise SpecError(
                file,
                label,
                "",
                f"the network would hold {total:,} parameters; an "
                f"ONNX file holds at most {MAX_PARAMETERS:,} (2 GB of float32)",
            )
        if math.prod(out_shape) > MAX_DIM:
            raise SpecError(
                file,
                label,
                "",
                f"output of {math.prod(out_shape):,} values per row; at most {MAX_DIM:,}",
            )
        params: dict[str, np.ndarray] = {}
        if weights is not None:
            note = _layout_note(config, document.weight_layout)
            params = weights.take(label, name, config.type, shapes, note)
        elif config.type in PARAMS:
            init = config.init if isinstance(config, DenseLayer) else "zeros"
            params = default_params(
                config.type, shapes, init, document.seed, index, document.weight_layout
            )
        params = {**_fixed_params(config, shape), **params}
        if isinstance(config, NormalizeLayer):
            params = _normalize_params(config, shape[-1], file, label)
        for array in params.values():
            array.flags.writeable = False
        layers.append(Layer(index, name, config, shape, out_shape, MappingProxyType(params)))
        shape = out_shape
    if weights is not None and (unused := weights.unused()):
        raise SpecError(
            file,
            "",
            "weights",
            f"unused key(s) in {weights.file_name}: {', '.join(unused)} "
            f"(layers: {', '.join(names)})",
        )
    _check_expose(document, layers, file)
    opset = _opset(document, file)
    return Spec(document, path, tuple(layers), opset, _sha256(document, layers, opset))


def _layer_names(document: Document, file: str) -> list[str]:
    names = [config.name or str(index) for index, config in enumerate(document.layers)]
    seen: dict[str, int] = {}
    for index, name in enumerate(names):
        if name in seen:
            config = document.layers[index]
            raise SpecError(
                file,
                f'layers[{index}] ({config.type} "{name}")',
                "name",
                f"'{name}' is already the name of layers[{seen[name]}] "
                "(unnamed layers are named by their position)",
            )
        seen[name] = index
    return names


def _shapes(
    config: LayerConfig, shape: tuple[int, ...], layout: str, file: str, label: str
) -> tuple[tuple[int, ...], dict[str, tuple[int, ...]]]:
    """The layer's output shape and the shape of each parameter it reads (or initialises)."""
    if isinstance(config, DenseLayer):
        weight = (shape[-1], config.units) if layout == "in_out" else (config.units, shape[-1])
        shapes = {"weight": weight, "bias": (config.units,)}
        return (*shape[:-1], config.units), _owned(shapes, bias=config.use_bias)
    if isinstance(config, BatchNormLayer):
        # ONNX and PyTorch normalise the channel axis, axis 1 of (batch, channels, ...).
        shapes = {name: (shape[0],) for name in PARAMS["batchnorm"]}
        return shape, _owned(shapes, scale=config.affine, bias=config.affine)
    if isinstance(config, LayerNormLayer):
        shapes = {name: (shape[-1],) for name in PARAMS["layernorm"]}
        return shape, _owned(shapes, scale=config.affine, bias=config.affine and config.use_bias)
    if isinstance(config, FlattenLayer):
        return (math.prod(shape),), {}
    return shape, {}


def _owned(shapes: dict[str, tuple[int, ...]], **kept: bool) -> dict[str, tuple[int, ...]]:
    return {name: shape for name, shape in shapes.items() if kept.get(name, True)}


def _fixed_params(config: LayerConfig, shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    """The neutral scale and bias of a layer declared without them (``affine: false``)."""
    if isinstance(config, BatchNormLayer | LayerNormLayer):
        size = shape[0] if isinstance(config, BatchNormLayer) else shape[-1]
        return {"scale": np.ones(size, np.float32), "bias": np.zeros(size, np.float32)}
    return {}


def _layout_note(config: LayerConfig, layout: str) -> str:
    if not isinstance(config, DenseLayer):
        return ""
    order = "(inputs, units)" if layout == "in_out" else "(units, inputs)"
    return f" for weight_layout {layout}, {order}"


def _normalize_params(
    config: NormalizeLayer, features: int, file: str, label: str
) -> dict[str, np.ndarray]:
    params = {}
    for key in ("mean", "std"):
        array = np.asarray(getattr(config, key), dtype=np.float64)
        if array.shape[0] not in (1, features):
            raise SpecError(
                file,
                label,
                key,
                f"has {array.shape[0]} values; expected one number or {features} "
                "(the size of the last input axis)",
            )
        with np.errstate(over="ignore"):
            array = np.broadcast_to(array, (features,)).astype(np.float32)
        if not np.isfinite(array).all() or (key == "std" and (array <= 0).any()):
            raise SpecError(file, label, key, "values must be finite float32 numbers (std > 0)")
        params[key] = array
    return params


def _check_expose(document: Document, layers: list[Layer], file: str) -> None:
    if document.output.name == document.input.name:
        raise SpecError(
            file, "", "output.name", f"'{document.output.name}' is already the input's name"
        )
    by_name = {layer.name: layer for layer in layers}
    taken = {document.input.name, document.output.name}
    for position, name in enumerate(document.expose):
        where = f"expose[{position}]"
        if name not in by_name:
            known = ", ".join(by_name)
            raise SpecError(file, "", where, f"no layer named '{name}' (layers: {known})")
        if by_name[name].index == len(layers) - 1:
            raise SpecError(
                file,
                "",
                where,
                f"'{name}' is the last layer; its output is already '{document.output.name}'",
            )
        if name in taken:
            raise SpecError(file, "", where, f"output name '{name}' is used twice")
        taken.add(name)


def _opset(document: Document, file: str) -> int:
    newest = runtime.newest_opset()
    if document.opset is None:
        return newest
    if not runtime.MIN_OPSET <= document.opset <= newest:
        raise SpecError(
            file,
            "",
            "opset",
            f"must be between {runtime.MIN_OPSET} and {newest} (the newest the installed "
            f"ONNX Runtime runs), got {document.opset}",
        )
    return document.opset


def _sha256(document: Document, layers: list[Layer], opset: int) -> str:
    """Hash of everything that decides the fp32 file's function and bytes.

    Serving settings, variants, budgets and the sampling distribution are left out:
    changing them must not make the fp32 file stale. The weights path is left out too;
    its contents are hashed.
    """
    described = document.model_dump(
        mode="json",
        exclude={
            "serving": True,
            "variants": True,
            "budget": True,
            "weights": True,
            "input": {"distribution"},
        },
    )
    described["opset"] = opset
    digest = hashlib.sha256(json.dumps(described, sort_keys=True).encode())
    for layer in layers:
        for key in sorted(layer.params):
            array = layer.params[key]
            digest.update(f"{layer.index}.{key}:{array.dtype.str}:{array.shape}".encode())
            digest.update(array.tobytes())
    return digest.hexdigest()
