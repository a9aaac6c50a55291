"""The models a server holds: found in the repository, built when missing, loaded, indexed.

A model is a folder ``<repository>/<name>/`` with numbered version folders holding
``model.onnx``; a ``spec.yaml`` beside them is the source of truth, and files that are
missing or stale against it are rebuilt at start-up (with a log line). Each version gets
one ONNX Runtime session, and per model one ``Batcher`` when its first dimension is a
batch. All per-model facts a request needs (tensor names, datatypes, shapes) are worked
out here, once, at load time.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import json
import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from builder import metadata
from server import convert
from server.batcher import Batcher, BatchStats
from server.errors import ModelNotFound, ModelNotReady

log = logging.getLogger("onnxforge.server")

MODEL_FILE = "model.onnx"
PLATFORM = "onnxruntime_onnx"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
VARIANT_SUFFIXES = ("-fp16", "-int8-dynamic", "-int8-static")


class State(str, enum.Enum):
    READY = "READY"
    LOADING = "LOADING"
    UNLOADING = "UNLOADING"
    UNAVAILABLE = "UNAVAILABLE"


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
    batcher: Batcher | None = None
    report: Callable[[BatchStats], None] | None = None  # told about every session run
    # Threads of this model alone: a slow model's backlog never holds up another model.
    executor: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="onnxforge-model")
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
        if self.batcher is not None:
            return await self.batcher.submit(inputs, outputs, deadline)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, self._run_and_report, inputs, outputs)

    def _run_and_report(
        self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]
    ) -> dict[str, np.ndarray]:
        # Reported from the worker thread: a run whose caller left still counts.
        started = time.monotonic_ns()
        results = self.run(inputs, outputs)
        if self.report is not None:
            rows = len(next(iter(inputs.values()))) if inputs else 0
            self.report(BatchStats(1, rows, [0], time.monotonic_ns() - started))
        return results

    async def close(self) -> None:
        """Finish what is queued and running, then release the threads."""
        if self.batcher is not None:
            await self.batcher.close()
        await asyncio.to_thread(self.executor.shutdown, wait=True)


@dataclass
class Entry:
    """A model the repository holds, whatever its state."""

    name: str
    state: State = State.UNAVAILABLE
    reason: str = ""
    versions: dict[str, Version] = field(default_factory=dict)

    def newest(self) -> str | None:
        return max(self.versions, key=int) if self.versions else None


def _tensor(node: ort.NodeArg) -> Tensor:
    row = convert.from_ort(node.type)
    if row is None:
        raise ValueError(f"tensor '{node.name}' has type {node.type}, which the protocol lacks")
    shape = tuple(dim if isinstance(dim, int) and dim >= 0 else -1 for dim in node.shape)
    return Tensor(node.name, row.name, row.dtype, shape)


def _serving_from_config(folder: Path) -> Serving:
    """``max_batch_size`` and the queue delay from a Triton config.pbtxt, if there is one."""
    config = folder / "config.pbtxt"
    if not config.is_file():
        return Serving()
    text = config.read_text(errors="replace")
    batch = re.search(r"^\s*max_batch_size\s*:\s*(\d+)", text, re.M)
    delay = re.search(r"max_queue_delay_microseconds\s*:\s*(\d+)", text)
    count = re.search(r"instance_group[^\]]*?count\s*:\s*(\d+)", text, re.S)
    return Serving(
        max_batch_size=int(batch.group(1)) if batch else 0,
        max_queue_delay_us=int(delay.group(1)) if delay else 0,
        instances=int(count.group(1)) if count else 1,
    )


class Registry:
    """Every model of one repository folder, with its state."""

    def __init__(
        self,
        root: Path,
        *,
        threads: int = 0,
        build_missing: bool = True,
        max_queue: int = 1024,
        max_model_bytes: int = 2**31,
        batching: bool = True,
        on_batch: Callable[[str, str, BatchStats], None] | None = None,
    ) -> None:
        self.batching = batching
        self.root = root
        self.max_model_bytes = max_model_bytes
        self.threads = threads
        self.build_missing = build_missing
        self.max_queue = max_queue
        self.on_batch = on_batch
        self.entries: dict[str, Entry] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    # ------------------------------------------------------------------ discovery

    def names(self) -> list[str]:
        """Model folders in the repository (those with a version folder or a spec)."""
        if not self.root.is_dir():
            return []
        found = []
        for folder in sorted(self.root.iterdir()):
            if not folder.is_dir() or not NAME_PATTERN.match(folder.name):
                continue
            if not self._inside(folder):
                log.warning("%s points outside the repository; ignored", folder)
                continue
            if (folder / "spec.yaml").is_file() or self._version_folders(folder):
                found.append(folder.name)
        return found

    @staticmethod
    def _version_folders(folder: Path) -> list[Path]:
        return sorted(
            (
                child
                for child in folder.iterdir()
                if child.is_dir() and child.name.isdigit() and (child / MODEL_FILE).is_file()
            ),
            key=lambda child: int(child.name),
        )

    def build_from_specs(self) -> list[str]:
        """Build every model whose files are missing or stale against its spec; their names."""
        from builder.repository import artifacts, model_path, read_model, staleness, write
        from builder.spec import load_spec

        built = []
        for folder in sorted(self.root.glob("*/spec.yaml")):
            try:
                spec = load_spec(folder)
                names = [
                    spec.name if v == "fp32" else f"{spec.name}-{v}" for v in spec.document.variants
                ]
                stale = [
                    name
                    for name in names
                    if self._stale(model_path(self.root, name), spec, read_model, staleness)
                ]
                if not stale:
                    continue
                log.info(
                    "building %s: %s missing or stale against %s",
                    spec.name,
                    ", ".join(stale),
                    folder,
                )
                made, refused = artifacts(spec)
                write(self.root, made)
                for report in refused:
                    log.warning(
                        "%s: %s over budget, not written: %s",
                        spec.name,
                        report.variant,
                        "; ".join(report.failures),
                    )
                built += [artifact.name for artifact in made]
            except Exception as error:  # one broken spec must not stop the others
                name = folder.parent.name
                reason = f"build failed: {' '.join(str(error).split())}"
                log.error("cannot build %s: %s", folder, reason)
                previous = self.entries.get(name)
                if previous is not None and previous.state == State.READY:
                    previous.reason = reason + " (previous version still serving)"
                else:
                    self.entries[name] = Entry(name, State.UNAVAILABLE, reason)
        return built

    @staticmethod
    def _stale(path: Path, spec: Any, read: Any, staleness: Any) -> bool:
        try:
            return staleness(read(path), spec) is not None
        except Exception:
            return True

    # ------------------------------------------------------------------ load / unload

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    async def load_all(self) -> None:
        if self.build_missing:
            await asyncio.to_thread(self.build_from_specs)
        for name in self.names():
            if self.entries.get(name, Entry(name)).reason.startswith("build failed"):
                continue
            await self.load(name)

    async def load(self, name: str) -> Entry:
        """Load (or reload) every version of ``name``; on failure the old versions keep serving."""
        if name not in self.names():  # also keeps '../x' and outside symlinks out
            raise ModelNotFound(name, available=self.names())
        async with self._lock(name):
            previous = self.entries.get(name)
            if previous is None or previous.state != State.READY:
                self.entries[name] = Entry(name, State.LOADING)
            try:
                versions = await asyncio.to_thread(self._open_versions, name)
            except Exception as error:
                reason = f"load failed: {' '.join(str(error).split())}"
                log.error("%s: %s", name, reason)
                if previous is not None and previous.state == State.READY:
                    previous.reason = reason + " (previous version still serving)"
                    return previous
                self.entries[name] = Entry(name, State.UNAVAILABLE, reason)
                return self.entries[name]
            entry = Entry(name, State.READY, "", versions)
            for version in versions.values():
                self._attach_batcher(version)
            self.entries[name] = entry
            if previous is not None:
                await self._close(previous)
            log.info("%s: ready (versions %s)", name, ", ".join(versions))
            return entry

    async def unload(self, name: str) -> None:
        if name not in self.entries:
            raise ModelNotFound(name, available=list(self.entries))
        async with self._lock(name):  # a load in progress finishes first
            entry = self.entries[name]
            entry.state = State.UNLOADING
            await self._close(entry)
            self.entries[name] = Entry(name, State.UNAVAILABLE, "unloaded")
            log.info("%s: unloaded", name)

    async def close(self) -> None:
        for entry in list(self.entries.values()):
            await self._close(entry)

    @staticmethod
    async def _close(entry: Entry) -> None:
        for version in entry.versions.values():
            await version.close()

    def _inside(self, path: Path) -> bool:
        """Whether ``path``, symlinks followed, stays inside the repository."""
        return path.resolve().is_relative_to(self.root.resolve())

    def _open_versions(self, name: str) -> dict[str, Version]:
        folder = self.root / name
        found = self._version_folders(folder)
        if not found:
            raise ValueError(f"no <version>/{MODEL_FILE} in {folder}")
        for path in found:
            model = path / MODEL_FILE
            if not self._inside(model):
                raise ValueError(f"{model} points outside the repository; not loaded")
            size = model.stat().st_size
            if size > self.max_model_bytes:
                raise ValueError(
                    f"{model} is {size:,} bytes, over the limit of "
                    f"{self.max_model_bytes:,} (--max-model-bytes)"
                )
        serving = self._serving(name)
        return {
            path.name: self._open(name, path.name, path / MODEL_FILE, serving) for path in found
        }

    def _serving(self, name: str) -> Serving:
        """Batching settings: the spec's ``serving`` (also for its variants), else config.pbtxt."""
        base = name
        for suffix in VARIANT_SUFFIXES:
            if name.endswith(suffix) and (self.root / name.removesuffix(suffix)).is_dir():
                base = name.removesuffix(suffix)
        spec_file = self.root / base / "spec.yaml"
        if spec_file.is_file():
            from builder.parse import read_document

            try:
                settings = read_document(spec_file)[0].serving
                return Serving(
                    settings.max_batch_size,
                    settings.max_queue_delay_us,
                    settings.instances,
                    self.max_queue,
                )
            except Exception as error:
                log.warning("%s: spec unreadable (%s); using config.pbtxt", name, error)
        found = _serving_from_config(self.root / name)
        return Serving(
            found.max_batch_size, found.max_queue_delay_us, found.instances, self.max_queue
        )

    def _open(self, name: str, version: str, path: Path, serving: Serving) -> Version:
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.log_severity_level = 3
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        # The session has already read the file: take the metadata from it, not a second parse.
        props = dict(session.get_modelmeta().custom_metadata_map)
        inputs = {node.name: _tensor(node) for node in session.get_inputs()}
        outputs = {node.name: _tensor(node) for node in session.get_outputs()}
        batched = serving.max_batch_size > 0 and all(
            t.shape and t.shape[0] == -1 for t in [*inputs.values(), *outputs.values()]
        )
        if not batched:
            serving = Serving(0, 0, serving.instances, serving.max_queue)
        threads = ThreadPoolExecutor(max(1, serving.instances), thread_name_prefix=f"model-{name}")
        return Version(
            name, version, path, session, inputs, outputs, props, serving, executor=threads
        )

    def _attach_batcher(self, version: Version) -> None:
        if self.on_batch is not None:
            on_batch = self.on_batch
            version.report = lambda stats: on_batch(version.model, version.version, stats)
        if version.serving.max_batch_size <= 0 or not self.batching:
            return  # every request runs on its own, straight from the event loop's threads
        version.batcher = Batcher(
            version.model,
            version.run,
            max_batch_size=version.serving.max_batch_size,
            max_queue_delay_us=version.serving.max_queue_delay_us,
            max_queue=version.serving.max_queue,
            instances=version.serving.instances,
            executor=version.executor,
            on_batch=version.report,
        )

    # ------------------------------------------------------------------ lookups

    def get(self, name: str, version: str = "") -> Version:
        """The version a request addresses; no version means the newest."""
        entry = self.entries.get(name)
        if entry is None:
            raise ModelNotFound(name, available=sorted(self.entries))
        if entry.state != State.READY:
            raise ModelNotReady(name, entry.reason or entry.state.value.lower())
        chosen = version or entry.newest()
        if chosen not in entry.versions:
            raise ModelNotFound(name, version, available=sorted(entry.versions, key=int))
        return entry.versions[chosen]
