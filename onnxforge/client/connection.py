"""Where and how the client connects, and how a failed gRPC call becomes a typed error."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from onnxforge.client.errors import InferenceServerError, error_for

__all__ = ["Connection"]


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
    if credentials is None:
        return module.insecure_channel(connection.url, options=connection.options())
    return module.secure_channel(connection.url, credentials, options=connection.options())


def status_error(error: grpc.RpcError) -> InferenceServerError:
    """The typed error for a failed call (its status code and details, nothing of gRPC's)."""
    code = error.code() if callable(getattr(error, "code", None)) else None
    details = error.details() if callable(getattr(error, "details", None)) else None
    name = code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"
    return error_for(name, details or str(error))


def header_dict(metadata: Iterable[tuple[str, Any]] | None) -> dict[str, str]:
    """Response headers as a dict (a repeated key keeps its first value)."""
    headers: dict[str, str] = {}
    for key, value in metadata or ():
        headers.setdefault(key, value.decode() if isinstance(value, bytes) else str(value))
    return headers
