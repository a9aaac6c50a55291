"""The ``--ray`` options of ``onnxforge serve``; imports neither Ray nor the server."""

from __future__ import annotations

import importlib.util
import socket
from dataclasses import dataclass
from typing import Any

import click

LOCAL = "local"  # --ray without an address: Ray on this machine (or RAY_ADDRESS)

#: The line ``serve --ray`` prints once every replica serves; group 1 is the port.
SERVING = r"ray: serving \d+ model\(s\) .* at [^ ]+:(\d+)"


@dataclass(frozen=True)
class RayOptions:
    """Where and how many: what ``serve --ray`` adds to the server's own settings."""

    address: str = LOCAL  # "local", "auto", "HOST:PORT" or "ray://HOST:PORT"
    replicas: int | None = None  # None: one per live node
    cpus: float = 1.0  # Ray CPUs each replica reserves (and its ONNX Runtime threads)
    namespace: str = "onnxforge"  # replicas are named actors here: one serve per namespace
    max_replicas: int | None = None  # above ``replicas``: autoscale between them
    target_ongoing: float = 2.0  # requests in flight per replica the autoscaler aims at
    target_cpu: float = 0.8  # ... and share of each replica's CPUs
    upscale_delay: float = 5.0  # seconds of more load before replicas are added
    downscale_delay: float = 60.0  # seconds of less load before one is drained


def ray_options(command: Any) -> Any:
    """``--ray [ADDRESS]``, ``--replicas``, ``--replica-cpus``, ``--ray-namespace``."""
    for option in reversed(
        [
            click.option(
                "--ray",
                "ray_address",
                is_flag=False,
                flag_value=LOCAL,
                default=None,
                metavar="[ADDRESS]",
                help="Serve on a Ray cluster: 'auto', HOST:PORT or ray://HOST:PORT; alone, Ray "
                "on this machine (or RAY_ADDRESS). Needs pip install 'onnxforge[ray]'.",
            ),
            click.option(
                "--replicas",
                type=click.IntRange(min=1),
                default=None,
                help="With --ray: servers in all (default: one per node); those on one node "
                "share its port.",
            ),
            click.option(
                "--replica-cpus",
                type=click.FloatRange(min=0.0, min_open=True),
                default=1.0,
                show_default=True,
                help="With --ray: Ray CPUs each replica reserves (and, unless --threads, its "
                "ONNX Runtime threads).",
            ),
            click.option(
                "--max-replicas",
                type=click.IntRange(min=1),
                default=None,
                help="With --ray: scale between --replicas and this many by the requests in "
                "flight (Ray Serve's rule: ceil(in flight / --target-ongoing)).",
            ),
            click.option(
                "--target-ongoing",
                type=click.FloatRange(min=0.0, min_open=True),
                default=2.0,
                show_default=True,
                help="With --max-replicas: requests in flight per replica aimed at.",
            ),
            click.option(
                "--target-cpu",
                type=click.FloatRange(min=0.0, min_open=True),
                default=0.8,
                show_default=True,
                help="With --max-replicas: share of each replica's --replica-cpus aimed at "
                "(the replicas wanted are the larger of the two rules').",
            ),
            click.option(
                "--scale-delays",
                type=ScaleDelays(),
                default="5,60",
                show_default=True,
                help="With --max-replicas: seconds the load must call for more replicas before "
                "they start, and for fewer before one is drained (UP,DOWN).",
            ),
            click.option(
                "--ray-namespace",
                default="onnxforge",
                show_default=True,
                help="With --ray: the Ray namespace of the replicas (one serve per namespace).",
            ),
        ]
    ):
        command = option(command)
    return command


class ScaleDelays(click.ParamType):  # type: ignore[type-arg]  # generic in newer click only
    """``UP,DOWN``: two numbers of seconds, 0 or more."""

    name = "UP,DOWN"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> tuple[float, float]:
        if isinstance(value, tuple):
            return value
        try:
            up, down = (float(part) for part in str(value).split(","))
        except ValueError:
            up = down = -1.0
        if up < 0 or down < 0:
            self.fail(f"expected two numbers of seconds, UP,DOWN (5,60), got {value!r}", param, ctx)
        return up, down


def ray_settings(
    address: str | None,
    replicas: int | None,
    cpus: float,
    namespace: str,
    workers: int,
    *,
    max_replicas: int | None = None,
    target_ongoing: float = 2.0,
    target_cpu: float = 0.8,
    scale_delays: tuple[float, float] = (5.0, 60.0),
) -> RayOptions | None:
    """The options as one value (None without --ray); refuses flags that do not combine."""
    if address is None:
        if max_replicas is not None:
            raise click.UsageError("--max-replicas scales replicas on a Ray cluster: add --ray")
        return None
    if workers > 1:
        raise click.UsageError("--workers does not combine with --ray: use --replicas")
    if max_replicas is not None and max_replicas < (replicas or 1):
        raise click.BadParameter(
            f"{max_replicas} is fewer than --replicas {replicas or 1}",
            param_hint="--max-replicas",
        )
    if importlib.util.find_spec("ray") is None:
        raise click.UsageError("--ray needs Ray: pip install 'onnxforge[ray]'")
    why = unreachable(address)
    if why is not None:  # Ray itself would retry for minutes before saying so
        raise click.BadParameter(
            f"cannot reach a Ray cluster at {address}: {why}", param_hint="--ray"
        )
    return RayOptions(
        address=address,
        replicas=replicas,
        cpus=cpus,
        namespace=namespace,
        max_replicas=max_replicas,
        target_ongoing=target_ongoing,
        target_cpu=target_cpu,
        upscale_delay=scale_delays[0],
        downscale_delay=scale_delays[1],
    )


def unreachable(address: str) -> str | None:
    """Why nothing answers at a ``HOST:PORT`` address (None: something does, or another form)."""
    if address in (LOCAL, "auto") or "://" in address:
        return None
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except ValueError:
        return "expected HOST:PORT, 'auto' or ray://HOST:PORT"
    except OSError as error:
        return error.strerror or str(error)
    return None
