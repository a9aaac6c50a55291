"""``onnxforge inspect``: the layers, sizes and recorded accuracy of a spec or an ONNX file.

Tables for a terminal, ``--json`` for scripts, ``--graph FILE.svg|FILE.png`` for a picture
(drawn with matplotlib, the ``bench`` extra). The numbers come from ``builder.summary``.
"""

from __future__ import annotations

import io
import json
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from onnxforge.cli.common import EXIT_USAGE, console, json_option, repository_option

if TYPE_CHECKING:
    from rich.console import Console

    from onnxforge.builder.summary import Row, Summary, Tensor

GRAPH_FORMATS = (".svg", ".png")
TIMES = "\u00d7"  # the multiplication sign: shapes read batch-by-64
MAX_BOXES = 120  # a picture of more rows ends with a "... N more" box
HIGHER_IS_BETTER = ("cosine", "argmax_agreement")
FIGURE_ORDER = ("cosine", "max_abs", "mean_abs", "argmax_agreement")


class MissingExtra(click.ClickException):
    """An optional dependency is not installed: exit 2 like any other usage error."""

    exit_code = EXIT_USAGE


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
    from onnxforge.builder.summary import SPEC_SUFFIXES
    from onnxforge.cli.edge import resolve_model

    path = Path(model)
    if path.suffix.lower() in SPEC_SUFFIXES:
        return path
    return resolve_model(model, repository)


# ------------------------------------------------------------------ tables


def _shape(tensor: Tensor) -> str:
    if tensor.shape is None:
        return "?"
    text = TIMES.join("?" if dim is None else str(dim) for dim in tensor.shape) or "scalar"
    return text if tensor.dtype in ("float32", None) else f"{text} {tensor.dtype}"


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
        table.add_row(escape(tensor.name), "input", escape(_shape(tensor)), style="green")
    for row in summary.rows:
        output = escape(_shape(row.output))
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
    outputs = ", ".join(f"{tensor.name} ({_shape(tensor)})" for tensor in summary.outputs)
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


# ------------------------------------------------------------------ the picture


@dataclass(frozen=True)
class _Box:
    title: str
    lines: tuple[str, ...]
    color: str
    branches: tuple[tuple[str, str], ...] = ()  # exposed outputs (name, shape), right


_COLORS = {
    "input": "#d8f0d8",
    "output": "#fff1c9",
    "dense": "#d6e6f7",
    "norm": "#e7dcf5",
    "activation": "#fde0cc",
    "other": "#ececec",
}
_WRAP = 46  # characters per line inside a box


def _color(row: Row) -> str:
    kind = row.kind
    if kind == "dense" or any(op in kind for op in ("MatMul", "Gemm", "Conv")):
        return _COLORS["dense"]
    normalizes = row.constants > row.quantization_constants and not row.parameters
    if kind in ("normalize", "batchnorm", "layernorm") or "Normalization" in kind or normalizes:
        return _COLORS["norm"]
    if kind == "activation" or (row.activation and not row.parameters):
        return _COLORS["activation"]
    return _COLORS["other"]


def _picture_shape(tensor: Tensor, spec: bool) -> str:
    """Shapes with their batch dimension: a spec's shapes leave it out."""
    if spec and tensor.shape is not None:
        return _shape(replace(tensor, shape=("batch", *tensor.shape)))
    return _shape(tensor)


def _boxes(summary: Summary) -> list[_Box]:
    spec = summary.source == "spec"
    boxes = [
        _Box(f"input {tensor.name}", (_picture_shape(tensor, spec),), _COLORS["input"])
        for tensor in summary.inputs
    ]
    main = summary.outputs[0].name if summary.outputs else None
    shapes = {tensor.name: _picture_shape(tensor, spec) for tensor in summary.outputs}
    rows = list(summary.rows)
    shown = rows[:MAX_BOXES]
    for index, row in enumerate(shown):
        if spec:  # unnamed layers are named by their position: the type says more
            title = row.kind if row.name == str(index) else f"{row.name} · {row.kind}"
            lines = []
        else:
            title = row.name
            lines = textwrap.wrap(row.kind, _WRAP)
        described = _picture_shape(row.output, spec)
        if row.activation:
            described += f" · {row.activation}"
        lines.append(described)
        numbers = []
        if row.parameters:
            numbers.append(f"{row.parameters:,} params")
        if row.multiply_adds:
            numbers.append(f"{row.multiply_adds:,} mult-adds")
        if numbers:
            lines.append(" · ".join(numbers))
        branches = tuple((name, shapes.get(name, "")) for name in row.outputs if name != main)
        boxes.append(_Box(title, tuple(lines), _color(row), branches))
    if len(rows) > len(shown):
        boxes.append(_Box(f"… {len(rows) - len(shown):,} more", (), _COLORS["other"]))
    boxes += [
        _Box(f"output {tensor.name}", (shapes[tensor.name],), _COLORS["output"])
        for tensor in summary.outputs
        if tensor.name == main
    ]
    return boxes


def draw(summary: Summary, path: Path) -> None:
    """Write the network as a top-to-bottom chain of boxes; the suffix picks SVG or PNG."""
    from onnxforge.builder.errors import ArtifactError
    from onnxforge.builder.repository import write_file

    data = render(summary, path.suffix.lower().lstrip("."))
    try:
        write_file(path, data)
    except OSError as error:
        raise ArtifactError(
            f"{path}: cannot write the picture: {error.strerror or error}"
        ) from None


def render(summary: Summary, fmt: str) -> bytes:
    """The picture as ``fmt`` ("svg" or "png") bytes."""
    try:
        import matplotlib
        from matplotlib.figure import Figure
        from matplotlib.patches import FancyBboxPatch
    except ImportError:
        raise MissingExtra(
            "--graph needs matplotlib: pip install -e '.[bench]' (or pip install matplotlib)"
        ) from None

    boxes = _boxes(summary)
    line, pad, gap = 0.19, 0.12, 0.34  # inches
    width, branch_width, margin = 3.9, 2.0, 0.3
    branching = any(box.branches for box in boxes)
    fig_width = margin * 2 + width + (0.55 + branch_width if branching else 0)
    heights = [pad * 2 + line * (1 + len(box.lines)) for box in boxes]
    header = 0.55
    fig_height = header + margin + sum(heights) + gap * (len(boxes) - 1)

    with matplotlib.rc_context(
        {"svg.hashsalt": "onnxforge", "svg.fonttype": "none", "font.family": "DejaVu Sans"}
    ):
        fig = Figure(figsize=(fig_width, fig_height))
        ax = fig.add_axes((0, 0, 1, 1))
        ax.set_xlim(0, fig_width)
        ax.set_ylim(0, fig_height)
        ax.axis("off")
        totals = summary.totals
        ax.text(
            margin,
            fig_height - 0.22,
            summary.name,
            fontsize=12,
            fontweight="bold",
            va="center",
        )
        ax.text(
            margin,
            fig_height - 0.42,
            " · ".join(
                [
                    f"{totals['parameters']:,} parameters",
                    f"{totals['multiply_adds_per_row']:,} mult-adds per row",
                    f"opset {summary.opset}",
                    *([summary.variant] if summary.variant else []),
                ]
            ),
            fontsize=8,
            color="#555555",
            va="center",
        )
        top = fig_height - header
        edge = "#4a5a6a"
        for index, (box, height) in enumerate(zip(boxes, heights, strict=True)):
            bottom = top - height
            ax.add_patch(
                FancyBboxPatch(
                    (margin, bottom),
                    width,
                    height,
                    boxstyle="round,pad=0,rounding_size=0.08",
                    facecolor=box.color,
                    edgecolor=edge,
                    linewidth=0.8,
                )
            )
            centre = margin + width / 2
            y = top - pad - line / 2
            ax.text(centre, y, box.title, ha="center", va="center", fontsize=9, fontweight="bold")
            for text in box.lines:
                y -= line
                ax.text(centre, y, text, ha="center", va="center", fontsize=8, color="#333333")
            for offset, name in enumerate(box.branches):
                _branch(
                    ax,
                    FancyBboxPatch,
                    (margin + width, top - height / 2),
                    name,
                    offset,
                    branch_width,
                    edge,
                )
            if index + 1 < len(boxes):
                ax.annotate(
                    "",
                    xy=(centre, bottom - gap),
                    xytext=(centre, bottom),
                    arrowprops={
                        "arrowstyle": "-|>",
                        "color": edge,
                        "lw": 0.9,
                        "shrinkA": 0,
                        "shrinkB": 0,
                    },
                )
            top = bottom - gap
        buffer = io.BytesIO()
        metadata = {"Date": None} if fmt == "svg" else {}
        fig.savefig(buffer, format=fmt, dpi=150, metadata=metadata)
    return buffer.getvalue()


def _branch(
    ax: Any,
    patch: Any,
    anchor: tuple[float, float],
    output: tuple[str, str],
    offset: int,
    width: float,
    edge: str,
) -> None:
    """An exposed output: a box to the right of its layer, with an arrow to it."""
    x, y = anchor
    height = 0.5
    y -= offset * (height + 0.1)
    left = x + 0.55
    ax.add_patch(
        patch(
            (left, y - height / 2),
            width,
            height,
            boxstyle="round,pad=0,rounding_size=0.08",
            facecolor=_COLORS["output"],
            edgecolor=edge,
            linewidth=0.8,
        )
    )
    name, shape = output
    centre = left + width / 2
    ax.text(
        centre, y + 0.09, f"output {name}", ha="center", va="center", fontsize=9, fontweight="bold"
    )
    ax.text(centre, y - 0.1, shape, ha="center", va="center", fontsize=8, color="#222222")
    ax.annotate(
        "",
        xy=(left, y),
        xytext=(x, anchor[1]),
        arrowprops={"arrowstyle": "-|>", "color": edge, "lw": 0.9, "shrinkA": 0, "shrinkB": 0},
    )
