"""The README's commands table: one unbroken Markdown table naming every command and flag.

Read from the real command line (click's own list of commands and options), so that a
flag added to ``serve`` or any command fails here until the README names it.
"""

from __future__ import annotations

import re

import click
import pytest

from onnxforge.cli import cli
from tests.conftest import REPO_ROOT

README = REPO_ROOT / "README.md"
# Flags every command takes, named once in the table's last row.
EVERYWHERE = {"-h", "--help", "-q", "--quiet", "-v", "--verbose"}
UNESCAPED_PIPE = re.compile(r"(?<!\\)\|")
PARENT = click.Context(cli, **cli.context_settings)  # where -h comes from


def commands_section() -> list[str]:
    text = README.read_text(encoding="utf-8")
    start = text.index("\n## Commands\n")
    end = text.index("\n## ", start + 1)
    return text[start:end].splitlines()


def table_rows() -> list[list[str]]:
    """The cells of each body row of the section's first table (header and rule left out)."""
    lines = commands_section()
    first = next(i for i, line in enumerate(lines) if line.startswith("| command |"))
    block = []
    for line in lines[first:]:
        if not line.startswith("|"):
            break
        block.append(line)
    # Nothing that looks like a row may come after the table ends: that is a broken table.
    stray = [line for line in lines[first + len(block) :] if line.startswith("| `onnxforge")]
    assert stray == [], f"rows outside the table (it breaks before them): {stray}"
    assert re.fullmatch(r"\| -+ \| -+ \|", block[1]), block[1]
    rows = []
    for line in block[2:]:
        cells = UNESCAPED_PIPE.split(line)
        # "| a | b |" splits into "", " a ", " b ", "": two cells, or a pipe is unescaped.
        assert len(cells) == 4 and cells[0] == cells[-1] == "", f"not two cells: {line}"
        rows.append([cell.strip() for cell in cells[1:3]])
    return rows


def usage_of(command: str) -> str:
    """The first cells of every row about ``onnxforge COMMAND``, as one text."""
    pattern = re.compile(rf"`onnxforge {re.escape(command)}(?![\w-])")
    return " ".join(row[0] for row in table_rows() if pattern.match(row[0]))


def flags(command: click.Command) -> set[str]:
    return {
        flag
        for param in command.params
        if isinstance(param, click.Option)
        for flag in (*param.opts, *param.secondary_opts)
    } | set(command.get_help_option_names(click.Context(command, parent=PARENT)))


def named(flag: str, text: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text) is not None


def test_the_table_is_one_table_of_two_columns() -> None:
    rows = table_rows()
    assert len(rows) >= len(cli.commands)
    for usage, what in rows:
        assert usage.startswith("`onnxforge"), usage
        assert what, usage


@pytest.mark.parametrize("name", sorted(cli.commands))
def test_every_command_and_flag_is_in_the_table(name: str) -> None:
    usage = usage_of(name)
    assert usage, f"no row for onnxforge {name}"
    missing = sorted(f for f in flags(cli.commands[name]) - EVERYWHERE if not named(f, usage))
    assert missing == [], f"onnxforge {name}: flags the README's table does not name"


def test_the_flags_every_command_takes_are_in_the_last_row() -> None:
    last = table_rows()[-1][0]
    assert named("--version", last)
    for flag in EVERYWHERE | flags(cli):
        assert named(flag, last), flag
    for name, command in cli.commands.items():  # and every command really takes them
        assert flags(command) >= EVERYWHERE, name
