"""Tables (rich) and JSON for measurements.

``table()`` builds a rich table whose first column is left-aligned and the others right-
aligned (numbers); ``markdown_table()`` renders one as a Markdown pipe table, the form the
benchmark scripts print and their README quotes. ``write_json()`` writes a report the way
every benchmark does: indented, with a final newline, its folder made if missing.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table


def table(
    columns: Sequence[str],
    rows: Iterable[Sequence[str]],
    title: str | None = None,
    markdown: bool = False,
) -> Table:
    """A table of ``columns`` holding ``rows`` (cells already formatted as text)."""
    shown = Table(title=title, box=box.MARKDOWN if markdown else box.HEAVY_HEAD)
    for number, column in enumerate(columns):
        shown.add_column(column, justify="left" if number == 0 else "right", no_wrap=markdown)
    for row in rows:
        if len(row) != len(columns):
            raise ValueError(f"a row of {len(row)} cells in a table of {len(columns)} columns")
        shown.add_row(*row)
    return shown


def markdown_table(columns: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """``| a | b |`` lines, a ``|---|`` line under the header; never wrapped."""
    console = Console(width=100_000, color_system=None, highlight=False)
    with console.capture() as captured:
        console.print(table(columns, rows, markdown=True))
    lines = [line.rstrip() for line in captured.get().splitlines()]
    return "\n".join(line for line in lines if line)


def print_table(columns: Sequence[str], rows: Iterable[Sequence[str]]) -> None:
    print(markdown_table(columns, rows))


def number(value: float | None, digits: int = 0, thousands: bool = True) -> str:
    """``value`` with ``digits`` decimals (and thousands separators); "-" for None or NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:{',' if thousands else ''}.{digits}f}"


def dumps(report: Any) -> str:
    return json.dumps(report, indent=2) + "\n"


def write_json(path: Path, report: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dumps(report))
