"""What ``onnxforge bench`` measures: one closed-loop run per concurrency level.

Inputs are random rows shaped from the model's metadata; all clients share one connection
(``onnxforge.client.AsyncInferenceClient``), like the threads of one application would.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from rich.table import Table

from onnxforge.bench.load import Load, Outcome, drive
from onnxforge.bench.report import table
from onnxforge.client import AsyncInferenceClient, Connection


@dataclass(frozen=True)
class Level:
    """What one concurrency level measured (the fields of ``onnxforge bench --json``)."""

    concurrency: int
    requests: int
    errors: int
    seconds: float
    rows_per_request: int
    throughput_rps: float
    rows_per_second: float
    p50_ms: float
    p90_ms: float
    p99_ms: float

    @classmethod
    def of(cls, concurrency: int, outcome: Outcome) -> Level:
        p50, p90, p99 = outcome.percentiles_ms((50, 90, 99))
        return cls(
            concurrency,
            outcome.answered,
            outcome.errors,
            outcome.seconds,
            outcome.rows_per_request,
            outcome.requests_per_second,
            outcome.rows_per_second,
            p50,
            p90,
            p99,
        )

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


async def model_inputs(
    client: AsyncInferenceClient, model: str, rows: int, seed: int = 0
) -> dict[str, np.ndarray]:
    """Random inputs shaped from the model's metadata (the batch dimension set to ``rows``)."""
    from onnxforge.protocol.datatypes import datatype

    meta = await client.metadata(model)
    rng = np.random.default_rng(seed)
    inputs = {}
    for tensor in meta.inputs:
        row = datatype(tensor.datatype)
        if row is None or row.dtype.kind not in "fiu":
            raise ValueError(
                f"input '{tensor.name}' has datatype {tensor.datatype}; "
                "bench makes numeric inputs only"
            )
        shape = [
            rows if i == 0 and dim == -1 else (1 if dim == -1 else dim)
            for i, dim in enumerate(tensor.shape)
        ]
        inputs[tensor.name] = rng.normal(size=shape).astype(row.dtype)
    return inputs


async def run_level(
    connection: Connection, model: str, concurrency: int, duration: float, rows: int
) -> Level:
    """``concurrency`` clients sending ``rows``-row requests to ``model`` for ``duration`` s."""
    async with AsyncInferenceClient(**vars(connection)) as client:
        inputs = await model_inputs(client, model, rows)

        async def send(worker: int, index: int) -> object:
            return await client.infer(model, inputs)

        outcome = await drive(send, Load(concurrency, duration=duration), rows)
    return Level.of(concurrency, outcome)


def plot_levels(levels: list[Level], model: str, path: str) -> None:
    """Throughput and latency percentiles against concurrency, as a PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise RuntimeError("--plot needs matplotlib: pip install -e '.[bench]'") from None
    x = [level.concurrency for level in levels]
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(x, [level.throughput_rps for level in levels], marker="o")
    left.set(xlabel="concurrent clients", ylabel="requests / s", title="throughput", xscale="log")
    for q in ("p50", "p90", "p99"):
        right.plot(x, [getattr(level, f"{q}_ms") for level in levels], marker="o", label=q)
    right.set(xlabel="concurrent clients", ylabel="ms", title="latency", xscale="log")
    right.legend()
    figure.suptitle(f"onnxforge bench {model} ({levels[0].rows_per_request} row(s) per request)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def levels_table(levels: list[Level], title: str) -> Table:
    """The table ``onnxforge bench`` prints: one row per concurrency level."""
    columns = ("clients", "requests", "errors", "req/s", "rows/s", "p50 ms", "p90 ms", "p99 ms")
    rows = [
        (
            str(level.concurrency),
            str(level.requests),
            str(level.errors),
            f"{level.throughput_rps:,.0f}",
            f"{level.rows_per_second:,.0f}",
            f"{level.p50_ms:.2f}",
            f"{level.p90_ms:.2f}",
            f"{level.p99_ms:.2f}",
        )
        for level in levels
    ]
    return table(columns, rows, title=title)
