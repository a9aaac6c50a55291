"""``--watch``: reload models whose files or spec changed, without failing requests.

The repository is polled (portable, and cheap for a handful of models). A changed spec is
rebuilt and every model it makes follows (``Registry.refresh``); a changed, added or removed
model file reloads, loads or unloads its model. A reload swaps the model in one step:
requests already queued finish on the old session. A spec that does not load or build
leaves the old versions serving with the reason in RepositoryIndex, until a good build; a
variant the new spec refuses stops serving.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from onnxforge.builder.layout import MODEL_FILE, SPEC_FILES
from onnxforge.server.registry import Registry, State

log = logging.getLogger("onnxforge.server")

Snapshot = dict[str, tuple[tuple[str, int, int], ...]]


def snapshot(root: Path) -> Snapshot:
    """Per model folder: (file, mtime_ns, size) of its spec, weights, config and models."""
    state: Snapshot = {}
    if not root.is_dir():
        return state
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        files = [
            *(folder / name for name in SPEC_FILES),
            folder / "config.pbtxt",
            *sorted(folder.glob("*.npz")),
            *sorted(folder.glob("*.npy")),
            *sorted(folder.glob(f"*/{MODEL_FILE}")),
        ]
        stats = []
        for file in files:
            try:
                info = file.stat()
            except OSError:
                continue
            stats.append((str(file.relative_to(folder)), info.st_mtime_ns, info.st_size))
        if stats:
            state[folder.name] = tuple(sorted(stats))
    return state


class Watcher:
    """Polls ``registry``'s folder; calls ``on_change`` after applying what changed."""

    def __init__(
        self,
        registry: Registry,
        on_change: Callable[[], Awaitable[None]],
        interval: float = 1.0,
        sources: Snapshot | None = None,
    ) -> None:
        """``sources``: the repository as it was before the server loaded it, so that a spec
        edited while the server was starting is a change the first look sees."""
        self.registry = registry
        self.on_change = on_change  # the data plane's: health and the loaded gauge follow
        self.interval = interval
        now = snapshot(registry.root)
        self.seen = now if sources is None else _merge(sources=sources, built=now)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.check()
            except Exception:  # the watcher must outlive any one bad change
                log.exception("watch: checking %s failed", self.registry.root)

    async def check(self) -> list[str]:
        """Apply what changed since the last look; returns the model names touched."""
        now = snapshot(self.registry.root)
        changed = sorted(
            name for name in now.keys() | self.seen.keys() if now.get(name) != self.seen.get(name)
        )
        if not changed:
            return []
        touched: set[str] = set()
        for base in sorted({name for name in changed if self._spec_changed(name, now)}):
            if base in self.registry.specs.bases():
                log.info("watch: the spec of %s changed, rebuilding", base)
                touched.update(await self.registry.refresh(base))
                touched.add(base)
        for name in changed:
            if name in touched:
                continue
            if name not in now:
                await self.registry.removed(name)
                continue
            entry = self.registry.entries.get(name)
            if entry is not None and entry.held_unloaded:
                continue  # unloaded on purpose: a file change does not bring it back
            if name in self.registry.names():
                log.info("watch: %s changed, reloading", name)
                entry = await self.registry.reload(name)
                if entry.state != State.READY:
                    log.warning("watch: %s: %s", name, entry.reason)
        # Our own builds wrote model files: look again so that they do not count as changes,
        # but keep the sources as they were when this look began -- a spec edited while we
        # were building is a change the next look must see.
        self.seen = _merge(sources=now, built=snapshot(self.registry.root))
        await self.on_change()
        return changed

    def _spec_changed(self, name: str, now: Snapshot) -> bool:
        def spec_files(state: Snapshot) -> tuple[tuple[str, int, int], ...]:
            return tuple(f for f in state.get(name, ()) if _is_source(f[0]))

        return spec_files(now) != spec_files(self.seen)


def _is_source(file: str) -> bool:
    """A file the user edits (spec, weights, rows), as opposed to one a build writes."""
    return not file.endswith(MODEL_FILE) and file != "config.pbtxt"


def _merge(sources: Snapshot, built: Snapshot) -> Snapshot:
    merged: Snapshot = {}
    for name in sources.keys() | built.keys():
        files = [f for f in sources.get(name, ()) if _is_source(f[0])]
        files += [f for f in built.get(name, ()) if not _is_source(f[0])]
        if files:
            merged[name] = tuple(sorted(files))
    return merged
