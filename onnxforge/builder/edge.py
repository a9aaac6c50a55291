"""Edge export: ONNX Runtime's ``.ort`` format, the operators of a reduced build, a manifest.

``export_edge(model.onnx, out_dir)`` writes into ``out_dir``:

* ``<name>.ort`` -- the model in ONNX Runtime's ORT format (flatbuffers), which the mobile
  and minimal builds of ONNX Runtime load. ``<name>`` is the model's name: ``<name>`` for
  ``<repo>/<name>/1/model.onnx`` (so ``digits-mlp-int8-dynamic.ort``), else the file's stem.
  With the Runtime optimization style it is ``<name>.with_runtime_opt.ort`` (ORT's own name).
* ``required_operators.config`` -- the operator list to build a reduced ONNX Runtime with
  (``build.sh --minimal_build --include_ops_by_config required_operators.config``).
* ``manifest.json`` -- what a device needs to know without reading the model: inputs and
  outputs, variant, opset, the sha256 and size of every file, the accuracy the file records.

Both model files are made by ONNX Runtime's own converter
(``onnxruntime.tools.convert_onnx_models_to_ort``), the operator list is read back with its
own parser (``onnxruntime.tools.reduced_build_config_parser``). Two deliberate edits: the
converter's comment lines name the absolute paths of the files it read, which here are in a
temporary folder; they are rewritten to the file names. Nothing else in the file changes.

Choices:

* Optimization style **Fixed** by default: every graph optimization (fusions such as
  ``FusedGemm``, ``DynamicQuantizeMatMul``, ``QGemm``) is applied once, at export, for the
  CPU execution provider, so the device loads an already optimized graph, the operator list
  names exactly the kernels that run, and nothing has to be replayed at load time. ORT's
  guidance is Fixed unless a compiling execution provider (NNAPI, CoreML) takes part of the
  graph; then **Runtime** style (``optimization_style="runtime"``) saves the optimizations to
  replay on whatever the provider leaves to the CPU, and the device must set the session
  option ``session.enable_saved_runtime_optimizations=1`` (for trusted models only).
* Target platform **arm** by default (``amd64`` selectable). For the converter it means:
  ``arm`` turns on ``session.qdqisint8allowed`` (QDQ groups with *int8* activations are
  fused into integer kernels, which is what ONNX Runtime does at run time on ARM) and keeps
  the x86-only NCHWc layout out; ``amd64`` leaves int8-activation QDQ groups unfused (x86
  kernels prefer uint8 activations) and allows NCHWc (Conv only), which ORT warns makes the
  file specific to the converting CPU. onnxforge's own int8 files use uint8 activations and
  have no Conv, so both targets give the same operators and outputs for them.
* Shapes in the manifest use ``-1`` for a dynamic dimension (as KServe's model metadata and
  ``config.pbtxt`` do); ``dims`` keeps each dimension's symbolic name (``"batch"``) or size.

One folder, one model. ``manifest.json`` and ``required_operators.config`` describe the
folder: the manifest names its one model and every file of it, and a reduced build made
with the folder's operator list runs every ``.ort`` file in the folder. A second model in
the same folder would break one or the other (the operator list would drop the first
model's kernels, or the manifest would stop describing the folder), so an export into a
folder that holds another model's export is refused with one line, and so is an export
that would overwrite a file no export of this model wrote (a ``manifest.json`` that is not
an export's included). Nothing is deleted but the files this model's earlier export listed
in its manifest: exporting the same model again replaces its own files (and removes those
of the other optimization style). Several models go in a folder each (``edge/<name>/``);
for one reduced build that runs them all, concatenate their operator lists (ONNX Runtime's
parser merges the lines of a domain and opset):
``cat edge/*/required_operators.config > required_operators.config``.

Everything is written in a temporary folder beside ``out_dir`` and moved into place
afterwards (one rename when ``out_dir`` does not exist yet; file by file, ``manifest.json``
last, into an existing folder). A failure leaves no file behind and creates no folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
from pathlib import Path
from typing import Any

import onnx
from onnx import TensorProto

from onnxforge.builder import metadata, ort_tools
from onnxforge.builder.errors import ArtifactError
from onnxforge.builder.onnxfile import read
from onnxforge.builder.onnxgraph import graph_inputs, opsets, value_dims
from onnxforge.protocol.datatypes import DESCRIBED_ONLY, from_onnx

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
TARGET_PLATFORMS = ("arm", "amd64")
DEFAULT_TARGET_PLATFORM = "arm"
OPTIMIZATION_STYLES = ("fixed", "runtime")
DEFAULT_OPTIMIZATION_STYLE = "fixed"


def _dtype_names(elem_type: int) -> tuple[str, str | None]:
    """(NumPy dtype name, protocol datatype) of an ONNX element type, from the shared table."""
    row = from_onnx(elem_type)
    if row is not None:
        return row.dtype.name, row.name
    return TensorProto.DataType.Name(elem_type).lower(), DESCRIBED_ONLY.get(elem_type)


def edge_name(model_path: Path) -> str:
    """``<name>`` for ``<repo>/<name>/<version>/model.onnx``, else the file's stem."""
    parent = model_path.parent
    if model_path.name == "model.onnx" and parent.name.isdigit() and parent.parent.name:
        return parent.parent.name
    return model_path.stem


def export_edge(
    model_path: Path,
    out_dir: Path,
    target_platform: str = DEFAULT_TARGET_PLATFORM,
    optimization_style: str = DEFAULT_OPTIMIZATION_STYLE,
) -> dict[str, Any]:
    """Write ``<name>.ort``, ``required_operators.config`` and ``manifest.json`` into ``out_dir``.

    Returns the manifest. Raises ``ArtifactError`` (one line, naming the file) when the model
    is missing, is not an ONNX model, or ONNX Runtime cannot convert it.
    """
    if target_platform not in TARGET_PLATFORMS:
        raise ValueError(f"target_platform must be one of {TARGET_PLATFORMS}")
    if optimization_style not in OPTIMIZATION_STYLES:
        raise ValueError(f"optimization_style must be one of {OPTIMIZATION_STYLES}")
    model_path = Path(model_path)
    out_dir = Path(os.path.abspath(out_dir))
    file = read(model_path)  # external data brought in: the converter reads one file
    source, model = file.data, file.model
    name = edge_name(model_path)
    props = metadata.props(model)
    accuracy = _json_prop(model_path, props, metadata.ACCURACY)
    quantization = _json_prop(model_path, props, metadata.QUANTIZATION)
    if out_dir.exists() and not out_dir.is_dir():
        raise ArtifactError(f"{out_dir}: exists and is not a folder")
    if out_dir.is_dir():  # refuse now rather than after converting (checked again to publish)
        _claim(out_dir, name, _file_names(name, optimization_style))

    created = _make_parents(out_dir.parent)
    stage = out_dir.parent / f".{out_dir.name}.{secrets.token_hex(4)}.partial"
    try:
        try:
            os.mkdir(stage)  # not mkdtemp: the folder becomes out_dir, so it keeps the umask's mode
            inputs = stage / "onnx"
            staged = stage / "edge"
            inputs.mkdir()
            (inputs / f"{name}.onnx").write_bytes(source)
            level = ort_tools.convert(
                model_path, inputs / f"{name}.onnx", staged, target_platform, optimization_style
            )
            ort_file = ort_tools.only_file(model_path, staged, "*.ort")
            config_file = ort_tools.only_file(model_path, staged, "*.config")
            ort_tools.tidy_config(config_file)
            ort_tools.check_loads(model_path, ort_file, model)
            manifest: dict[str, Any] = {
                "format": MANIFEST_FORMAT,
                "model": name,
                "variant": props.get(metadata.VARIANT, "unknown"),
                "source": _file_entry(model_path.name, source),
                "files": {
                    "ort": _file_entry(ort_file.name, ort_file.read_bytes()),
                    "required_operators": _file_entry(config_file.name, config_file.read_bytes()),
                },
                "inputs": _tensors(graph_inputs(model)),
                "outputs": _tensors(list(model.graph.output)),
                "opset": opsets(model).get("ai.onnx"),
                "opset_imports": opsets(model),
                "ir_version": model.ir_version,
                "metadata": {
                    key: value
                    for key, value in props.items()
                    if key.startswith("onnxforge.")
                    and key not in (metadata.ACCURACY, metadata.QUANTIZATION)
                },
                "accuracy": accuracy,
                "quantization": quantization,
                "operators": ort_tools.operators(config_file),
                "onnxruntime": {
                    "version": ort_tools.ort_version(),
                    "optimization_style": optimization_style,
                    "optimization_level": level,
                    "target_platform": target_platform,
                },
            }
            text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
            (staged / MANIFEST).write_text(text, encoding="utf-8")
            _publish(staged, out_dir, name, [ort_file.name, config_file.name, MANIFEST])
        except OSError as error:  # the folder cannot be written: say so on one line
            reason = error.strerror or str(error)
            raise ArtifactError(f"{out_dir}: cannot write the export: {reason}") from None
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        for folder in reversed(created):
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return manifest


# ------------------------------------------------------------------ describing the source


def _json_prop(path: Path, props: dict[str, str], key: str) -> dict[str, Any] | None:
    if key not in props:
        return None
    try:
        value = json.loads(props[key])
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise ArtifactError(f"{path}: metadata {key} is not a JSON object")
    return value


def _tensors(values: list[onnx.ValueInfoProto]) -> list[dict[str, Any]]:
    described = []
    for value in values:
        entry: dict[str, Any] = {"name": value.name}
        if value.type.HasField("tensor_type"):
            tensor = value.type.tensor_type
            dtype, datatype = _dtype_names(tensor.elem_type)
            stated = value_dims(value)
            dims = None if stated is None else [-1 if d is None else d for d in stated]
            entry.update(
                dtype=dtype,
                datatype=datatype,
                dims=dims,
                shape=None if dims is None else [d if isinstance(d, int) else -1 for d in dims],
            )
        else:  # sequences, maps, optionals: not tensors, no dtype or shape to state
            entry.update(dtype=None, datatype=None, dims=None, shape=None)
        described.append(entry)
    return described


def _file_entry(name: str, data: bytes) -> dict[str, Any]:
    return {"file": name, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


# ------------------------------------------------------------------ moving into place


def _make_parents(folder: Path) -> list[Path]:
    """Create ``folder`` and its missing parents; return those created, outermost first."""
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    created = []
    try:
        for path in reversed(missing):
            path.mkdir()
            created.append(path)
    except OSError as error:
        for path in reversed(created):
            with contextlib.suppress(OSError):
                path.rmdir()
        raise ArtifactError(f"{path}: cannot create the folder: {error.strerror}") from None
    return created


def _file_names(name: str, style: str) -> list[str]:
    """The files the converter writes for ``name`` in ``style`` (as ONNX Runtime names them)."""
    if style == "runtime":
        return [f"{name}.with_runtime_opt.ort", "required_operators.with_runtime_opt.config"]
    return [f"{name}.ort", "required_operators.config"]


def _publish(staged: Path, out_dir: Path, model: str, names: list[str]) -> None:
    """Move the staged files into ``out_dir``; ``names`` are moved in order, manifest last."""
    for name in names:
        with open(staged / name, "rb") as file:
            os.fsync(file.fileno())
    if not out_dir.exists():
        with contextlib.suppress(OSError):  # lost a race: fall back to file by file
            os.rename(staged, out_dir)
            return
    previous = _claim(out_dir, model, names)
    for name in names:
        os.replace(staged / name, out_dir / name)
    for name in previous - set(names):  # left by this model's earlier export (other style)
        with contextlib.suppress(OSError):
            (out_dir / name).unlink()


def _claim(out_dir: Path, model: str, names: list[str]) -> set[str]:
    """The files an earlier export of ``model`` listed in ``out_dir``: ours to replace.

    Refuses (one line) a folder holding another model's export or a ``manifest.json`` that
    is not an export's, and a file among ``names`` that no export of ``model`` wrote.
    """
    manifest = out_dir / MANIFEST
    previous: set[str] = set()
    if os.path.lexists(manifest):
        owner, previous = _previous_export(manifest)
        if owner is None:
            raise ArtifactError(
                f"{manifest}: not a manifest that export-edge wrote; "
                "remove it or export into another folder"
            )
        if owner != model:
            raise ArtifactError(
                f"{out_dir}: holds the edge export of '{owner}' (one model per folder); "
                f"export '{model}' into another folder, e.g. {out_dir / model}"
            )
    for name in names:
        if name != MANIFEST and name not in previous and os.path.lexists(out_dir / name):
            raise ArtifactError(
                f"{out_dir / name}: exists, and no edge export of '{model}' wrote it; "
                "remove it or export into another folder"
            )
    return previous


def _previous_export(manifest: Path) -> tuple[str | None, set[str]]:
    """The model an earlier export's ``manifest`` names and the files it lists (plain names
    only); ``(None, set())`` when it is not such a manifest."""
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
        model = data["model"]
        names = {entry["file"] for entry in data["files"].values()}
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        return None, set()
    if not isinstance(model, str):
        return None, set()
    return model, {name for name in names if isinstance(name, str) and name == Path(name).name}
