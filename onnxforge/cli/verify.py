"""``onnxforge verify``: built files, or a running server (``--url``), held to the reference."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.table import Table

from onnxforge.cli.common import (
    EXIT_FAILED,
    OUTPUT,
    console,
    find_specs,
    json_option,
    load_all,
    progress,
    repository_option,
    specs_argument,
)
from onnxforge.cli.connect import connection_options

if TYPE_CHECKING:
    from onnxforge.builder.accuracy import Report
    from onnxforge.builder.spec import Spec
    from onnxforge.builder.verify import ModelCheck, VariantCheck


@click.command()
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
    "--atol",
    type=click.FloatRange(min=0),
    default=None,
    help="Absolute tolerance for fp32 files (default 1e-5).",
)
@click.option(
    "--rtol",
    type=click.FloatRange(min=0),
    default=None,
    help="Relative tolerance for fp32 files (default 1e-4).",
)
@json_option
@click.option(
    "--url",
    help="Check a running server at HOST[:PORT] (default port 8001) instead of the files; "
    "SPECS are then served model names (default: every model it serves).",
)
@connection_options
def verify(
    specs: tuple[Path, ...],
    repository: Path,
    samples: int,
    seed: int,
    input_file: Path | None,
    atol: float | None,
    rtol: float | None,
    as_json: bool,
    url: str | None,
    tls_ca: Path | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    token_file: Path | None,
) -> None:
    """Run every built model and variant in ONNX Runtime against the NumPy reference.

    fp32 files must match to float32 precision; variants must stay inside their budget.
    With --url, a running server's answers are checked the same way, and the spec hash of
    each model's newest served version must be the current spec's.
    """
    tls = (tls_ca, tls_cert, tls_key, token_file)
    if url is not None or any(tls):
        from onnxforge.cli.verify_url import verify_url

        names = [str(name) for name in specs]
        verify_url(url, names, repository, samples, seed, input_file, atol, rtol, tls, as_json)
        return
    fp32_checks: list[ModelCheck] = []
    variant_checks: list[VariantCheck] = []
    loaded = load_all(find_specs(specs, repository))
    with progress("verify", len(loaded)) as step:
        for spec in loaded:
            step(spec.name)
            _verify_one(
                spec, repository, samples, seed, input_file, atol, rtol, fp32_checks, variant_checks
            )
    if as_json:
        click.echo(
            json.dumps(
                [*map(_check_json, fp32_checks), *map(_variant_json, variant_checks)], indent=2
            )
        )
    else:
        _print_checks(fp32_checks)
        if variant_checks:
            _print_variants(variant_checks)
    if not (all(c.ok for c in fp32_checks) and all(c.ok for c in variant_checks)):
        raise SystemExit(EXIT_FAILED)


def _verify_one(
    spec: Spec,
    repository: Path,
    samples: int,
    seed: int,
    input_file: Path | None,
    atol: float | None,
    rtol: float | None,
    fp32_checks: list[ModelCheck],
    variant_checks: list[VariantCheck],
) -> None:
    """Check one spec's fp32 file and every variant it lists; append the results."""
    import numpy as np

    from onnxforge.builder import verify as checks
    from onnxforge.builder.repository import calibration_file, validation_file
    from onnxforge.builder.variants import Calibration

    inputs = checks.sample_inputs(spec, samples, seed)
    given = None if input_file is None else checks.load_inputs(input_file, spec)
    if given is not None:
        inputs = np.concatenate([inputs, given])
    # Variants are held to their budget on the user's data when there is any, as build
    # measured them (the spec's kept-back calibration rows and validation file, --input).
    variant_rows = [] if given is None else [given]
    files = calibration_file(spec, None), validation_file(spec, None)
    if any(file is not None for file in files):
        variant_rows.insert(0, Calibration.for_spec(spec, *files).held_out)
    for_variants = np.concatenate(variant_rows) if variant_rows else inputs
    fp32_checks.append(
        checks.verify_model(
            spec,
            repository,
            "fp32",
            inputs,
            checks.DEFAULT_ATOL if atol is None else atol,
            checks.DEFAULT_RTOL if rtol is None else rtol,
        )
    )
    variant_checks += [
        checks.verify_variant(spec, repository, variant, for_variants)
        for variant in spec.document.variants
        if variant != "fp32"
    ]


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


def _variant_json(result: VariantCheck) -> dict[str, Any]:
    report: Report | None = result.report
    return {
        "model": result.model,
        "variant": result.variant,
        "path": str(result.path),
        "ok": result.ok,
        "problem": result.problem,
        "accuracy": report.as_dict() if report else None,
    }


def _failure(line: str) -> None:
    """A failed check's line, on stderr with --quiet (which hides the tables, not failures)."""
    if OUTPUT["quiet"]:
        click.echo(f"onnxforge: {line}", err=True)


def _print_checks(results: list[ModelCheck]) -> None:
    out = console()
    for result in results:
        title = f"{result.model} ({result.variant}): {result.samples} samples vs NumPy reference"
        if result.problem:
            out.print(f"[bold]{result.model}[/bold] ({result.variant}): FAIL: {result.problem}")
            _failure(f"{result.model} ({result.variant}): FAIL: {result.problem}")
            continue
        for check in result.outputs:
            if not check.ok:
                _failure(
                    f"{result.model} ({result.variant}): output '{check.output}' over tolerance "
                    f"(max abs err {check.max_abs:.3g}, max rel err {check.max_rel:.3g})"
                )
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
        out.print(table)


def _print_variants(results: list[VariantCheck]) -> None:
    out = console()
    table = Table(
        "model",
        "variant",
        "max abs err",
        "mean abs err",
        "cosine",
        "argmax agr.",
        "result",
        title="variants vs the fp32 NumPy reference (budget on the output)",
    )
    problems = []  # one line each under the table: long reasons do not fit a cell
    for result in results:
        if result.report is None:
            table.add_row(result.model, result.variant, "-", "-", "-", "-", "[red]FAIL[/red]")
            problems.append(f"{result.model}: {result.problem}")
            continue
        main = result.report.outputs[result.report.checked_output]
        agreement = "-" if main.argmax_agreement is None else f"{main.argmax_agreement:.4f}"
        if not result.ok:
            problems.append(f"{result.model}: over budget: {'; '.join(result.report.failures)}")
        table.add_row(
            result.model,
            result.variant,
            f"{main.max_abs:.3g}",
            f"{main.mean_abs:.3g}",
            f"{main.cosine:.5f}",
            agreement,
            "ok" if result.ok else "[red]OVER BUDGET[/red]",
        )
    out.print(table)
    for line in problems:
        out.print(line, soft_wrap=True, markup=False, highlight=False)
        _failure(line)
