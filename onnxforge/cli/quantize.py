"""``onnxforge quantize``: a variant of an ONNX file onnxforge did not build."""

from __future__ import annotations

import json
from pathlib import Path

import click

from onnxforge.builder.layout import QUANTIZED_VARIANTS
from onnxforge.cli.common import EXIT_FAILED, OUTPUT, json_option, quantization_options, say

BUDGET_KEYS = ("max_abs", "mean_abs", "cosine", "argmax_agreement")


def _budget(pairs: tuple[str, ...], variant: str) -> object:
    from onnxforge.builder.accuracy import DEFAULT_BUDGETS
    from onnxforge.builder.schema import Budget

    # argmax agreement only means something for class scores, which a bare file cannot tell.
    fields = DEFAULT_BUDGETS[variant].model_dump(exclude_none=True, exclude={"argmax_agreement"})
    for pair in pairs:
        key, _, value = pair.partition("=")
        if key not in BUDGET_KEYS or not value:
            raise click.BadParameter(
                f"expected KEY=VALUE with KEY one of {', '.join(BUDGET_KEYS)}, got {pair!r}",
                param_hint="--budget",
            )
        try:
            fields[key] = float(value)
        except ValueError:
            raise click.BadParameter(
                f"{key} must be a number, got {value!r}", param_hint="--budget"
            ) from None
    return Budget.model_validate(fields)


@click.command()
@click.argument("model", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--variant", required=True, type=click.Choice(QUANTIZED_VARIANTS))
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="Where to write the variant.",
)
@quantization_options
@click.option(
    "--budget",
    "budget_pairs",
    multiple=True,
    metavar="KEY=VALUE",
    help="Accuracy budget vs the fp32 file: max_abs, mean_abs, cosine, "
    "argmax_agreement (repeatable).",
)
@json_option
def quantize(
    model: Path,
    variant: str,
    output: Path,
    calibration: Path | None,
    validation: Path | None,
    calibration_method: str | None,
    per_channel: bool | None,
    reduce_range: bool | None,
    budget_pairs: tuple[str, ...],
    as_json: bool,
) -> None:
    """Quantize MODEL.onnx; its error is measured against the fp32 file run in ONNX Runtime.

    It is measured on the last 20% of --calibration (the first 80% calibrate int8-static)
    and all of --validation; rows are drawn from a standard normal distribution only for
    what neither gives.
    """
    from onnxforge.builder.onnxfile import read
    from onnxforge.builder.quantize import QuantizeOptions
    from onnxforge.builder.repository import write_file
    from onnxforge.builder.variants import (
        foreign_rows,
        foreign_warning,
        make_foreign_variant,
        refusal_message,
    )

    budget = _budget(budget_pairs, variant)
    fp32 = read(model).model
    options = QuantizeOptions(
        method=calibration_method or "minmax",
        per_channel=bool(per_channel),
        reduce_range=bool(reduce_range),
    )
    rows = foreign_rows(fp32, str(model), calibration, variant, validation)
    warning = foreign_warning(variant, calibration, validation)
    if warning is not None and not OUTPUT["quiet"]:
        click.echo(f"onnxforge: warning: {model}: {warning}", err=True)
    made = make_foreign_variant(fp32, variant, output.stem, rows, options, budget)  # type: ignore[arg-type]
    if as_json:
        click.echo(json.dumps(made.report.as_dict(), indent=2))
    if made.model is None:
        click.echo(f"onnxforge: {refusal_message(made.report, str(model))}", err=True)
        raise SystemExit(EXIT_FAILED)
    write_file(output, made.model.SerializeToString())
    if not as_json:
        main = made.report.outputs[made.report.checked_output]
        say(
            f"{output}: {variant}, {output.stat().st_size:,} bytes; on {made.report.samples} "
            f"held-out rows ({rows.measured.source}) vs the fp32 file: "
            f"max abs err {main.max_abs:.3g}, "
            f"mean abs err {main.mean_abs:.3g}, cosine {main.cosine:.5f}"
            + (
                ""
                if main.argmax_agreement is None
                else f", argmax agreement {main.argmax_agreement:.4f}"
            )
        )
