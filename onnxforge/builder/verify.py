"""Run built files in ONNX Runtime and compare them with the NumPy reference."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from onnxforge.builder import reference, runtime
from onnxforge.builder.accuracy import Report
from onnxforge.builder.errors import ArtifactError
from onnxforge.builder.repository import model_name, model_path, read_model, staleness
from onnxforge.builder.samples import load_inputs, sample_inputs
from onnxforge.builder.spec import Spec

__all__ = [
    "assess_variant",
    "check_outputs",
    "load_inputs",
    "sample_inputs",
    "verify_model",
    "verify_variant",
]

# float32 matches the float64 reference to about this much after a few thousand-term sums.
DEFAULT_ATOL = 1e-5
DEFAULT_RTOL = 1e-4


@dataclass(frozen=True)
class OutputCheck:
    """How one output of one model compares with the reference."""

    output: str
    max_abs: float
    max_rel: float
    argmax_agreement: float | None  # only for class-score outputs
    ok: bool


@dataclass(frozen=True)
class ModelCheck:
    model: str
    variant: str
    path: Path
    samples: int
    outputs: list[OutputCheck] = field(default_factory=list)
    problem: str | None = None  # the file could not be checked at all

    @property
    def ok(self) -> bool:
        return self.problem is None and all(check.ok for check in self.outputs)


def compare(
    name: str, got: np.ndarray, want: np.ndarray, classifier: bool, atol: float, rtol: float
) -> OutputCheck:
    """Element-wise |got - want| <= atol + rtol * |want|; equal infinities count as equal."""
    got64, want64 = got.astype(np.float64), want.astype(np.float64)
    with np.errstate(invalid="ignore"):
        diff = np.where(got64 == want64, 0.0, np.abs(got64 - want64))
    rel = diff / np.maximum(np.abs(want64), atol)
    ok = bool(np.all(diff <= atol + rtol * np.abs(want64)))
    agreement = None
    if classifier:
        agreement = float(np.mean(got.argmax(axis=-1) == want.argmax(axis=-1)))
    return OutputCheck(name, float(np.max(diff)), float(np.max(rel)), agreement, ok)


def _run_built(
    spec: Spec, path: Path, inputs: np.ndarray
) -> tuple[dict[str, np.ndarray] | None, str | None]:
    """Every output of the built file at ``path`` on ``inputs``, or why it cannot be run."""
    try:
        model = read_model(path)
    except ArtifactError as error:
        return None, str(error)
    if (stale := staleness(model, spec)) is not None:
        return None, stale
    session = runtime.session(model.SerializeToString())
    names = list(spec.output_names)
    return dict(zip(names, session.run(names, {spec.input_name: inputs}), strict=True)), None


def verify_model(
    spec: Spec,
    repository: Path,
    variant: str,
    inputs: np.ndarray,
    atol: float = DEFAULT_ATOL,
    rtol: float = DEFAULT_RTOL,
) -> ModelCheck:
    """Run one built variant of ``spec`` on ``inputs`` and compare every output."""
    name = model_name(spec.name, variant)
    path = model_path(repository, name)
    got, problem = _run_built(spec, path, inputs)
    if got is None:
        return ModelCheck(name, variant, path, 0, problem=problem)
    return ModelCheck(
        name, variant, path, len(inputs), check_outputs(spec, got, inputs, atol, rtol)
    )


def check_outputs(
    spec: Spec,
    got: dict[str, np.ndarray],
    inputs: np.ndarray,
    atol: float = DEFAULT_ATOL,
    rtol: float = DEFAULT_RTOL,
) -> list[OutputCheck]:
    """Every output of an fp32 model's answers ``got`` on ``inputs`` against the reference."""
    want = reference.run(spec, inputs)
    return [
        compare(out, got[out], want[out], spec.is_classifier(out), atol, rtol)
        for out in spec.output_names
    ]


@dataclass(frozen=True)
class VariantCheck:
    """A quantized variant measured again against the fp32 reference, on verify's rows."""

    model: str
    variant: str
    path: Path
    report: Report | None = None
    problem: str | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None and self.report is not None and self.report.ok


def verify_variant(spec: Spec, repository: Path, variant: str, inputs: np.ndarray) -> VariantCheck:
    """Run a built variant and hold its outputs to the variant's budget."""
    name = model_name(spec.name, variant)
    path = model_path(repository, name)
    got, problem = _run_built(spec, path, inputs)
    if got is None:
        return VariantCheck(name, variant, path, problem=problem)
    return VariantCheck(name, variant, path, assess_variant(spec, variant, got, inputs))


def assess_variant(
    spec: Spec, variant: str, got: dict[str, np.ndarray], inputs: np.ndarray
) -> Report:
    """A variant's answers ``got`` on ``inputs`` against the fp32 reference and its budget."""
    from onnxforge.builder.accuracy import assess, budget_for

    return assess(
        model_name(spec.name, variant),
        variant,
        got,
        reference.run(spec, inputs),
        {output: spec.is_classifier(output) for output in spec.output_names},
        spec.output_name,
        budget_for(variant, spec.document.budget),
    )
