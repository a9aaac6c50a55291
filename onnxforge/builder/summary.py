"""What a spec or an ONNX file holds: layers, shapes, parameters, bytes, multiply-adds, metadata.

``summarize(path)`` reads a spec (``.yaml``, ``.yml``, ``.json``) or an ONNX file and returns
a ``Summary``: one ``Row`` per layer and the totals, opset, IR version and recorded metadata.
Nothing here prints; ``onnxforge inspect`` draws tables and pictures from it. This module is
the data model; ``summary_spec`` makes the rows of a spec, ``summary_model`` those of a file
(reading its graph with ``onnxgraph``).

**Rows.** For a spec, one row per layer as written. For a file built from a spec (it records
``onnxforge.spec_sha256``), one row per layer, its nodes grouped by their names (see
``summary_model``). For any other file, one row per node.

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

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SPEC_SUFFIXES = (".yaml", ".yml", ".json")
TIMES = "\u00d7"  # the multiplication sign: shapes read batch by 64, op counts Mul twice

Dim = int | str | None  # a size, a symbolic name ("batch"), or unknown
Shape = tuple[Dim, ...]


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
    from onnxforge.builder.onnxfile import read
    from onnxforge.builder.spec import load_spec
    from onnxforge.builder.summary_model import summarize_model
    from onnxforge.builder.summary_spec import summarize_spec

    path = Path(path)
    if path.suffix.lower() in SPEC_SUFFIXES:
        return summarize_spec(load_spec(path))
    # The weights' bytes are not needed: their sizes come from the shapes.
    specs = f"specs are told by their suffix: {', '.join(SPEC_SUFFIXES)}"
    file = read(path, external_data=False, hint=specs)
    return summarize_model(file.model, str(path), len(file.data))


def format_activation(name: str, params: Mapping[str, float | str]) -> str:
    """``relu``, ``leaky_relu(alpha=0.1)``: numbers in their shortest exact-enough form."""
    if not params:
        return name
    shown = ", ".join(
        f"{key}={value:g}" if isinstance(value, float) else f"{key}={value}"
        for key, value in params.items()
    )
    return f"{name}({shown})"


def format_shape(tensor: Tensor) -> str:
    """``batch\u00d764``: ``?`` where a size is unknown, the dtype added when not float32."""
    if tensor.shape is None:
        return "?"
    text = TIMES.join("?" if dim is None else str(dim) for dim in tensor.shape) or "scalar"
    return text if tensor.dtype in ("float32", None) else f"{text} {tensor.dtype}"


def _listed(shape: Sequence[Dim] | None) -> list[Dim] | None:
    return None if shape is None else list(shape)
