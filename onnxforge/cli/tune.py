"""``onnxforge tune``: serving settings of one model measured under real load on this machine."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from onnxforge.cli.common import (
    EXIT_FAILED,
    OUTPUT,
    console,
    json_option,
    needs_matplotlib,
    repository_option,
)
from onnxforge.cli.remote import _concurrencies

#: Cores other processes kept busy before the search that make its figures worth a note.
BUSY_CORES = 0.5

if TYPE_CHECKING:
    from rich.table import Table

    from onnxforge.bench.tune_points import Point, Result


@click.command()
@click.argument("model")
@repository_option
@click.option(
    "--rows", type=click.IntRange(min=1), default=1, show_default=True, help="Rows per request."
)
@click.option(
    "--budget",
    type=click.FloatRange(min=0, min_open=True),
    default=120.0,
    show_default=True,
    help="Seconds for the whole search; decides how many settings are measured.",
)
@click.option(
    "--concurrency",
    default="1,32",
    show_default=True,
    help="Comma-separated numbers of concurrent clients, each measured at every setting.",
)
@click.option(
    "--max-points",
    type=click.IntRange(min=1),
    help="Measure at most this many settings (the budget still applies).",
)
@click.option(
    "--write",
    "write",
    is_flag=True,
    help="Write the chosen batching settings into the model's spec (or its config.pbtxt).",
)
@click.option(
    "--plot",
    "plot_file",
    type=click.Path(path_type=Path, dir_okay=False),
    callback=needs_matplotlib,
    help="Write a PNG of rows/s against p99 for every setting.",
)
@json_option
def tune(
    model: str,
    repository: Path,
    rows: int,
    budget: float,
    concurrency: str,
    max_points: int | None,
    write: bool,
    plot_file: Path | None,
    as_json: bool,
) -> None:
    """Measure serving settings of MODEL under closed-loop load and mark the best.

    Server flags first (threads, spinning, workers, gRPC transport: one server per setting, with the
    model's own batching), then batching settings on the best of them (batch size, queue
    delay, instances). The best: the highest rows/s at the highest concurrency among the
    settings whose p99 at the lowest concurrency is at most twice the best p99 there.
    """
    from onnxforge.bench import usable_cpus
    from onnxforge.bench.tune import tune as run
    from onnxforge.bench.tune_points import Plan, TuneError, serve_command
    from onnxforge.client import InferenceServerError

    levels = _concurrencies(concurrency)
    try:
        plan = Plan.make(rows, levels, budget, usable_cpus(), max_points)
        result = run(repository, model, plan, _progress)
    except TuneError as error:
        raise click.UsageError(str(error)) from None
    except (InferenceServerError, ValueError) as error:
        raise click.ClickException(f"{model}: {error}") from None
    except RuntimeError as error:  # no setting answered every request
        print(f"onnxforge: error: {model}: {error}", file=sys.stderr)
        sys.exit(EXIT_FAILED)
    if plot_file is not None:
        plot_points(result, plot_file)
    report = result.as_dict()
    report["serve_command"] = serve_command(repository, result.chosen.flags)
    if not as_json:
        out = console()
        out.print(points_table(result))
        chosen = result.chosen
        out.print(
            f"best: #{chosen.index} ({_serving(chosen)}); objective: "
            f"{report['objective']['text']} (p99 limit {result.p99_limit_ms:.2f} ms); "
            f"{len(result.points)} setting(s) in {result.elapsed_seconds:.0f} s of a "
            f"{plan.budget:g} s budget"
        )
        out.print(f"serve with: {report['serve_command']}")
        if result.busy_cores_before >= BUSY_CORES:
            out.print(
                f"note: {result.busy_cores_before:.1f} core(s) were busy with other processes "
                "when tune started; its figures share the machine with them"
            )
    if write:
        report["written"] = _write(repository, model, result, as_json)
    if as_json:
        click.echo(json.dumps(report, indent=2))


def _write(repository: Path, model: str, result: Result, quiet: bool) -> dict[str, object]:
    from onnxforge.bench.tune_write import serving_values, write_settings

    written = write_settings(repository, model, result.chosen.batching)
    if not quiet:
        where = f"{written.path}" + "".join(f", {path}" for path in written.configs)
        console().print(f"wrote {serving_values(result.chosen.batching)} to {where}")
        if written.comments_lost:
            console().print(f"{written.path}: written anew, its comments are lost")
    return {
        "path": str(written.path),
        "configs": [str(path) for path in written.configs],
        "comments_lost": written.comments_lost,
    }


def _progress(point: Point) -> None:
    if OUTPUT["quiet"] or not sys.stderr.isatty():
        return
    figures = ", ".join(
        f"{level.concurrency} client(s): {level.rows_per_second:,.0f} rows/s, "
        f"p99 {level.p99_ms:.2f} ms"
        for level in point.levels
    )
    print(f"#{point.index} {_serving(point)}: {figures}", file=sys.stderr)


def _spin(spinning: bool | None) -> str:
    return "-" if spinning is None else ("on" if spinning else "off")


def _serving(point: Point) -> str:
    flags, batching = point.flags, point.batching
    batch = (
        f"batch {batching.max_batch_size}/{batching.max_queue_delay_us} us"
        if batching.max_batch_size
        else "no batching"
    )
    spinning = "" if flags.spinning is None else f", spinning {_spin(flags.spinning)}"
    return (
        f"threads {flags.threads or 'auto'}{spinning}, {flags.workers} worker(s), "
        f"gRPC on {_transport(flags.grpc_threads)}, {batch}, {batching.instances} instance(s)"
    )


def _transport(grpc_threads: int) -> str:
    return f"{grpc_threads} threads" if grpc_threads else "the loop"


def points_table(result: Result) -> Table:
    """One row per setting and concurrency; the chosen setting marked with *."""
    from onnxforge.bench.report import number, table

    columns = (
        "#",
        "threads",
        "spin",
        "workers",
        "gRPC",
        "batch",
        "delay us",
        "inst",
        "clients",
        "req/s",
        "rows/s",
        "p50",
        "p99",
        "CPU/req",
        "errors",
    )
    rows = []
    for point in result.points:
        mark = "*" if point is result.chosen else ("" if point.eligible else "!")
        flags, batching = point.flags, point.batching
        for n, level in enumerate(point.levels):
            settings = (
                (
                    f"{point.index}{mark}",
                    str(flags.threads or "auto"),
                    _spin(flags.spinning),
                    str(flags.workers),
                    f"{flags.grpc_threads} thr" if flags.grpc_threads else "loop",
                    str(batching.max_batch_size or "off"),
                    str(batching.max_queue_delay_us) if batching.max_batch_size else "-",
                    str(batching.instances),
                )
                if n == 0
                else ("",) * 8
            )
            errors = sum(count for status, count in level.statuses.items() if status != "OK")
            rows.append(
                (
                    *settings,
                    str(level.concurrency),
                    number(level.throughput_rps),
                    number(level.rows_per_second),
                    number(level.p50_ms, 2),
                    number(level.p99_ms, 2),
                    number(level.server_cpu_ms_per_request, 3),
                    str(errors),
                )
            )
    title = (
        f"tune {result.model}: {result.plan.rows} row(s)/request, {result.plan.seconds:g} s "
        f"per level, {result.plan.cores} core(s); ms: p50, p99, server CPU/req; * best, ! over "
        "the p99 limit"
    )
    return table(columns, rows, title=title)


def plot_points(result: Result, path: Path) -> None:
    """rows/s against p99 at each concurrency, one dot per setting; the chosen one in red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    concurrencies = result.plan.concurrencies
    figure, axes = plt.subplots(1, len(concurrencies), figsize=(5 * len(concurrencies), 4))
    for axis, clients in zip(
        axes if len(concurrencies) > 1 else [axes], concurrencies, strict=True
    ):
        for point in result.points:
            level = point.at(clients)
            color = "red" if point is result.chosen else ("C0" if point.eligible else "grey")
            axis.scatter(level.p99_ms, level.rows_per_second, color=color)
            axis.annotate(str(point.index), (level.p99_ms, level.rows_per_second))
        axis.set(xlabel="p99 ms", ylabel="rows / s", title=f"{clients} client(s)")
    figure.suptitle(f"onnxforge tune {result.model} (red: chosen, grey: over the p99 limit)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
