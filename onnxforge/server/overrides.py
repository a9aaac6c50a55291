"""The ``config`` of a model load request: a Triton ``ModelConfig`` in JSON, checked field by field.

Triton lets a load carry a configuration that replaces ``config.pbtxt`` for that load. The
fields a server of ONNX files can honour are applied (batching, instances, version policy);
the ones that describe the model itself must agree with it, and anything else is refused
(``InvalidRequest``, INVALID_ARGUMENT) naming the field -- never accepted and silently ignored.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from onnxforge.builder.layout import PLATFORM
from onnxforge.builder.triton import ModelConfig, config_from_fields
from onnxforge.server.errors import InvalidRequest

# Applied: what the server does with the model.
APPLIED = ("max_batch_size", "dynamic_batching", "instance_group", "version_policy")
# Accepted when they agree with the model folder (tools echo a whole configuration back).
DESCRIPTIVE = ("name", "platform", "backend")
_DYNAMIC_BATCHING = ("max_queue_delay_microseconds",)
_INSTANCE_GROUP = ("count", "kind", "name")


def parse_load_parameters(name: str, parameters: Mapping[str, object]) -> ModelConfig | None:
    """The configuration a load request carries (None when it carries none).

    ``parameters`` are plain values, as a transport decoded them (``{"config": "{...}"}``).
    """
    for key in parameters:
        if key != "config":
            raise InvalidRequest(
                f"load parameter '{key}' is not supported (only 'config', a ModelConfig in JSON; "
                "model files come from the repository)"
            )
    if "config" not in parameters:
        return None
    text = parameters["config"]
    if not isinstance(text, str) or not text.strip():
        raise InvalidRequest("load parameter 'config' must be a ModelConfig as a JSON string")
    try:
        config = json.loads(text)
    except json.JSONDecodeError as error:
        raise InvalidRequest(f"load parameter 'config' is not JSON: {error}") from None
    if not isinstance(config, dict):
        raise InvalidRequest("load parameter 'config' must be a JSON object (a ModelConfig)")
    return parse_config(name, config)


def parse_config(name: str, config: Mapping[str, Any]) -> ModelConfig:
    """Check every field of ``config`` and turn the applied ones into a ``ModelConfig``."""
    for key, value in config.items():
        if key not in (*APPLIED, *DESCRIPTIVE):
            raise InvalidRequest(
                f"config field '{key}' cannot be set by a load (the server applies "
                f"{', '.join(APPLIED)}; inputs and outputs come from the model file)"
            )
        if key in DESCRIPTIVE:
            wanted = {"name": name, "platform": PLATFORM, "backend": "onnxruntime"}[key]
            if value != wanted:
                raise InvalidRequest(
                    f"config field '{key}' is '{value}'; this model's is '{wanted}'"
                )
    _check_int(config, "max_batch_size", "max_batch_size")
    batching = config.get("dynamic_batching", {})
    _check_fields(batching, "dynamic_batching", _DYNAMIC_BATCHING)
    _check_int(
        batching, "max_queue_delay_microseconds", "dynamic_batching.max_queue_delay_microseconds"
    )
    groups = config.get("instance_group", [])
    if not isinstance(groups, list):
        raise InvalidRequest("config field 'instance_group' must be a list")
    for index, group in enumerate(groups):
        where = f"instance_group[{index}]"
        _check_fields(group, where, _INSTANCE_GROUP)
        _check_int(group, "count", f"{where}.count", minimum=1)
        if group.get("kind", "KIND_CPU") not in ("KIND_CPU", "KIND_AUTO"):
            raise InvalidRequest(f"config field '{where}.kind' must be KIND_CPU (CPU only)")
    try:
        return config_from_fields(_as_fields(config))
    except (ValueError, TypeError) as error:
        raise InvalidRequest(f"config field 'version_policy': {error}") from None


def _check_fields(value: Any, where: str, allowed: tuple[str, ...]) -> None:
    if not isinstance(value, dict):
        raise InvalidRequest(f"config field '{where}' must be an object")
    for key in value:
        if key not in allowed:
            raise InvalidRequest(
                f"config field '{where}.{key}' is not supported (supported: {', '.join(allowed)})"
            )


def _check_int(value: Mapping[str, Any], key: str, label: str, minimum: int = 0) -> None:
    """``value[key]``, when given, is an integer >= ``minimum``; ``label`` names the field."""
    if key not in value:
        return
    number = value[key]
    # Triton's JSON writes 64-bit integers as strings; accept both.
    if isinstance(number, str) and number.isdigit():
        number = int(number)
    if isinstance(number, bool) or not isinstance(number, int) or number < minimum:
        raise InvalidRequest(f"config field '{label}' must be an integer >= {minimum}")


def _as_fields(value: Any) -> Any:
    """JSON in the shape ``parse_pbtxt`` gives: every field a list of values."""
    if isinstance(value, dict):
        return {
            key: [_as_fields(item) for item in (inner if isinstance(inner, list) else [inner])]
            for key, inner in value.items()
        }
    return int(value) if isinstance(value, str) and value.isdigit() else value
