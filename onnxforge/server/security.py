"""Who may call what: TLS (optionally mutual) and bearer tokens, checked before any handler.

Every RPC except health checks and ServerLive needs ``authorization: Bearer <token>`` when
tokens are configured; tokens are compared in constant time and never logged. Model control
(load/unload) can need a separate admin token, or be switched off altogether.
"""

from __future__ import annotations

import hmac
import os
import secrets
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

TOKENS_ENV = "ONNXFORGE_AUTH_TOKENS"  # comma-separated, instead of (or besides) a file
INTERNAL_TOKEN_ENV = "ONNXFORGE_INTERNAL_TOKEN"
SERVICE = "/inference.GRPCInferenceService/"
OPEN_METHODS = frozenset(
    {
        "/grpc.health.v1.Health/Check",
        "/grpc.health.v1.Health/Watch",
        SERVICE + "ServerLive",
    }
)
CONTROL_METHODS = frozenset({SERVICE + "RepositoryModelLoad", SERVICE + "RepositoryModelUnload"})


class SecurityError(ValueError):
    """A security setting that cannot work (missing file, no tokens in a token file)."""


def read_tokens(path: Path | None, env: str | None = None) -> tuple[str, ...]:
    """Tokens from a file (one per line; blank lines and '#' comments skipped) and ``env``."""
    tokens: list[str] = []
    if path is not None:
        try:
            lines = path.read_text().splitlines()
        except OSError as error:
            raise SecurityError(f"{path}: cannot read the token file: {error.strerror}") from None
        tokens += [line.strip() for line in lines if line.strip() and not line.startswith("#")]
        if not tokens:
            raise SecurityError(f"{path}: holds no tokens")
    if env:
        tokens += [token.strip() for token in env.split(",") if token.strip()]
    return tuple(tokens)


@dataclass(frozen=True)
class Security:
    tokens: tuple[str, ...] = ()  # any of these may infer and read metadata
    admin_tokens: tuple[str, ...] = ()  # load/unload; when empty, ``tokens`` may do it too
    model_control: bool = True
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None  # mutual TLS: clients must show a certificate it signed
    # Lets the workers of one server call each other; made fresh for every start unless
    # ONNXFORGE_INTERNAL_TOKEN sets it (tests use that to talk to one worker as a peer).
    internal_token: str = field(
        default_factory=lambda: os.environ.get(INTERNAL_TOKEN_ENV) or secrets.token_urlsafe(32)
    )

    @classmethod
    def from_options(
        cls,
        token_file: Path | None = None,
        admin_token_file: Path | None = None,
        model_control: bool = True,
        tls_cert: Path | None = None,
        tls_key: Path | None = None,
        tls_client_ca: Path | None = None,
    ) -> Security:
        if (tls_cert is None) != (tls_key is None):
            raise SecurityError("--tls-cert and --tls-key go together")
        if tls_client_ca is not None and tls_cert is None:
            raise SecurityError("--tls-client-ca needs --tls-cert and --tls-key")
        for path in (tls_cert, tls_key, tls_client_ca):
            if path is not None and not path.is_file():
                raise SecurityError(f"{path}: file not found")
        return cls(
            tokens=read_tokens(token_file, os.environ.get(TOKENS_ENV)),
            admin_tokens=read_tokens(admin_token_file),
            model_control=model_control,
            tls_cert=tls_cert,
            tls_key=tls_key,
            tls_client_ca=tls_client_ca,
        )

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    def server_credentials(self) -> grpc.ServerCredentials:
        assert self.tls_cert is not None and self.tls_key is not None
        client_ca = self.tls_client_ca.read_bytes() if self.tls_client_ca else None
        return grpc.ssl_server_credentials(
            [(self.tls_key.read_bytes(), self.tls_cert.read_bytes())],
            root_certificates=client_ca,
            require_client_auth=client_ca is not None,
        )

    def interceptors(self) -> list[grpc.aio.ServerInterceptor]:
        if not self.tokens and not self.admin_tokens and self.model_control:
            return []
        return [AuthInterceptor(self)]


def _matches(offered: str, tokens: Iterable[str]) -> bool:
    """Constant time in the tokens' contents: every token is compared, always."""
    found = False
    for token in tokens:
        found |= hmac.compare_digest(offered.encode(), token.encode())
    return found


def _bearer(metadata: Iterable[tuple[str, Any]] | None) -> str | None:
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
            return value.removeprefix("Bearer ").strip()
    return None


def _refusal(
    handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str
) -> grpc.RpcMethodHandler:
    """A handler of the same shape as ``handler`` that only answers ``code``."""

    async def abort(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(code, message)

    async def abort_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(code, message)
        yield  # pragma: no cover - makes this an async generator, as streaming needs

    make: Callable[..., grpc.RpcMethodHandler]
    if handler.request_streaming and handler.response_streaming:
        make, body = grpc.stream_stream_rpc_method_handler, abort_stream
    elif handler.request_streaming:
        make, body = grpc.stream_unary_rpc_method_handler, abort
    elif handler.response_streaming:
        make, body = grpc.unary_stream_rpc_method_handler, abort_stream
    else:
        make, body = grpc.unary_unary_rpc_method_handler, abort
    return make(
        body,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


class AuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc: no types
    def __init__(self, security: Security) -> None:
        self.security = security

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return handler
        method = details.method
        if method in OPEN_METHODS:
            return handler
        security = self.security
        offered = _bearer(details.invocation_metadata)
        internal = offered is not None and _matches(offered, [security.internal_token])
        if method in CONTROL_METHODS and not security.model_control and not internal:
            return _refusal(
                handler,
                grpc.StatusCode.PERMISSION_DENIED,
                "model control is disabled on this server (--no-model-control)",
            )
        if internal:
            return handler
        if method in CONTROL_METHODS and security.admin_tokens:
            if offered is None or not _matches(offered, security.admin_tokens):
                return _refusal(
                    handler,
                    grpc.StatusCode.UNAUTHENTICATED,
                    "model control needs an admin token: 'authorization: Bearer <admin token>'",
                )
            return handler
        if security.tokens and (offered is None or not _matches(offered, security.tokens)):
            what = "a wrong token" if offered is not None else "no token"
            return _refusal(
                handler,
                grpc.StatusCode.UNAUTHENTICATED,
                f"{what}: send metadata 'authorization: Bearer <token>'",
            )
        return handler
