"""Read a spec file (YAML or JSON) into a validated ``Document``, or fail with one line.

Every failure becomes a ``SpecError`` naming the file, the layer (index, type and name)
and the field, e.g. ``spec.yaml: layers[2] (dense "hidden"): units: must be greater than
0, got -4``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from onnxforge.builder.errors import SpecError
from onnxforge.builder.schema import LAYER_TYPES, PATTERN_HELP, Document


class _SpecLoader(yaml.SafeLoader):
    """Safe YAML with two fixes: ``1e-5`` is a float, and a key given twice is an error."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                hash(key)
            except TypeError:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    "a key must be a plain value, not a list or mapping",
                    key_node.start_mark,
                ) from None
            if isinstance(key, str) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key '{key}' appears twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


# YAML 1.1 reads 1e-5 (no dot) as a string; YAML 1.2 and every user read it as a number.
_SpecLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def read_document(path: Path) -> tuple[Document, dict[str, Any]]:
    """The validated document and the raw mapping it came from."""
    file = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(file, "", "", "file not found") from None
    except UnicodeDecodeError:
        raise SpecError(file, "", "", "not a text file (a YAML or JSON spec expected)") from None
    except OSError as error:
        raise SpecError(file, "", "", f"cannot read: {error.strerror or error}") from None
    raw = _parse_text(text, path)
    if not isinstance(raw, dict):
        kind = "an empty file" if raw is None else f"a {type(raw).__name__}"
        raise SpecError(file, "", "", f"expected a mapping of spec fields, got {kind}")
    try:
        return Document.model_validate(raw), raw
    except ValidationError as error:
        raise _spec_error(file, raw, error.errors()[0]) from None


class _DuplicateKey(ValueError):
    pass


def _refuse_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKey(key)
        result[key] = value
    return result


def _parse_text(text: str, path: Path) -> Any:
    try:
        return _parse(text, path)
    except RecursionError:
        raise SpecError(str(path), "", "", "nested too deeply to be a spec") from None
    except ValueError as error:
        if "digits" in str(error):  # Python's guard against integers of thousands of digits
            raise SpecError(str(path), "", "", "holds an integer too long to be read") from None
        raise SpecError(str(path), "", "", f"not a valid spec: {error}") from None


def _parse(text: str, path: Path) -> Any:
    file = str(path)
    if path.suffix.lower() == ".json":
        try:
            return json.loads(text, object_pairs_hook=_refuse_duplicate_keys)
        except _DuplicateKey as error:
            raise SpecError(file, "", "", f"not valid: key '{error}' appears twice") from None
        except json.JSONDecodeError as error:
            raise SpecError(
                file,
                "",
                "",
                f"not valid JSON: line {error.lineno}, column {error.colno}: {error.msg}",
            ) from None
    try:
        return yaml.load(text, Loader=_SpecLoader)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        at = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise SpecError(file, "", "", f"not valid YAML: {at}{problem}") from None


def layer_label(raw_layers: Any, index: int) -> str:
    """``layers[2] (dense "hidden")``, from whatever the raw document holds."""
    layer = raw_layers[index] if isinstance(raw_layers, list) and index < len(raw_layers) else None
    if not isinstance(layer, dict):
        return f"layers[{index}]"
    kind = layer.get("type", "?")
    return f'layers[{index}] ({kind} "{layer.get("name", index)}")'


def _spec_error(file: str, raw: dict[str, Any], error: ErrorDetails) -> SpecError:
    loc = list(error["loc"])
    where = ""
    if len(loc) >= 2 and loc[0] == "layers" and isinstance(loc[1], int):
        where = layer_label(raw.get("layers"), loc[1])
        layer = raw["layers"][loc[1]]
        loc = loc[2:]
        if loc and isinstance(layer, dict) and loc[0] == layer.get("type"):
            loc = loc[1:]  # pydantic names the union member; the user never wrote it
    ctx = error.get("ctx") or {}
    kind = error["type"]
    if kind == "spec_unknown_field":
        loc.append(ctx["field"])
        reason = f"unknown field{ctx['hint']}; allowed: {ctx['allowed']}"
    elif kind == "union_tag_invalid":
        loc.append("type")
        reason = f"unknown layer type '{ctx['tag']}' (known: {', '.join(LAYER_TYPES)})"
    elif kind == "union_tag_not_found":
        loc.append("type")
        reason = f"missing; give one of: {', '.join(LAYER_TYPES)}"
    elif kind == "missing":
        reason = "missing required field"
    elif kind.startswith("spec_"):
        reason = error["msg"]  # written for users in builder.schema
    elif kind == "string_pattern_mismatch":
        help_text = PATTERN_HELP.get(str(ctx.get("pattern")), f"match {ctx.get('pattern')}")
        reason = f"must be {help_text}, got {_short(error['input'])}"
    elif kind == "too_short":
        reason = f"must have at least {ctx['min_length']} item(s), got {_short(error['input'])}"
    else:
        reason = _plain(error["msg"]) + f", got {_short(error['input'])}"
    return SpecError(file, where, _dotted(loc), reason)


def _plain(message: str) -> str:
    message = message.removeprefix("Value error, ")
    return re.sub(r"^Input should be", "must be", message)


def _short(value: Any) -> str:
    try:
        text = repr(value)
    except ValueError:  # Python refuses to print integers of more than 4300 digits
        return "an enormous number"
    return text if len(text) <= 60 else text[:57] + "..."


def _dotted(loc: list[Any]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text
