"""KServe v2 HTTP/REST (with Triton's binary tensor extension) on the server's data plane.

The second transport beside gRPC (``server.service``): the same data plane, the same
tokens and TLS, the same limits, batching, statistics, metrics and drain; only the
wire differs. ``server`` starts and stops it, ``routes`` holds the endpoints, ``codec``
reads and writes inference bodies (JSON tensors and binary data), ``errors`` turns every
failure into its status and ``{"error": "..."}``.

Why aiohttp: it runs on the server's own asyncio loop, where the data plane and the
batcher run, so one process serves both transports into the same batcher with no second
loop or thread; it is a server in itself (no ASGI server to add, unlike Starlette or FastAPI),
supports TLS, SO_REUSEPORT sockets, a body size limit and a graceful shutdown; and it is
kept up by aio-libs with frequent releases (3.x since 2018). Starlette + uvicorn would
add two packages and run uvicorn's own loop management; tornado and sanic bring more
framework than a handful of endpoints needs.
"""

from __future__ import annotations

from onnxforge.server.rest.server import HttpServer, start_http

__all__ = ["HttpServer", "start_http"]
