"""``onnxforge build`` and ``onnxforge verify``."""

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
    parse_variants,
    progress,
    quantization_options,
    repository_option,
    specs_argument,
)
from onnxforge.cli.serve import connection_options

if TYPE_CHECKING:
    from onnxforge.builder.accuracy import Report
    from onnxforge.builder.spec import Spec
    from onnxforge.builder.verify import ModelCheck, VariantCheck


@click.command()
@specs_argument
@repository_option
@click.option("--variants", help="Comma-separated variants to build (default: the spec's list).")
@quantization_options
@click.option(
    "--report",
    "report_file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Also write every variant's measured figures to this JSON file.",
)
@json_option
def build(
    specs: tuple[Path, ...],
    repository: Path,
    variants: str | None,
    calibration: Path | None,
    validation: Path | None,
    calibration_method: str | None,
    per_channel: bool | None,
    reduce_range: bool | None,
    report_file: Path | None,
    as_json: bool,
) -> None:
    """Build SPEC files (default: every <name>/spec.yaml in the repository) into the repository.

    Quantized variants are measured on held-out rows against the NumPy reference and are not
    written when they miss their budget (exit 1). The rows come from your data: the last 20%
    of --calibration and all of --validation; rows drawn from the spec's input.distribution
    only when neither is given.
    """
    from onnxforge.builder.layout import versions
    from onnxforge.builder.repository import (
        artifacts,
        calibration_file,
        quantize_options,
        validation_file,
        write,
    )
    from onnxforge.builder.variants import refusal_message, synthetic_warning

    chosen = parse_variants(variants)
    loaded = load_all(find_specs(specs, repository))
    # Build everything in memory before writing anything: a bad spec or file leaves no trace.
    built, refused, warnings = [], [], []
    with progress("build", len(loaded)) as step:
        for spec in loaded:
            step(spec.name)
            options = quantize_options(
                spec, method=calibration_method, per_channel=per_channel, reduce_range=reduce_range
            )
            made, missed = artifacts(spec, chosen, calibration, options, validation)
            built += made
            refused += [(spec, report) for report in missed]
            warning = synthetic_warning(
                spec,
                spec.document.variants if chosen is None else chosen,
                calibration_file(spec, calibration),
                validation_file(spec, validation),
            )
            warnings += [] if warning is None else [warning]
    if not OUTPUT["quiet"]:
        for warning in warnings:
            click.echo(f"onnxforge: warning: {warning}", err=True)
    results = write(repository, built)
    rows: list[dict[str, Any]] = [
        {
            "model": result.artifact.name,
            "variant": result.artifact.variant,
            "status": "written" if result.changed else "unchanged",
            "version": result.version,
            "new_version": result.new_version,
            "bytes": len(result.artifact.model),
            "path": str(result.path),
            "accuracy": result.artifact.report.as_dict() if result.artifact.report else None,
        }
        for result in results
    ]
    rows += [
        {
            "model": report.model,
            "variant": report.variant,
            "status": "refused",
            "bytes": None,
            "path": None,
            "accuracy": report.as_dict(),
        }
        for _, report in refused
    ]
    if report_file is not None:
        report_file.write_text(json.dumps(rows, indent=2, sort_keys=True) + "\n")
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    else:
        _print_build(rows, repository)
    for spec, report in refused:
        line = refusal_message(report, str(spec.path or spec.name))
        older = versions(repository / report.model)
        if older:  # the server and verify refuse these too; say so where the refusal is read
            line += (
                f"; its version(s) {', '.join(map(str, older))} in {repository / report.model} "
                "are of an older spec and are not served"
            )
        click.echo(f"onnxforge: {line}", err=True)
    if refused:
        raise SystemExit(EXIT_FAILED)


def _print_build(rows: list[dict[str, Any]], repository: Path) -> None:
    table = Table(
        "model",
        "variant",
        "status",
        "bytes",
        "max abs err",
        "cosine",
        "argmax agr.",
        caption=_caption(rows),
        title=f"onnxforge build -> {repository}/<model>/<version>/model.onnx",
    )
    for row in rows:
        figures = _main_figures(row["accuracy"])
        table.add_row(
            str(row["model"]),
            str(row["variant"]),
            _status(row),
            "-" if row["bytes"] is None else f"{row['bytes']:,}",
            *figures,
        )
    console().print(table)


def _status(row: dict[str, Any]) -> str:
    if row["status"] == "refused":
        return "[red]REFUSED[/red]"
    if row["new_version"] and row["status"] == "written":
        return f"new version {row['version']}"
    return f"{row['status']} (version {row['version']})"


def _caption(rows: list[dict[str, Any]]) -> str:
    """What the figures are, and for each spec the rows they were measured on."""
    caption = "errors: the variant vs the fp32 NumPy reference on held-out rows"
    measured: dict[str, str] = {}
    for row in rows:
        accuracy = row["accuracy"]
        if accuracy is None or accuracy.get("rows") is None:
            continue
        base = str(row["model"]).removesuffix(f"-{row['variant']}")
        used = accuracy["rows"]
        measured.setdefault(base, f"{used['count']:,} rows: {used['source']}")
    return "\n".join([caption, *(f"{base}: {text}" for base, text in measured.items())])


def _main_figures(accuracy: dict[str, Any] | None) -> list[str]:
    if accuracy is None:
        return ["-", "-", "-"]
    main = accuracy["outputs"][accuracy["checked_output"]]
    agreement = main["argmax_agreement"]
    return [
        f"{main['max_abs']:.3g}",
        f"{main['cosine']:.5f}",
        "-" if agreement is None else f"{agreement:.4f}",
    ]


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


def _print_checks(results: list[ModelCheck]) -> None:
    out = console()
    for result in results:
        title = f"{result.model} ({result.variant}): {result.samples} samples vs NumPy reference"
        if result.problem:
            out.print(f"[bold]{result.model}[/bold] ({result.variant}): FAIL: {result.problem}")
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
