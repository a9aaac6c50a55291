"""Writing built models into a Triton-compatible model repository.

``<repo>/<name>/1/model.onnx`` and ``<repo>/<name>/config.pbtxt`` per model and variant.
Everything is built in memory first and written with atomic renames afterwards, so a
failure leaves no half-written file; a file whose bytes would not change is not touched.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import onnx

from builder import metadata
from builder.errors import ArtifactError, UnsupportedError
from builder.graph import build
from builder.spec import Spec
from builder.triton import config_pbtxt

VERSION_DIR = "1"
MODEL_FILE = "model.onnx"
CONFIG_FILE = "config.pbtxt"
SUPPORTED_VARIANTS = ("fp32",)


def model_name(spec_name: str, variant: str) -> str:
    """fp32 keeps the plain name; every other variant is a model of its own."""
    return spec_name if variant == "fp32" else f"{spec_name}-{variant}"


def model_path(repository: Path, name: str) -> Path:
    return repository / name / VERSION_DIR / MODEL_FILE


@dataclass(frozen=True)
class Artifact:
    """A model built in memory, ready to be written."""

    spec: Spec
    variant: str
    name: str
    model: bytes
    config: str


@dataclass(frozen=True)
class Written:
    artifact: Artifact
    path: Path
    changed: bool  # False when the repository already held exactly these bytes


def artifacts(spec: Spec, variants: Sequence[str] | None = None) -> list[Artifact]:
    """Build every requested variant of ``spec`` in memory (default: the spec's own list)."""
    field = "variants" if variants is None else "--variants"
    wanted = list(spec.document.variants if variants is None else variants)
    unsupported = [variant for variant in wanted if variant not in SUPPORTED_VARIANTS]
    if unsupported:
        raise UnsupportedError(
            f"{spec.path or spec.name}: {field}: {', '.join(unsupported)} cannot be built yet; "
            f"this version of onnxforge builds only {', '.join(SUPPORTED_VARIANTS)}"
        )
    built = []
    for variant in wanted:
        name = model_name(spec.name, variant)
        model = build(spec, variant).SerializeToString()
        built.append(Artifact(spec, variant, name, model, config_pbtxt(spec, name)))
    return built


def write(repository: Path, built: Iterable[Artifact]) -> list[Written]:
    """Write each artifact atomically; identical files are left as they are."""
    results = []
    for artifact in built:
        path = model_path(repository, artifact.name)
        changed = _write_if_changed(path, artifact.model)
        changed |= _write_if_changed(path.parent.parent / CONFIG_FILE, artifact.config.encode())
        results.append(Written(artifact, path, changed))
    return results


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
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    return True


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
