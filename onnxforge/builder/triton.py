"""Triton-compatible ``config.pbtxt``: written from a spec, read back by the server.

The same folder can then be served by NVIDIA Triton's ONNX Runtime backend unchanged.
Written in protobuf text format (Triton's ``ModelConfig`` message); the reader understands
that format in general (nesting, lists, comments, ``:`` before messages or not) and takes
the fields a server needs: batching, instances and the version policy.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from onnxforge.builder.layout import PLATFORM
from onnxforge.builder.schema import VersionPolicy
from onnxforge.builder.spec import Spec
from onnxforge.protocol.datatypes import from_numpy


def _tensor(name: str, shape: tuple[int, ...], batched: bool, dtype: str = "float32") -> str:
    # With max_batch_size > 0 Triton adds the batch dimension itself; with 0 it must be listed.
    dims = shape if batched else (-1, *shape)
    return (
        "  {\n"
        f'    name: "{name}"\n'
        f"    data_type: {_triton_type(dtype)}\n"
        f"    dims: [ {', '.join(str(d) for d in dims)} ]\n"
        "  }"
    )


def _triton_type(dtype: str) -> str:
    """Triton's ``DataType`` for a NumPy dtype (specs take and give float32: TYPE_FP32)."""
    row = from_numpy(dtype)
    if row is None:
        raise ValueError(f"NumPy dtype {dtype} has no protocol datatype")
    return row.triton_type


def config_pbtxt(spec: Spec, model_name: str | None = None) -> str:
    """The configuration text for ``spec`` (or one of its variants, by ``model_name``)."""
    serving = spec.document.serving
    batched = serving.max_batch_size > 0
    outputs = [(name, spec.output_layer(name).output_shape) for name in spec.output_names]
    lines = [
        f'name: "{model_name or spec.name}"',
        f'platform: "{PLATFORM}"',
        f"max_batch_size: {serving.max_batch_size}",
        "input [",
        _tensor(spec.input_name, spec.input_shape, batched, spec.document.input.dtype),
        "]",
        "output [",
        ",\n".join(_tensor(name, shape, batched) for name, shape in outputs),
        "]",
    ]
    if batched:
        lines += [
            "dynamic_batching {",
            f"  max_queue_delay_microseconds: {serving.max_queue_delay_us}",
            "}",
        ]
    lines += [
        "instance_group [",
        "  {",
        f"    count: {serving.instances}",
        "    kind: KIND_CPU",
        "  }",
        "]",
        f"version_policy: {policy_pbtxt(serving.version_policy)}",
    ]
    return "\n".join(lines) + "\n"


def policy_pbtxt(policy: VersionPolicy) -> str:
    if policy.latest is not None:
        return f"{{ latest: {{ num_versions: {policy.latest} }} }}"
    if policy.specific is not None:
        return f"{{ specific: {{ versions: [ {', '.join(map(str, policy.specific))} ] }} }}"
    return "{ all: { } }"


@dataclass(frozen=True)
class ModelConfig:
    """What a server takes from ``config.pbtxt`` (Triton's defaults where a field is absent)."""

    max_batch_size: int = 0
    max_queue_delay_us: int = 0
    dynamic_batching: bool = False
    instances: int = 1
    version_policy: VersionPolicy = field(default_factory=lambda: VersionPolicy(latest=1))


class ConfigError(ValueError):
    """A ``config.pbtxt`` that cannot be read; the message names the file."""


def read_config(path: Path) -> ModelConfig:
    """The serving fields of ``path``; Triton's defaults when the file does not exist."""
    if not path.is_file():
        return ModelConfig()
    try:
        fields = parse_pbtxt(path.read_text(errors="replace"))
        return config_from_fields(fields)
    except ValueError as error:
        raise ConfigError(f"{path}: {error}") from None


def config_from_fields(fields: dict[str, list[Any]]) -> ModelConfig:
    """A ``ModelConfig`` from parsed text-format fields (also a JSON override, same names)."""
    batching = _one(fields, "dynamic_batching", {})
    groups = fields.get("instance_group", [])
    instances = sum(int(_one(group, "count", 1)) for group in groups) if groups else 1
    return ModelConfig(
        max_batch_size=int(_one(fields, "max_batch_size", 0)),
        max_queue_delay_us=int(_one(batching, "max_queue_delay_microseconds", 0)),
        dynamic_batching="dynamic_batching" in fields,
        instances=max(1, instances),
        version_policy=_policy(_one(fields, "version_policy", None)),
    )


def _policy(found: dict[str, list[Any]] | None) -> VersionPolicy:
    if not found:
        return VersionPolicy(latest=1)
    if "latest" in found:
        return VersionPolicy(latest=int(_one(_one(found, "latest", {}), "num_versions", 1)))
    if "specific" in found:
        versions = [int(v) for v in _one(found, "specific", {}).get("versions", [])]
        if not versions:
            raise ValueError("version_policy specific lists no versions")
        return VersionPolicy(specific=versions)
    if "all" in found:
        return VersionPolicy(all=True)
    raise ValueError(f"version_policy has none of latest, all, specific: {sorted(found)}")


def _one(fields: dict[str, list[Any]], name: str, default: Any) -> Any:
    values = fields.get(name)
    return values[-1] if values else default


# --------------------------------------------------------------------- protobuf text format

_TOKEN = re.compile(
    r'\s+|#[^\n]*|(?P<string>"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\')'
    r"|(?P<word>[A-Za-z0-9_.+-]+)|(?P<punct>[{}\[\]<>:,;])"
)


def parse_pbtxt(text: str) -> dict[str, list[Any]]:
    """Protobuf text format as ``{field: [values]}``; messages become nested dicts."""
    tokens = _tokens(text)
    fields, position = _message(tokens, 0, None)
    if position != len(tokens):
        raise ValueError(f"unexpected '{tokens[position]}'")
    return fields


def _tokens(text: str) -> list[str]:
    tokens, position = [], 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None:
            raise ValueError(f"cannot read {text[position : position + 20]!r}")
        position = match.end()
        if match.lastgroup is not None:
            tokens.append(match.group(match.lastgroup))
    return tokens


def _message(tokens: list[str], i: int, closer: str | None) -> tuple[dict[str, list[Any]], int]:
    fields: dict[str, list[Any]] = {}
    while i < len(tokens) and tokens[i] != closer:
        name = tokens[i]
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise ValueError(f"expected a field name, got '{name}'")
        i += 1
        if i < len(tokens) and tokens[i] == ":":
            i += 1
        if i >= len(tokens):
            raise ValueError(f"field '{name}' has no value")
        values, i = _value(tokens, i)
        fields.setdefault(name, []).extend(values)
        if i < len(tokens) and tokens[i] in ",;":
            i += 1
    if closer is not None and i >= len(tokens):
        raise ValueError(f"missing '{closer}'")
    return fields, i + (closer is not None)


def _value(tokens: list[str], i: int) -> tuple[list[Any], int]:
    token = tokens[i]
    if token in ("{", "<"):
        message, i = _message(tokens, i + 1, "}" if token == "{" else ">")
        return [message], i
    if token == "[":
        values: list[Any] = []
        i += 1
        while i < len(tokens) and tokens[i] != "]":
            more, i = _value(tokens, i)
            values += more
            if i < len(tokens) and tokens[i] == ",":
                i += 1
        if i >= len(tokens):
            raise ValueError("missing ']'")
        return values, i + 1
    if token in "}>]:,;":
        raise ValueError(f"unexpected '{token}'")
    return [_scalar(token)], i + 1


def _scalar(token: str) -> Any:
    if token[:1] in "\"'":
        return token[1:-1]
    for kind in (int, float):
        try:
            return kind(token)
        except ValueError:
            pass
    return token  # an enum value (TYPE_FP32) or true/false


def select_versions(policy: VersionPolicy, available: list[int]) -> list[int]:
    """The versions ``policy`` serves out of ``available`` (sorted, oldest first)."""
    if policy.latest is not None:
        return sorted(available)[-policy.latest :]
    if policy.specific is not None:
        return sorted(set(policy.specific) & set(available))
    return sorted(available)
