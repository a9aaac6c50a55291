"""gRPC server reflection (``grpc.reflection.v1alpha``), from onnxforge's descriptor pool.

grpcurl, Postman and other tools ask the server which services it offers and for the files
defining them, and then call them without the .proto files. The answers come from
:data:`onnxforge.protocol.pool.POOL`, where our generated code registers every message
(that module says why it is not protobuf's default pool, and why this service is ours
rather than grpcio-reflection's). A question about something the pool does not hold is
answered with a NOT_FOUND ``error_response`` on the stream, which stays open.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import Any

import grpc
from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import FileDescriptor
from google.protobuf.descriptor_pool import DescriptorPool

from onnxforge.protocol.generated import reflection_pb2 as rpb
from onnxforge.protocol.generated import reflection_pb2_grpc as rpb_grpc
from onnxforge.protocol.pool import POOL

__all__ = ["REFLECTION_SERVICE", "ReflectionServicer"]

REFLECTION_SERVICE = rpb.DESCRIPTOR.services_by_name["ServerReflection"].full_name


class ReflectionServicer(rpb_grpc.ServerReflectionServicer):  # type: ignore[misc]  # generated
    """Answers reflection questions about ``services`` from ``pool``."""

    def __init__(self, services: Iterable[str], pool: DescriptorPool = POOL) -> None:
        self.services = tuple(sorted(services))
        self.pool = pool

    def add_to(self, server: grpc.aio.Server) -> None:
        rpb_grpc.add_ServerReflectionServicer_to_server(self, server)

    async def ServerReflectionInfo(
        self, requests: AsyncIterator[rpb.ServerReflectionRequest], context: Any
    ) -> AsyncIterator[rpb.ServerReflectionResponse]:
        async for request in requests:
            yield self.answer(request)

    def answer(self, request: rpb.ServerReflectionRequest) -> rpb.ServerReflectionResponse:
        """The answer to one question (a KeyError from the pool means NOT_FOUND)."""
        asked = request.WhichOneof("message_request")
        try:
            if asked == "file_by_filename":
                return self._files(request, self.pool.FindFileByName(request.file_by_filename))
            if asked == "file_containing_symbol":
                symbol = request.file_containing_symbol
                return self._files(request, self.pool.FindFileContainingSymbol(symbol))
            if asked == "file_containing_extension":
                wanted = request.file_containing_extension
                message = self.pool.FindMessageTypeByName(wanted.containing_type)
                extension = self.pool.FindExtensionByNumber(message, wanted.extension_number)
                found = self.pool.FindFileContainingSymbol(extension.full_name)
                return self._files(request, found)
            if asked == "all_extension_numbers_of_type":
                message = self.pool.FindMessageTypeByName(request.all_extension_numbers_of_type)
                numbers = sorted(found.number for found in self.pool.FindAllExtensions(message))
                return rpb.ServerReflectionResponse(
                    original_request=request,
                    all_extension_numbers_response=rpb.ExtensionNumberResponse(
                        base_type_name=message.full_name, extension_number=numbers
                    ),
                )
            if asked == "list_services":
                services = [rpb.ServiceResponse(name=name) for name in self.services]
                return rpb.ServerReflectionResponse(
                    original_request=request,
                    list_services_response=rpb.ListServiceResponse(service=services),
                )
        except KeyError:
            return _error(request, grpc.StatusCode.NOT_FOUND, "not found")
        return _error(request, grpc.StatusCode.INVALID_ARGUMENT, "no question asked")

    @staticmethod
    def _files(
        request: rpb.ServerReflectionRequest, found: FileDescriptor
    ) -> rpb.ServerReflectionResponse:
        """``found`` and every file it depends on (a client needs them all to use it)."""
        files: dict[str, FileDescriptor] = {}
        pending = [found]
        while pending:
            file = pending.pop()
            if file.name not in files:
                files[file.name] = file
                pending.extend(file.dependencies)
        serialized = []
        for file in files.values():
            proto = descriptor_pb2.FileDescriptorProto()
            file.CopyToProto(proto)
            serialized.append(proto.SerializeToString())
        return rpb.ServerReflectionResponse(
            original_request=request,
            file_descriptor_response=rpb.FileDescriptorResponse(file_descriptor_proto=serialized),
        )


def _error(
    request: rpb.ServerReflectionRequest, code: grpc.StatusCode, message: str
) -> rpb.ServerReflectionResponse:
    return rpb.ServerReflectionResponse(
        original_request=request,
        error_response=rpb.ErrorResponse(error_code=code.value[0], error_message=message),
    )
