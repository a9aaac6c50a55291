"""A served model's configuration in Triton's JSON shape (``ModelConfig``, as JSON).

What ``tritonclient.http``'s ``get_model_config`` returns and what the gRPC ``ModelConfig``
RPC carries (``server.service`` parses this dict into the message, field names being the
same). It describes what serves, not only what the file says: the tensors come from the
loaded ONNX file, ``max_batch_size`` and ``dynamic_batching`` from the version as it runs
(a model without a batch dimension serves unbatched; ``--no-batching`` has no batcher),
the version policy and instance count from the load's configuration or ``config.pbtxt``.

Numbers stay numbers (int64 fields included), as Triton's HTTP endpoint answers.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from onnxforge.builder.layout import CONFIG_FILE, PLATFORM
from onnxforge.builder.schema import VersionPolicy
from onnxforge.builder.triton import ModelConfig, parse_pbtxt, read_config
from onnxforge.protocol.datatypes import datatype
from onnxforge.server.model_version import Tensor, Version

__all__ = ["BACKEND", "config_json"]

BACKEND = "onnxruntime"  # Triton's backend for the onnxruntime_onnx platform


def config_json(
    served: Version, repository: Path, override: ModelConfig | None = None
) -> dict[str, Any]:
    """Triton's JSON ``ModelConfig`` of ``served`` (``override``: a load's configuration)."""
    path = repository / served.model / CONFIG_FILE
    config = override or read_config(path)
    batch = served.serving.max_batch_size
    found: dict[str, Any] = {
        "name": served.model,
        "platform": PLATFORM,
        "backend": BACKEND,
        "version_policy": _policy(config.version_policy),
        "max_batch_size": batch,
        # With max_batch_size > 0 Triton lists dims without the batch dimension.
        "input": [_tensor(tensor, batch > 0, is_input=True) for tensor in served.inputs.values()],
        "output": [_tensor(tensor, batch > 0) for tensor in served.outputs.values()],
        "instance_group": [
            {"name": f"{served.model}_0", "kind": "KIND_CPU", "count": served.serving.instances}
        ],
        "default_model_filename": served.path.name,
        "parameters": {key: {"string_value": value} for key, value in _parameters(path).items()},
    }
    if served.batcher is not None:
        found["dynamic_batching"] = {
            "max_queue_delay_microseconds": served.serving.max_queue_delay_us
        }
    return found


def _tensor(tensor: Tensor, batched: bool, is_input: bool = False) -> dict[str, Any]:
    row = datatype(tensor.datatype)
    described: dict[str, Any] = {
        "name": tensor.name,
        "data_type": row.triton_type if row is not None else "TYPE_INVALID",
        "dims": list(tensor.shape[1:] if batched else tensor.shape),
    }
    if is_input:
        described["format"] = "FORMAT_NONE"
    return described


def _policy(policy: VersionPolicy) -> dict[str, Any]:
    if policy.latest is not None:
        return {"latest": {"num_versions": policy.latest}}
    if policy.specific is not None:
        return {"specific": {"versions": list(policy.specific)}}
    return {"all": {}}


def _parameters(path: Path) -> Mapping[str, str]:
    """``parameters { key: "k" value { string_value: "v" } }`` entries of ``config.pbtxt``."""
    if not path.is_file():
        return {}
    fields = parse_pbtxt(path.read_text(errors="replace"))  # read_config has parsed it already
    found = {}
    for entry in fields.get("parameters", []):
        if not isinstance(entry, dict):
            continue
        value = (entry.get("value") or [{}])[-1]
        found[str((entry.get("key") or [""])[-1])] = str(
            (value.get("string_value") or [""])[-1] if isinstance(value, dict) else value
        )
    return found
