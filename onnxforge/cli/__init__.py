"""The ``onnxforge`` command line.

Every failure a user can cause (a bad spec, file or flag) ends with one line on stderr and
exit code 2; a check that finds a model over tolerance or over budget exits 1.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from typing import Any

import click

from onnxforge._version import __version__
from onnxforge.builder.errors import OnnxforgeError
from onnxforge.cli.build import build
from onnxforge.cli.common import EXIT_USAGE, OUTPUT
from onnxforge.cli.edge import export_edge
from onnxforge.cli.inspect import inspect
from onnxforge.cli.quantize import quantize
from onnxforge.cli.remote import bench, infer
from onnxforge.cli.serve import serve
from onnxforge.cli.tune import tune
from onnxforge.cli.verify import verify

QUIET_HELP = "Print only errors (and --json output)."
VERBOSE_HELP = "Also log what is being done."


def _set_output(quiet: bool, verbose: bool) -> None:
    OUTPUT.update(quiet=OUTPUT["quiet"] or quiet, verbose=OUTPUT["verbose"] or verbose)
    if verbose:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")


def _command_flag(context: click.Context, param: click.Parameter, value: bool) -> None:
    # After the command (``build -q``) the flag adds to what the group's flags set.
    if value:
        _set_output(param.name == "quiet", param.name == "verbose")


def _command_output_options() -> list[click.Option]:
    flag: dict[str, Any] = {"is_flag": True, "expose_value": False, "callback": _command_flag}
    return [
        click.Option(["-q", "--quiet"], help=QUIET_HELP, **flag),
        click.Option(["-v", "--verbose"], help=VERBOSE_HELP, **flag),
    ]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="onnxforge")
@click.option("-q", "--quiet", is_flag=True, help=QUIET_HELP)
@click.option("-v", "--verbose", is_flag=True, help=VERBOSE_HELP)
def cli(quiet: bool, verbose: bool) -> None:
    """Build, verify, quantize and serve feed-forward networks as ONNX models.

    -q/--quiet and -v/--verbose go before or after the command.

    Shell completion: eval "$(_ONNXFORGE_COMPLETE=bash_source onnxforge)" (or zsh_source,
    fish_source).
    """
    # Runs before the command's own flags are read: start every invocation afresh.
    OUTPUT.update(quiet=False, verbose=False)
    _set_output(quiet, verbose)


for command in (build, verify, quantize, export_edge, inspect, serve, infer, bench, tune):
    command.params.extend(_command_output_options())
    cli.add_command(command)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point: one line on stderr and exit 2 for anything the user got wrong."""
    try:
        code = cli.main(args=argv, prog_name="onnxforge", standalone_mode=False)
    except click.exceptions.Exit as done:
        code = done.exit_code
    except click.ClickException as error:
        _fail(error.format_message())
    except click.exceptions.Abort:
        _fail("interrupted")
    except OnnxforgeError as error:
        _fail(str(error))
    sys.exit(code or 0)


def _fail(message: str) -> None:
    print(f"onnxforge: error: {' '.join(message.split())}", file=sys.stderr)
    sys.exit(EXIT_USAGE)
