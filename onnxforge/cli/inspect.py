"""``onnxforge inspect``: the layers, sizes and recorded accuracy of a spec or an ONNX file.

Tables for a terminal, ``--json`` for scripts, ``--graph FILE.svg|FILE.png`` for a picture
(``graph_picture``). The numbers come from ``builder.summary``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from onnxforge.builder.summary import TIMES, format_shape
from onnxforge.cli.common import console, json_option, repository_option
from onnxforge.cli.graph_picture import GRAPH_FORMATS

if TYPE_CHECKING:
    from rich.console import Console

    from onnxforge.builder.summary import Summary

HIGHER_IS_BETTER = ("cosine", "argmax_agreement")
FIGURE_ORDER = ("cosine", "max_abs", "mean_abs", "argmax_agreement")


def _graph_path(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path | None:
    if value is not None and value.suffix.lower() not in GRAPH_FORMATS:
        raise click.BadParameter(
            f"{value}: the picture's format comes from its suffix: "
            f"{' or '.join(GRAPH_FORMATS)}, got '{value.suffix or '(none)'}'",
            ctx=ctx,
            param=param,
        )
    return value


@click.command("inspect")
@click.argument("model")
@click.option(
    "--graph",
    "graph_file",
    type=click.Path(path_type=Path, dir_okay=False),
    callback=_graph_path,
    help="Draw the network into FILE.svg or FILE.png (needs matplotlib: the bench extra).",
)
@repository_option
@json_option
def inspect(model: str, graph_file: Path | None, repository: Path, as_json: bool) -> None:
    """Show the layers of MODEL: a .onnx file, a model name in the repository, or a spec.

    Per layer: type (or ONNX operators), output shape, parameters, bytes, multiply-adds per
    row and activation; then the totals, opset, IR version, variant, and the accuracy and
    quantization settings the file records. Files not built by onnxforge get one row per node.
    """
    from onnxforge.builder.summary import summarize
    from onnxforge.cli.graph_picture import draw

    summary = summarize(_resolve(model, repository))
    if graph_file is not None:
        draw(summary, graph_file)
    if as_json:
        document = summary.as_dict()
        if graph_file is not None:
            document["graph"] = str(graph_file)
        click.echo(json.dumps(document, indent=2, sort_keys=True))
        return
    out = console()
    print_summary(out, summary)
    if graph_file is not None:
        out.print(f"graph: {graph_file}")


def _resolve(model: str, repository: Path) -> Path:
    """A spec or ONNX path as given; a bare name is a model in the repository."""
    from onnxforge.builder.onnxfile import locate
    from onnxforge.builder.summary import SPEC_SUFFIXES

    path = Path(model)
    if path.suffix.lower() in SPEC_SUFFIXES:
        return path
    return locate(model, repository)


# ------------------------------------------------------------------ tables


def _count(value: int | None) -> str:
    return "?" if value is None else f"{value:,}" if value else "—"


def _bytes(by_dtype: Mapping[str, int]) -> str:
    return "\n".join(f"{size:,} {dtype}" for dtype, size in by_dtype.items()) or "—"


def _figure(value: Any) -> str:
    if value is None:
        return "—"
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def print_summary(out: Console, summary: Summary) -> None:
    """The layer table, the facts and the recorded accuracy. Names from files are shown as
    written (``escape``: a node named ``[b]`` is not rich markup)."""
    from rich.markup import escape
    from rich.table import Table

    spec = summary.source == "spec"
    where = f"{'spec' if spec else 'ONNX file'} {summary.path}"
    out.print(f"[bold]{escape(summary.name)}[/bold]  ({escape(where)})")
    if summary.description:
        out.print(escape(summary.description), style="dim")
    notes = ["mult-adds per row"]
    if spec:
        notes.append("shapes exclude the batch dimension")
    if not summary.grouped:
        notes.append("not built from an onnxforge spec: one row per node")
    caption = "; ".join(notes)
    table = Table(caption=caption, show_footer=True, header_style="bold")
    totals = summary.totals
    names = [row.name for row in summary.rows] + [tensor.name for tensor in summary.inputs]
    table.add_column(
        "layer" if summary.grouped else "node",
        footer="total",
        min_width=min(24, max(map(len, names), default=5)),
    )
    table.add_column("type" if spec else "operators", min_width=10 if spec else 21)
    table.add_column("output", no_wrap=True)
    table.add_column("params", justify="right", footer=f"{totals['parameters']:,}")
    table.add_column("constants", justify="right", footer=_count(totals["constants"]))
    table.add_column(
        "bytes", justify="right", footer=_bytes(totals["bytes_by_dtype"]), no_wrap=True
    )
    macs = f"{totals['multiply_adds_per_row']:,}"
    if not totals["multiply_adds_complete"]:
        macs = f"≥ {macs}"
    table.add_column("mult-adds", justify="right", footer=macs)
    table.add_column("activation")
    for tensor in summary.inputs:
        table.add_row(escape(tensor.name), "input", escape(format_shape(tensor)), style="green")
    for row in summary.rows:
        output = escape(format_shape(row.output))
        if row.outputs:
            output += "".join(f"\n[dim]→ {escape(name)}[/dim]" for name in row.outputs)
        table.add_row(
            escape(row.name),
            escape(row.kind),
            output,
            _count(row.parameters),
            _count(row.constants),
            _bytes(row.bytes_by_dtype),
            _count(row.multiply_adds),
            escape(row.activation or ""),
        )
    out.print(table)
    _print_facts(out, summary)
    if isinstance(summary.accuracy, dict):
        _print_accuracy(out, summary.accuracy)


def _print_facts(out: Console, summary: Summary) -> None:
    from rich.table import Table

    totals = summary.totals
    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="bold")
    facts.add_column()
    by_dtype = totals["parameter_bytes_by_dtype"]
    dtypes = ", ".join(f"{size:,} {dtype}" for dtype, size in by_dtype.items())
    if len(by_dtype) == 1:
        dtypes = next(iter(by_dtype))
    _add_fact(
        facts,
        "parameters",
        f"{totals['parameters']:,} in {totals['parameter_bytes']:,} bytes ({dtypes})",
    )
    if totals["constants"]:
        spec = summary.source == "spec"
        names = [f"{r.name} ({r.kind})" if spec else r.name for r in summary.rows if r.constants]
        holders = ", ".join(names[:6]) + (f" and {len(names) - 6:,} more" if len(names) > 6 else "")
        text = f"{totals['constants']:,} fixed values in {holders}"
        if totals["quantization_constants"]:
            text += f" ({totals['quantization_constants']:,} quantization scales and zero points)"
        _add_fact(facts, "constants", text)
    _add_fact(facts, "bytes", f"{totals['bytes']:,} in parameters and constants")
    note = "at least " if not totals["multiply_adds_complete"] else ""
    _add_fact(
        facts,
        "multiply-adds",
        f"{note}{totals['multiply_adds_per_row']:,} per row (dense: inputs {TIMES} units; "
        "normalize, batchnorm: 1 per element; layernorm: 3)",
    )
    built = " (fp32, built in memory)" if summary.source == "spec" else ""
    _add_fact(facts, "file", f"{summary.file_bytes:,} bytes{built}")
    opsets = ", ".join(f"{domain} {version}" for domain, version in summary.opset_imports.items())
    _add_fact(facts, "opset", f"{opsets}; IR version {summary.ir_version}")
    if summary.producer:
        _add_fact(facts, "producer", summary.producer)
    if summary.variants:
        _add_fact(facts, "variants", ", ".join(summary.variants))
    elif summary.variant:
        _add_fact(facts, "variant", summary.variant)
    outputs = ", ".join(f"{tensor.name} ({format_shape(tensor)})" for tensor in summary.outputs)
    _add_fact(facts, "outputs", outputs)
    if summary.spec_sha256:
        _add_fact(facts, "spec sha256", summary.spec_sha256)
    if summary.quantization is not None:
        settings = summary.quantization
        if isinstance(settings, dict):
            settings = ", ".join(
                f"{key}={value if isinstance(value, str) else json.dumps(value)}"
                for key, value in settings.items()
            )
        _add_fact(facts, "quantization", str(settings))
    if summary.accuracy is not None and not isinstance(summary.accuracy, dict):
        _add_fact(facts, "accuracy", f"{summary.accuracy} (not a JSON object)")
    out.print(facts)


def _add_fact(facts: Any, key: str, value: str) -> None:
    from rich.text import Text

    facts.add_row(key, Text(value))


def _print_accuracy(out: Console, accuracy: Mapping[str, Any]) -> None:
    from rich.markup import escape
    from rich.table import Table
    from rich.text import Text

    outputs = accuracy.get("outputs")
    if not (
        isinstance(outputs, dict) and outputs and all(isinstance(f, dict) for f in outputs.values())
    ):
        out.print(Text(f"accuracy: {json.dumps(accuracy, sort_keys=True)}"))
        return
    keys = [key for key in FIGURE_ORDER if any(key in f for f in outputs.values())]
    keys += sorted({key for f in outputs.values() for key in f} - set(keys))
    reference = accuracy.get("reference", "the reference")
    samples = accuracy.get("samples")
    caption = f"recorded accuracy vs {reference}"
    if samples:
        caption += f" on {samples:,} held-out rows"
    rows = accuracy.get("rows")
    if isinstance(rows, dict) and isinstance(rows.get("source"), str):
        caption += f": {rows['source']}"
    table = Table(title=escape(caption), header_style="bold", title_justify="left")
    table.add_column("output")
    for key in keys:
        table.add_column(key, justify="right")
    checked = accuracy.get("checked_output")
    for name, figures in sorted(outputs.items(), key=lambda item: item[0] != checked):
        label = f"{name} (budgeted)" if name == checked else name
        table.add_row(Text(label), *(_figure(figures.get(key)) for key in keys))
    budget = accuracy.get("budget")
    if isinstance(budget, dict) and budget:
        table.add_row(
            "budget",
            *(
                ""
                if key not in budget
                else f"{'≥' if key in HIGHER_IS_BETTER else '≤'} {_figure(budget[key])}"
                for key in keys
            ),
            style="dim",
        )
    out.print(table)
