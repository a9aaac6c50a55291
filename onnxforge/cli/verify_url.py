"""``onnxforge verify --url HOST:PORT [MODEL...]``: a running server held to the reference.

For each served model: ``ModelMetadata`` gives its versions and, per version, the hash of
the spec it was built from (header ``x-onnxforge-spec-sha256``). The newest version must
carry the hash of the current local spec (``<repository>/<base>/spec.yaml``); the seeded rows
(and the user's) are then sent to exactly that version, in requests of at most the model's
max batch size, and the answers are compared with the NumPy reference the way local verify
compares a file: fp32 to float32 precision, variants to their budget. Older versions the
server keeps are listed, not checked.

Which models: the names given (each must be served ready and have a local spec), else every
model the server lists, plus every model the specs of those list. A model without a local
spec is a note ("not checked") unless it was named, which makes it a failure.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import numpy as np
from rich.markup import escape
from rich.table import Table

from onnxforge.cli.common import EXIT_FAILED, SPEC_PATTERNS, console, progress
from onnxforge.cli.connect import with_port as with_port  # where the tests found it
from onnxforge.protocol.headers import SPEC_SHA256 as SPEC_HEADER

if TYPE_CHECKING:
    from onnxforge.builder.accuracy import Report
    from onnxforge.builder.spec import Spec
    from onnxforge.builder.verify import OutputCheck
    from onnxforge.client import InferenceClient

ROWS_PER_REQUEST = 64  # at most; fewer when the model's max batch size is smaller
TIMEOUT = 30.0  # seconds per call
OLDER = "older spec, kept by version_policy"
SAME = "same spec, kept by version_policy"


@dataclass
class Result:
    """What was found out about one served model."""

    model: str
    variant: str | None = None
    spec: Path | None = None
    version: str | None = None  # the version checked (the newest)
    versions: list[str] = field(default_factory=list)
    served_sha256: str | None = None
    current_sha256: str | None = None
    samples: int = 0
    outputs: list[OutputCheck] = field(default_factory=list)  # fp32
    report: Report | None = None  # variants
    problems: list[str] = field(default_factory=list)  # failures other than the answers
    notes: list[str] = field(default_factory=list)
    older: list[dict[str, str | None]] = field(default_factory=list)

    def failures(self) -> list[str]:
        found = list(self.problems)
        found += [
            f"output '{c.output}' over tolerance: max abs err {c.max_abs:.3g}, "
            f"max rel err {c.max_rel:.3g}"
            for c in self.outputs
            if not c.ok
        ]
        if self.report is not None and not self.report.ok:
            found.append("over budget: " + "; ".join(self.report.failures))
        return found

    @property
    def ok(self) -> bool:
        return not self.failures()

    @property
    def checked(self) -> bool:
        return bool(self.outputs) or self.report is not None


def verify_url(
    url: str | None,
    names: Sequence[str],
    repository: Path,
    samples: int,
    seed: int,
    input_file: Path | None,
    atol: float | None,
    rtol: float | None,
    tls: tuple[Path | None, Path | None, Path | None, Path | None],
    as_json: bool,
) -> None:
    """Check a running server; exit 1 on any failure, 2 when it cannot be asked at all."""
    from onnxforge.builder import verify as checks
    from onnxforge.cli.connect import connection
    from onnxforge.client import (
        DeadlineExceeded,
        InferenceClient,
        InferenceServerError,
        Unavailable,
    )

    if url is None:
        raise click.UsageError("--tls-ca, --tls-cert, --tls-key and --token-file need --url")
    address = with_port(url)
    reach = connection(address, *tls)
    try:
        client = InferenceClient(**vars(reach))
    except OSError as error:
        raise click.UsageError(f"cannot read a TLS file: {error}") from None
    tolerance = (
        checks.DEFAULT_ATOL if atol is None else atol,
        checks.DEFAULT_RTOL if rtol is None else rtol,
    )
    with client:
        try:
            index = client.repository_index(timeout=TIMEOUT)
        except (Unavailable, DeadlineExceeded) as error:
            raise click.ClickException(
                f"cannot reach the server at {address}: {error.message}"
            ) from None
        except InferenceServerError as error:
            raise click.ClickException(f"{address}: {error}") from None
        states: dict[str, str] = {}  # model -> its state, with the reason when there is one
        for entry in index:
            reason = f" ({entry.reason})" if entry.reason else ""
            states.setdefault(entry.name, entry.state + reason)
        checker = _Checker(client, repository, samples, seed, input_file, tolerance)
        plan = _plan(list(names), states, checker)
        results = []
        with progress("verify", len(plan)) as step:
            for name, named in plan:
                step(name)
                results.append(checker.check(name, named, states.get(name)))
    if as_json:
        click.echo(json.dumps([_as_json(result) for result in results], indent=2))
    else:
        _print(results, address)
    for result in results:
        if not result.ok:
            click.echo(f"onnxforge: {result.model}: {'; '.join(result.failures())}", err=True)
    if not all(result.ok for result in results):
        raise SystemExit(EXIT_FAILED)


def _plan(names: list[str], states: dict[str, str], checker: _Checker) -> list[tuple[str, bool]]:
    """(model, named) pairs: the names given, else everything served and what its spec lists."""
    if names:
        return [(name, True) for name in dict.fromkeys(names)]
    plan = dict.fromkeys(states, False)
    for name in list(states):
        found = checker.spec_for(name)
        if found is not None:
            plan.update(dict.fromkeys(checker.listed(found[0]), False))
    return list(plan.items())


class _Checker:
    """Specs and rows, loaded once per spec; one ``check`` per served model."""

    def __init__(
        self,
        client: InferenceClient,
        repository: Path,
        samples: int,
        seed: int,
        input_file: Path | None,
        tolerance: tuple[float, float],
    ) -> None:
        self.client = client
        self.repository = repository
        self.samples = samples
        self.seed = seed
        self.input_file = input_file
        self.tolerance = tolerance
        self._specs: dict[Path, Spec] = {}
        self._rows: dict[Path, np.ndarray] = {}

    def spec_for(self, name: str) -> tuple[Path, str] | None:
        """The local spec file of a served model name and the variant the name means."""
        from onnxforge.builder.schema import VARIANTS

        candidates = [(name, "fp32")] + [
            (name.removesuffix(f"-{variant}"), variant)
            for variant in VARIANTS[1:]
            if name.endswith(f"-{variant}")
        ]
        for base, variant in candidates:
            for pattern in SPEC_PATTERNS:
                path = self.repository / base / pattern.split("/")[-1]
                if path.is_file():
                    return path, variant
        return None

    def load(self, path: Path) -> Spec:
        from onnxforge.builder.spec import load_spec

        if path not in self._specs:
            self._specs[path] = load_spec(path)
        return self._specs[path]

    def listed(self, path: Path) -> list[str]:
        from onnxforge.builder.repository import model_name

        spec = self.load(path)
        return [model_name(spec.name, variant) for variant in spec.document.variants]

    def rows(self, path: Path, spec: Spec) -> np.ndarray:
        from onnxforge.builder.samples import load_inputs, sample_inputs

        if path not in self._rows:
            rows = sample_inputs(spec, self.samples, self.seed)
            if self.input_file is not None:
                rows = np.concatenate([rows, load_inputs(self.input_file, spec)])
            self._rows[path] = rows
        return self._rows[path]

    def check(self, name: str, named: bool, state: str | None) -> Result:
        from onnxforge.builder.repository import model_name
        from onnxforge.client import InferenceServerError

        result = Result(name)
        ready = state is not None and state.startswith("READY")
        unready = "not served" if state is None else f"not ready: {state}"
        found = self.spec_for(name)
        if found is None:
            (result.problems if named else result.notes).append(
                ("" if ready else unready + "; ") + f"no spec in {self.repository}: not checked"
            )
            return result
        path, variant = found
        spec = self.load(path)
        result.spec, result.variant, result.current_sha256 = path, variant, spec.sha256
        if model_name(spec.name, variant) != name:
            result.problems.append(f"{path} builds '{model_name(spec.name, variant)}' instead")
            return result
        if name not in self.listed(path):
            result.notes.append(f"{path} does not list variant {variant}")
        if not ready:
            result.problems.append(unready)
            return result
        try:
            self._versions(result)  # a wrong hash fails; the answers are compared anyway
            self._answers(result, spec, self.rows(path, spec))
        except InferenceServerError as error:
            result.problems.append(str(error))
        return result

    def _versions(self, result: Result) -> None:
        """The newest version and its spec hash; every older version's hash as a note."""
        listing = self.client.model_info(result.model, timeout=TIMEOUT)
        result.versions = sorted(listing.versions, key=_version_order)
        hashes: dict[str, str | None] = {}
        for version in result.versions or [""]:
            info = self.client.model_info(result.model, version, TIMEOUT)
            hashes[version] = info.spec_sha256
            served_variant = info.variant
            if served_variant not in (None, result.variant):
                result.problems.append(
                    f"version {version or '(newest)'} is variant {served_variant}, "
                    f"not {result.variant}"
                )
        result.version = (result.versions or [""])[-1]
        result.served_sha256 = hashes[result.version]
        shown = result.version or "(newest)"
        if result.served_sha256 is None:
            result.problems.append(f"version {shown} reports no spec hash ({SPEC_HEADER})")
        elif result.served_sha256 != result.current_sha256:
            result.problems.append(
                f"spec hash {result.served_sha256[:12]} of version {shown} is not the current "
                f"spec's {str(result.current_sha256)[:12]} ({result.spec}): rebuild and reload"
            )
        result.older = [
            {
                "version": version,
                "spec_sha256": hashes[version],
                "note": SAME if hashes[version] == result.current_sha256 else OLDER,
            }
            for version in result.versions[:-1]
        ]

    def _answers(self, result: Result, spec: Spec, rows: np.ndarray) -> None:
        """Send ``rows`` to the pinned version and compare the answers with the reference."""
        from onnxforge.builder.verify import assess_variant, check_outputs

        limit = spec.document.serving.max_batch_size
        size = min(ROWS_PER_REQUEST, limit) if limit > 0 else ROWS_PER_REQUEST
        parts = [
            self.client.infer(
                result.model,
                {spec.input_name: rows[start : start + size]},
                version=result.version or "",
                timeout=TIMEOUT,
            )
            for start in range(0, len(rows), size)
        ]
        missing = [out for out in spec.output_names if out not in parts[0]]
        if missing:
            result.problems.append(f"the served model has no output {', '.join(missing)}")
            return
        got = {out: np.concatenate([part[out] for part in parts]) for out in spec.output_names}
        result.samples = len(rows)
        if result.variant == "fp32":
            result.outputs = check_outputs(spec, got, rows, *self.tolerance)
        else:
            result.report = assess_variant(spec, str(result.variant), got, rows)


def _version_order(version: str) -> tuple[int, int, str]:
    return (0, int(version), "") if version.isdigit() else (1, 0, version)


def _as_json(result: Result) -> dict[str, Any]:
    return {
        "model": result.model,
        "variant": result.variant,
        "version": result.version,
        "versions": result.versions,
        "spec": None if result.spec is None else str(result.spec),
        "spec_sha256": {"served": result.served_sha256, "current": result.current_sha256},
        "samples": result.samples,
        "checked": result.checked,
        "ok": result.ok,
        "failures": result.failures(),
        "notes": result.notes,
        "outputs": [vars(check) for check in result.outputs] if result.outputs else None,
        "accuracy": result.report.as_dict() if result.report else None,
        "older_versions": result.older,
    }


def _spec_cell(result: Result) -> str:
    if result.served_sha256 is None:
        return "-"
    if result.served_sha256 == result.current_sha256:
        return "current"
    return f"[red]{result.served_sha256[:12]}[/red]"


def _print(results: list[Result], address: str) -> None:
    out = console()
    first = ("model", "version", "spec")
    fp32 = Table(
        *first, "output", "max abs err", "max rel err", "argmax agreement", "result",
        title=f"fp32 models at {address} vs the NumPy reference (float32 precision)",
    )  # fmt: skip
    variants = Table(
        *first, "max abs err", "mean abs err", "cosine", "argmax agr.", "result",
        title=f"variants at {address} vs the fp32 NumPy reference (budget on the output)",
    )  # fmt: skip
    for result in results:
        for check in result.outputs:
            agreement = "-" if check.argmax_agreement is None else f"{check.argmax_agreement:.4f}"
            fp32.add_row(
                result.model,
                str(result.version),
                _spec_cell(result),
                check.output,
                f"{check.max_abs:.3g}",
                f"{check.max_rel:.3g}",
                agreement,
                "ok" if check.ok else "[red]OVER TOLERANCE[/red]",
            )
        if result.report is not None:
            main = result.report.outputs[result.report.checked_output]
            agreement = "-" if main.argmax_agreement is None else f"{main.argmax_agreement:.4f}"
            variants.add_row(
                result.model,
                str(result.version),
                _spec_cell(result),
                f"{main.max_abs:.3g}",
                f"{main.mean_abs:.3g}",
                f"{main.cosine:.5f}",
                agreement,
                "ok" if result.report.ok else "[red]OVER BUDGET[/red]",
            )
    for table in (fp32, variants):
        if table.row_count:
            out.print(table)
    for result in results:
        model = f"[bold]{escape(result.model)}[/bold]"
        if not result.ok:
            out.print(f"{model}: [red]FAIL[/red]: {escape('; '.join(result.failures()))}")
        for note in result.notes:
            out.print(f"{model}: {escape(note)}")
        for older in result.older:
            sha = str(older["spec_sha256"] or "no spec hash")[:12]
            out.print(f"{model}: version {older['version']} ({sha}): {older['note']}")
