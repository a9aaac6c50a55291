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
                "--ray-namespace",
                default="onnxforge",
                show_default=True,
                help="With --ray: the Ray namespace of the replicas (one serve per namespace).",
            ),
        ]
    ):
        command = option(command)
    return command


def ray_settings(
    address: str | None, replicas: int | None, cpus: float, namespace: str, workers: int
) -> RayOptions | None:
    """The options as one value (None without --ray); refuses flags that do not combine."""
    if address is None:
        return None
    if workers > 1:
        raise click.UsageError("--workers does not combine with --ray: use --replicas")
    if importlib.util.find_spec("ray") is None:
        raise click.UsageError("--ray needs Ray: pip install 'onnxforge[ray]'")
    why = unreachable(address)
    if why is not None:  # Ray itself would retry for minutes before saying so
        raise click.BadParameter(
            f"cannot reach a Ray cluster at {address}: {why}", param_hint="--ray"
        )
    return RayOptions(address=address, replicas=replicas, cpus=cpus, namespace=namespace)


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
