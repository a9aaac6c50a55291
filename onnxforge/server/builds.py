"""The specs of a served repository: the models each makes, building what is missing or
stale, and whether a model's newest file was built from the spec as it is now.

A model folder ``<base>`` holding a spec owns ``<base>`` (fp32) and ``<base>-<variant>``.
For such a model the newest version on disk must record the current spec's hash (and a
variant the current budget); otherwise it is not servable, and the reason says why: the
spec does not load, the build failed, the variant was refused by its budget, or the file is
simply older than the spec. Models without a spec are served as their files are.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

from onnxforge.builder.errors import describe
from onnxforge.builder.layout import (
    CONFIG_FILE,
    MODEL_FOLDER_PATTERN,
    model_name,
    newest_version,
    spec_file,
    split_name,
    version_path,
)
from onnxforge.builder.spec import Spec

log = logging.getLogger("onnxforge.server")

Fingerprint = tuple[tuple[str, int, int], ...]


class SpecBuilds:
    """What the repository's specs say, and the outcome of the last build of each."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.load_errors: dict[str, str] = {}  # base -> why its spec does not load
        self.build_errors: dict[str, str] = {}  # base -> why its last build failed
        self.refused: dict[str, str] = {}  # model -> why its last build was refused
        self._cache: dict[str, tuple[Fingerprint, Spec]] = {}
        # Staleness reads only a file's metadata, but parsing it reads every weight.
        self._props: dict[Path, tuple[tuple[int, int], dict[str, str]]] = {}

    # ------------------------------------------------------------------ what the specs say

    def bases(self) -> list[str]:
        """Folders of the repository that hold a spec."""
        if not self.root.is_dir():
            return []
        return [
            folder.name
            for folder in sorted(self.root.iterdir())
            if folder.is_dir()
            and MODEL_FOLDER_PATTERN.match(folder.name)
            and folder.resolve().is_relative_to(self.root.resolve())
            and spec_file(folder) is not None
        ]

    def owner(self, name: str) -> str | None:
        """The base whose spec makes model ``name``, if any."""
        base, _ = split_name(name)
        for candidate in (name, base):
            if spec_file(self.root / candidate) is not None:
                return candidate
        return None

    def spec(self, base: str) -> Spec:
        """The spec of ``base`` as it is on disk now (parsed again only when a file changed)."""
        from onnxforge.builder.spec import load_spec

        path = spec_file(self.root / base)
        if path is None:
            raise FileNotFoundError(f"{self.root / base}: no spec")
        fingerprint = _fingerprint(self.root / base)
        cached = self._cache.get(base)
        if cached is not None and cached[0] == fingerprint:
            return cached[1]
        try:
            spec = load_spec(path)
        except Exception as error:
            self.load_errors[base] = f"build failed: {describe(error)}"
            raise
        self.load_errors.pop(base, None)
        self._cache[base] = (fingerprint, spec)
        return spec

    def declared(self, base: str) -> list[str]:
        """The model names ``base``'s spec makes (none while it does not load)."""
        try:
            spec = self.spec(base)
        except Exception:
            return []
        return [model_name(spec.name, variant) for variant in spec.document.variants]

    # ------------------------------------------------------------------ building

    def build(self, base: str) -> list[str]:
        """Build the models of ``base`` that are missing or stale; the names whose files changed.

        Runs in a worker thread. Never raises: a failure is kept (``load_errors``,
        ``build_errors``, ``refused``) for the reasons the registry reports.
        """
        from onnxforge.builder.repository import artifacts, stale_props, write, write_config

        try:
            spec = self.spec(base)
        except Exception as error:
            log.error("cannot build %s: %s", base, self.load_errors.get(base, describe(error)))
            return []
        stale, configs = [], []
        for variant in spec.document.variants:
            name = model_name(spec.name, variant)
            if stale_props(self._newest_props(name), spec) is not None:
                stale.append(variant)
            elif not _config_matches(self.root / name / CONFIG_FILE, spec, name):
                configs.append(name)
        changed = [name for name in configs if write_config(self.root, spec, name)]
        if not stale:
            self.build_errors.pop(base, None)
            return changed
        log.info("building %s: %s missing or stale", base, ", ".join(stale))
        try:
            made, refused = artifacts(spec, stale)
            written = write(self.root, made)
        except Exception as error:  # one broken spec must not stop the others
            self.build_errors[base] = f"build failed: {describe(error)}"
            log.error("cannot build %s: %s", base, self.build_errors[base])
            return changed
        self.build_errors.pop(base, None)
        for report in refused:
            self.refused[report.model] = (
                f"refused at the last build of {base}: over budget: {'; '.join(report.failures)}; "
                "its files of an older spec are not served (relax its `budget:` or the "
                "`quantization:` settings, or drop it from `variants:`)"
            )
            log.warning("%s: %s", report.model, self.refused[report.model])
        for result in written:
            self.refused.pop(result.artifact.name, None)
        return changed + [result.artifact.name for result in written if result.changed]

    def _newest_props(self, name: str) -> dict[str, str]:
        """The newest file's metadata props; a file is parsed again only when it changed."""
        newest = newest_version(self.root / name)
        if newest is None:
            return {}
        from onnxforge.builder import metadata
        from onnxforge.builder.repository import read_model

        path = version_path(self.root, name, newest)
        try:
            info = path.stat()
            key = (info.st_mtime_ns, info.st_size)
            cached = self._props.get(path)
            if cached is None or cached[0] != key:
                cached = (key, metadata.props(read_model(path)))
                self._props[path] = cached
            return cached[1]
        except Exception:
            return {}

    # ------------------------------------------------------------------ servable?

    def problem(self, name: str, props: Mapping[str, str]) -> str | None:
        """Why the newest file of ``name`` (its metadata ``props``) must not serve, or None."""
        from onnxforge.builder.repository import stale_props

        base = self.owner(name)
        if base is None:
            return None
        try:
            spec = self.spec(base)
        except Exception:
            return self.load_errors.get(base, "its spec does not load")
        stale = stale_props(props, spec)
        if stale is None:
            return None
        if name in self.refused:
            return self.refused[name]
        if base in self.build_errors:
            return f"{self.build_errors[base]}; the files on disk are of an older spec"
        return stale

    def missing(self, name: str) -> str:
        """Why a model that a spec makes has no file yet."""
        base = self.owner(name) or name
        if name in self.refused:
            return self.refused[name]
        for errors in (self.load_errors, self.build_errors):
            if base in errors:
                return errors[base]
        return "not built yet (the server builds at start and on load, unless --no-build)"


def _config_matches(path: Path, spec: Spec, name: str) -> bool:
    from onnxforge.builder.triton import config_pbtxt

    try:
        return path.read_text() == config_pbtxt(spec, name)
    except OSError:
        return False


def _fingerprint(folder: Path) -> Fingerprint:
    """(file, mtime, size) of the spec and the weights beside it."""
    found = []
    for file in sorted(folder.iterdir()):
        if file.name.startswith("spec.") or file.suffix in (".npz", ".npy"):
            info = file.stat()
            found.append((file.name, info.st_mtime_ns, info.st_size))
    return tuple(found)
