"""How a command reaches a running server: ``--url``, TLS and a token."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click


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
