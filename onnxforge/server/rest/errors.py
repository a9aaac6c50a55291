"""Every failure of an HTTP/REST call as its status and the KServe v2 body ``{"error": "..."}``.

A ``ServingError`` gets the status of its code from the one table, ``errors.HTTP_STATUS``;
what aiohttp itself refuses (no such route, a method a route does not take, a body over
the limit) gets its own status with the same body; anything else is a bug: logged with
its traceback and answered 500 without internals, as the gRPC transport does.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from onnxforge.server.errors import HTTP_STATUS, ServingError

__all__ = ["INTERNAL_MESSAGE", "BodyTooLarge", "error_response", "middleware"]

log = logging.getLogger("onnxforge.server")
INTERNAL_MESSAGE = "internal error (see the server log)"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class BodyTooLarge(Exception):
    """A request body over ``--max-message-bytes``: 413, as HTTP says (gRPC's limit is its own)."""

    def __init__(self, limit: int, size: int | None) -> None:
        held = f"holds {size} bytes" if size is not None else "is larger"
        super().__init__(
            f"the request body {held}; this server takes at most {limit} bytes "
            "(--max-message-bytes)"
        )


def error_response(status: int, message: str) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps({"error": message}).encode(),
        content_type="application/json",
    )


@web.middleware
async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn whatever a handler raises into its status and an ``{"error": ...}`` body."""
    try:
        return await handler(request)
    except ServingError as error:
        return error_response(HTTP_STATUS[error.code], error.message)
    except BodyTooLarge as error:
        return error_response(413, str(error))
    except web.HTTPException as error:
        if error.status == 404:
            message = f"no such endpoint: {request.method} {request.path}"
        elif error.status == 405:
            message = f"{request.path} does not take {request.method}"
        else:
            message = error.reason
        answer = error_response(error.status, message)
        if "Allow" in error.headers:
            answer.headers["Allow"] = error.headers["Allow"]
        return answer
    except Exception:
        log.exception("unexpected error in HTTP %s %s", request.method, request.path)
        return error_response(500, INTERNAL_MESSAGE)
