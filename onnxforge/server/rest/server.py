"""The HTTP/REST transport's server: aiohttp on the server's event loop (the data plane's).

``start_http`` binds the port (``0`` picks a free one; ``reuse_port`` shares it among the
``--workers`` as gRPC does, SO_REUSEPORT), serves TLS with the gRPC server's certificate
when one is set, and returns an :class:`HttpServer` whose ``stop`` closes the port and
lets the calls being answered finish. The drain itself is the data plane's: a call that
arrives while the server drains is answered 503 by the same check as on gRPC.
"""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass

from aiohttp import web

from onnxforge.server.dataplane import DataPlaneAPI
from onnxforge.server.rest import errors
from onnxforge.server.rest.routes import Routes
from onnxforge.server.security import Security

__all__ = ["HttpServer", "start_http"]

log = logging.getLogger("onnxforge.server")


@dataclass
class HttpServer:
    runner: web.AppRunner
    host: str
    port: int  # the one bound (a free one for port 0)
    tls: bool

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"

    async def stop(self) -> None:
        """Stop listening, close idle connections, finish the calls being answered."""
        await self.runner.cleanup()


def _bind(host: str, port: int, reuse_port: bool) -> socket.socket:
    host = host.strip("[]")
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # not in use, TIME_WAIT only
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


async def start_http(
    plane: DataPlaneAPI,
    security: Security,
    *,
    host: str,
    port: int,
    max_body: int,
    reuse_port: bool = False,
    grace_seconds: float = 10.0,
) -> HttpServer:
    """Serve KServe v2 REST for ``plane`` on ``host:port``; OSError if it cannot bind."""
    app = web.Application(middlewares=[errors.middleware], client_max_size=max_body)
    Routes(plane, security, max_body).add_to(app.router)
    # No access log: a line per request costs more than a small inference.
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=grace_seconds)
    await runner.setup()
    try:
        sock = _bind(host, port, reuse_port)
    except OSError:
        await runner.cleanup()
        raise
    bound = int(sock.getsockname()[1])
    context = security.ssl_context() if security.tls else None
    site = web.SockSite(runner, sock, ssl_context=context)
    try:
        await site.start()
    except OSError:
        await runner.cleanup()
        raise
    return HttpServer(runner, host.strip("[]"), bound, security.tls)
