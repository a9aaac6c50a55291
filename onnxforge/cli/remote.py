"""``onnxforge infer`` and ``onnxforge bench``: one request, or load, against a running server."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import click

from onnxforge.cli.common import console, json_option, needs_matplotlib, progress
from onnxforge.cli.connect import client_options, connection


def _named_arrays(pairs: tuple[str, ...]) -> tuple[dict[str, Any], dict[str, str]]:
    """The arrays by input name, and the file each came from (for notes and errors)."""
    import numpy as np

    arrays, files = {}, {}
    for pair in pairs:
        name, _, file = pair.partition("=")
        if not name or not file:
            raise click.BadParameter(f"expected NAME=FILE.npy, got {pair!r}", param_hint="--input")
        try:
            arrays[name] = np.load(file, allow_pickle=False)
        except (OSError, ValueError) as error:
            raise click.BadParameter(f"{file}: {error}", param_hint="--input") from None
        files[name] = file
    return arrays, files


@click.command()
@click.argument("model")
@click.option(
    "--input",
    "inputs",
    multiple=True,
    required=True,
    metavar="NAME=FILE.npy",
    help="An input tensor (repeat for several inputs).",
)
@click.option("--output", "outputs", multiple=True, help="Only these outputs (repeatable).")
@click.option("--version", "model_version", default="", help="Model version (default newest).")
@client_options
@click.option("--timeout", type=float, default=30.0, show_default=True, help="Seconds.")
@click.option(
    "--save",
    type=click.Path(path_type=Path, file_okay=False),
    help="Write each output to DIR/<name>.npy.",
)
@json_option
def infer(
    model: str,
    inputs: tuple[str, ...],
    outputs: tuple[str, ...],
    model_version: str,
    url: str,
    tls_ca: Path | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    token_file: Path | None,
    timeout: float,
    save: Path | None,
    as_json: bool,
) -> None:
    """Send one inference request and print the outputs.

    Rows are fitted to the model first, with a note on stderr: a float file is cast to the
    model's float type (and any type that casts without loss, like uint8 to float32; other
    casts are refused), and a single row (the model's shape without the batch axis) is sent
    as a batch of one.

    The table shows each output's first values (… when there are more) and, for outputs
    that hold class scores, the argmax of each row: 2-D outputs with at least two columns
    named like logits, probabilities, scores or class, or whose rows are probabilities
    summing to 1, or whose argmax agreement the model's accuracy record measured (softmax
    and log_softmax outputs). Other outputs (an embedding) show "-".
    """
    import numpy as np

    from onnxforge.cli.infer_table import fit_inputs, results_table
    from onnxforge.client import InferenceClient, InferenceServerError

    arrays, files = _named_arrays(inputs)
    reach = connection(url, tls_ca, tls_cert, tls_key, token_file)
    with InferenceClient(**vars(reach)) as client:
        try:
            info = client.model_info(model, model_version, timeout=timeout)
            arrays = fit_inputs(arrays, files, info.metadata)
            results = client.infer(model, arrays, outputs, model_version, timeout=timeout)
        except InferenceServerError as error:
            raise click.ClickException(str(error)) from None
        except ValueError as error:  # an array the protocol cannot carry, named by input
            raise click.UsageError(str(error)) from None
    if save is not None:
        save.mkdir(parents=True, exist_ok=True)
        for name, array in results.items():
            np.save(save / f"{name}.npy", array)
    if as_json:
        click.echo(json.dumps({name: array.tolist() for name, array in results.items()}))
        return
    console().print(results_table(results, f"{model} @ {url}", info.accuracy))


def _concurrencies(text: str) -> list[int]:
    try:
        levels = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        levels = []
    if not levels or min(levels) < 1:
        raise click.BadParameter(
            f"expected positive integers like 1,8,32, got {text!r}", param_hint="--concurrency"
        )
    return levels


@click.command()
@click.argument("model")
@click.option(
    "--concurrency",
    default="1,8,32",
    show_default=True,
    help="Comma-separated numbers of concurrent clients.",
)
@click.option(
    "--duration",
    type=click.FloatRange(min=0.1),
    default=5.0,
    show_default=True,
    help="Seconds per concurrency level.",
)
@click.option(
    "--rows", type=click.IntRange(min=1), default=1, show_default=True, help="Rows per request."
)
@client_options
@click.option(
    "--plot",
    "plot_file",
    type=click.Path(path_type=Path, dir_okay=False),
    callback=needs_matplotlib,
    help="Write a PNG of throughput and latency.",
)
@json_option
def bench(
    model: str,
    concurrency: str,
    duration: float,
    rows: int,
    url: str,
    tls_ca: Path | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    token_file: Path | None,
    plot_file: Path | None,
    as_json: bool,
) -> None:
    """Load a running server: throughput and p50/p90/p99 latency per concurrency."""
    from onnxforge.bench import levels_table, plot_levels, run_level
    from onnxforge.client import InferenceServerError

    reach = connection(url, tls_ca, tls_cert, tls_key, token_file)
    levels = []
    counts = _concurrencies(concurrency)
    with progress("bench", len(counts)) as step:
        for clients in counts:
            step(f"{clients} client(s), {duration:g} s")
            try:
                levels.append(asyncio.run(run_level(reach, model, clients, duration, rows)))
            except InferenceServerError as error:
                raise click.ClickException(str(error)) from None
    if plot_file is not None:
        plot_levels(levels, model, str(plot_file))
    if as_json:
        click.echo(json.dumps([level.as_dict() for level in levels], indent=2))
        return
    title = f"onnxforge bench {model} @ {url} ({duration:g} s per level)"
    console().print(levels_table(levels, title))
