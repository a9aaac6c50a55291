"""Who may call what: TLS (optionally mutual) and bearer tokens, checked before any handler.

Every call except health checks (gRPC's Health and ServerLive; HTTP's ``/v2/health/live``
and ``/v2/health/ready``, which probes call) needs ``authorization: Bearer <token>`` when
tokens are configured; tokens are compared in constant time and never logged. Model control
(load/unload) can need a separate admin token, or be switched off altogether.

Both transports make the same check, :meth:`Security.authorize`, with the call's
:class:`Access` and the token it offers: gRPC in :class:`AuthInterceptor`, HTTP/REST in
``server.rest.app``. A refusal is a ``ServingError`` (UNAUTHENTICATED or PERMISSION_DENIED),
which each transport answers by its own table. TLS is the same certificate and key on both:
:meth:`Security.server_credentials` for gRPC, :meth:`Security.ssl_context` for HTTP.
"""

from __future__ import annotations

import enum
import hmac
import os
import secrets
import ssl
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from onnxforge.server.errors import PermissionDenied, ServingError, Unauthenticated
from onnxforge.server.service import GRPC_STATUS

TOKENS_ENV = "ONNXFORGE_AUTH_TOKENS"  # comma-separated, instead of (or besides) a file
INTERNAL_TOKEN_ENV = "ONNXFORGE_INTERNAL_TOKEN"
SERVICE = "/inference.GRPCInferenceService/"
OPEN_METHODS = frozenset(
    {
        "/grpc.health.v1.Health/Check",
        "/grpc.health.v1.Health/List",
        "/grpc.health.v1.Health/Watch",
        SERVICE + "ServerLive",
    }
)
CONTROL_METHODS = frozenset({SERVICE + "RepositoryModelLoad", SERVICE + "RepositoryModelUnload"})


class Access(enum.Enum):
    """What a call needs: nothing (health), a token (most calls), model control (load/unload)."""

    OPEN = "open"
    CALL = "call"
    CONTROL = "control"


def grpc_access(method: str) -> Access:
    """The access a gRPC method (``/package.Service/Method``) needs."""
    if method in OPEN_METHODS:
        return Access.OPEN
    return Access.CONTROL if method in CONTROL_METHODS else Access.CALL


def bearer(value: str | None) -> str | None:
    """The token of an ``authorization: Bearer <token>`` value (None for anything else)."""
    if value is None:
        return None
    scheme, _, token = value.partition(" ")
    # The scheme is case-insensitive (RFC 9110); HTTP clients write "Bearer" or "bearer".
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


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

    def ssl_context(self) -> ssl.SSLContext:
        """The same certificate, key and client CA as :meth:`server_credentials`, for HTTP."""
        assert self.tls_cert is not None and self.tls_key is not None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.tls_cert, self.tls_key)
        if self.tls_client_ca is not None:
            context.load_verify_locations(cafile=self.tls_client_ca)
            context.verify_mode = ssl.CERT_REQUIRED
        return context

    @property
    def checks(self) -> bool:
        """Whether any call can be refused (with no tokens and control on, none is)."""
        return bool(self.tokens or self.admin_tokens or not self.model_control)

    def interceptors(self) -> list[grpc.aio.ServerInterceptor]:
        return [AuthInterceptor(self)] if self.checks else []

    def authorize(self, access: Access, offered: str | None) -> None:
        """Raise unless a caller offering token ``offered`` (None: none) may make this call.

        PermissionDenied when model control is off; Unauthenticated for a missing or wrong
        token. The server's internal token (other workers) may do anything.
        """
        if access is Access.OPEN:
            return
        internal = offered is not None and _matches(offered, [self.internal_token])
        if internal:
            return
        if access is Access.CONTROL and not self.model_control:
            raise PermissionDenied("model control is disabled on this server (--no-model-control)")
        if access is Access.CONTROL and self.admin_tokens:
            if offered is None or not _matches(offered, self.admin_tokens):
                raise Unauthenticated(
                    "model control needs an admin token: 'authorization: Bearer <admin token>'"
                )
            return
        if self.tokens and (offered is None or not _matches(offered, self.tokens)):
            what = "a wrong token" if offered is not None else "no token"
            raise Unauthenticated(f"{what}: send 'authorization: Bearer <token>'")


def _matches(offered: str, tokens: Iterable[str]) -> bool:
    """Constant time in the tokens' contents: every token is compared, always."""
    found = False
    for token in tokens:
        found |= hmac.compare_digest(offered.encode(), token.encode())
    return found


def _bearer(metadata: Iterable[tuple[str, Any]] | None) -> str | None:
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str):
            return bearer(value)
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
        try:
            self.security.authorize(
                grpc_access(details.method), _bearer(details.invocation_metadata)
            )
        except ServingError as error:
            return _refusal(handler, GRPC_STATUS[error.code], error.message)
        return handler
