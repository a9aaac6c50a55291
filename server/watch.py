"""``--watch``: reload models whose files or spec changed, without failing requests.

The repository is polled (portable, and cheap for a handful of models). A changed spec is
rebuilt first; a changed, added or removed model file reloads, loads or unloads its model.
A reload swaps the model in one step: requests already queued finish on the old session,
and a reload that fails leaves the old version serving with the reason in RepositoryIndex.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from server.registry import MODEL_FILE, Registry, State
from server.service import InferenceService

log = logging.getLogger("onnxforge.server")

Snapshot = dict[str, tuple[tuple[str, int, int], ...]]


def snapshot(root: Path) -> Snapshot:
    """Per model folder: (file, mtime_ns, size) of its spec, weights, config and models."""
    state: Snapshot = {}
    if not root.is_dir():
        return state
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        files = [
            folder / "spec.yaml",
            folder / "config.pbtxt",
            *sorted(folder.glob("*.npz")),
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
            state[folder.name] = tuple(stats)
    return state


class Watcher:
    def __init__(self, registry: Registry, service: InferenceService, interval: float = 1.0):
        self.registry = registry
        self.service = service
        self.interval = interval
        self.seen = snapshot(registry.root)

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
        if any(self._spec_changed(name, now) for name in changed):
            await asyncio.to_thread(self.registry.build_from_specs)
            now = snapshot(self.registry.root)
            changed = sorted(
                name
                for name in now.keys() | self.seen.keys()
                if now.get(name) != self.seen.get(name)
            )
        self.seen = now
        for name in changed:
            if name not in now:
                if name in self.registry.entries:
                    await self.registry.unload(name)
                    self.registry.entries[name].reason = "removed from the repository"
                continue
            entry = self.registry.entries.get(name)
            if entry is not None and entry.reason.startswith("build failed"):
                continue  # the old files still serve; the reason says why nothing changed
            if name in self.registry.names():
                log.info("watch: %s changed, reloading", name)
                entry = await self.registry.load(name)
                if entry.state != State.READY:
                    log.warning("watch: %s: %s", name, entry.reason)
        await self.service.sync_health()
        return changed

    def _spec_changed(self, name: str, now: Snapshot) -> bool:
        def spec_files(state: Snapshot) -> tuple[tuple[str, int, int], ...]:
            return tuple(
                f
                for f in state.get(name, ())
                if not f[0].endswith(MODEL_FILE) and f[0] != "config.pbtxt"
            )

        return spec_files(now) != spec_files(self.seen)
