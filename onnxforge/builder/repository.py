"""Writing built models into a Triton-compatible model repository.

``<repo>/<name>/<version>/model.onnx`` and ``<repo>/<name>/config.pbtxt`` per model and
variant. Everything is built in memory first and written with atomic renames afterwards, so
a failure leaves no half-written file; a file whose bytes would not change is not touched.

Versions, as Triton has them: a build whose graph (nodes, weights, opsets) equals the newest
version's rewrites that version in place (only recorded facts such as the spec hash
changed); a build that computes something else becomes a new version folder, the next
number. Afterwards the newest ``serving.keep_versions`` versions are kept (and any that a
``specific`` version policy names); older version folders that onnxforge wrote are removed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import onnx

from onnxforge.builder import metadata, onnxfile
from onnxforge.builder.accuracy import Report, budget_for
from onnxforge.builder.graph import build
from onnxforge.builder.layout import CONFIG_FILE, model_name, model_path, version_path, versions
from onnxforge.builder.quantize import QuantizeOptions
from onnxforge.builder.schema import Serving
from onnxforge.builder.spec import Spec
from onnxforge.builder.triton import config_pbtxt
from onnxforge.builder.variants import Calibration, make_variant

log = logging.getLogger("onnxforge.builder")

__all__ = [
    "REBUILD_ADVICE",
    "Artifact",
    "Written",
    "artifacts",
    "calibration_file",
    "model_name",
    "model_path",
    "prune",
    "quantize_options",
    "read_model",
    "stale_props",
    "staleness",
    "validation_file",
    "write",
    "write_config",
    "write_file",
]


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
    version: int = 1
    new_version: bool = False  # True when the graph differs from the newest version's
    pruned: tuple[int, ...] = ()  # older versions removed to stay within keep_versions


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
    """Write each artifact atomically, as a new version when it computes something new."""
    results = []
    for artifact in built:
        folder = repository / artifact.name
        found = versions(folder)
        newest = found[-1] if found else None
        same = newest is not None and _same_graph(
            version_path(repository, artifact.name, newest), artifact.model
        )
        version = newest if same and newest is not None else (newest or 0) + 1
        path = version_path(repository, artifact.name, version)
        changed = _write_if_changed(path, artifact.model)
        changed |= _write_if_changed(folder / CONFIG_FILE, artifact.config.encode())
        pruned = prune(folder, artifact.spec.document.serving)
        log.info(
            "%s: %s", path, ("new version" if not same else "written") if changed else "unchanged"
        )
        results.append(Written(artifact, path, changed, version, not same, pruned))
    return results


def write_config(repository: Path, spec: Spec, name: str) -> bool:
    """Write only the ``config.pbtxt`` of model ``name`` (serving settings changed)."""
    return _write_if_changed(repository / name / CONFIG_FILE, config_pbtxt(spec, name).encode())


def _same_graph(path: Path, data: bytes) -> bool:
    """Whether the file at ``path`` computes what ``data`` does (same graph and opsets)."""
    try:
        existing = onnx.load_from_string(path.read_bytes())
    except Exception:  # unreadable or foreign: never overwritten, a new version it is
        return False
    candidate = onnx.load_from_string(data)
    return bool(
        existing.graph == candidate.graph
        and list(existing.opset_import) == list(candidate.opset_import)
    )


def prune(folder: Path, serving: Serving) -> tuple[int, ...]:
    """Remove version folders beyond ``keep_versions`` that onnxforge wrote; their numbers."""
    found = versions(folder)
    keep = set(found[-serving.keep_versions :]) | set(serving.version_policy.specific or ())
    removed = []
    for version in found:
        if version in keep:
            continue
        path = version_path(folder.parent, folder.name, version)
        try:
            written_by_us = metadata.SPEC_SHA256 in metadata.props(onnx.load(str(path)))
        except Exception:
            written_by_us = False
        if not written_by_us or any(p.name != path.name for p in path.parent.iterdir()):
            continue  # someone else's files: never removed
        shutil.rmtree(path.parent)
        removed.append(version)
    if removed:
        log.info("%s: removed old version(s) %s", folder, ", ".join(map(str, removed)))
    return tuple(removed)


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
    """Load a file of the repository, or say on one line why it cannot be (a missing file is
    one not built yet)."""
    return onnxfile.read(path, built=True).model


def staleness(model: onnx.ModelProto, spec: Spec) -> str | None:
    """Why ``model`` was not built from ``spec`` as it is now, or None when it was."""
    return stale_props(metadata.props(model), spec)


REBUILD_ADVICE = (
    "run `onnxforge build`; if it refuses the variant, relax its `budget:` or the "
    "`quantization:` settings, or drop it from `variants:`"
)


def stale_props(props: Mapping[str, str], spec: Spec) -> str | None:
    """``staleness`` from a file's metadata props (as a server reads them from its session)."""
    recorded = props.get(metadata.SPEC_SHA256)
    if recorded is None:
        return "the file records no spec hash (not built by onnxforge)"
    variant = props.get(metadata.VARIANT, "fp32")
    if recorded != spec.sha256:
        advice = REBUILD_ADVICE if variant != "fp32" else "run `onnxforge build`"
        return f"built from an older version of the spec ({advice})"
    if variant != "fp32":
        if variant not in spec.document.variants:
            return f"'{variant}' is no longer among the spec's variants"
        accuracy = json.loads(props.get(metadata.ACCURACY) or "{}")
        wanted = budget_for(variant, spec.document.budget).model_dump(exclude_none=True)
        if accuracy.get("budget") != wanted:
            return f"measured against a budget the spec no longer sets ({REBUILD_ADVICE})"
    return None
