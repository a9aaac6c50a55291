"""The facts every built file records in its ``metadata_props``.

A file that carries the hash of the spec it was built from, its variant and the version of
the tool that wrote it can be recognised as stale without rebuilding it.
"""

from __future__ import annotations

from collections.abc import Mapping

import onnx

SPEC_SHA256 = "onnxforge.spec_sha256"
VARIANT = "onnxforge.variant"
VERSION = "onnxforge.version"
ALLOW_NON_FINITE = "onnxforge.allow_non_finite"  # "true" when servers may pass NaN/Inf in
ACCURACY = "onnxforge.accuracy"  # JSON: figures measured against the fp32 reference
QUANTIZATION = "onnxforge.quantization"  # JSON: how the variant was made


def set_props(model: onnx.ModelProto, props: Mapping[str, str]) -> None:
    """Replace the listed keys, keeping the order stable (sorted) so bytes are reproducible."""
    merged = {prop.key: prop.value for prop in model.metadata_props}
    merged.update(props)
    del model.metadata_props[:]
    for key in sorted(merged):
        model.metadata_props.add(key=key, value=merged[key])


def props(model: onnx.ModelProto) -> dict[str, str]:
    return {prop.key: prop.value for prop in model.metadata_props}
