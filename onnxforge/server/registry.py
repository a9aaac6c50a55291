"""The models a server holds: found in the repository, built when missing, loaded, indexed.

A model is a folder ``<repository>/<name>/`` with numbered version folders holding
``model.onnx`` and a ``config.pbtxt`` (batching, instances, version policy). A spec beside
them is the source of truth (``server.builds``): what is missing or stale is built at start
and on every load, and a model whose newest file is not of the current spec is not served.
The version policy picks which versions are served; each gets its own ONNX Runtime session,
threads and batcher (``server.model_version``).

What a model's state means:

* READY -- its versions serve. A later failure (a spec that no longer loads or builds, a
  file that does not open) keeps them serving and is noted in the reason until a good
  build or load clears it. A change that makes them stale (a refused variant) does not.
* UNAVAILABLE -- nothing serves, the reason says why; ``deliberate`` when unloaded or
  removed on purpose (the server stays ready then, as Triton counts it).
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from onnxforge.builder.errors import describe
from onnxforge.builder.layout import (
    CONFIG_FILE,
    MODEL_FILE,
    MODEL_FOLDER_PATTERN,
    PLATFORM,
    version_path,
    versions,
)
from onnxforge.builder.triton import ModelConfig, read_config, select_versions
from onnxforge.server.batcher import BatchStats
from onnxforge.server.builds import SpecBuilds
from onnxforge.server.errors import InvalidRequest, ModelNotFound, ModelNotReady
from onnxforge.server.model_version import (
    Serving,
    Tensor,
    Version,
    attach_batcher,
    open_version,
)

__all__ = ["PLATFORM", "Entry", "Registry", "Serving", "State", "Tensor", "Version"]

log = logging.getLogger("onnxforge.server")


class State(str, enum.Enum):
    READY = "READY"
    LOADING = "LOADING"
    UNLOADING = "UNLOADING"
    UNAVAILABLE = "UNAVAILABLE"


UNLOADED = "unloaded"


class NotServable(Exception):
    """The model's newest file is not of its current spec (or there is none): nothing serves."""


@dataclass
class Entry:
    """A model the repository holds, whatever its state."""

    name: str
    state: State = State.UNAVAILABLE
    problem: str = ""  # why it does not serve
    versions: dict[str, Version] = field(default_factory=dict)
    deliberate: bool = False  # unloaded or removed on purpose
    note: str = ""  # a later failure while the versions above still serve

    @property
    def reason(self) -> str:
        if self.state == State.READY:
            return f"{self.note} (previous version still serving)" if self.note else ""
        return self.problem

    def newest(self) -> str | None:
        return max(self.versions, key=int) if self.versions else None

    @property
    def held_unloaded(self) -> bool:
        """Unloaded by a user: only a load brings it back (a removed folder comes back)."""
        return self.deliberate and self.problem == UNLOADED


class Registry:
    """Every model of one repository folder, with its state."""

    def __init__(
        self,
        root: Path,
        *,
        threads: int = 0,
        spinning: bool | None = None,
        build_missing: bool = True,
        max_queue: int = 1024,
        max_model_bytes: int = 2**31,
        batching: bool = True,
        on_batch: Callable[[str, str, BatchStats], None] | None = None,
        inline_us: int = 0,
    ) -> None:
        self.batching = batching
        self.inline_us = inline_us  # a quick model's lone request runs on the loop's thread
        self.root = root
        self.max_model_bytes = max_model_bytes
        self.threads = threads
        self.spinning = spinning  # ONNX Runtime's intra-op spinning; None: its default
        self.build_missing = build_missing
        self.max_queue = max_queue
        self.on_batch = on_batch
        self.specs = SpecBuilds(root)
        self.entries: dict[str, Entry] = {}
        self.overrides: dict[str, ModelConfig] = {}  # a load's config, kept for reloads
        self._locks: dict[str, asyncio.Lock] = {}
        self._build_locks: dict[str, asyncio.Lock] = {}

    # ------------------------------------------------------------------ discovery

    def names(self) -> list[str]:
        """Models of the repository: folders with a version or a spec, and what specs make."""
        if not self.root.is_dir():
            return []
        found = set()
        for folder in sorted(self.root.iterdir()):
            if not folder.is_dir() or not MODEL_FOLDER_PATTERN.match(folder.name):
                continue
            if not self._inside(folder):
                log.warning("%s points outside the repository; ignored", folder)
                continue
            if versions(folder):
                found.add(folder.name)
        for base in self.specs.bases():
            found.add(base)
            found.update(self.specs.declared(base))
        return sorted(found)

    def _inside(self, path: Path) -> bool:
        """Whether ``path``, symlinks followed, stays inside the repository."""
        return path.resolve().is_relative_to(self.root.resolve())

    # ------------------------------------------------------------------ build

    async def build(self, base: str) -> list[str]:
        """Build what is missing or stale of ``base``'s spec; the names whose files changed."""
        async with self._build_locks.setdefault(base, asyncio.Lock()):
            changed = await asyncio.to_thread(self.specs.build, base)
        self._note_build(base)
        return changed

    def _note_build(self, base: str) -> None:
        """Show (or clear) a failed build on the models of ``base`` that still serve."""
        failure = self.specs.load_errors.get(base) or self.specs.build_errors.get(base, "")
        for name, entry in self.entries.items():
            if self.specs.owner(name) == base and entry.state == State.READY:
                entry.note = failure

    # ------------------------------------------------------------------ load / unload

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    async def load_all(self) -> None:
        """At start: build every spec's missing or stale models, then load every model."""
        if self.build_missing:
            for base in self.specs.bases():
                await self.build(base)
        for name in self.names():
            await self._load_one(name)

    async def load(self, name: str, config: ModelConfig | None = None) -> Entry:
        """Load (or reload) ``name`` as a user asks: build it first when its spec says so.

        ``config`` replaces ``config.pbtxt`` for this and later reloads of ``name``, until a
        load without one. Models of the same spec that serve and were rebuilt reload too.
        """
        self.require(name)
        if config is None:
            self.overrides.pop(name, None)
        else:
            self.overrides[name] = config
        base = self.specs.owner(name)
        changed = await self.build(base) if base is not None and self.build_missing else []
        entry = await self._load_one(name)
        for sibling in changed:
            other = self.entries.get(sibling)
            if sibling != name and other is not None and not other.held_unloaded:
                await self._load_one(sibling)
        return entry

    def require(self, name: str) -> None:
        """NOT_FOUND unless the repository holds ``name`` (keeps '../x' and symlinks out)."""
        if name not in self.names():
            raise ModelNotFound(name, available=self.names())

    async def refresh(self, base: str) -> list[str]:
        """After ``base``'s spec changed: rebuild, then reload each of its models that serves
        or should; models unloaded on purpose stay so. Returns the names reloaded."""
        changed = await self.build(base) if self.build_missing else []
        names = {base, *self.specs.declared(base)} | {
            name for name in self.entries if self.specs.owner(name) == base
        }
        reloaded = []
        for name in sorted(names):
            entry = self.entries.get(name)
            if entry is not None and entry.held_unloaded:
                continue
            if entry is None or entry.state != State.READY or name in changed or self._stale(entry):
                await self._load_one(name)
                reloaded.append(name)
        return reloaded

    def _stale(self, entry: Entry) -> bool:
        """Whether ``entry`` no longer serves the newest file on disk, or that file's spec."""
        newest = entry.newest()
        on_disk = versions(self.root / entry.name)
        if newest is None or not on_disk or int(newest) != on_disk[-1]:
            return True
        return not self._current(entry)

    def _current(self, entry: Entry) -> bool:
        """Whether the newest version ``entry`` serves is of the current spec."""
        newest = entry.newest()
        if newest is None:
            return False
        base = self.specs.owner(entry.name)
        if base is not None and base in self.specs.load_errors:
            return True  # nothing says otherwise while the spec is being edited
        return self.specs.problem(entry.name, entry.versions[newest].props) is None

    async def reload(self, name: str) -> Entry:
        """Load ``name`` again as it is configured now (the watcher's reload)."""
        return await self._load_one(name)

    async def _load_one(self, name: str) -> Entry:
        async with self._lock(name):
            previous = self.entries.get(name)
            serving = previous is not None and previous.state == State.READY
            if not serving:
                self.entries[name] = Entry(name, State.LOADING)
            try:
                opened = await asyncio.to_thread(self._open_versions, name)
            except Exception as error:
                keep = serving and previous is not None and self._keeps_serving(previous, error)
                reason = str(error) if isinstance(error, NotServable) else None
                reason = reason or f"load failed: {describe(error)}"
                log.error("%s: %s", name, reason)
                if keep and previous is not None:
                    previous.note = reason
                    return previous
                self.entries[name] = Entry(name, State.UNAVAILABLE, reason)
                if previous is not None:
                    await self._close(previous)
                return self.entries[name]
            entry = Entry(name, State.READY, versions=opened)
            for version in opened.values():
                attach_batcher(version, self.batching, self.on_batch, self.inline_us)
            self.entries[name] = entry
            self._note_build(self.specs.owner(name) or "")
            if previous is not None:
                await self._close(previous)
            log.info("%s: ready (versions %s)", name, ", ".join(opened))
            return entry

    def _keeps_serving(self, previous: Entry, error: Exception) -> bool:
        """A failed reload keeps the old versions serving unless they are stale themselves."""
        return self._current(previous)

    async def unload(self, name: str) -> None:
        if name not in self.entries:
            raise ModelNotFound(name, available=list(self.entries))
        async with self._lock(name):  # a load in progress finishes first
            entry = self.entries[name]
            entry.state = State.UNLOADING
            await self._close(entry)
            self.entries[name] = Entry(name, State.UNAVAILABLE, UNLOADED, deliberate=True)
            log.info("%s: unloaded", name)

    async def removed(self, name: str) -> None:
        """The model's folder is gone: unload it, on purpose."""
        if name in self.entries:
            await self.unload(name)
            self.entries[name].problem = "removed from the repository"

    async def close(self) -> None:
        for entry in list(self.entries.values()):
            await self._close(entry)

    @staticmethod
    async def _close(entry: Entry) -> None:
        for version in entry.versions.values():
            await version.close()

    # ------------------------------------------------------------------ opening files

    def _open_versions(self, name: str) -> dict[str, Version]:
        """Sessions for the versions the policy serves; NotServable when the newest is stale."""
        folder = self.root / name
        found = versions(folder)
        if not found:
            if self.specs.owner(name) is not None:
                raise NotServable(self.specs.missing(name))
            raise ValueError(f"no <version>/{MODEL_FILE} in {folder}")
        for number in found:
            path = version_path(self.root, name, number)
            if not self._inside(path):
                raise ValueError(f"{path} points outside the repository; not loaded")
            size = path.stat().st_size
            if size > self.max_model_bytes:
                raise ValueError(
                    f"{path} is {size:,} bytes, over the limit of "
                    f"{self.max_model_bytes:,} (--max-model-bytes)"
                )
        config = self.overrides.get(name) or read_config(folder / CONFIG_FILE)
        serving = Serving(
            config.max_batch_size,
            config.max_queue_delay_us,
            config.instances,
            self.max_queue,
        )
        newest = self._open(name, found[-1], serving)
        problem = self.specs.problem(name, newest.props)
        if problem is not None:
            raise NotServable(problem)
        chosen = select_versions(config.version_policy, found)
        if not chosen:
            raise ValueError(
                f"version_policy {config.version_policy.model_dump(exclude_none=True)} of "
                f"{folder / CONFIG_FILE} names no version on disk (have {found})"
            )
        opened = {
            str(number): newest if number == found[-1] else self._open(name, number, serving)
            for number in chosen
        }
        if config.max_batch_size > 0 and newest.serving.max_batch_size == 0:
            raise InvalidRequest(
                f"max_batch_size {config.max_batch_size}: model '{name}' has a tensor without "
                "a batch dimension (use max_batch_size 0)"
            )
        return opened

    def _open(self, name: str, number: int, serving: Serving) -> Version:
        path = version_path(self.root, name, number)
        return open_version(name, str(number), path, serving, self.threads, self.spinning)

    # ------------------------------------------------------------------ lookups

    def get(self, name: str, version: str = "") -> Version:
        """The version a request addresses; no version means the newest served."""
        entry = self.entries.get(name)
        if entry is None:
            raise ModelNotFound(name, available=sorted(self.entries))
        if entry.state != State.READY:
            raise ModelNotReady(name, entry.reason or entry.state.value.lower())
        chosen = version or entry.newest()
        if chosen not in entry.versions:
            raise ModelNotFound(name, version, available=sorted(entry.versions, key=int))
        return entry.versions[chosen]
