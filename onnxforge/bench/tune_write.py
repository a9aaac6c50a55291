"""``onnxforge tune --write``: the chosen batching settings into the model's spec or config.

A model built from a spec gets the spec's ``serving:`` mapping changed -- as a small edit of
the YAML text, so that comments and the layout of everything else stay as they were; when
the text cannot be edited in place (``serving`` in flow style, say), the whole document is
written again and the caller is told whether comments were lost. The ``config.pbtxt`` of the
spec's built models is then written from the spec, as ``onnxforge build`` would. A model
without a spec gets its ``config.pbtxt`` changed: batch size, queue delay, instance count.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from onnxforge.bench.tune_points import Batching
from onnxforge.builder.layout import CONFIG_FILE, PLATFORM, model_name, spec_file, split_name
from onnxforge.builder.triton import parse_pbtxt

# Fields of Triton's ModelConfig whose values are strings (quoted); other words are enums.
_STRING_FIELDS = {"name", "platform", "backend", "default_model_filename", "label_filename"}
# Fields that are lists even with one value.
_LIST_FIELDS = {"dims", "versions", "input", "output", "instance_group", "reshape", "shape"}
_ENUM = re.compile(r"[A-Z][A-Z0-9_]*|true|false")


@dataclass(frozen=True)
class Written:
    """What ``--write`` changed."""

    path: Path  # the spec, or the config.pbtxt of a model without one
    configs: tuple[Path, ...] = ()  # config.pbtxt files written from the changed spec
    comments_lost: bool = False


def write_settings(repository: Path, model: str, batching: Batching) -> Written:
    """Write ``batching`` where ``model``'s serving settings live."""
    base, _ = split_name(model)
    for owner in dict.fromkeys((model, base)):
        spec = spec_file(repository / owner)
        if spec is not None:
            return _write_spec(repository, spec, batching)
    path = repository / model / CONFIG_FILE
    path.write_text(config_text(path, model, batching))
    return Written(path)


def serving_values(batching: Batching) -> dict[str, int]:
    return {
        "max_batch_size": batching.max_batch_size,
        "max_queue_delay_us": batching.max_queue_delay_us,
        "instances": batching.instances,
    }


# ------------------------------------------------------------------------------ specs


def _write_spec(repository: Path, path: Path, batching: Batching) -> Written:
    from onnxforge.builder import load_spec
    from onnxforge.builder.repository import write_config

    text = path.read_text()
    values = serving_values(batching)
    lost = False
    if path.suffix == ".json":
        document = json.loads(text)
        document.setdefault("serving", {}).update(values)
        new = json.dumps(document, indent=2) + "\n"
    else:
        document = yaml.safe_load(text)
        expected = dict(document)
        expected["serving"] = {**(document.get("serving") or {}), **values}
        edited = edit_yaml_serving(text, values)
        if edited is not None and yaml.safe_load(edited) == expected:
            new = edited
        else:
            new = yaml.safe_dump(expected, sort_keys=False)
            lost = "#" in text
    path.write_text(new)
    try:
        spec = load_spec(path)
    except Exception:
        path.write_text(text)  # the settings do not validate: leave the spec as it was
        raise
    configs = []
    for variant in spec.document.variants:
        name = model_name(spec.name, variant)
        if (repository / name).is_dir():
            write_config(repository, spec, name)
            configs.append(repository / name / CONFIG_FILE)
    return Written(path, tuple(configs), lost)


def edit_yaml_serving(text: str, values: dict[str, int]) -> str | None:
    """``text`` with the block mapping ``serving:`` holding ``values`` (keys replaced in
    place, comments kept, missing keys added); None when ``serving`` is not a block."""
    lines = text.splitlines(keepends=True)
    head = [i for i, line in enumerate(lines) if re.match(r"serving\s*:", line)]
    if not head:
        block = "".join(f"  {key}: {value}\n" for key, value in values.items())
        return text + ("" if text.endswith("\n") or not text else "\n") + "serving:\n" + block
    start = head[0]
    if not re.fullmatch(r"serving\s*:\s*(#.*)?\n?", lines[start]):
        return None  # flow style: serving: {max_batch_size: 8}
    end = start + 1
    while end < len(lines) and (lines[end][:1] in (" ", "\t", "\n", "#") or not lines[end]):
        end += 1
    keyed = [
        (i, match)
        for i in range(start + 1, end)
        if (match := re.match(r"(\s+)([A-Za-z_]+)(\s*:\s*)([^#\n]*?)(\s*#.*)?\n?$", lines[i]))
    ]
    indent = keyed[0][1].group(1) if keyed else "  "
    last = keyed[-1][0] if keyed else start
    missing = dict(values)
    for i, match in keyed:
        key = match.group(2)
        if match.group(1) == indent and key in missing:
            newline = "\n" if lines[i].endswith("\n") else ""
            comment = match.group(5) or ""
            lines[i] = f"{indent}{key}{match.group(3)}{missing.pop(key)}{comment}{newline}"
    if missing and not lines[last].endswith("\n"):
        lines[last] += "\n"
    added = [f"{indent}{key}: {value}\n" for key, value in missing.items()]
    return "".join(lines[: last + 1] + added + lines[last + 1 :])


# ------------------------------------------------------------------------------ config.pbtxt


def config_text(path: Path, model: str, batching: Batching) -> str:
    """``path``'s configuration with ``batching``; tensor dims follow the batch size (with
    ``max_batch_size`` > 0 Triton leaves the batch dimension out of ``dims``)."""
    fields: dict[str, list[Any]] = (
        parse_pbtxt(path.read_text())
        if path.is_file()
        else {"name": [model], "platform": [PLATFORM]}
    )
    before = int(fields.get("max_batch_size", [0])[-1])
    fields["max_batch_size"] = [batching.max_batch_size]
    if batching.max_batch_size > 0:
        dynamic = dict((fields.get("dynamic_batching") or [{}])[-1])
        dynamic["max_queue_delay_microseconds"] = [batching.max_queue_delay_us]
        fields["dynamic_batching"] = [dynamic]
    else:
        fields.pop("dynamic_batching", None)
    group = dict((fields.get("instance_group") or [{}])[0])
    group["count"] = [batching.instances]
    group.setdefault("kind", ["KIND_CPU"])
    fields["instance_group"] = [group]
    for tensor in [*fields.get("input", []), *fields.get("output", [])]:
        dims = tensor.get("dims")
        if dims is None:
            continue
        if before == 0 and batching.max_batch_size > 0 and dims[:1] == [-1]:
            tensor["dims"] = dims[1:]
        elif before > 0 and batching.max_batch_size == 0:
            tensor["dims"] = [-1, *dims]
    return pbtxt(fields)


def pbtxt(fields: dict[str, list[Any]], indent: str = "") -> str:
    """Protobuf text format of parsed fields (what ``parse_pbtxt`` reads back)."""
    out = []
    for name, values in fields.items():
        if values and all(isinstance(value, dict) for value in values):
            if name in _LIST_FIELDS or len(values) > 1:
                inner = ",\n".join(
                    f"{indent}  {{\n{pbtxt(value, indent + '    ')}{indent}  }}" for value in values
                )
                out.append(f"{indent}{name} [\n{inner}\n{indent}]\n")
            else:
                out.append(f"{indent}{name} {{\n{pbtxt(values[0], indent + '  ')}{indent}}}\n")
        elif name in _LIST_FIELDS or len(values) != 1:
            items = ", ".join(_scalar(name, value) for value in values)
            out.append(f"{indent}{name}: [ {items} ]\n")
        else:
            out.append(f"{indent}{name}: {_scalar(name, values[0])}\n")
    return "".join(out)


def _scalar(name: str, value: Any) -> str:
    if isinstance(value, str) and (name in _STRING_FIELDS or not _ENUM.fullmatch(value)):
        return json.dumps(value)
    return str(value)
