"""The ``onnxforge`` command line.

Every failure a user can cause (a bad spec, file or flag) ends with one line on stderr and
exit code 2; a verification that finds a model over tolerance exits 1.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console
from rich.table import Table

from builder.errors import OnnxforgeError
from onnxforge import __version__

if TYPE_CHECKING:
    from builder.spec import Spec
    from builder.verify import ModelCheck

SPEC_PATTERNS = ("*/spec.yaml", "*/spec.yml", "*/spec.json")
EXIT_USAGE = 2
EXIT_FAILED = 1


def _console() -> Console:
    # Wide enough that tables do not wrap when piped to a file or another program.
    return Console(width=None if sys.stdout.isatty() else 120, highlight=False)


def _find_specs(specs: Sequence[Path], repository: Path) -> list[Path]:
    if specs:
        return list(specs)
    found = sorted(path for pattern in SPEC_PATTERNS for path in repository.glob(pattern))
    if not found:
        raise click.UsageError(
            f"no spec given and none found in {repository}/ (looked for <name>/spec.yaml)"
        )
    return found


def _load_all(paths: Sequence[Path]) -> list[Spec]:
    from builder.spec import load_spec

    specs = [load_spec(path) for path in paths]
    seen: dict[str, Path] = {}
    for spec, path in zip(specs, paths, strict=True):
        if spec.name in seen:
            raise click.UsageError(
                f"{path}: name: '{spec.name}' is also the name of the model in {seen[spec.name]}"
            )
        seen[spec.name] = path
    return specs


def _parse_variants(text: str | None) -> list[str] | None:
    if text is None:
        return None
    from builder.schema import VARIANTS

    variants = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [variant for variant in variants if variant not in VARIANTS]
    if unknown or not variants:
        raise click.BadParameter(
            f"unknown variant(s) {', '.join(unknown) or '(none given)'}; "
            f"choose from {', '.join(VARIANTS)}",
            param_hint="--variants",
        )
    return variants


repository_option = click.option(
    "-r",
    "--repository",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("models"),
    show_default=True,
    help="Model repository folder.",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
specs_argument = click.argument("specs", nargs=-1, type=click.Path(path_type=Path, dir_okay=False))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="onnxforge")
def cli() -> None:
    """Build, verify and serve feed-forward networks as ONNX models."""


@cli.command()
@specs_argument
@repository_option
@click.option("--variants", help="Comma-separated variants to build (default: the spec's list).")
@json_option
def build(specs: tuple[Path, ...], repository: Path, variants: str | None, as_json: bool) -> None:
    """Build SPEC files (default: every <name>/spec.yaml in the repository) into the repository."""
    from builder.repository import artifacts, write

    chosen = _parse_variants(variants)
    loaded = _load_all(_find_specs(specs, repository))
    # Build everything in memory before writing anything: a bad spec leaves no trace.
    built = [artifact for spec in loaded for artifact in artifacts(spec, chosen)]
    results = write(repository, built)
    rows: list[dict[str, Any]] = [
        {
            "model": result.artifact.name,
            "variant": result.artifact.variant,
            "status": "written" if result.changed else "unchanged",
            "parameters": sum(
                p.size for layer in result.artifact.spec.layers for p in layer.params.values()
            ),
            "bytes": len(result.artifact.model),
            "path": str(result.path),
        }
        for result in results
    ]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table = Table(
        "model",
        "variant",
        "status",
        "parameters",
        "bytes",
        "path",
        title=f"onnxforge build -> {repository}/",
    )
    for row in rows:
        table.add_row(
            row["model"],
            row["variant"],
            row["status"],
            f"{row['parameters']:,}",
            f"{row['bytes']:,}",
            row["path"],
        )
    _console().print(table)


@cli.command()
@specs_argument
@repository_option
@click.option(
    "--samples",
    type=click.IntRange(min=1),
    default=256,
    show_default=True,
    help="Seeded random rows drawn from the spec's input distribution.",
)
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option(
    "--input",
    "input_file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Also check on these rows (.npy, shape (N, *input shape)).",
)
@click.option(
    "--atol", type=click.FloatRange(min=0), default=None, help="Absolute tolerance (default 1e-5)."
)
@click.option(
    "--rtol", type=click.FloatRange(min=0), default=None, help="Relative tolerance (default 1e-4)."
)
@json_option
def verify(
    specs: tuple[Path, ...],
    repository: Path,
    samples: int,
    seed: int,
    input_file: Path | None,
    atol: float | None,
    rtol: float | None,
    as_json: bool,
) -> None:
    """Run every built model in ONNX Runtime and compare it with the NumPy reference."""
    import numpy as np

    from builder import verify as checks

    loaded = _load_all(_find_specs(specs, repository))
    results = []
    for spec in loaded:
        inputs = checks.sample_inputs(spec, samples, seed)
        if input_file is not None:
            inputs = np.concatenate([inputs, checks.load_inputs(input_file, spec)])
        results.append(
            checks.verify_model(
                spec,
                repository,
                "fp32",
                inputs,
                checks.DEFAULT_ATOL if atol is None else atol,
                checks.DEFAULT_RTOL if rtol is None else rtol,
            )
        )
    if as_json:
        click.echo(json.dumps([_check_json(result) for result in results], indent=2))
    else:
        _print_checks(results)
    if not all(result.ok for result in results):
        raise SystemExit(EXIT_FAILED)


def _check_json(result: ModelCheck) -> dict[str, Any]:
    return {
        "model": result.model,
        "variant": result.variant,
        "path": str(result.path),
        "samples": result.samples,
        "ok": result.ok,
        "problem": result.problem,
        "outputs": [vars(check) for check in result.outputs],
    }


def _print_checks(results: list[ModelCheck]) -> None:
    console = _console()
    for result in results:
        title = f"{result.model} ({result.variant}): {result.samples} samples vs NumPy reference"
        if result.problem:
            console.print(f"[bold]{result.model}[/bold] ({result.variant}): FAIL: {result.problem}")
            continue
        table = Table(
            "output", "max abs err", "max rel err", "argmax agreement", "result", title=title
        )
        for check in result.outputs:
            agreement = "-" if check.argmax_agreement is None else f"{check.argmax_agreement:.4f}"
            table.add_row(
                check.output,
                f"{check.max_abs:.3g}",
                f"{check.max_rel:.3g}",
                agreement,
                "ok" if check.ok else "[red]OVER TOLERANCE[/red]",
            )
        console.print(table)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point: one line on stderr and exit 2 for anything the user got wrong."""
    try:
        code = cli.main(args=argv, prog_name="onnxforge", standalone_mode=False)
    except click.exceptions.Exit as done:
        code = done.exit_code
    except click.ClickException as error:
        _fail(error.format_message())
    except click.exceptions.Abort:
        _fail("interrupted")
    except OnnxforgeError as error:
        _fail(str(error))
    sys.exit(code or 0)


def _fail(message: str) -> None:
    print(f"onnxforge: error: {' '.join(message.split())}", file=sys.stderr)
    sys.exit(EXIT_USAGE)
