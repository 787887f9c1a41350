"""The gRPC face of the model-service: translate, log, bound by the deadline."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator
from contextlib import aclosing

import grpc

from model_service import telemetry
from model_service.arrivals import as_they_arrive
from model_service.providers.base import Served
from model_service.router import Router
from model_service.windows import Windows
from spindle import convert
from spindle.errors import ErrorCode, ModelError, SpindleError
from spindle.grpc_errors import rpc
from spindle.model import Completed, Usage
from spindle.v1 import model_service_pb2 as pb
from spindle.v1 import model_service_pb2_grpc as pb_grpc

log = logging.getLogger("model_service.requests")


class ModelServicer(pb_grpc.ModelServiceServicer):  # type: ignore[misc]
    def __init__(self, router: Router, windows: Windows | None = None) -> None:
        self.router = router
        self.windows = windows if windows is not None else Windows()
        self.calls = telemetry.ModelCalls(router.models)  # metrics and span attributes

    @rpc
    async def Generate(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.GenerateResponse]:
        model_request = await convert.request_from_pb_in_slices(request)
        call = self.calls.started(model_request)
        provider, served = "-", Served()
        usage, outcome = Usage(), "CANCELLED"
        try:
            provider = self.router.provider_name(model_request.model)
            model_request = await self.windows.complete(model_request)
            stream = self.router.providers[provider].stream(model_request, served)
            async with asyncio.timeout(context.time_remaining()), aclosing(stream):
                # While an upstream thinks, the response headers go out, so
                # that the first event is all that is left to send.
                headers = functools.partial(context.send_initial_metadata, ())
                # Closed first, so that its reading of `stream` has stopped when
                # `stream` is closed: a call let go at a `yield` closes both.
                async with aclosing(as_they_arrive(stream, headers)) as arrivals:
                    async for batch in arrivals:
                        message = convert.events_to_pb(batch)
                        last = batch[-1]
                        if isinstance(last, Completed):
                            usage = last.usage
                            message.events[-1].completed.endpoint = served.endpoint
                        yield message
            outcome = "OK"
        except TimeoutError:
            outcome = "DEADLINE_EXCEEDED"
            raise ModelError(
                "the call's deadline passed before the model finished",
                code=ErrorCode.DEADLINE_EXCEEDED,
            ) from None
        except SpindleError as exc:
            outcome = exc.code.value
            raise
        finally:
            # One line per request, written when it ends: operators (and the
            # end-to-end tests) read here which prompt_cache_key each thread's
            # calls carried, which endpoint served them and what the cache gave.
            log.info(
                "generate thread_id=%s window_id=%s prompt_cache_key=%s sub_agent_kind=%s "
                "model=%s provider=%s endpoint=%s input_items=%d status=%s input_tokens=%d "
                "cached_tokens=%d output_tokens=%d sent_items=%d",
                model_request.thread_id,
                model_request.window_id,
                model_request.prompt_cache_key,
                model_request.sub_agent_kind or "-",
                model_request.model,
                provider,
                served.endpoint or "-",
                len(model_request.input),
                outcome,
                usage.input_tokens,
                usage.cached_input_tokens,
                usage.output_tokens,
                len(request.input),
            )
            call.ended(provider, outcome, usage, served.endpoint)
