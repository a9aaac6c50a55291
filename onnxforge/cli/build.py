"""``onnxforge build``: specs into the repository, variants measured and refused by budget."""

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

if TYPE_CHECKING:
    pass


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
