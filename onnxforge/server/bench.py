"""Closed-loop load against a running server: throughput and latency per concurrency."""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass

import grpc
import numpy as np

from onnxforge.client import AsyncInferenceClient, Connection


@dataclass(frozen=True)
class Level:
    """What one concurrency level measured."""

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

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


async def _inputs(client: AsyncInferenceClient, model: str, rows: int) -> dict[str, np.ndarray]:
    """Random inputs shaped from the model's metadata (the batch dimension set to ``rows``)."""
    from onnxforge.server import convert

    meta = await client.metadata(model)
    rng = np.random.default_rng(0)
    inputs = {}
    for tensor in meta.inputs:
        row = convert.datatype(tensor.datatype)
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
    async with AsyncInferenceClient(**vars(connection)) as client:
        inputs = await _inputs(client, model, rows)
        latencies: list[float] = []
        errors = 0
        stop_at = time.perf_counter() + duration

        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < stop_at:
                started = time.perf_counter()
                try:
                    await client.infer(model, inputs)
                except grpc.aio.AioRpcError:
                    errors += 1
                    continue
                latencies.append(time.perf_counter() - started)

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        seconds = time.perf_counter() - began
    ms = np.asarray(latencies) * 1e3 if latencies else np.asarray([np.nan])
    return Level(
        concurrency,
        len(latencies),
        errors,
        seconds,
        rows,
        len(latencies) / seconds,
        len(latencies) * rows / seconds,
        *(float(np.percentile(ms, q)) for q in (50, 90, 99)),
    )


def plot(levels: list[Level], model: str, path: str) -> None:
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
