"""How far a variant strays from the fp32 reference, and whether that is within its budget.

Figures are measured on held-out rows (never the calibration rows): max and mean absolute
error, mean row-wise cosine similarity, and argmax agreement for class-score outputs. The
report says which rows those were (``Rows``): the user's data when there is any, synthetic
rows only when there is none. When a variant is over budget, the node that adds the most
error is found by running both files with every intermediate tensor as an extra output.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

import numpy as np
import onnx

from onnxforge.builder import runtime
from onnxforge.builder.schema import Budget

# Scale-free defaults: absolute errors depend on the output's range, which only the author
# knows; they can add max_abs / mean_abs in the spec's `budget:`.
DEFAULT_BUDGETS: Mapping[str, Budget] = {
    "fp16": Budget(cosine=0.9999, argmax_agreement=0.99),
    "int8-dynamic": Budget(cosine=0.99, argmax_agreement=0.95),
    "int8-static": Budget(cosine=0.99, argmax_agreement=0.95),
}
HELD_OUT_ROWS = 512
HELD_OUT_SEED = 2  # calibration samples use seed 1: the two sets never share a row


@dataclass(frozen=True)
class Rows:
    """Which rows a variant was measured on, recorded beside its figures.

    ``source`` says where they came from in words (files and how much of each, or the
    distribution they were drawn from); ``synthetic`` is true when they were drawn rather
    than given by the user.
    """

    source: str
    count: int
    synthetic: bool

    def as_dict(self) -> dict[str, object]:
        return {"source": self.source, "count": self.count, "synthetic": self.synthetic}


@dataclass(frozen=True)
class Figures:
    max_abs: float
    mean_abs: float
    cosine: float
    argmax_agreement: float | None  # None for outputs that are not class scores


@dataclass(frozen=True)
class Report:
    """A variant's measured accuracy on held-out rows and its verdict."""

    model: str
    variant: str
    samples: int
    outputs: dict[str, Figures]
    budget: Budget
    checked_output: str
    failures: list[str] = field(default_factory=list)
    worst: str | None = None  # where the error comes from, when over budget
    rows: Rows | None = None  # which rows were measured on (None: not said)

    @property
    def ok(self) -> bool:
        return not self.failures

    def as_dict(self) -> dict[str, object]:
        return {
            "model": self.model,
            "variant": self.variant,
            "samples": self.samples,
            "ok": self.ok,
            "checked_output": self.checked_output,
            "budget": self.budget.model_dump(exclude_none=True),
            "outputs": {name: asdict(figures) for name, figures in self.outputs.items()},
            "failures": self.failures,
            "worst": self.worst,
            "rows": None if self.rows is None else self.rows.as_dict(),
        }

    def metadata_json(self) -> str:
        """What a written variant records about itself (``onnxforge.accuracy``)."""
        record = {
            key: value
            for key, value in self.as_dict().items()
            if key in ("samples", "budget", "outputs", "checked_output")
        }
        if self.rows is not None:
            record["rows"] = self.rows.as_dict()
        record["reference"] = "fp32"
        return json.dumps(record, sort_keys=True)


def figures(got: np.ndarray, want: np.ndarray, classifier: bool) -> Figures:
    """Error figures of ``got`` against ``want`` (rows on the first axis)."""
    got64 = got.astype(np.float64).reshape(len(got), -1)
    want64 = want.astype(np.float64).reshape(len(want), -1)
    diff = np.abs(got64 - want64)
    norms = np.linalg.norm(got64, axis=1) * np.linalg.norm(want64, axis=1)
    dots = np.einsum("ij,ij->i", got64, want64)
    # Two all-zero rows agree perfectly; one all-zero row does not agree at all.
    both_zero = (np.linalg.norm(got64, axis=1) == 0) & (np.linalg.norm(want64, axis=1) == 0)
    cosine = np.where(both_zero, 1.0, dots / np.where(norms == 0, 1.0, norms))
    agreement = None
    if classifier:
        agreement = float(np.mean(got.argmax(axis=-1) == want.argmax(axis=-1)))
    return Figures(float(diff.max()), float(diff.mean()), float(cosine.mean()), agreement)


def budget_for(variant: str, given: Mapping[str, Budget] | None = None) -> Budget:
    """The variant's default budget with the spec's own fields laid over it."""
    default = DEFAULT_BUDGETS.get(variant, Budget())
    override = (given or {}).get(variant)
    if override is None:
        return default
    return default.model_copy(update=override.model_dump(exclude_none=True))


def shortfalls(measured: Figures, budget: Budget) -> list[str]:
    """Each budget line the figures break, with the amount.

    Figures are printed with as many digits as it takes to tell them from the budget
    (at least 4), and the amount to 3 significant digits: a cosine of 0.99985 against 0.9999
    reads "0.99985 < 0.99990 (short by 5e-05)", never "0.9999 < 0.9999 (short by 0.0000)".
    """
    failures = []
    for key in ("max_abs", "mean_abs"):
        limit = getattr(budget, key)
        value = getattr(measured, key)
        if limit is not None and not value <= limit:
            shown, bound, gap = distinct(value, limit, "g")
            failures.append(f"{key} {shown} > {bound} (over by {gap})")
    for key in ("cosine", "argmax_agreement"):
        limit = getattr(budget, key)
        value = getattr(measured, key)
        if limit is not None and value is not None and not value >= limit:
            shown, bound, gap = distinct(value, limit, "f")
            failures.append(f"{key} {shown} < {bound} (short by {gap})")
    return failures


def distinct(value: float, limit: float, kind: str) -> tuple[str, str, str]:
    """``value`` and ``limit`` formatted (``kind``: "f" fixed-point decimals, "g" significant
    digits) with the fewest digits from 4 up that tell them apart and show each within half
    their distance of the truth; and the distance to 3 significant digits."""
    distance = abs(value - limit)
    for digits in range(4, 18):
        shown, bound = format(value, f".{digits}{kind}"), format(limit, f".{digits}{kind}")
        close = max(abs(float(shown) - value), abs(float(bound) - limit)) <= distance / 2
        if shown != bound and close:
            return shown, bound, f"{distance:.3g}"
    return repr(value), repr(limit), f"{distance:.3g}"  # NaN, or apart by a few ulps


def assess(
    model: str,
    variant: str,
    got: Mapping[str, np.ndarray],
    want: Mapping[str, np.ndarray],
    classifiers: Mapping[str, bool],
    checked_output: str,
    budget: Budget,
    rows: Rows | None = None,
) -> Report:
    """Figures for every output; the budget is held on ``checked_output`` (the model output)."""
    outputs = {name: figures(got[name], want[name], classifiers[name]) for name in want}
    failures = shortfalls(outputs[checked_output], budget)
    count = len(next(iter(want.values())))
    return Report(model, variant, count, outputs, budget, checked_output, failures, rows=rows)


def worst_node(
    fp32: onnx.ModelProto, variant: onnx.ModelProto, rows: np.ndarray
) -> tuple[str, float, float]:
    """The fp32 node whose output gains the most relative error in ``variant``.

    Returns (node name, relative error of its inputs, relative error of its output).
    """
    shared = _float_tensors(fp32) & _float_tensors(variant)
    input_name = fp32.graph.input[0].name
    ours = _run_with_outputs(fp32, rows, input_name, shared)
    theirs = _run_with_outputs(variant, rows, input_name, shared)
    error = {
        name: float(
            np.linalg.norm(theirs[name].astype(np.float64) - ours[name])
            / max(float(np.linalg.norm(ours[name].astype(np.float64))), 1e-30)
        )
        for name in ours
    }
    best = ("", 0.0, 0.0)
    best_gain = -np.inf
    for node in fp32.graph.node:
        if not node.output or node.output[0] not in error:
            continue
        before = max((error.get(name, 0.0) for name in node.input), default=0.0)
        after = error[node.output[0]]
        if after - before > best_gain:
            best_gain = after - before
            best = (node.name, before, after)
    return best


def _float_tensors(model: onnx.ModelProto) -> set[str]:
    inferred = onnx.shape_inference.infer_shapes(model)
    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16}
    return {
        info.name
        for info in [*inferred.graph.value_info, *inferred.graph.output]
        if info.type.tensor_type.elem_type in floats
    }


def _run_with_outputs(
    model: onnx.ModelProto, rows: np.ndarray, input_name: str, names: set[str]
) -> dict[str, np.ndarray]:
    inferred = onnx.shape_inference.infer_shapes(model)
    infos = {info.name: info for info in [*inferred.graph.value_info, *inferred.graph.output]}
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    present = {output.name for output in probe.graph.output}
    probe.graph.output.extend(infos[name] for name in sorted(names - present))
    session = runtime.session(probe.SerializeToString())
    wanted = sorted(names)
    return dict(zip(wanted, session.run(wanted, {input_name: rows}), strict=True))
