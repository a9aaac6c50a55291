"""``onnxforge serve``, ``onnxforge infer`` and ``onnxforge bench``."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from onnxforge.cli.common import console, json_option, progress


def security_options(command: Any) -> Any:
    """TLS, mutual TLS and bearer tokens for ``serve``."""
    file = click.Path(path_type=Path, dir_okay=False)
    for option in reversed(
        [
            click.option("--tls-cert", type=file, help="Server certificate (PEM): serve TLS."),
            click.option("--tls-key", type=file, help="Server private key (PEM)."),
            click.option(
                "--tls-client-ca",
                type=file,
                help="Mutual TLS: refuse clients without a certificate this CA signed.",
            ),
            click.option(
                "--auth-token-file",
                type=file,
                help="Tokens, one per line: every RPC but health and ServerLive needs "
                "'authorization: Bearer <token>' (also ONNXFORGE_AUTH_TOKENS).",
            ),
            click.option(
                "--admin-token-file", type=file, help="Tokens for model load/unload only."
            ),
            click.option(
                "--no-model-control",
                is_flag=True,
                help="Refuse RepositoryModelLoad/Unload (PERMISSION_DENIED).",
            ),
        ]
    ):
        command = option(command)
    return command


def limit_options(command: Any) -> Any:
    """Resource limits for ``serve``."""
    for option in reversed(
        [
            click.option(
                "--max-message-bytes",
                type=click.IntRange(min=1024),
                default=64 * 1024 * 1024,
                show_default=True,
                help="Largest request or response (RESOURCE_EXHAUSTED beyond).",
            ),
            click.option(
                "--max-rows",
                type=click.IntRange(min=1),
                default=65536,
                show_default=True,
                help="Rows per request (RESOURCE_EXHAUSTED beyond).",
            ),
            click.option(
                "--max-streams",
                type=click.IntRange(min=1),
                default=256,
                show_default=True,
                help="Concurrent calls per client connection.",
            ),
            click.option(
                "--max-model-bytes",
                type=click.IntRange(min=1),
                default=2**31,
                show_default=True,
                help="Larger model files are not loaded.",
            ),
        ]
    ):
        command = option(command)
    return command


def client_options(command: Any) -> Any:
    """How ``infer`` and ``bench`` reach the server: address, TLS, token."""
    url = click.option(
        "--url", default="127.0.0.1:8001", show_default=True, help="Server address host:port."
    )
    return url(connection_options(command))


def connection_options(command: Any) -> Any:
    """TLS and token options of a client (``--url`` is the command's own)."""
    file = click.Path(path_type=Path, dir_okay=False)
    for option in reversed(
        [
            click.option("--tls-ca", type=file, help="Trust this CA (PEM): connect with TLS."),
            click.option("--tls-cert", type=file, help="Client certificate for mutual TLS."),
            click.option("--tls-key", type=file, help="Client private key for mutual TLS."),
            click.option(
                "--token-file",
                type=file,
                help="A bearer token (first line); or set ONNXFORGE_TOKEN.",
            ),
        ]
    ):
        command = option(command)
    return command


def connection(
    url: str,
    tls_ca: Path | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    token_file: Path | None,
) -> Any:
    import os

    from onnxforge.client import Connection
    from onnxforge.server.security import SecurityError, read_tokens

    token = os.environ.get("ONNXFORGE_TOKEN")
    if token_file is not None:
        try:
            token = read_tokens(token_file)[0]
        except SecurityError as error:
            raise click.UsageError(str(error)) from None
    if (tls_cert is None) != (tls_key is None):
        raise click.UsageError("--tls-cert and --tls-key go together")
    return Connection(url, tls_ca=tls_ca, tls_cert=tls_cert, tls_key=tls_key, token=token)


@click.command()
@click.argument(
    "repository", type=click.Path(path_type=Path, file_okay=False), default=Path("models")
)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(0, 65535), default=8001, show_default=True)
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    default=8002,
    show_default=True,
    help="Prometheus /metrics over HTTP.",
)
@click.option("--no-metrics", is_flag=True, help="Do not serve /metrics.")
@click.option(
    "--threads",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="ONNX Runtime intra-op threads per session (0: its own choice).",
)
@click.option("--no-build", is_flag=True, help="Do not build missing or stale models.")
@click.option(
    "--max-queue",
    type=click.IntRange(min=1),
    default=1024,
    show_default=True,
    help="Requests waiting per model before RESOURCE_EXHAUSTED.",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Server processes sharing the port, each with its own sessions.",
)
@click.option("--no-batching", is_flag=True, help="Run every request on its own.")
@click.option("--watch", is_flag=True, help="Reload models whose files or spec change.")
@click.option(
    "--watch-interval",
    type=click.FloatRange(min=0.1),
    default=1.0,
    show_default=True,
    help="Seconds between looks at the repository.",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
)
@click.option(
    "--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True
)
@security_options
@limit_options
def serve(
    repository: Path,
    host: str,
    port: int,
    metrics_port: int,
    no_metrics: bool,
    threads: int,
    no_build: bool,
    max_queue: int,
    workers: int,
    no_batching: bool,
    watch: bool,
    watch_interval: float,
    log_level: str,
    log_format: str,
    tls_cert: Path | None,
    tls_key: Path | None,
    tls_client_ca: Path | None,
    auth_token_file: Path | None,
    admin_token_file: Path | None,
    no_model_control: bool,
    max_message_bytes: int,
    max_rows: int,
    max_streams: int,
    max_model_bytes: int,
) -> None:
    """Serve every model in REPOSITORY over gRPC (KServe v2 / Open Inference Protocol).

    Missing or stale models are built from their spec first. SIGTERM or SIGINT stops
    accepting requests, finishes those in flight, and exits 0.
    """
    from onnxforge.server import logs
    from onnxforge.server.app import Settings
    from onnxforge.server.app import serve as run
    from onnxforge.server.security import Security, SecurityError

    if not repository.is_dir():
        raise click.BadParameter(f"{repository} is not a folder", param_hint="REPOSITORY")
    try:
        security = Security.from_options(
            auth_token_file,
            admin_token_file,
            not no_model_control,
            tls_cert,
            tls_key,
            tls_client_ca,
        )
    except SecurityError as error:
        raise click.UsageError(str(error)) from None
    logs.configure(log_level, log_format)
    settings = Settings(
        repository=repository,
        host=host,
        port=port,
        threads=threads,
        build_missing=not no_build,
        max_queue=max_queue,
        metrics_port=None if no_metrics else metrics_port,
        watch_seconds=watch_interval if watch else None,
        security=security,
        max_message_bytes=max_message_bytes,
        max_rows=max_rows,
        max_streams=max_streams,
        max_model_bytes=max_model_bytes,
        batching=not no_batching,
    )
    try:
        if workers > 1:
            from onnxforge.server.workers import run_workers

            raise SystemExit(run_workers(settings, workers, log_level, log_format))
        asyncio.run(run(settings))
    except OSError as error:
        raise click.ClickException(f"cannot serve on {host}:{port}: {error}") from None


def _named_arrays(pairs: tuple[str, ...]) -> dict[str, Any]:
    import numpy as np

    arrays = {}
    for pair in pairs:
        name, _, file = pair.partition("=")
        if not name or not file:
            raise click.BadParameter(f"expected NAME=FILE.npy, got {pair!r}", param_hint="--input")
        try:
            arrays[name] = np.load(file, allow_pickle=False)
        except (OSError, ValueError) as error:
            raise click.BadParameter(f"{file}: {error}", param_hint="--input") from None
    return arrays


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
    """Send one inference request and print the outputs."""
    import numpy as np

    from onnxforge.client import InferenceClient, InferenceServerError

    arrays = _named_arrays(inputs)
    reach = connection(url, tls_ca, tls_cert, tls_key, token_file)
    with InferenceClient(**vars(reach)) as client:
        try:
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
    table = Table(
        "output", "dtype", "shape", "values", "argmax (per row)", title=f"{model} @ {url}"
    )
    for name, array in results.items():
        argmax = (
            ", ".join(map(str, array.argmax(axis=-1).tolist()[:16]))
            if array.ndim == 2 and array.shape[1] > 1
            else "-"
        )
        preview = np.array2string(array.ravel()[:6], precision=4, separator=", ")
        table.add_row(name, str(array.dtype), str(list(array.shape)), preview, argmax)
    console().print(table)


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
