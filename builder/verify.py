"""Run built files in ONNX Runtime and compare them with the NumPy reference."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from builder import reference, runtime
from builder.activations import CLASSIFIER_ACTIVATIONS
from builder.errors import ArtifactError, SpecError
from builder.repository import model_name, model_path, read_model, staleness
from builder.spec import Spec

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


def sample_inputs(spec: Spec, count: int, seed: int) -> np.ndarray:
    """``count`` rows drawn from the spec's input distribution, reproducibly."""
    rng = np.random.default_rng(seed)
    shape = (count, *spec.input_shape)
    dist = spec.document.input.distribution
    if dist.uniform is not None:
        values = rng.uniform(dist.uniform.low, dist.uniform.high, size=shape)
    else:
        assert dist.normal is not None
        values = rng.normal(dist.normal.mean, dist.normal.std, size=shape)
    return values.astype(np.float32)


def load_inputs(path: Path, spec: Spec) -> np.ndarray:
    """A user's ``.npy`` batch (or single row), checked against the spec's input."""
    file = str(path)
    try:
        array = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise SpecError(file, "", "", "file not found") from None
    except (ValueError, OSError) as error:
        raise SpecError(file, "", "", f"not a readable .npy array: {error}") from None
    if not isinstance(array, np.ndarray):
        raise SpecError(file, "", "", "expected a .npy array, got an .npz archive")
    if tuple(array.shape) == spec.input_shape:
        array = array[np.newaxis]
    if array.ndim != len(spec.input_shape) + 1 or tuple(array.shape[1:]) != spec.input_shape:
        raise SpecError(
            file,
            "",
            "",
            f"shape {array.shape} does not fit input '{spec.input_name}' of "
            f"{spec.name}: expected (N, {', '.join(map(str, spec.input_shape))})",
        )
    if array.shape[0] == 0:
        raise SpecError(file, "", "", "holds no rows")
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise SpecError(file, "", "", f"dtype {array.dtype} is not numeric")
    with np.errstate(over="ignore"):
        array = array.astype(np.float32)
    if not np.isfinite(array).all():
        raise SpecError(file, "", "", "holds NaN or Inf values (beyond float32 range counts too)")
    return array


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


def is_classifier(spec: Spec, output: str) -> bool:
    activation = spec.output_layer(output).activation
    return activation is not None and activation.name in CLASSIFIER_ACTIVATIONS


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
    try:
        model = read_model(path)
    except ArtifactError as error:
        return ModelCheck(name, variant, path, 0, problem=str(error))
    if (stale := staleness(model, spec)) is not None:
        return ModelCheck(name, variant, path, 0, problem=stale)
    session = runtime.session(model.SerializeToString())
    got = dict(
        zip(
            spec.output_names,
            session.run(list(spec.output_names), {spec.input_name: inputs}),
            strict=True,
        )
    )
    want = reference.run(spec, inputs)
    checks = [
        compare(out, got[out], want[out], is_classifier(spec, out), atol, rtol)
        for out in spec.output_names
    ]
    return ModelCheck(name, variant, path, len(inputs), checks)
