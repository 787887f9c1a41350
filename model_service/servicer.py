"""The gRPC face of the model-service: translate, log, bound by the deadline."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import grpc

from model_service.router import Router
from spindle import convert
from spindle.errors import ErrorCode, ModelError
from spindle.grpc_errors import rpc
from spindle.model import Completed
from spindle.v1 import model_service_pb2 as pb
from spindle.v1 import model_service_pb2_grpc as pb_grpc

log = logging.getLogger("model_service.requests")


class ModelServicer(pb_grpc.ModelServiceServicer):  # type: ignore[misc]
    def __init__(self, router: Router) -> None:
        self.router = router

    @rpc
    async def Generate(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.GenerateResponse]:
        model_request = convert.request_from_pb(request)
        provider = self.router.provider_name(model_request.model)
        # One line per request: operators (and the end-to-end tests) read
        # here which prompt_cache_key each thread's calls carried.
        log.info(
            "generate thread_id=%s window_id=%s prompt_cache_key=%s sub_agent_kind=%s "
            "model=%s provider=%s input_items=%d",
            model_request.thread_id,
            model_request.window_id,
            model_request.prompt_cache_key,
            model_request.sub_agent_kind or "-",
            model_request.model,
            provider,
            len(model_request.input),
        )
        remaining = context.time_remaining()
        try:
            async with asyncio.timeout(remaining):
                async for event in self.router.stream(model_request):
                    if isinstance(event, Completed):
                        log.info(
                            "completed thread_id=%s input_tokens=%d cached_tokens=%d "
                            "output_tokens=%d",
                            model_request.thread_id,
                            event.usage.input_tokens,
                            event.usage.cached_input_tokens,
                            event.usage.output_tokens,
                        )
                    yield convert.event_to_pb(event)
        except TimeoutError:
            raise ModelError(
                "the call's deadline passed before the model finished",
                code=ErrorCode.DEADLINE_EXCEEDED,
            ) from None
