"""One loaded version of a model: its ONNX Runtime session, its threads and its batcher.

Everything a request needs to know about the model (tensor names, datatypes, shapes) is
worked out here, once, when the version is opened.
"""

from __future__ import annotations

import asyncio
import functools
import json
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from onnxforge.builder import metadata
from onnxforge.server import affinity, convert
from onnxforge.server.batcher import Batcher, BatchStats

BUDGET_NS = 20_000_000  # timing a lone run at load stops after this much running


@dataclass(frozen=True)
class Tensor:
    """A model input or output as the protocol describes it."""

    name: str
    datatype: str  # protocol datatype, "FP32"
    dtype: np.dtype[Any]
    shape: tuple[int, ...]  # -1 for a dimension of any size


@dataclass(frozen=True)
class Serving:
    max_batch_size: int = 0
    max_queue_delay_us: int = 0
    instances: int = 1
    max_queue: int = 1024


@dataclass
class Version:
    """One loaded version: its session and what requests are checked against."""

    model: str
    version: str
    path: Path
    session: ort.InferenceSession
    inputs: dict[str, Tensor]
    outputs: dict[str, Tensor]
    props: dict[str, str]
    serving: Serving
    batcher: Batcher | None = None  # merges concurrent requests; None: one request per run
    # Median wall time of a lone one-row run, timed at load (None: could not be timed).
    lone_run_ns: int | None = None
    report: Callable[[BatchStats], None] | None = None  # told about every session run
    # Threads of this model alone: a slow model's backlog never holds up another model.
    executor: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(
            1, thread_name_prefix="onnxforge-model", initializer=affinity.unpin
        )
    )

    def quick(self, inline_us: int) -> bool:
        """Whether its lone run, timed at load, took at most ``inline_us`` (0: never quick)."""
        return (
            inline_us > 0 and self.lone_run_ns is not None and self.lone_run_ns <= inline_us * 1000
        )

    @property
    def variant(self) -> str:
        return self.props.get(metadata.VARIANT, "unknown")

    @property
    def allow_non_finite(self) -> bool:
        return self.props.get(metadata.ALLOW_NON_FINITE) == "true"

    @functools.cached_property
    def accuracy(self) -> dict[str, Any] | None:
        """The figures recorded at build time (parsed once, on first use)."""
        recorded = self.props.get(metadata.ACCURACY)
        return json.loads(recorded) if recorded else None

    def run(
        self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]
    ) -> dict[str, np.ndarray]:
        """One ``session.run`` (called from the batcher's worker thread)."""
        results = self.session.run(list(outputs), dict(inputs))
        return dict(zip(outputs, results, strict=True))

    async def infer(
        self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str], deadline: float | None
    ) -> dict[str, np.ndarray]:
        """Run from the event loop: batched, or on the model's threads (``server.batcher``)."""
        return await self.runs.submit(inputs, outputs, deadline)

    def infer_blocking(
        self,
        inputs: Mapping[str, np.ndarray],
        outputs: Sequence[str],
        deadline: float | None,
        on_cancel: Callable[[Callable[[], None]], object] | None = None,
    ) -> dict[str, np.ndarray]:
        """Run from a transport's own thread, which leads a batch or waits for one."""
        return self.runs.run_blocking(inputs, outputs, deadline, on_cancel)

    @functools.cached_property
    def runs(self) -> Batcher:
        """Every run goes through one: the batcher, or one request per run at a time."""
        if self.batcher is not None:
            return self.batcher
        return Batcher(
            self.model,
            self.run,
            max_batch_size=1,
            max_queue_delay_us=0,
            max_queue=self.serving.max_queue,
            instances=self.serving.instances,
            executor=self.executor,
            on_batch=self.report,
        )

    async def close(self) -> None:
        """Finish what is queued and running, then release the threads."""
        await self.runs.close()
        await asyncio.to_thread(self.executor.shutdown, wait=True)


def tensor_of(node: ort.NodeArg) -> Tensor:
    row = convert.from_ort(node.type)
    if row is None:
        raise ValueError(f"tensor '{node.name}' has type {node.type}, which the protocol lacks")
    shape = tuple(dim if isinstance(dim, int) and dim >= 0 else -1 for dim in node.shape)
    return Tensor(node.name, row.name, row.dtype, shape)


def open_version(
    name: str,
    version: str,
    path: Path,
    serving: Serving,
    threads: int,
    spinning: bool | None = None,
) -> Version:
    """An ONNX Runtime session for ``path`` and the facts requests are checked against.

    ``spinning``: whether idle intra-op threads spin (busy-wait) for work; None keeps ONNX
    Runtime's default (they do).
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    if spinning is not None:
        options.add_session_config_entry("session.intra_op.allow_spinning", str(int(spinning)))
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    # The session has already read the file: take the metadata from it, not a second parse.
    props = dict(session.get_modelmeta().custom_metadata_map)
    inputs = {node.name: tensor_of(node) for node in session.get_inputs()}
    outputs = {node.name: tensor_of(node) for node in session.get_outputs()}
    if serving.max_batch_size > 0 and not batchable(inputs, outputs):
        serving = Serving(0, 0, serving.instances, serving.max_queue)
    executor = ThreadPoolExecutor(
        max(1, serving.instances), thread_name_prefix=f"model-{name}", initializer=affinity.unpin
    )
    return Version(
        name,
        version,
        path,
        session,
        inputs,
        outputs,
        props,
        serving,
        executor=executor,
        lone_run_ns=time_lone_run(session, inputs),
    )


def time_lone_run(
    session: ort.InferenceSession, inputs: Mapping[str, Tensor], runs: int = 7
) -> int | None:
    """The median wall time of a one-row run on zeros, after one untimed run (ONNX
    Runtime allocates on its first); None when zeros of that shape cannot be run.

    It tells a quick model from a slow one before any request comes (``server.batcher``,
    and the choice of gRPC transport in ``server.app``). Timed at load, on a quiet model:
    under load, contention makes every run look slow.
    """
    feeds = {
        name: np.zeros(tuple(1 if dim < 0 else dim for dim in tensor.shape), tensor.dtype)
        for name, tensor in inputs.items()
    }
    times: list[int] = []
    try:
        session.run(None, feeds)
        while len(times) < runs and sum(times) < BUDGET_NS:  # a big model: fewer runs
            started = time.perf_counter_ns()
            session.run(None, feeds)
            times.append(time.perf_counter_ns() - started)
    except Exception:  # an input zeros cannot stand for (a string, an index): not timed
        return None
    return int(statistics.median(times))


def batchable(inputs: Mapping[str, Tensor], outputs: Mapping[str, Tensor]) -> bool:
    """Whether every tensor's first dimension is a batch of any size."""
    return all(t.shape and t.shape[0] == -1 for t in [*inputs.values(), *outputs.values()])


def attach_batcher(
    version: Version,
    batching: bool,
    on_batch: Callable[[str, str, BatchStats], None] | None,
    inline_us: int = 0,
) -> None:
    """Report every run to ``on_batch``; give the version a batcher when it batches.

    ``inline_us``: a lone request to a model measured to run in at most this long runs on
    the event loop's thread (``server.batcher``); 0: always on the model's threads.
    """
    if on_batch is not None:
        version.report = lambda stats: on_batch(version.model, version.version, stats)
    if version.serving.max_batch_size <= 0 or not batching:
        version.runs  # made now, before requests from several threads race to make it  # noqa: B018
        return  # every request runs on its own
    version.batcher = Batcher(
        version.model,
        version.run,
        max_batch_size=version.serving.max_batch_size,
        max_queue_delay_us=version.serving.max_queue_delay_us,
        max_queue=version.serving.max_queue,
        instances=version.serving.instances,
        executor=version.executor,
        on_batch=version.report,
        inline_us=inline_us,
        quick=version.quick(inline_us),
    )
