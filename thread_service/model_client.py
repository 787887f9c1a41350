"""The thread-service's side of the model-service: a `ModelStreamer` over gRPC."""

from __future__ import annotations

from collections.abc import AsyncGenerator

import grpc

from spindle import convert
from spindle.errors import ErrorCode, ModelError, SpindleError
from spindle.grpc_errors import model_error_from_rpc
from spindle.model import ModelEvent, ModelRequest
from spindle.serving import CHANNEL_OPTIONS
from spindle.v1 import model_service_pb2_grpc


class ModelServiceClient:
    def __init__(self, target: str) -> None:
        self.target = target
        self._channel = grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)
        self._stub = model_service_pb2_grpc.ModelServiceStub(self._channel)

    async def stream(self, request: ModelRequest) -> AsyncGenerator[ModelEvent, None]:
        call = self._stub.Generate(convert.request_to_pb(request))
        try:
            async for message in call:
                try:
                    event = convert.event_from_pb(message)
                except SpindleError as exc:
                    # Not the caller's fault: the model answered something unusable.
                    raise ModelError(
                        f"the model-service sent a malformed event: {exc.message}",
                        code=ErrorCode.UNAVAILABLE,
                    ) from None
                yield event
        except grpc.aio.AioRpcError as exc:
            raise model_error_from_rpc(exc, f"the model-service at {self.target}") from None
        finally:
            # Stopping early (an interrupted turn) cancels the model call, and
            # the model-service closes its upstream request in turn.
            call.cancel()

    async def aclose(self) -> None:
        await self._channel.close()
