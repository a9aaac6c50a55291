"""How a command reaches a running server: ``--url``, TLS and a token."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

# onnxforge.client.connection.DEFAULT_PORT, not imported here: that imports grpc, which
# every command (--help, --version) would then pay for.
DEFAULT_PORT = 8001


def with_port(url: str) -> str:
    """The address the client connects to: ``host`` -> ``host:8001``, ``::1`` -> ``[::1]:8001``.

    The client's own rule (``onnxforge.client.connection.address``): gRPC itself would take
    a host without a port to mean 443.
    """
    from onnxforge.client.connection import address

    if not url.strip():
        raise click.BadParameter("expected HOST[:PORT]", param_hint="--url")
    return address(url)


def url_callback(_context: click.Context, _param: click.Parameter, url: str | None) -> str | None:
    """``--url`` as the address connected to (so that messages name the real port)."""
    return None if url is None else with_port(url)


def client_options(command: Any) -> Any:
    """How ``infer`` and ``bench`` reach the server: address, TLS, token."""
    url = click.option(
        "--url",
        default=f"127.0.0.1:{DEFAULT_PORT}",
        show_default=True,
        callback=url_callback,
        help=f"Server address HOST[:PORT] (port {DEFAULT_PORT} when none is given).",
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
    return Connection(
        with_port(url), tls_ca=tls_ca, tls_cert=tls_cert, tls_key=tls_key, token=token
    )
