"""Input rows: drawn from a spec's declared distribution, or read from a user's ``.npy``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from onnxforge.builder.errors import SpecError
from onnxforge.builder.spec import Spec


def sample_inputs(spec: Spec, count: int, seed: int) -> np.ndarray:
    """``count`` rows drawn from the spec's input distribution, reproducibly."""
    rng = np.random.default_rng(seed)
    shape = (count, *spec.input_shape)
    dist = spec.document.input.distribution
    if dist.uniform is not None:
        values = rng.uniform(dist.uniform.low, dist.uniform.high, size=shape)
    else:
        assert dist.normal is not None
        values = rng.normal(dist.normal.mean, dist.normal.std, size=shape)
    return values.astype(np.float32)


def describe_distribution(spec: Spec) -> str:
    """``input.distribution uniform(low=0, high=1)``; says so when it is the default, which
    the spec never declared."""
    dist = spec.document.input.distribution
    if dist.uniform is not None:
        text = f"uniform(low={dist.uniform.low:g}, high={dist.uniform.high:g})"
    else:
        assert dist.normal is not None
        text = f"normal(mean={dist.normal.mean:g}, std={dist.normal.std:g})"
    if "distribution" not in spec.document.input.model_fields_set:
        return f"input.distribution's default {text}, which the spec does not declare"
    return f"input.distribution {text}"


def load_inputs(path: Path, spec: Spec) -> np.ndarray:
    """A user's ``.npy`` batch (or single row), checked against the spec's input."""
    return load_rows(path, spec.input_shape, f"input '{spec.input_name}' of {spec.name}")


def load_rows(path: Path, shape: Sequence[int | None], what: str) -> np.ndarray:
    """Float32 rows of ``shape`` (without the batch; None matches any size) from an ``.npy``.

    A single row without the batch dimension is accepted too. Refuses pickles, non-numeric
    data, empty files and NaN/Inf, each with one line naming the file.
    """
    file = str(path)
    if not path.is_file():
        raise SpecError(file, "", "", "file not found")
    with path.open("rb") as handle:
        if handle.read(len(_NPY_MAGIC)) != _NPY_MAGIC:
            raise SpecError(file, "", "", "not a .npy file (save rows with numpy.save)")
    try:
        array = np.load(path, allow_pickle=False)
    except ValueError as error:
        if "allow_pickle" in str(error):
            raise SpecError(
                file, "", "", "holds Python objects (pickled), which are never loaded"
            ) from None
        raise SpecError(file, "", "", f"not a readable .npy array: {error}") from None
    except (OSError, EOFError) as error:
        raise SpecError(file, "", "", f"not a readable .npy array: {error}") from None
    if array.ndim == len(shape) and _fits(array.shape, shape):
        array = array[np.newaxis]
    if array.ndim != len(shape) + 1 or not _fits(array.shape[1:], shape):
        expected = ", ".join("?" if size is None else str(size) for size in shape)
        raise SpecError(
            file, "", "", f"shape {array.shape} does not fit {what}: expected (N, {expected})"
        )
    if array.shape[0] == 0:
        raise SpecError(file, "", "", "holds no rows")
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise SpecError(file, "", "", f"dtype {array.dtype} is not numeric")
    with np.errstate(over="ignore"):
        array = array.astype(np.float32)
    if not np.isfinite(array).all():
        raise SpecError(file, "", "", "holds NaN or Inf values (beyond float32 range counts too)")
    return np.asarray(array)


_NPY_MAGIC = b"\x93NUMPY"


def _fits(actual: Sequence[int], expected: Sequence[int | None]) -> bool:
    return len(actual) == len(expected) and all(
        want is None or got == want for got, want in zip(actual, expected, strict=True)
    )
