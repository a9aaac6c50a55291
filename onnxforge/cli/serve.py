"""``onnxforge serve``: the options of the server and their translation into its settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from onnxforge.cluster.options import ray_options, ray_settings


class WorkerCount(click.ParamType):  # type: ignore[type-arg]  # generic in newer click only
    """A positive number of workers, or ``auto``: one per core this process may use."""

    name = "N|auto"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        if str(value).strip().lower() == "auto":
            from onnxforge.cpus import usable_cpus

            return usable_cpus()
        try:
            count = int(value)
        except ValueError:
            count = 0
        if count < 1:
            self.fail(f"expected a positive number or 'auto', got {value!r}", param, ctx)
        return count


class GrpcThreads(click.ParamType):  # type: ignore[type-arg]  # generic in newer click only
    """Threads for ModelInfer, 0 for grpc.aio, or ``auto`` (None): chosen from the models."""

    name = "N|auto"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> int | None:
        if value is None or isinstance(value, int):
            return value
        if str(value).strip().lower() == "auto":
            return None
        try:
            count = int(value)
        except ValueError:
            count = -1
        if count < 0:
            self.fail(f"expected a number (0 or more) or 'auto', got {value!r}", param, ctx)
        return count


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
    "--http-port",
    type=click.IntRange(0, 65535),
    default=8000,
    show_default=True,
    help="KServe v2 HTTP/REST (Triton's port; same models, tokens, TLS and limits as "
    "gRPC); 0 picks a free port, as for --port. --no-http turns it off.",
)
@click.option("--no-http", is_flag=True, help="Serve gRPC only, no HTTP/REST.")
@click.option(
    "--threads",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="ONNX Runtime intra-op threads per session (0: one per physical core this process "
    "may use, within its cgroup's CPU quota; with several workers, shared out among them).",
)
@click.option(
    "--spinning/--no-spinning",
    default=False,
    show_default=True,
    help="Idle ONNX Runtime intra-op threads spin for work, or sleep: spinning threads take "
    "the cores the event loop and the batcher need.",
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
    type=WorkerCount(),
    default="1",
    show_default=True,
    help="Server processes sharing the port, each with its own sessions; 'auto': one per "
    "core this process may use (affinity and cgroup quota counted).",
)
@click.option("--no-batching", is_flag=True, help="Run every request on its own.")
@click.option(
    "--inline-us",
    type=click.IntRange(min=0),
    default=200,
    show_default=True,
    help="A lone request to a batching model measured to run in at most this many "
    "microseconds runs on the event loop's thread, not the model's (0: never).",
)
@click.option(
    "--grpc-threads",
    type=GrpcThreads(),
    default="0",
    show_default=True,
    help="0: gRPC on the event loop (grpc.aio). N: ModelInfer on a pool of N threads, one "
    "running at a time (streams and other calls stay on the loop); lower latency for one "
    "lone client of a quick model, fewer requests answered under load. 'auto': threads when "
    "every model loaded at start-up is quick (a one-row run within --inline-us).",
)
@click.option(
    "--pin-loop/--no-pin-loop",
    default=True,
    show_default=True,
    help="Keep the event loop's thread on one core (the one of this process's the fewest "
    "threads are pinned to; with workers, one each), every other thread free: requests are "
    "answered sooner.",
)
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
@ray_options
def serve(
    repository: Path,
    host: str,
    port: int,
    metrics_port: int,
    no_metrics: bool,
    http_port: int,
    no_http: bool,
    threads: int,
    spinning: bool | None,
    no_build: bool,
    max_queue: int,
    workers: int,
    no_batching: bool,
    inline_us: int,
    grpc_threads: int | None,
    pin_loop: bool,
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
    ray_address: str | None,
    replicas: int | None,
    replica_cpus: float,
    ray_namespace: str,
    max_replicas: int | None,
    target_ongoing: float,
    target_cpu: float,
    scale_delays: tuple[float, float],
) -> None:
    """Serve every model in REPOSITORY over gRPC and HTTP/REST (KServe v2 protocol).

    Missing or stale models are built from their spec first. SIGTERM or SIGINT stops
    accepting requests, finishes those in flight, and exits 0.
    """
    from onnxforge.server import logs
    from onnxforge.server import loop as event_loop
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
    on_ray = ray_settings(
        ray_address,
        replicas,
        replica_cpus,
        ray_namespace,
        workers,
        max_replicas=max_replicas,
        target_ongoing=target_ongoing,
        target_cpu=target_cpu,
        scale_delays=scale_delays,
    )
    log_level = _quiet_level(log_level)
    logs.configure(log_level, log_format)
    settings = Settings(
        repository=repository,
        host=host,
        port=port,
        # A Ray replica sizes its own from --replica-cpus (onnxforge.cluster.deployment).
        threads=threads if on_ray is not None else _threads_per_worker(threads, workers),
        spinning=spinning,
        build_missing=not no_build,
        max_queue=max_queue,
        metrics_port=None if no_metrics else metrics_port,
        http_port=None if no_http else http_port,
        watch_seconds=watch_interval if watch else None,
        security=security,
        max_message_bytes=max_message_bytes,
        max_rows=max_rows,
        max_streams=max_streams,
        max_model_bytes=max_model_bytes,
        batching=not no_batching,
        inline_us=inline_us,
        grpc_threads=grpc_threads,
        # Ray places its replicas (several may share a node): their loops stay free. Workers
        # get theirs from the parent (run_workers), all chosen at once.
        loop_cpu=_loop_cpu(pin_loop and on_ray is None and workers <= 1),
    )
    try:
        if on_ray is not None:
            from onnxforge.cluster import serve_on_ray

            raise SystemExit(serve_on_ray(settings, on_ray, log_level, log_format))
        if workers > 1:
            from onnxforge.server.workers import run_workers

            raise SystemExit(
                run_workers(settings, workers, log_level, log_format, pin_loops=pin_loop)
            )
        event_loop.run(run(settings))
    except OSError as error:
        raise click.ClickException(f"cannot serve on {host}:{port}: {error}") from None


def _quiet_level(log_level: str) -> str:
    """``onnxforge -q serve`` (or ``serve -q``): warnings and errors only, unless --log-level."""
    from click.core import ParameterSource

    from onnxforge.cli.common import OUTPUT

    given = click.get_current_context().get_parameter_source("log_level")
    if OUTPUT["quiet"] and given is ParameterSource.DEFAULT:
        return "warning"
    return log_level


def _threads_per_worker(threads: int, workers: int) -> int:
    """``--threads 0``: ONNX Runtime's own choice would ignore a cgroup's CPU quota, and
    several workers would each take every core; so the cores are counted here."""
    if threads:
        return threads
    from onnxforge.cpus import intra_op_threads

    return intra_op_threads(workers)


def _loop_cpu(pin: bool) -> int | None:
    """The CPU this process's event loop is pinned to, or None."""
    if not pin:
        return None
    from onnxforge.server.affinity import loop_cpus

    cpus = loop_cpus(1)
    return cpus[0] if cpus else None
