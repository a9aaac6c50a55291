"""The other worker processes of one server (``--workers N``), reached on private ports.

Workers share the public port; each also listens on 127.0.0.1 on a port of its own. A
model load or unload, a readiness question or a statistics query that arrives at one
worker is passed to the others, marked with a header so that it is not passed on again.
Together they behave as one server.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Iterable
from typing import Any

import grpc

from onnxforge.protocol.generated import inference_pb2 as pb
from onnxforge.protocol.generated import inference_pb2_grpc as pb_grpc

PEER_HEADER = "x-onnxforge-peer"
_MARK = ((PEER_HEADER, "1"),)
_TIMEOUT = 120.0  # a load may build and open a large model


def forwarded(context: Any, token: str) -> bool:
    """Whether this call came from another worker (and must not be passed on again).

    The mark counts only with the server's internal token, so that a client cannot make a
    load or unload stop at the one worker it happens to reach.
    """
    metadata = dict(context.invocation_metadata() or ())
    return PEER_HEADER in metadata and hmac.compare_digest(
        str(metadata.get("authorization", "")).encode(), f"Bearer {token}".encode()
    )


class Peers:
    def __init__(self, addresses: Iterable[str], token: str) -> None:
        self.addresses = list(addresses)
        self.token = token  # the server's internal token: it marks calls between workers
        self._metadata = (*_MARK, ("authorization", f"Bearer {token}"))
        self._channels = [grpc.aio.insecure_channel(address) for address in self.addresses]
        self._stubs = [pb_grpc.GRPCInferenceServiceStub(channel) for channel in self._channels]

    async def _all(self, method: str, request: Any) -> list[Any]:
        calls = [
            getattr(stub, method)(request, metadata=self._metadata, timeout=_TIMEOUT)
            for stub in self._stubs
        ]
        return list(await asyncio.gather(*calls))

    async def ready(self) -> bool:
        answers = await self._all("ServerReady", pb.ServerReadyRequest())
        return all(answer.ready for answer in answers)

    async def model_ready(self, name: str, version: str) -> bool:
        answers = await self._all("ModelReady", pb.ModelReadyRequest(name=name, version=version))
        return all(answer.ready for answer in answers)

    async def load(self, request: pb.RepositoryModelLoadRequest) -> None:
        """The same load, its configuration included, at every other worker."""
        await self._all("RepositoryModelLoad", request)

    async def unload(self, name: str) -> None:
        await self._all("RepositoryModelUnload", pb.RepositoryModelUnloadRequest(model_name=name))

    async def statistics(self, request: pb.ModelStatisticsRequest) -> list[pb.ModelStatistics]:
        answers = await self._all("ModelStatistics", request)
        return [stats for answer in answers for stats in answer.model_stats]

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()


def _add(total: Any, part: Any) -> None:
    total.count += part.count
    total.ns += part.ns


def merge_statistics(parts: Iterable[pb.ModelStatistics]) -> list[pb.ModelStatistics]:
    """Sum per (model, version) the statistics that several workers report."""
    merged: dict[tuple[str, str], pb.ModelStatistics] = {}
    for part in parts:
        key = (part.name, part.version)
        if key not in merged:
            merged[key] = pb.ModelStatistics()
            merged[key].CopyFrom(part)
            continue
        total = merged[key]
        total.last_inference = max(total.last_inference, part.last_inference)
        total.inference_count += part.inference_count
        total.execution_count += part.execution_count
        for field in (
            "success",
            "fail",
            "queue",
            "compute_input",
            "compute_infer",
            "compute_output",
        ):
            _add(getattr(total.inference_stats, field), getattr(part.inference_stats, field))
        sizes = {batch.batch_size: batch for batch in total.batch_stats}
        for batch in part.batch_stats:
            if batch.batch_size in sizes:
                _add(sizes[batch.batch_size].compute_infer, batch.compute_infer)
            else:
                total.batch_stats.append(batch)
    return [merged[key] for key in sorted(merged)]
