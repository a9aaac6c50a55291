"""The data plane: what the server answers, whichever transport carries the question.

Inference, metadata, configuration, readiness, statistics and the repository (index, load,
unload) take and return plain Python and NumPy values and the small dataclasses below (the
configuration: Triton's JSON ``ModelConfig``, ``server.model_config``); every failure
is a ``ServingError`` carrying a transport-free code. A transport (``server.service`` for
gRPC) only decodes its messages, calls a :class:`DataPlane` and encodes the answer. With
``--workers`` the same calls go through ``server.peers.PeeredDataPlane``, which passes
control and readiness on to the other workers; :class:`DataPlaneAPI` is what both offer.

An inference is served inside :meth:`DataPlane.inference`, so that everything a request
can fail at -- decoding included, which the transport does -- counts in the statistics,
the metrics and the drain (``server.drain``)::

    async with plane.inference(name, version) as call:   # UNAVAILABLE, NOT_FOUND here
        request = InferRequest(decode(message))           # the transport's decoding
        outputs = await call.run(request, deadline)       # checked, batched, computed
        answer = encode(outputs)                          # the transport's encoding
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from onnxforge._version import __version__
from onnxforge.builder.metadata import SPEC_SHA256
from onnxforge.protocol import headers as protocol_headers
from onnxforge.protocol.datatypes import from_numpy
from onnxforge.server import validate
from onnxforge.server.batcher import RequestCancelled
from onnxforge.server.drain import Drain
from onnxforge.server.errors import InvalidInput, LoadFailed, ServingError
from onnxforge.server.model_config import config_json
from onnxforge.server.model_version import Tensor, Version
from onnxforge.server.overrides import parse_load_parameters
from onnxforge.server.registry import PLATFORM, Registry, State
from onnxforge.server.stats import ModelStats, Statistics, VersionStats

__all__ = [
    "EXTENSIONS",
    "DataPlane",
    "DataPlaneAPI",
    "IndexEntry",
    "InferRequest",
    "Inference",
    "ModelMetadata",
    "RequestedOutput",
    "ServerMetadata",
]

EXTENSIONS = ("model_repository", "statistics", "model_repository(unload_dependents)")

Listener = Callable[[], Awaitable[None]]


# ------------------------------------------------------------------ values in and out


@dataclass(frozen=True)
class RequestedOutput:
    """An output a request asks for, with the parameters it asks for it with."""

    name: str
    parameters: Mapping[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class InferRequest:
    """One inference request, decoded: arrays by input name, and what to answer."""

    inputs: Mapping[str, np.ndarray]
    # The datatype the client declared per input ("FP32"); None: the arrays' own.
    datatypes: Mapping[str, str] | None = None
    outputs: Sequence[RequestedOutput] = ()  # none: every output of the model
    parameters: Mapping[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class ServerMetadata:
    name: str
    version: str
    extensions: tuple[str, ...]


@dataclass(frozen=True)
class ModelMetadata:
    """A model as the protocol describes it, and what the protocol's message cannot carry."""

    name: str
    versions: tuple[str, ...]
    platform: str
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]
    variant: str  # of the version asked about: fp32, fp16, int8-dynamic, ...
    accuracy: Mapping[str, Any] | None  # as measured when it was built
    spec_sha256: str | None  # the spec it was built from

    def headers(self) -> list[tuple[str, str]]:
        """Variant, accuracy and spec hash as response headers (the same on every transport)."""
        headers = [(protocol_headers.VARIANT, self.variant)]
        if self.accuracy is not None:
            headers.append((protocol_headers.ACCURACY, json.dumps(self.accuracy, sort_keys=True)))
        if self.spec_sha256 is not None:
            headers.append((protocol_headers.SPEC_SHA256, self.spec_sha256))
        return headers


@dataclass(frozen=True)
class IndexEntry:
    """One line of the repository index: a version of a model, or a model without one."""

    name: str
    version: str  # "" for a model with no version loaded
    state: str  # State's value: READY, LOADING, UNLOADING, UNAVAILABLE
    reason: str


class Inference:
    """One inference call being served: the version it addresses, and running it."""

    def __init__(self, served: Version, max_rows: int) -> None:
        self.model = served.model
        self.version = served.version
        self.rows = 0  # of the request, once checked
        self._served = served
        self._max_rows = max_rows

    async def run(
        self, request: InferRequest, deadline: float | None = None
    ) -> dict[str, np.ndarray]:
        """Check the request against the model, then compute (``deadline``: monotonic s)."""
        inputs, outputs = self._checked(request)
        return await self._served.infer(inputs, outputs, deadline)

    def run_blocking(
        self,
        request: InferRequest,
        deadline: float | None = None,
        on_cancel: Callable[[Callable[[], None]], object] | None = None,
    ) -> dict[str, np.ndarray]:
        """:meth:`run` on the caller's own thread (a thread-pool transport's)."""
        inputs, outputs = self._checked(request)
        return self._served.infer_blocking(inputs, outputs, deadline, on_cancel)

    def _checked(self, request: InferRequest) -> tuple[dict[str, np.ndarray], list[str]]:
        served = self._served
        datatypes = request.datatypes
        if datatypes is None:
            datatypes = {name: _datatype(name, array) for name, array in request.inputs.items()}
        inputs = validate.model_inputs(served, request.inputs, datatypes, self._max_rows)
        validate.supported_parameters(request.parameters, "request")
        for wanted in request.outputs:
            validate.supported_parameters(wanted.parameters, f"output '{wanted.name}'")
        outputs = validate.requested_outputs(served, [wanted.name for wanted in request.outputs])
        self.rows = len(next(iter(inputs.values()))) if inputs else 0
        return inputs, outputs


class _Serving:
    """``DataPlane.inference``: an async context manager (a class: this is every request's
    path, and a generator-based one costs a few microseconds more)."""

    __slots__ = ("_call", "_name", "_plane", "_started", "_version")

    def __init__(self, plane: DataPlane, name: str, version: str) -> None:
        self._plane, self._name, self._version = plane, name, version

    def __enter__(self) -> Inference:
        plane = self._plane
        plane.drain.check()  # UNAVAILABLE and NOT_FOUND are not counted as served calls
        self._call = Inference(plane.registry.get(self._name, self._version), plane.max_rows)
        self._started = time.monotonic_ns()
        plane.drain.enter()
        return self._call

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: Any
    ) -> None:
        plane, call = self._plane, self._call
        if kind is None:
            status = "OK"
            plane.drain.leave(answered=True)
        elif isinstance(error, asyncio.CancelledError | RequestCancelled):
            status = "CANCELLED"
            plane.drain.leave(cancelled=True)
        else:
            status = error.code.name if isinstance(error, ServingError) else "UNKNOWN"
            plane.drain.leave()
        elapsed = time.monotonic_ns() - self._started
        plane.stats.request(call.model, call.version, status, elapsed, call.rows)

    # The same, for a transport on the event loop (nothing in it waits).
    async def __aenter__(self) -> Inference:
        return self.__enter__()

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: Any
    ) -> None:
        self.__exit__(kind, error, trace)


def _datatype(name: str, array: np.ndarray) -> str:
    row = from_numpy(array.dtype)
    if row is None:
        raise InvalidInput(name, f"NumPy dtype {array.dtype} has no protocol datatype")
    return row.name


# ------------------------------------------------------------------ the data plane


class DataPlaneAPI(Protocol):
    """What a transport calls: a :class:`DataPlane`, or a wrapper of one."""

    drain: Drain

    async def live(self) -> bool: ...
    async def server_ready(self) -> bool: ...
    async def model_ready(self, name: str, version: str = "") -> bool: ...
    async def server_metadata(self) -> ServerMetadata: ...
    async def model_metadata(self, name: str, version: str = "") -> ModelMetadata: ...
    async def model_config(self, name: str, version: str = "") -> dict[str, Any]: ...
    def inference(self, name: str, version: str = "") -> AbstractAsyncContextManager[Inference]: ...
    async def index(self, ready_only: bool = False) -> list[IndexEntry]: ...
    async def load(self, name: str, parameters: Mapping[str, object] | None = None) -> None: ...
    async def unload(self, name: str) -> None: ...
    async def statistics(self, name: str = "", version: str = "") -> list[VersionStats]: ...


class DataPlane:
    """Every answer of one server process, from its registry; see the module docstring."""

    def __init__(
        self, registry: Registry, statistics: Statistics, *, max_rows: int = 65536
    ) -> None:
        self.registry = registry
        self.stats = statistics
        self.max_rows = max_rows  # rows per request
        self.drain = Drain()
        # Told whenever what serves may have changed (health services, for one).
        self.listeners: list[Listener] = []

    async def changed(self) -> None:
        """Models were loaded, unloaded or reloaded: update the gauge, tell the listeners."""
        if self.stats.metrics is not None:
            ready = sum(entry.state == State.READY for entry in self.registry.entries.values())
            self.stats.metrics.models_loaded.set(ready)
        for listener in self.listeners:
            await listener()

    # ------------------------------------------------------------------ health

    async def live(self) -> bool:
        return True

    def ready_now(self) -> bool:
        """Every model is ready, except those unloaded on purpose (as Triton counts it)."""
        return not self.drain.draining and all(
            entry.state == State.READY or entry.deliberate
            for entry in self.registry.entries.values()
        )

    def serving(self) -> dict[str, bool]:
        """Per model the registry holds: whether it serves now."""
        return {
            name: entry.state == State.READY and not self.drain.draining
            for name, entry in self.registry.entries.items()
        }

    async def server_ready(self) -> bool:
        return self.ready_now()

    async def model_ready(self, name: str, version: str = "") -> bool:
        try:
            self.registry.get(name, version)
        except ServingError:
            return False
        return not self.drain.draining

    # ------------------------------------------------------------------ metadata

    async def server_metadata(self) -> ServerMetadata:
        return ServerMetadata("onnxforge", __version__, EXTENSIONS)

    async def model_metadata(self, name: str, version: str = "") -> ModelMetadata:
        served = self.registry.get(name, version)
        entry = self.registry.entries[name]
        return ModelMetadata(
            name=served.model,
            versions=tuple(sorted(entry.versions, key=int)),
            platform=PLATFORM,
            inputs=tuple(served.inputs.values()),
            outputs=tuple(served.outputs.values()),
            variant=served.variant,
            accuracy=served.accuracy,
            spec_sha256=served.props.get(SPEC_SHA256),
        )

    async def model_config(self, name: str, version: str = "") -> dict[str, Any]:
        """The model's configuration as it serves, in Triton's JSON shape (``ModelConfig``)."""
        served = self.registry.get(name, version)
        override = self.registry.overrides.get(name)
        return await asyncio.to_thread(config_json, served, self.registry.root, override)

    # ------------------------------------------------------------------ inference

    def inference(self, name: str, version: str = "") -> _Serving:
        """Serve one inference call; counted in the statistics, the metrics and the drain."""
        return _Serving(self, name, version)

    async def infer(
        self,
        name: str,
        inputs: Mapping[str, np.ndarray],
        *,
        version: str = "",
        outputs: Sequence[str] = (),
        deadline: float | None = None,
    ) -> dict[str, np.ndarray]:
        """One inference from arrays: the outputs asked for (all when none), by name."""
        request = InferRequest(inputs, outputs=[RequestedOutput(output) for output in outputs])
        async with self.inference(name, version) as call:
            return await call.run(request, deadline)

    # ------------------------------------------------------------------ repository

    async def index(self, ready_only: bool = False) -> list[IndexEntry]:
        """Every model of the repository, loaded or not, one entry per loaded version."""
        registry = self.registry
        found: list[IndexEntry] = []
        for name in dict.fromkeys([*registry.names(), *registry.entries]):
            entry = registry.entries.get(name)
            state = entry.state.value if entry else State.UNAVAILABLE.value
            if ready_only and state != State.READY.value:
                continue
            reason = entry.reason if entry else "not loaded"
            versions = sorted(entry.versions, key=int) if entry and entry.versions else [""]
            found += [IndexEntry(name, version, state, reason) for version in versions]
        return found

    async def load(self, name: str, parameters: Mapping[str, object] | None = None) -> None:
        """Load (or reload) ``name``; ``parameters`` may carry a ``config`` (JSON text)."""
        self.registry.require(name)  # NOT_FOUND before anything about its parameters
        config = parse_load_parameters(name, parameters or {})
        entry = await self.registry.load(name, config)
        await self.changed()
        if entry.state != State.READY:
            raise LoadFailed(name, entry.reason)

    async def unload(self, name: str) -> None:
        await self.registry.unload(name)
        await self.changed()

    async def statistics(self, name: str = "", version: str = "") -> list[VersionStats]:
        """Every loaded version (zeros until it serves, as Triton answers) and every counted."""
        if name:
            self.registry.get(name, version)  # NOT_FOUND for unknown models
        loaded = {
            (entry.name, number)
            for entry in self.registry.entries.values()
            if entry.state == State.READY
            for number in entry.versions
        }
        counted = self.stats.snapshot()
        return [
            VersionStats(model, number, counted.get((model, number), ModelStats()))
            for model, number in sorted(loaded | set(counted))
            if (not name or model == name) and (not version or number == version)
        ]
