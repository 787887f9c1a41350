"""The thread-service's side of the model-service: a `ModelStreamer` over gRPC.

With several model-service replicas behind one target (a `dns:///` name that
resolves to all of them, or an `ipv4:` list), every request goes to the
replica that a consistent hash of its `prompt_cache_key` picks (gRPC's ring
hash policy, keyed by a request header), so a key's requests, and a fork's
first turn after its parent's, land where that key's prompt cache is warm.
Replicas joining or leaving move only about 1/N of the keys; a replica that
is down sends its keys to the next one on the ring.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncGenerator

import grpc

from spindle import convert
from spindle.errors import ErrorCode, ModelError, SpindleError
from spindle.grpc_errors import model_error_from_rpc
from spindle.model import ModelEvent, ModelRequest
from spindle.serving import CHANNEL_OPTIONS
from spindle.v1 import model_service_pb2_grpc

# The request header the ring hash policy hashes: the request's cache key.
HASH_HEADER = "x-spindle-prompt-cache-key"
BALANCING_POLICIES = ("ring_hash", "round_robin")

# grpcio (1.85) honours `requestHashHeader` only with this set; it is read
# when a channel parses its service config, so setting it here is in time.
os.environ.setdefault("GRPC_EXPERIMENTAL_RING_HASH_SET_REQUEST_HASH_KEY", "true")


def service_config(balancing: str) -> str:
    """The channel's service config for a balancing policy."""
    if balancing == "round_robin":
        policy: dict[str, object] = {"round_robin": {}}
    else:
        policy = {"ring_hash_experimental": {"requestHashHeader": HASH_HEADER}}
    return json.dumps({"loadBalancingConfig": [policy]})


class ModelServiceClient:
    def __init__(self, target: str, balancing: str = "ring_hash") -> None:
        self.target = target
        options = [*CHANNEL_OPTIONS, ("grpc.service_config", service_config(balancing))]
        self._channel = grpc.aio.insecure_channel(target, options=options)
        self._stub = model_service_pb2_grpc.ModelServiceStub(self._channel)

    async def stream(self, request: ModelRequest) -> AsyncGenerator[ModelEvent, None]:
        call = self._stub.Generate(
            convert.request_to_pb(request), metadata=[(HASH_HEADER, request.prompt_cache_key)]
        )
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
