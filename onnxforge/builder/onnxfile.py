"""Opening ONNX files: one reader with one-line errors, and the file a command names.

``read(path)`` is how the builder and the commands open an ONNX file (``export-edge``,
``inspect``, ``quantize``, ``verify`` and the server's repository all go through it):

* a path that does not exist: ``file not found``; for a file of the model repository, which
  ``onnxforge build`` writes (``built=True``): ``not built (run `onnxforge build` first)``;
* a folder, or a file the system will not read: said so;
* bytes that are not an ONNX model: ``not a readable ONNX model: <why>``;
* weights kept in external data files: brought in beside the graph (``OnnxFile.data`` then
  holds them), or refused on one line when they cannot be read; ``external_data=False``
  leaves them where they are (sizes can still be read from the shapes).

Each error is an ``ArtifactError`` whose message starts with the path.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import onnx
from onnx.external_data_helper import load_external_data_for_model, uses_external_data

from onnxforge.builder.errors import ArtifactError, describe
from onnxforge.builder.layout import model_path

NOT_FOUND = "file not found"
NOT_BUILT = "not built (run `onnxforge build` first)"

__all__ = ["NOT_BUILT", "NOT_FOUND", "OnnxFile", "locate", "read"]


@dataclass(frozen=True)
class OnnxFile:
    path: Path
    data: bytes  # the file's bytes; with its external data brought in, the whole model's
    model: onnx.ModelProto


def read(
    path: Path, *, built: bool = False, external_data: bool = True, hint: str = ""
) -> OnnxFile:
    """The ONNX model in ``path``, or an ``ArtifactError`` of one line saying why not.

    ``built``: the path is where ``onnxforge build`` writes a model, so a missing file is one
    not built yet. ``hint`` is added to the message when the bytes are not an ONNX model.
    """
    path = Path(path)
    if path.is_dir():
        raise ArtifactError(f"{path}: is a folder, not an ONNX file")
    if not path.is_file():
        raise ArtifactError(f"{path}: {NOT_BUILT if built else NOT_FOUND}")
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ArtifactError(f"{path}: cannot be read: {error.strerror or error}") from None
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception:
        raise _unreadable(path, "the bytes do not parse", hint) from None
    if model.ir_version <= 0 or not model.HasField("graph") or not model.opset_import:
        raise _unreadable(path, "no IR version, graph or opset", hint)
    if external_data and _has_external_data(model):
        try:
            load_external_data_for_model(model, str(path.parent))
        except Exception as error:
            reason = describe(error)
            raise ArtifactError(f"{path}: its external data cannot be read: {reason}") from None
        data = model.SerializeToString()
    return OnnxFile(path, data, model)


def _unreadable(path: Path, reason: str, hint: str) -> ArtifactError:
    return ArtifactError(f"{path}: not a readable ONNX model: {reason}{'; ' if hint else ''}{hint}")


def _has_external_data(model: onnx.ModelProto) -> bool:
    """Whether a tensor of the main graph (an initializer or a node's constant) is stored
    outside the file."""
    tensors = list(model.graph.initializer)
    for node in model.graph.node:
        for attribute in node.attribute:
            tensors += [attribute.t, *attribute.tensors]
    return any(uses_external_data(tensor) for tensor in tensors)


def locate(model: str, repository: Path) -> Path:
    """MODEL is a file path, or the name of a model in the repository (its newest version)."""
    path = Path(model)
    if path.is_file() or path.suffix == ".onnx" or len(path.parts) != 1:
        return path
    in_repository = model_path(repository, model)
    if in_repository.is_file():
        return in_repository
    raise ArtifactError(
        f"{model}: no such file, and no model of that name in {repository}/ "
        f"(looked for {in_repository})"
    )
