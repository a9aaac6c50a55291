"""The KServe v2 REST endpoints: parse, call the data plane, answer JSON.

Like the gRPC servicer, a handler holds no state and decides nothing itself: every
answer comes from the data plane (the ``PeeredDataPlane`` with ``--workers``, so that
loads, readiness and statistics reach every worker whichever transport asked). Bodies
are read by ``rest.codec``; failures become statuses in ``rest.errors``; who may call
what is ``Security.authorize``, the check gRPC makes too.

=======  ==============================================  ==========================
method   path                                            answer
=======  ==============================================  ==========================
GET      /v2/health/live, /v2/health/ready               200, or 400 when not (open)
GET      /v2                                             server metadata
GET      /v2/models/{m}[/versions/{v}]                   model metadata (+ headers)
GET      /v2/models/{m}[/versions/{v}]/ready             200, or 400 when not ready
GET      /v2/models/{m}[/versions/{v}]/config            Triton's JSON ModelConfig
GET      /v2/models[/{m}[/versions/{v}]]/stats           Triton's statistics JSON
POST     /v2/models/{m}[/versions/{v}]/infer             inference (JSON or binary)
POST     /v2/repository/index                            repository index
POST     /v2/repository/models/{m}/load, .../unload      model control
=======  ==============================================  ==========================
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

from aiohttp import web
from aiohttp.http import HttpVersion11

from onnxforge.server.dataplane import DataPlaneAPI
from onnxforge.server.errors import InvalidRequest
from onnxforge.server.rest import codec
from onnxforge.server.rest.errors import BodyTooLarge, error_response
from onnxforge.server.security import Access, Security, bearer
from onnxforge.server.stats import Duration, VersionStats

__all__ = ["EXTENSIONS", "Routes"]

#: Protocol extensions only this transport has (added to the data plane's in /v2).
EXTENSIONS: Final = ("binary_tensor_data",)
#: JSON bodies larger than this are read on a thread, not the event loop; answers with
#: more JSON values than LARGE_JSON_VALUES are written on one.
LARGE_BODY: Final = 256 * 1024
LARGE_JSON_VALUES: Final = 16384

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(value: Any, status: int = 200, headers: Any = None) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps(value, separators=(",", ":")).encode(),
        content_type="application/json",
        headers=headers,
    )


def _names(request: web.Request) -> tuple[str, str]:
    return request.match_info.get("model", ""), request.match_info.get("version", "")


class Routes:
    """The handlers over one data plane, with the limits and the security they enforce."""

    def __init__(self, plane: DataPlaneAPI, security: Security, max_body: int) -> None:
        self.plane = plane
        self.security = security
        self.max_body = max_body

    def add_to(self, router: web.UrlDispatcher) -> None:
        model = "/v2/models/{model}"
        versioned = "/v2/models/{model}/versions/{version}"
        table: list[tuple[str, str, Access, Handler]] = [
            ("GET", "/v2/health/live", Access.OPEN, self.live),
            ("GET", "/v2/health/ready", Access.OPEN, self.ready),
            ("GET", "/v2", Access.CALL, self.server_metadata),
            ("GET", "/v2/models/stats", Access.CALL, self.statistics),  # before {model}
            ("POST", "/v2/repository/index", Access.CALL, self.index),
            ("POST", "/v2/repository/models/{model}/load", Access.CONTROL, self.load),
            ("POST", "/v2/repository/models/{model}/unload", Access.CONTROL, self.unload),
        ]
        for prefix in (model, versioned):
            table += [
                ("GET", prefix, Access.CALL, self.model_metadata),
                ("GET", prefix + "/ready", Access.CALL, self.model_ready),
                ("GET", prefix + "/config", Access.CALL, self.model_config),
                ("GET", prefix + "/stats", Access.CALL, self.statistics),
                ("POST", prefix + "/infer", Access.CALL, self.infer),
            ]
        for method, path, access, handler in table:
            router.add_route(
                method, path, self._guarded(access, handler), expect_handler=self._expect
            )

    def _guarded(self, access: Access, handler: Handler) -> Handler:
        security = self.security
        if not security.checks:
            return handler

        async def guarded(request: web.Request) -> web.StreamResponse:
            security.authorize(access, bearer(request.headers.get("Authorization")))
            return await handler(request)

        return guarded

    async def _expect(self, request: web.Request) -> web.StreamResponse | None:
        """``Expect: 100-continue`` (curl's way with large bodies): 413 before the body comes."""
        size = request.content_length
        if size is not None and size > self.max_body:
            return error_response(413, str(BodyTooLarge(self.max_body, size)))
        if request.version != HttpVersion11:
            return None  # HTTP/1.0 has no 100 Continue: the client sends its body anyway
        expect = request.headers.get("Expect", "")
        if expect.lower() != "100-continue":
            return error_response(417, f"unknown Expect: {expect[:40]} (only 100-continue)")
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the answer's own size starts after this line
        return None

    async def _body(self, request: web.Request) -> bytes:
        """The whole body, or BodyTooLarge (413) over the limit, said before reading it."""
        size = request.content_length
        if size is not None and size > self.max_body:
            raise BodyTooLarge(self.max_body, size)
        try:
            return await request.read()
        except web.HTTPRequestEntityTooLarge:  # no Content-Length (chunked): found reading
            raise BodyTooLarge(self.max_body, None) from None

    # ------------------------------------------------------------------ health

    async def live(self, request: web.Request) -> web.Response:
        live = await self.plane.live()
        return _json({"live": live}, 200 if live else 400)

    async def ready(self, request: web.Request) -> web.Response:
        # 400 when not ready, as Triton answers (a 4xx is "false" in KServe v2).
        ready = await self.plane.server_ready()
        return _json({"ready": ready}, 200 if ready else 400)

    async def model_ready(self, request: web.Request) -> web.Response:
        ready = await self.plane.model_ready(*_names(request))
        return _json({"ready": ready}, 200 if ready else 400)

    # ------------------------------------------------------------------ metadata

    async def server_metadata(self, request: web.Request) -> web.Response:
        metadata = await self.plane.server_metadata()
        return _json(
            {
                "name": metadata.name,
                "version": metadata.version,
                "extensions": [*metadata.extensions, *EXTENSIONS],
            }
        )

    async def model_metadata(self, request: web.Request) -> web.Response:
        metadata = await self.plane.model_metadata(*_names(request))

        def tensors(items: Any) -> list[dict[str, Any]]:
            return [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in items]

        answer = {
            "name": metadata.name,
            "versions": list(metadata.versions),
            "platform": metadata.platform,
            "inputs": tensors(metadata.inputs),
            "outputs": tensors(metadata.outputs),
        }
        # Variant, accuracy and spec hash travel as headers, as on gRPC.
        return _json(answer, headers=metadata.headers())

    async def model_config(self, request: web.Request) -> web.Response:
        return _json(await self.plane.model_config(*_names(request)))

    # ------------------------------------------------------------------ inference

    async def infer(self, request: web.Request) -> web.Response:
        name, version = _names(request)
        body = await self._body(request)
        header_length = request.headers.get(codec.HEADER_LENGTH)
        # Large JSON takes tens of ms to read or write: off the event loop, which serves
        # every other call (gRPC's too) and the batcher meanwhile.
        large = len(body) > LARGE_BODY and header_length is None
        async with self.plane.inference(name, version) as call:
            # Decoding counts as part of the call (statistics, metrics), as on gRPC.
            if large:
                decoded = await asyncio.to_thread(codec.decode_request, body, header_length)
            else:
                decoded = codec.decode_request(body, header_length)
            deadline = None
            if decoded.timeout_us is not None:
                deadline = time.monotonic() + decoded.timeout_us / 1e6
            outputs = await call.run(decoded.request, deadline)
            encode = (call.model, call.version, outputs, decoded)
            in_json = sum(out.size for key, out in outputs.items() if not decoded.wants_binary(key))
            if in_json > LARGE_JSON_VALUES:
                encoded = await asyncio.to_thread(codec.encode_response, *encode)
            else:
                encoded = codec.encode_response(*encode)
        if encoded.header_length is None:
            return web.Response(body=encoded.body, content_type="application/json")
        return web.Response(
            body=encoded.body,
            content_type="application/octet-stream",
            headers={codec.HEADER_LENGTH: str(encoded.header_length)},
        )

    # ------------------------------------------------------------------ repository

    async def index(self, request: web.Request) -> web.Response:
        document = codec.read_object(await self._body(request), 'an object like {"ready": true}')
        ready = document.get("ready", False)
        if not isinstance(ready, bool):
            raise InvalidRequest(f"'ready' must be true or false, got {json.dumps(ready)}")
        entries = await self.plane.index(ready_only=ready)
        found = []
        for entry in entries:
            item = {"name": entry.name}
            if entry.version:
                item["version"] = entry.version
            item["state"] = entry.state
            if entry.reason:
                item["reason"] = entry.reason
            found.append(item)
        return _json(found)

    async def load(self, request: web.Request) -> web.Response:
        what = 'an object like {"parameters": {"config": "<ModelConfig as JSON>"}}'
        document = codec.read_object(await self._body(request), what)
        parameters = codec.plain_parameters(document.get("parameters"), "'parameters'")
        await self.plane.load(request.match_info["model"], parameters)
        return _json({})

    async def unload(self, request: web.Request) -> web.Response:
        what = 'an object like {"parameters": {"unload_dependents": false}}'
        document = codec.read_object(await self._body(request), what)
        # unload_dependents: onnxforge models have no dependents (no ensembles).
        codec.plain_parameters(document.get("parameters"), "'parameters'")
        await self.plane.unload(request.match_info["model"])
        return _json({})

    async def statistics(self, request: web.Request) -> web.Response:
        found = await self.plane.statistics(*_names(request))
        return _json({"model_stats": [_statistics(part) for part in found]})


def _duration(duration: Duration) -> dict[str, int]:
    return {"count": duration.count, "ns": duration.ns}


_ZERO: Final = {"count": 0, "ns": 0}


def _statistics(part: VersionStats) -> dict[str, Any]:
    """One version's statistics as Triton's HTTP endpoint writes them (zeros: not measured)."""
    stats = part.stats
    return {
        "name": part.name,
        "version": part.version,
        "last_inference": stats.last_inference_ms,
        "inference_count": stats.inference_count,
        "execution_count": stats.execution_count,
        "inference_stats": {
            "success": _duration(stats.success),
            "fail": _duration(stats.fail),
            "queue": _duration(stats.queue),
            "compute_input": dict(_ZERO),
            "compute_infer": _duration(stats.compute_infer),
            "compute_output": dict(_ZERO),
            "cache_hit": dict(_ZERO),
            "cache_miss": dict(_ZERO),
        },
        "batch_stats": [
            {
                "batch_size": size,
                "compute_input": dict(_ZERO),
                "compute_infer": _duration(duration),
                "compute_output": dict(_ZERO),
            }
            for size, duration in sorted(stats.batches.items())
        ],
        "memory_usage": [],
    }
