"""Make a quantized variant, measure it against the fp32 reference, and keep it only if it
stays inside its budget.

Which rows are used (``Calibration.for_spec``; ``foreign_rows`` for files without a spec):

* A calibration file (``--calibration`` / ``quantization.calibration``): its first 80% of
  rows calibrate int8-static; its last 20% are kept back and only ever measured on.
* A validation file (``--validation`` / ``quantization.validation``): every row is measured
  on, none is calibrated on. With a calibration file too, the measurement is the
  calibration file's kept-back 20% plus the whole validation file: the calibration rows are
  the same with or without a validation file, so adding one never changes a variant's bytes.
* Synthetic rows, drawn from the spec's ``input.distribution`` (512 with seed 1 to
  calibrate, 512 with seed 2 to measure), only for what the user gave no file for: with a
  validation file alone, int8-static is calibrated on drawn rows and measured on the file.

Every variant of a spec (fp16 and int8-dynamic too, which calibrate on nothing) is measured
on the same rows, so their figures compare; the report records which rows those were.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime

from onnxforge.builder import metadata, reference, runtime
from onnxforge.builder.accuracy import (
    HELD_OUT_ROWS,
    HELD_OUT_SEED,
    Report,
    Rows,
    assess,
    budget_for,
    worst_node,
)
from onnxforge.builder.errors import SpecError
from onnxforge.builder.graph import layer_prefix
from onnxforge.builder.onnxgraph import graph_inputs, value_dims
from onnxforge.builder.quantize import QuantizeOptions, quantize
from onnxforge.builder.samples import describe_distribution, load_inputs, load_rows, sample_inputs
from onnxforge.builder.schema import Budget
from onnxforge.builder.spec import Spec

CALIBRATION_ROWS = 512
CALIBRATION_SEED = 1
HELD_OUT_FRACTION = 0.2  # of a user's calibration file, kept back for measuring
MIN_CALIBRATION_FILE_ROWS = 5

# Draws ``count`` synthetic rows with ``seed``.
Draw = Callable[[int, int], np.ndarray]


@dataclass(frozen=True)
class Calibration:
    """Rows to calibrate int8-static on, rows to measure every variant on, and their sources.

    ``rows`` and ``source`` are the calibration rows (empty when nothing needs them);
    ``held_out`` are measured on and never calibrated on; ``measured`` says where they came
    from (it goes into each variant's report).
    """

    rows: np.ndarray
    held_out: np.ndarray
    source: str
    measured: Rows
    synthetic: bool = False  # the calibration rows were drawn, not given

    @classmethod
    def for_spec(cls, spec: Spec, file: Path | None, validation: Path | None = None) -> Calibration:
        """The rows for ``spec``'s variants from the user's files, drawn only when missing."""

        def draw(count: int, seed: int) -> np.ndarray:
            return sample_inputs(spec, count, seed)

        return cls.plan(
            None if file is None else (file, load_inputs(file, spec)),
            None if validation is None else (validation, load_inputs(validation, spec)),
            draw,
            describe_distribution(spec),
        )

    @classmethod
    def plan(
        cls,
        calibration: tuple[Path, np.ndarray] | None,
        validation: tuple[Path, np.ndarray] | None,
        draw: Draw,
        drawn_from: str,
        calibrate: bool = True,
    ) -> Calibration:
        """Split the calibration file, add the validation file, draw what is missing.

        ``drawn_from`` names the distribution ``draw`` samples; ``calibrate`` False leaves
        the calibration rows empty when no file gives them (nothing will calibrate).
        """
        measured: list[tuple[np.ndarray, str]] = []
        if calibration is not None:
            file, given = calibration
            rows, tail = cls._split(given, file)
            source, synthetic = f"{len(rows)} rows of {file.name}", False
            share = f"{len(tail) / len(given):.0%}"
            kept = f"last {_rows(len(tail))} of {file.name}, the {share} kept back from calibration"
            measured.append((tail, kept))
        elif calibrate:
            rows, synthetic = draw(CALIBRATION_ROWS, CALIBRATION_SEED), True
            source = f"{CALIBRATION_ROWS} synthetic rows drawn with seed {CALIBRATION_SEED}"
            source += f" from {drawn_from}"
        else:
            rows, source, synthetic = np.zeros((0,), np.float32), "", False
        if validation is not None:
            file, given = validation
            measured.append((given, f"all {_rows(len(given))} of {file.name}"))
        if measured:
            held_out = np.concatenate([part for part, _ in measured])
            described = " + ".join(text for _, text in measured)
            return cls(rows, held_out, source, Rows(described, len(held_out), False), synthetic)
        held_out = draw(HELD_OUT_ROWS, HELD_OUT_SEED)
        described = f"synthetic rows drawn with seed {HELD_OUT_SEED} from {drawn_from}"
        return cls(rows, held_out, source, Rows(described, len(held_out), True), synthetic)

    @staticmethod
    def _split(rows: np.ndarray, file: Path) -> tuple[np.ndarray, np.ndarray]:
        if len(rows) < MIN_CALIBRATION_FILE_ROWS:
            raise SpecError(
                str(file),
                "",
                "",
                f"holds {len(rows)} row(s); calibration needs at least {MIN_CALIBRATION_FILE_ROWS}"
                f" ({HELD_OUT_FRACTION:.0%} are kept back to measure on)",
            )
        kept = max(1, int(len(rows) * HELD_OUT_FRACTION))
        return rows[:-kept], rows[-kept:]

    def settings(self, variant: str) -> dict[str, object]:
        """What the variant's ``onnxforge.quantization`` record says about its rows."""
        recorded: dict[str, object] = {"measured_on": self.measured.source}
        if variant == "int8-static":
            recorded.update(calibration=self.source, calibration_synthetic=self.synthetic)
        return recorded


def _rows(count: int) -> str:
    return f"{count} row" if count == 1 else f"{count} rows"


def synthetic_warning(
    spec: Spec, variants: Iterable[str], calibration: Path | None, validation: Path | None
) -> str | None:
    """One line when synthetic rows stand in for data and the spec never said what its data
    looks like (no ``input.distribution``): the figures may then mean little."""
    wanted = set(variants) - {"fp32"}
    if not wanted or "distribution" in spec.document.input.model_fields_set:
        return None
    drawn = f"synthetic rows drawn from {describe_distribution(spec)}"
    advice = "declare input.distribution in the spec, or give real rows"
    if calibration is None and validation is None:
        what = "calibrated and measured" if "int8-static" in wanted else "measured"
        return (
            f"{spec.path or spec.name}: no calibration or validation rows: variants are {what}"
            f" on {drawn}; {advice} with --calibration / --validation FILE.npy"
        )
    if calibration is None and "int8-static" in wanted:
        return (
            f"{spec.path or spec.name}: no calibration rows: int8-static is calibrated on"
            f" {drawn}; {advice} with --calibration FILE.npy"
        )
    return None


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
    held_out = calibration.held_out
    report = assess(
        name,
        variant,
        run(quantized, held_out),
        reference.run(spec, held_out),
        {output: spec.is_classifier(output) for output in spec.output_names},
        spec.output_name,
        budget_for(variant, spec.document.budget),
        calibration.measured,
    )
    if not report.ok:
        return Variant(name, variant, None, _with_culprit(report, spec, fp32, quantized, held_out))
    settings = {**options.describe(variant), **calibration.settings(variant)}
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
    from onnxforge._version import __version__

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
    rows = "" if report.rows is None else f" ({report.rows.source})"
    return (
        f"{origin}: {report.variant}: over budget on {report.samples} held-out rows{rows}: "
        f"{'; '.join(report.failures)}; {report.worst}; the variant was not written"
    )


@dataclass(frozen=True)
class ForeignInput:
    """The single float input of an ONNX file onnxforge did not build."""

    name: str
    shape: tuple[int | None, ...]  # without the batch; None for a dimension left open

    @classmethod
    def of(cls, model: onnx.ModelProto, file: str) -> ForeignInput:
        inputs = graph_inputs(model)
        if len(inputs) != 1:
            raise SpecError(
                file,
                "",
                "",
                f"has {len(inputs)} inputs; quantize takes models with exactly one float32 input",
            )
        if inputs[0].type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
            raise SpecError(file, "", "", f"input '{inputs[0].name}' is not float32")
        # A symbolic dimension ("N") is as open as one without a name.
        dims = [d if isinstance(d, int) else None for d in value_dims(inputs[0]) or ()]
        if not dims:
            raise SpecError(file, "", "", f"input '{inputs[0].name}' has no batch dimension")
        return cls(inputs[0].name, tuple(dims[1:]))


def foreign_rows(
    model: onnx.ModelProto,
    file: str,
    calibration_file: Path | None,
    variant: str,
    validation_file: Path | None = None,
) -> Calibration:
    """Rows for a model without a spec, by ``Calibration.plan``'s rules; what no file gives
    is drawn from a standard normal distribution (a bare file declares no other)."""
    source = ForeignInput.of(model, file)
    what = f"input '{source.name}' of {file}"
    calibration = validation = None
    if calibration_file is not None:
        calibration = (calibration_file, load_rows(calibration_file, source.shape, what))
    if validation_file is not None:
        validation = (validation_file, load_rows(validation_file, source.shape, what))

    def draw(count: int, seed: int) -> np.ndarray:
        if any(size is None for size in source.shape):
            flags = "--calibration" if validation is not None else "--calibration or --validation"
            raise SpecError(
                file,
                "",
                "",
                f"input '{source.name}' has open dimensions {source.shape}, so no rows can be"
                f" drawn; give rows with {flags} FILE.npy",
            )
        shape = tuple(int(size) for size in source.shape if size is not None)
        rng = np.random.default_rng(seed)
        return rng.standard_normal((count, *shape)).astype(np.float32)

    return Calibration.plan(
        calibration,
        validation,
        draw,
        "a standard normal distribution",
        calibrate=variant == "int8-static",
    )


def foreign_warning(variant: str, calibration: Path | None, validation: Path | None) -> str | None:
    """One line when a bare file's variant is measured or calibrated on drawn rows."""
    if calibration is None and validation is None:
        what = "calibrated and measured" if variant == "int8-static" else "measured"
        return (
            f"no calibration or validation rows: the variant is {what} on synthetic standard"
            " normal rows, which may be nothing like the model's data; give real rows with"
            " --calibration / --validation FILE.npy"
        )
    if calibration is None and variant == "int8-static":
        return (
            "no calibration rows: int8-static is calibrated on synthetic standard normal rows,"
            " which may be nothing like the model's data; give real rows with --calibration"
            " FILE.npy"
        )
    return None


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
    got = run(quantized, rows.held_out)
    report = assess(name, variant, got, want, classifiers, output, budget, rows.measured)
    if not report.ok:
        return Variant(
            name, variant, None, _with_culprit(report, None, fp32, quantized, rows.held_out)
        )
    record(
        quantized,
        variant,
        report,
        {**options.describe(variant), **rows.settings(variant)},
        metadata.props(fp32).get(metadata.SPEC_SHA256),
    )
    return Variant(name, variant, quantized, report)
