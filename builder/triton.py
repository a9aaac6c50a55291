"""Triton-compatible ``config.pbtxt`` for a model in the repository.

The same folder can then be served by NVIDIA Triton's ONNX Runtime backend unchanged.
Written in protobuf text format (Triton's ``ModelConfig`` message).
"""

from __future__ import annotations

from builder.spec import Spec

PLATFORM = "onnxruntime_onnx"
# The protocol's and Triton's name for each ONNX element type we produce.
TRITON_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "int64": "TYPE_INT64"}


def _tensor(name: str, shape: tuple[int, ...], batched: bool) -> str:
    # With max_batch_size > 0 Triton adds the batch dimension itself; with 0 it must be listed.
    dims = shape if batched else (-1, *shape)
    return (
        "  {\n"
        f'    name: "{name}"\n'
        f"    data_type: {TRITON_TYPES['float32']}\n"
        f"    dims: [ {', '.join(str(d) for d in dims)} ]\n"
        "  }"
    )


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
        _tensor(spec.input_name, spec.input_shape, batched),
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
    ]
    return "\n".join(lines) + "\n"
