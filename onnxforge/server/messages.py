"""The data plane's plain values <-> the protocol's protobuf messages (tensors aside).

Tensors travel through ``server.convert``; everything else the gRPC transport sends or
reads -- request parameters, metadata, the repository index, statistics -- is written and
read here, by the servicer and by the client side of ``server.peers``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from onnxforge.protocol.generated import inference_pb2 as pb
from onnxforge.server.dataplane import (
    IndexEntry,
    InferRequest,
    ModelMetadata,
    RequestedOutput,
    ServerMetadata,
)
from onnxforge.server.model_version import Tensor
from onnxforge.server.stats import Duration, ModelStats, VersionStats

# ------------------------------------------------------------------ requests


def values(parameters: Mapping[str, Any]) -> dict[str, object]:
    """Plain values of a parameter map (InferParameter or ModelRepositoryParameter)."""
    plain: dict[str, object] = {}
    for key, parameter in parameters.items():
        chosen = parameter.WhichOneof("parameter_choice")
        plain[key] = None if chosen is None else getattr(parameter, chosen)
    return plain


def repository_parameters(parameters: Mapping[str, object]) -> dict[str, Any]:
    """Plain values as ModelRepositoryParameters (what ``values`` reads back)."""
    fields = {bool: "bool_param", int: "int64_param", str: "string_param", bytes: "bytes_param"}
    made: dict[str, Any] = {}
    for key, value in parameters.items():
        chosen: dict[str, Any] = {fields[type(value)]: value}
        made[key] = pb.ModelRepositoryParameter(**chosen)
    return made


def infer_request(request: pb.ModelInferRequest, inputs: Mapping[str, np.ndarray]) -> InferRequest:
    """The data plane's request: ``inputs`` (decoded by ``convert``) and the rest of it."""
    return InferRequest(
        inputs=inputs,
        datatypes={tensor.name: tensor.datatype for tensor in request.inputs},
        outputs=[
            RequestedOutput(wanted.name, values(wanted.parameters)) for wanted in request.outputs
        ],
        parameters=values(request.parameters),
    )


# ------------------------------------------------------------------ answers


def server_metadata(metadata: ServerMetadata) -> pb.ServerMetadataResponse:
    return pb.ServerMetadataResponse(
        name=metadata.name, version=metadata.version, extensions=list(metadata.extensions)
    )


def model_metadata(metadata: ModelMetadata) -> pb.ModelMetadataResponse:
    def tensors(items: Iterable[Tensor]) -> list[pb.ModelMetadataResponse.TensorMetadata]:
        return [
            pb.ModelMetadataResponse.TensorMetadata(
                name=t.name, datatype=t.datatype, shape=list(t.shape)
            )
            for t in items
        ]

    return pb.ModelMetadataResponse(
        name=metadata.name,
        versions=list(metadata.versions),
        platform=metadata.platform,
        inputs=tensors(metadata.inputs),
        outputs=tensors(metadata.outputs),
    )


def repository_index(entries: Iterable[IndexEntry]) -> pb.RepositoryIndexResponse:
    return pb.RepositoryIndexResponse(
        models=[
            pb.RepositoryIndexResponse.ModelIndex(
                name=entry.name, version=entry.version, state=entry.state, reason=entry.reason
            )
            for entry in entries
        ]
    )


# ------------------------------------------------------------------ statistics


def _duration(duration: Duration) -> pb.StatisticDuration:
    return pb.StatisticDuration(count=duration.count, ns=duration.ns)


def _plain_duration(message: pb.StatisticDuration) -> Duration:
    return Duration(message.count, message.ns)


def model_statistics(part: VersionStats) -> pb.ModelStatistics:
    stats = part.stats
    return pb.ModelStatistics(
        name=part.name,
        version=part.version,
        last_inference=stats.last_inference_ms,
        inference_count=stats.inference_count,
        execution_count=stats.execution_count,
        inference_stats=pb.InferStatistics(
            success=_duration(stats.success),
            fail=_duration(stats.fail),
            queue=_duration(stats.queue),
            compute_infer=_duration(stats.compute_infer),
        ),
        batch_stats=[
            pb.InferBatchStatistics(batch_size=size, compute_infer=_duration(duration))
            for size, duration in sorted(stats.batches.items())
        ],
    )


def version_stats(message: pb.ModelStatistics) -> VersionStats:
    """What ``model_statistics`` wrote, read back (another worker's statistics)."""
    inference = message.inference_stats
    stats = ModelStats(
        success=_plain_duration(inference.success),
        fail=_plain_duration(inference.fail),
        queue=_plain_duration(inference.queue),
        compute_infer=_plain_duration(inference.compute_infer),
        inference_count=message.inference_count,
        execution_count=message.execution_count,
        last_inference_ms=message.last_inference,
    )
    for batch in message.batch_stats:
        stats.batches[batch.batch_size].add(batch.compute_infer.ns, batch.compute_infer.count)
    return VersionStats(message.name, message.version, stats)
