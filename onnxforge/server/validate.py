"""A decoded request checked against the model it addresses, before any model code runs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from onnxforge.server.errors import InvalidInput, InvalidRequest, TooManyRows
from onnxforge.server.registry import Version


def _shape_text(shape: Sequence[int]) -> str:
    return "[" + ", ".join("N" if dim == -1 else str(dim) for dim in shape) + "]"


def model_inputs(
    version: Version,
    arrays: Mapping[str, np.ndarray],
    datatypes: Mapping[str, str],
    max_rows: int | None = None,
) -> dict[str, np.ndarray]:
    """The request's arrays when names, datatypes, shapes and values fit the model."""
    expected = version.inputs
    if arrays.keys() != expected.keys():
        unknown = [name for name in arrays if name not in expected]
        if unknown:
            raise InvalidInput(
                unknown[0],
                f"model '{version.model}' has no such input (inputs: {', '.join(expected)})",
            )
        missing = [name for name in expected if name not in arrays]
        raise InvalidInput(
            missing[0], f"missing: model '{version.model}' needs inputs {', '.join(expected)}"
        )
    finite_only = not version.allow_non_finite
    batch_sizes = set()
    for name, tensor in expected.items():
        array = arrays[name]
        if datatypes[name] != tensor.datatype:
            raise InvalidInput(
                name, f"datatype {datatypes[name]} does not match the model's {tensor.datatype}"
            )
        shape, wanted = array.shape, tensor.shape
        if len(shape) != len(wanted) or not all(
            want == -1 or want == got for got, want in zip(shape, wanted, strict=True)
        ):
            raise InvalidInput(
                name,
                f"shape {list(shape)} does not match the model's {_shape_text(wanted)}",
            )
        if wanted and wanted[0] == -1:
            batch_sizes.add(shape[0])
        if finite_only and array.dtype.kind == "f" and not np.isfinite(array).all():
            bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
            raise InvalidInput(
                name,
                f"holds {bad} NaN or Inf value(s); the model needs finite "
                "numbers (a network cannot handle missing data)",
            )
    if len(batch_sizes) > 1:
        raise InvalidRequest(f"inputs disagree on the batch size: {sorted(batch_sizes)}")
    if batch_sizes == {0}:
        raise InvalidRequest("the batch is empty (0 rows)")
    if max_rows is not None and batch_sizes and max(batch_sizes) > max_rows:
        raise TooManyRows(max(batch_sizes), max_rows)
    return arrays if isinstance(arrays, dict) else dict(arrays)


# Request parameters that change what an answer means; refused rather than ignored.
UNSUPPORTED_PARAMETERS = {
    "classification": "classification outputs (class_count) are not supported; ask for the "
    "output and take the top classes from it",
    "sequence_id": "sequence batching (stateful models) is not supported",
    "sequence_start": "sequence batching (stateful models) is not supported",
    "sequence_end": "sequence batching (stateful models) is not supported",
}


def supported_parameters(parameters: Mapping[str, object], where: str) -> None:
    for key in parameters:
        if key in UNSUPPORTED_PARAMETERS:
            raise InvalidRequest(f"{where} parameter '{key}': {UNSUPPORTED_PARAMETERS[key]}")


def requested_outputs(version: Version, names: Sequence[str]) -> list[str]:
    """The outputs a request asks for (all when it names none), each known and named once."""
    if not names:
        return list(version.outputs)
    seen = set()
    for name in names:
        if name not in version.outputs:
            raise InvalidRequest(
                f"model '{version.model}' has no output '{name}' "
                f"(outputs: {', '.join(version.outputs)})"
            )
        if name in seen:
            raise InvalidRequest(f"output '{name}' is requested twice")
        seen.add(name)
    return list(names)
