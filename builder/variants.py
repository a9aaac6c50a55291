"""Make a quantized variant, measure it against the fp32 reference, and keep it only if it
stays inside its budget.

The measurement always uses held-out rows: samples drawn from the spec's input
distribution with a seed of their own, plus the tail of the user's calibration file when
one is given (its head calibrates, its tail is only ever measured on).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime

from builder import metadata, reference, runtime
from builder.accuracy import (
    HELD_OUT_ROWS,
    HELD_OUT_SEED,
    Report,
    assess,
    budget_for,
    worst_node,
)
from builder.errors import SpecError
from builder.graph import layer_prefix
from builder.quantize import QuantizeOptions, quantize
from builder.samples import load_inputs, sample_inputs
from builder.schema import Budget
from builder.spec import Spec

CALIBRATION_ROWS = 512
CALIBRATION_SEED = 1
HELD_OUT_FRACTION = 0.2  # of a user's calibration file, kept back for measuring
MIN_CALIBRATION_FILE_ROWS = 5


@dataclass(frozen=True)
class Calibration:
    """Rows to calibrate on, rows kept back from the same source, and where they came from."""

    rows: np.ndarray
    held_out: np.ndarray
    source: str

    @classmethod
    def for_spec(cls, spec: Spec, file: Path | None) -> Calibration:
        if file is None:
            rows = sample_inputs(spec, CALIBRATION_ROWS, CALIBRATION_SEED)
            return cls(rows, rows[:0], f"{CALIBRATION_ROWS} rows from the spec's distribution")
        return cls.split(load_inputs(file, spec), file)

    @classmethod
    def split(cls, rows: np.ndarray, file: Path) -> Calibration:
        if len(rows) < MIN_CALIBRATION_FILE_ROWS:
            raise SpecError(
                str(file),
                "",
                "",
                f"holds {len(rows)} row(s); calibration needs at least {MIN_CALIBRATION_FILE_ROWS}"
                f" ({HELD_OUT_FRACTION:.0%} are kept back to measure on)",
            )
        kept = max(1, int(len(rows) * HELD_OUT_FRACTION))
        return cls(rows[:-kept], rows[-kept:], f"{len(rows) - kept} rows of {file.name}")


@dataclass(frozen=True)
class Variant:
    """A variant built in memory: its file (None when refused) and its measured report."""

    name: str
    variant: str
    model: onnx.ModelProto | None
    report: Report


def run(model: onnx.ModelProto, rows: np.ndarray) -> dict[str, np.ndarray]:
    session = runtime.session(model.SerializeToString())
    names = [output.name for output in session.get_outputs()]
    return dict(zip(names, session.run(names, {session.get_inputs()[0].name: rows}), strict=True))


def make_variant(
    spec: Spec,
    fp32: onnx.ModelProto,
    variant: str,
    name: str,
    calibration: Calibration,
    options: QuantizeOptions,
) -> Variant:
    """Quantize, measure on held-out rows against the NumPy reference, record or refuse."""
    quantized = quantize(fp32, variant, calibration.rows, options)
    held_out = np.concatenate(
        [sample_inputs(spec, HELD_OUT_ROWS, HELD_OUT_SEED), calibration.held_out]
    )
    report = assess(
        name,
        variant,
        run(quantized, held_out),
        reference.run(spec, held_out),
        {output: spec.is_classifier(output) for output in spec.output_names},
        spec.output_name,
        budget_for(variant, spec.document.budget),
    )
    if not report.ok:
        return Variant(name, variant, None, _with_culprit(report, spec, fp32, quantized, held_out))
    settings = {**options.describe(variant), "calibration": calibration.source}
    record(quantized, variant, report, settings, spec.sha256)
    return Variant(name, variant, quantized, report)


def record(
    model: onnx.ModelProto,
    variant: str,
    report: Report,
    settings: dict[str, object],
    spec_sha256: str | None,
) -> None:
    """Write the variant's identity, settings and measured figures into its metadata."""
    from onnxforge import __version__

    settings = {**settings, "onnxruntime": onnxruntime.__version__}
    props = {
        metadata.VARIANT: variant,
        metadata.VERSION: __version__,
        metadata.ACCURACY: report.metadata_json(),
        metadata.QUANTIZATION: json.dumps(settings, sort_keys=True),
    }
    if spec_sha256 is not None:
        props[metadata.SPEC_SHA256] = spec_sha256
    metadata.set_props(model, props)
    model.producer_name = "onnxforge"
    model.producer_version = __version__


def _with_culprit(
    report: Report,
    spec: Spec | None,
    fp32: onnx.ModelProto,
    quantized: onnx.ModelProto,
    rows: np.ndarray,
) -> Report:
    node, before, after = worst_node(fp32, quantized, rows)
    where = f"node {node}"
    if spec is not None:
        layers = {layer_prefix(layer): layer for layer in spec.layers}
        layer = layers.get(node.split("/")[0])
        if layer is not None:
            where = f"{layer.label} (node {node})"
    culprit = (
        f"most error is added at {where}: relative error {before:.3%} at its input, "
        f"{after:.3%} at its output"
    )
    return replace(report, worst=culprit)


def refusal_message(report: Report, origin: str) -> str:
    """One line: which variant, by how much it misses its budget, and where the error grows."""
    return (
        f"{origin}: {report.variant}: over budget on {report.samples} held-out rows: "
        f"{'; '.join(report.failures)}; {report.worst}; the variant was not written"
    )


@dataclass(frozen=True)
class ForeignInput:
    """The single float input of an ONNX file onnxforge did not build."""

    name: str
    shape: tuple[int | None, ...]  # without the batch; None for a dimension left open

    @classmethod
    def of(cls, model: onnx.ModelProto, file: str) -> ForeignInput:
        initializers = {init.name for init in model.graph.initializer}
        inputs = [info for info in model.graph.input if info.name not in initializers]
        if len(inputs) != 1:
            raise SpecError(
                file,
                "",
                "",
                f"has {len(inputs)} inputs; quantize takes models with exactly one float32 input",
            )
        tensor = inputs[0].type.tensor_type
        if tensor.elem_type != onnx.TensorProto.FLOAT:
            raise SpecError(file, "", "", f"input '{inputs[0].name}' is not float32")
        dims = [dim.dim_value if dim.HasField("dim_value") else None for dim in tensor.shape.dim]
        if not dims:
            raise SpecError(file, "", "", f"input '{inputs[0].name}' has no batch dimension")
        return cls(inputs[0].name, tuple(dims[1:]))


def foreign_rows(
    model: onnx.ModelProto, file: str, calibration_file: Path | None, variant: str
) -> Calibration:
    """Rows for a model without a spec: the user's file, else standard normal samples."""
    from builder.samples import load_rows

    source = ForeignInput.of(model, file)
    if calibration_file is not None:
        rows = load_rows(calibration_file, source.shape, f"input '{source.name}' of {file}")
        if variant != "int8-static":  # nothing calibrates on them: measure on every row
            return Calibration(rows[:0], rows, f"{calibration_file.name}")
        return Calibration.split(rows, calibration_file)
    if any(size is None for size in source.shape):
        raise SpecError(
            file,
            "",
            "",
            f"input '{source.name}' has open dimensions "
            f"{source.shape}; give rows with --calibration FILE.npy",
        )
    shape = tuple(int(size) for size in source.shape if size is not None)
    rng = np.random.default_rng(CALIBRATION_SEED)
    calibrate = rng.standard_normal((CALIBRATION_ROWS, *shape)).astype(np.float32)
    held_out = np.random.default_rng(HELD_OUT_SEED).standard_normal((HELD_OUT_ROWS, *shape))
    return Calibration(
        calibrate, held_out.astype(np.float32), f"{CALIBRATION_ROWS} standard normal rows"
    )


def make_foreign_variant(
    fp32: onnx.ModelProto,
    variant: str,
    name: str,
    rows: Calibration,
    options: QuantizeOptions,
    budget: Budget,
) -> Variant:
    """Like ``make_variant``, with the fp32 file run in ONNX Runtime as the reference."""
    quantized = quantize(fp32, variant, rows.rows, options)
    want = run(fp32, rows.held_out)
    output = fp32.graph.output[0].name
    # Without a spec nothing says which outputs are class scores; argmax is reported for
    # 2-D outputs and held to a budget only when the user asks for it.
    classifiers = {key: value.ndim == 2 and value.shape[1] > 1 for key, value in want.items()}
    report = assess(name, variant, run(quantized, rows.held_out), want, classifiers, output, budget)
    if not report.ok:
        return Variant(
            name, variant, None, _with_culprit(report, None, fp32, quantized, rows.held_out)
        )
    record(
        quantized,
        variant,
        report,
        {**options.describe(variant), "calibration": rows.source},
        metadata.props(fp32).get(metadata.SPEC_SHA256),
    )
    return Variant(name, variant, quantized, report)
