"""``onnxforge inspect --graph``: the network as a top-to-bottom chain of boxes, drawn with
matplotlib (the ``bench`` extra) into an SVG or PNG file.

One box per row of the summary (``builder.summary``): its name and type, output shape,
activation, parameters and multiply-adds; exposed outputs branch off to the right.
"""

from __future__ import annotations

import io
import textwrap
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from onnxforge.builder.summary import format_shape
from onnxforge.cli.common import EXIT_USAGE

if TYPE_CHECKING:
    from onnxforge.builder.summary import Row, Summary, Tensor

GRAPH_FORMATS = (".svg", ".png")
MAX_BOXES = 120  # a picture of more rows ends with a "... N more" box


class MissingExtra(click.ClickException):
    """An optional dependency is not installed: exit 2 like any other usage error."""

    exit_code = EXIT_USAGE


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
        return format_shape(replace(tensor, shape=("batch", *tensor.shape)))
    return format_shape(tensor)


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
