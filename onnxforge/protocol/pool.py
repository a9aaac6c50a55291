"""The descriptor pool onnxforge's generated protobuf code registers its messages in.

Why not protobuf's default pool, as protoc's output does by default:
``tritonclient.grpc`` registers Triton's ``grpc_service.proto`` there, which defines the
same ``inference.*`` messages as our ``protos/inference.proto`` (the wire protocol is the
same, on purpose: package ``inference``, service ``GRPCInferenceService``). Two files
defining one symbol in one pool is an error ("duplicate symbol
'inference.ServerLiveRequest'"), so whichever of the two clients a process imported
second failed to import. In a pool of our own the names never meet, and nothing on the
wire changes: a message's bytes and a method's path (``/inference.GRPCInferenceService/
ModelInfer``) do not depend on the pool.

The alternatives were worse: renaming the package changes every method path and breaks
every client; reusing tritonclient's modules when installed ties our types to its
release; loading ours only when theirs is absent fails in the other import order.

The same pool holds gRPC's health and reflection protocols (``protos/grpc_health``,
``protos/grpc_reflection``), served from our own generated code: grpcio-health-checking's
and grpcio-reflection's modules check at import that the protobuf runtime is as new as
the protoc that made them, so installing ``tritonclient[grpc]`` (protobuf < 7) after
onnxforge would stop the server from starting. Our generated modules carry no such check
(``scripts/generate_protos.py`` removes it) and load under protobuf 5.29 to 7.x.

Whatever looks messages up by name must use :data:`POOL` (the reflection service does;
``google.protobuf.json_format`` and ``text_format`` work from the message itself).
"""

from __future__ import annotations

from google.protobuf import descriptor_pool

__all__ = ["POOL"]

POOL = descriptor_pool.DescriptorPool()
