"""Pieces every ``onnxforge`` command shares: options, spec discovery, output."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from onnxforge.builder.layout import SPEC_FILES, VARIANTS

if TYPE_CHECKING:
    from onnxforge.builder.spec import Spec

EXIT_USAGE = 2
EXIT_FAILED = 1
SPEC_PATTERNS = tuple(f"*/{name}" for name in SPEC_FILES)


# Set by the top-level --quiet / --verbose flags.
OUTPUT = {"quiet": False, "verbose": False}


def console() -> Console:
    # Wide enough that tables do not wrap when piped to a file or another program.
    return Console(
        width=None if sys.stdout.isatty() else 120, highlight=False, quiet=OUTPUT["quiet"]
    )


def say(text: str) -> None:
    """A line of plain output on stdout; nothing with --quiet."""
    if not OUTPUT["quiet"]:
        click.echo(text)


@contextlib.contextmanager
def progress(description: str, total: int) -> Iterator[Callable[[str], None]]:
    """A progress bar on stderr for work of ``total`` steps; silent unless stderr is a terminal.

    Yields ``step(label)``: call it as each step starts.
    """
    err = Console(stderr=True)
    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[label]}"),
        TimeElapsedColumn(),
        console=err,
        transient=True,
        disable=OUTPUT["quiet"] or not err.is_terminal,
    )
    with bar:
        task = bar.add_task(description, total=total, label="")
        started = False

        def step(label: str) -> None:
            nonlocal started
            if started:
                bar.advance(task)
            started = True
            bar.update(task, label=label)

        yield step
        bar.update(task, completed=total)


def find_specs(specs: Sequence[Path], repository: Path) -> list[Path]:
    if specs:
        return list(specs)
    found = sorted(path for pattern in SPEC_PATTERNS for path in repository.glob(pattern))
    if not found:
        raise click.UsageError(
            f"no spec given and none found in {repository}/ (looked for <name>/spec.yaml)"
        )
    return found


def load_all(paths: Sequence[Path]) -> list[Spec]:
    from onnxforge.builder.spec import load_spec

    specs = [load_spec(path) for path in paths]
    seen: dict[str, Path] = {}
    for spec, path in zip(specs, paths, strict=True):
        if spec.name in seen:
            raise click.UsageError(
                f"{path}: name: '{spec.name}' is also the name of the model in {seen[spec.name]}"
            )
        seen[spec.name] = path
    return specs


def parse_variants(text: str | None) -> list[str] | None:
    if text is None:
        return None
    variants = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [variant for variant in variants if variant not in VARIANTS]
    if unknown or not variants:
        raise click.BadParameter(
            f"unknown variant(s) {', '.join(unknown) or '(none given)'}; "
            f"choose from {', '.join(VARIANTS)}",
            param_hint="--variants",
        )
    return variants


def needs_matplotlib(context: click.Context, param: click.Parameter, value: Any) -> Any:
    """Callback of a ``--plot`` option: refuse it before any work when matplotlib is missing."""
    if value is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise click.UsageError(
                f"{param.opts[0]} needs matplotlib: pip install -e '.[bench]'"
                " (or pip install matplotlib)",
                context,
            ) from None
    return value


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


def quantization_options(command: Any) -> Any:
    """The flags that choose calibration data and int8 settings (they override the spec)."""
    for option in reversed(
        [
            click.option(
                "--calibration",
                type=click.Path(path_type=Path, dir_okay=False),
                help="Rows (.npy) of real data: the first 80% calibrate int8-static, the last"
                " 20% are kept back to measure every variant on.",
            ),
            click.option(
                "--validation",
                type=click.Path(path_type=Path, dir_okay=False),
                help="Rows (.npy) of real data to measure every variant on (all of them; never"
                " calibrated on), besides the calibration file's kept-back 20%.",
            ),
            click.option(
                "--calibration-method", type=click.Choice(["minmax", "entropy", "percentile"])
            ),
            click.option(
                "--per-channel/--per-tensor",
                default=None,
                help="One int8 weight scale per output unit, or one per tensor.",
            ),
            click.option(
                "--reduce-range/--full-range",
                default=None,
                help="7-bit weights (for CPUs without VNNI) or the full 8 bits.",
            ),
        ]
    ):
        command = option(command)
    return command
