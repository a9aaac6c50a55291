"""Where and how the client connects, and how a failed gRPC call becomes a typed error.

An address without a port means Triton's and onnxforge's gRPC port, 8001 (gRPC itself
would take 443). A failed call's error says what to do when the cause is on the caller's
side: no server at the address, a missing token, TLS on one end only.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from onnxforge.client.errors import InferenceServerError, error_for

__all__ = ["DEFAULT_PORT", "Connection", "address"]

DEFAULT_PORT = 8001  # the gRPC port of Triton and of onnxforge serve


def address(url: str) -> str:
    """``url`` with the default port when it names none (``localhost`` -> ``localhost:8001``).

    IPv6 hosts are bracketed (``::1`` -> ``[::1]:8001``); a target with a scheme
    (``dns:///host:port``, ``unix:...``) is gRPC's to read and stays as it is.
    """
    if "://" in url or url.startswith("unix:"):
        return url
    if url.startswith("["):
        return url if "]:" in url else f"{url}:{DEFAULT_PORT}"
    if url.count(":") > 1:  # a bare IPv6 address
        return f"[{url}]:{DEFAULT_PORT}"
    return url if ":" in url else f"{url}:{DEFAULT_PORT}"


@dataclass(frozen=True)
class Connection:
    """Where and how to connect: address, optional TLS files and bearer token."""

    url: str = "127.0.0.1:8001"
    tls_ca: Path | None = None  # trust this CA (enables TLS)
    tls_cert: Path | None = None  # client certificate for mutual TLS
    tls_key: Path | None = None
    token: str | None = None  # sent as "authorization: Bearer <token>"
    max_message_bytes: int = 64 * 1024 * 1024

    def options(self) -> list[tuple[str, int]]:
        return [
            ("grpc.max_receive_message_length", self.max_message_bytes),
            ("grpc.max_send_message_length", self.max_message_bytes),
        ]

    def credentials(self) -> grpc.ChannelCredentials | None:
        if self.tls_ca is None and self.tls_cert is None:
            return None
        return grpc.ssl_channel_credentials(
            _read(self.tls_ca), _read(self.tls_key), _read(self.tls_cert)
        )

    def metadata(self) -> list[tuple[str, str]]:
        return [("authorization", f"Bearer {self.token}")] if self.token else []


def _read(path: Path | None) -> bytes | None:
    return path.read_bytes() if path else None


def open_channel(connection: Connection, aio: bool) -> Any:
    """A blocking (``aio=False``) or asyncio channel to ``connection.url``."""
    module = grpc.aio if aio else grpc
    credentials = connection.credentials()
    target = address(connection.url)
    if credentials is None:
        return module.insecure_channel(target, options=connection.options())
    return module.secure_channel(target, credentials, options=connection.options())


# What gRPC's own UNAVAILABLE says when no connection was made (the server's says otherwise).
_NOT_CONNECTED = (
    "failed to connect",
    "connection refused",
    "dns resolution failed",
    "connections to all backends failing",
    "socket closed",
    "handshake failed",
    "ssl_error",
)


def status_error(
    error: grpc.RpcError, connection: Connection | None = None
) -> InferenceServerError:
    """The typed error for a failed call (its status code and details, nothing of gRPC's),
    with what to do when ``connection`` shows the cause is on this side."""
    code = error.code() if callable(getattr(error, "code", None)) else None
    details = error.details() if callable(getattr(error, "details", None)) else None
    name = code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"
    message = details or str(error)
    if connection is not None:
        message = _with_advice(name, message, connection)
    return error_for(name, message)


def _with_advice(code: str, message: str, connection: Connection) -> str:
    target = address(connection.url)
    if code == "UNAVAILABLE" and any(part in message.lower() for part in _NOT_CONNECTED):
        secure = connection.tls_ca is not None or connection.tls_cert is not None
        tls = (
            "; does it serve TLS (--tls-cert)?" if secure else "; if it serves TLS, pass tls_ca=..."
        )
        return f"cannot reach {target}: is `onnxforge serve` running on {target}{tls} ({message})"
    if code == "UNAUTHENTICATED" and connection.token is None:
        return f"{message} (this client sends no token: pass token=...)"
    return message


def header_dict(metadata: Iterable[tuple[str, Any]] | None) -> dict[str, str]:
    """Response headers as a dict (a repeated key keeps its first value)."""
    headers: dict[str, str] = {}
    for key, value in metadata or ():
        headers.setdefault(key, value.decode() if isinstance(value, bytes) else str(value))
    return headers
