"""What ``onnxforge infer`` does around its one request: fit the rows, then show the answer.

Before sending, each ``.npy`` is fitted to the model's metadata: a float file of another
float type is cast to the model's type, and so is any type NumPy casts without loss
(``uint8`` to ``float32``); any other cast (a float to an integer, ``int64`` to ``float32``)
is refused. A single row (the model's shape without the batch axis) gets the batch axis.
Each change is a note on stderr.

The table shows the first values of each output, with ``…`` when there are more, and an
argmax per row only for outputs that hold class scores: 2-D with at least two columns, and
named like class scores (``logits``, ``probabilities``, ``scores``, ``class``...), or
whose rows are probability distributions (values in [0, 1] summing to 1), or checked for
argmax agreement by the model's accuracy record (the builder does that for softmax and
log_softmax outputs).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import click
import numpy as np
from rich.table import Table

from onnxforge.cli.common import OUTPUT

SHOWN_VALUES = 6
SHOWN_ROWS = 16
# Output names that say "class scores" (an embedding or a regression output does not).
CLASS_SCORE_NAME = re.compile(r"logit|prob|score|class|softmax", re.IGNORECASE)
SUMS_TO_ONE = 1e-3  # float32 softmax rows sum to 1 within this


def note(text: str) -> None:
    if not OUTPUT["quiet"]:
        click.echo(f"onnxforge: note: {text}", err=True)


def fit_inputs(
    arrays: Mapping[str, np.ndarray], files: Mapping[str, str], metadata: Any
) -> dict[str, np.ndarray]:
    """``arrays`` cast and shaped to the model's inputs (``metadata``: ModelMetadataResponse)."""
    from onnxforge.protocol.datatypes import datatype

    fitted = dict(arrays)
    for tensor in metadata.inputs:
        if tensor.name not in fitted:
            continue  # the server names what is missing
        array, file = fitted[tensor.name], files[tensor.name]
        want = datatype(tensor.datatype)
        if want is not None and want.dtype.kind not in "OSU" and array.dtype != want.dtype:
            array = _cast(array, want.dtype, tensor.name, file, tensor.datatype)
        shape = list(tensor.shape)
        if shape and shape[0] == -1 and _fits(array.shape, shape[1:]):
            note(
                f"input '{tensor.name}': {file} holds one row of shape {list(array.shape)}: "
                f"sent as a batch of 1, shape {[1, *array.shape]}"
            )
            array = array[np.newaxis]
        fitted[tensor.name] = array
    return fitted


def _cast(array: np.ndarray, dtype: np.dtype[Any], name: str, file: str, wire: str) -> np.ndarray:
    have, want = array.dtype, dtype.newbyteorder("=")
    lossless = np.can_cast(have, want, casting="safe")
    if not lossless and not (have.kind == "f" and want.kind == "f"):
        raise click.UsageError(
            f"input '{name}': {file} holds {have.name}, the model takes {want.name} ({wire}); "
            f"{have.name} to {want.name} can change values, so it is not cast: save the "
            f"array as {want.name}"
        )
    note(
        f"input '{name}': {file} holds {have.name}: cast to {want.name}, the model's type ({wire})"
    )
    return array.astype(want)


def _fits(shape: tuple[int, ...], row: list[int]) -> bool:
    return len(shape) == len(row) and all(
        want in (-1, have) for have, want in zip(shape, row, strict=True)
    )


def class_scores(name: str, array: np.ndarray, accuracy: Mapping[str, Any] | None) -> bool:
    """Whether ``array`` looks like class scores (see the module's docstring for the rule)."""
    if array.ndim != 2 or array.shape[1] < 2 or array.dtype.kind != "f":
        return False
    measured = ((accuracy or {}).get("outputs") or {}).get(name) or {}
    if measured.get("argmax_agreement") is not None or CLASS_SCORE_NAME.search(name):
        return True
    with np.errstate(all="ignore"):
        rows = array.astype(np.float64)
        return bool(
            array.size
            and np.all((rows >= 0) & (rows <= 1))
            and np.all(np.abs(rows.sum(axis=1) - 1) <= SUMS_TO_ONE)
        )


def preview(array: np.ndarray) -> str:
    """The first values in order, ``…`` and the count when some are not shown."""
    flat = array.ravel()
    shown = flat[:SHOWN_VALUES].tolist()
    text = ", ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in shown)
    if flat.size > SHOWN_VALUES:
        return f"[{text}, …] ({flat.size:,} values)"
    return f"[{text}]"


def argmax_column(array: np.ndarray) -> str:
    picks = array.argmax(axis=-1).tolist()
    text = ", ".join(map(str, picks[:SHOWN_ROWS]))
    return text + (", …" if len(picks) > SHOWN_ROWS else "")


def results_table(
    results: Mapping[str, np.ndarray], title: str, accuracy: Mapping[str, Any] | None
) -> Table:
    table = Table("output", "dtype", "shape", "values", "argmax (per row)", title=title)
    for name, array in results.items():
        argmax = argmax_column(array) if class_scores(name, array, accuracy) else "-"
        table.add_row(name, str(array.dtype), str(list(array.shape)), preview(array), argmax)
    return table
