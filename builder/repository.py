"""Writing built models into a Triton-compatible model repository.

``<repo>/<name>/1/model.onnx`` and ``<repo>/<name>/config.pbtxt`` per model and variant.
Everything is built in memory first and written with atomic renames afterwards, so a
failure leaves no half-written file; a file whose bytes would not change is not touched.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import onnx

from builder import metadata
from builder.accuracy import Report
from builder.errors import ArtifactError
from builder.graph import build
from builder.quantize import QuantizeOptions
from builder.spec import Spec
from builder.triton import config_pbtxt
from builder.variants import Calibration, make_variant

log = logging.getLogger("onnxforge.builder")

VERSION_DIR = "1"
MODEL_FILE = "model.onnx"
CONFIG_FILE = "config.pbtxt"


def model_name(spec_name: str, variant: str) -> str:
    """fp32 keeps the plain name; every other variant is a model of its own."""
    return spec_name if variant == "fp32" else f"{spec_name}-{variant}"


def model_path(repository: Path, name: str) -> Path:
    return repository / name / VERSION_DIR / MODEL_FILE


@dataclass(frozen=True)
class Artifact:
    """A model built in memory, ready to be written; variants carry their measured report."""

    spec: Spec
    variant: str
    name: str
    model: bytes
    config: str
    report: Report | None = None


@dataclass(frozen=True)
class Written:
    artifact: Artifact
    path: Path
    changed: bool  # False when the repository already held exactly these bytes


def quantize_options(
    spec: Spec,
    method: str | None = None,
    per_channel: bool | None = None,
    reduce_range: bool | None = None,
) -> QuantizeOptions:
    """The spec's ``quantization:`` settings with any flags that were given laid over them."""
    settings = spec.document.quantization
    return QuantizeOptions(
        method=settings.method if method is None else method,
        per_channel=settings.per_channel if per_channel is None else per_channel,
        reduce_range=settings.reduce_range if reduce_range is None else reduce_range,
    )


def calibration_file(spec: Spec, given: Path | None) -> Path | None:
    """The flag's file, else the spec's ``quantization.calibration`` (relative to the spec)."""
    if given is not None or spec.document.quantization.calibration is None:
        return given
    base = spec.path.parent if spec.path else Path.cwd()
    return base / spec.document.quantization.calibration


def validation_file(spec: Spec, given: Path | None) -> Path | None:
    """The flag's file, else the spec's ``quantization.validation`` (relative to the spec)."""
    if given is not None or spec.document.quantization.validation is None:
        return given
    base = spec.path.parent if spec.path else Path.cwd()
    return base / spec.document.quantization.validation


def artifacts(
    spec: Spec,
    variants: Sequence[str] | None = None,
    calibration: Path | None = None,
    options: QuantizeOptions | None = None,
    validation: Path | None = None,
) -> tuple[list[Artifact], list[Report]]:
    """Build every requested variant of ``spec`` in memory (default: the spec's own list).

    Returns the artifacts to write and the reports of variants refused for their budget.
    """
    wanted = list(spec.document.variants if variants is None else variants)
    fp32 = build(spec)
    built: list[Artifact] = []
    refused: list[Report] = []
    rows: Calibration | None = None
    for variant in wanted:
        name = model_name(spec.name, variant)
        log.info("building %s (%s) from %s", name, variant, spec.path or "a document")
        if variant == "fp32":
            built.append(
                Artifact(spec, variant, name, fp32.SerializeToString(), config_pbtxt(spec, name))
            )
            continue
        rows = rows or Calibration.for_spec(
            spec, calibration_file(spec, calibration), validation_file(spec, validation)
        )
        made = make_variant(spec, fp32, variant, name, rows, options or quantize_options(spec))
        if made.model is None:
            refused.append(made.report)
        else:
            built.append(
                Artifact(
                    spec,
                    variant,
                    name,
                    made.model.SerializeToString(),
                    config_pbtxt(spec, name),
                    made.report,
                )
            )
    return built, refused


def write(repository: Path, built: Iterable[Artifact]) -> list[Written]:
    """Write each artifact atomically; identical files are left as they are."""
    results = []
    for artifact in built:
        path = model_path(repository, artifact.name)
        changed = _write_if_changed(path, artifact.model)
        changed |= _write_if_changed(path.parent.parent / CONFIG_FILE, artifact.config.encode())
        log.info("%s: %s", path, "written" if changed else "unchanged")
        results.append(Written(artifact, path, changed))
    return results


def write_file(path: Path, data: bytes) -> bool:
    """Write ``data`` atomically unless ``path`` already holds exactly these bytes."""
    return _write_if_changed(path, data)


def _write_if_changed(path: Path, data: bytes) -> bool:
    with contextlib.suppress(OSError):
        if path.stat().st_size == len(data) and path.read_bytes() == data:
            return False
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        # mkstemp makes files only their owner can read; give the usual permissions instead.
        os.chmod(temporary, 0o666 & ~_umask())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    return True


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def read_model(path: Path) -> onnx.ModelProto:
    """Load a built file, or say clearly why it cannot be."""
    if not path.is_file():
        raise ArtifactError(f"{path}: not built (run `onnxforge build` first)")
    try:
        return onnx.load(str(path))
    except Exception as error:
        raise ArtifactError(f"{path}: not a readable ONNX model: {error}") from None


def staleness(model: onnx.ModelProto, spec: Spec) -> str | None:
    """Why ``model`` was not built from ``spec`` as it is now, or None when it was."""
    recorded = metadata.props(model).get(metadata.SPEC_SHA256)
    if recorded is None:
        return "the file records no spec hash (not built by onnxforge)"
    if recorded != spec.sha256:
        return "built from a different version of the spec (run `onnxforge build`)"
    return None
