"""The thread-service's side of the model-service: a `ModelStreamer` over gRPC.

With several model-service replicas behind one target (a `dns:///` name that
resolves to all of them, or an `ipv4:` list), every request goes to the
replica that a consistent hash of its `prompt_cache_key` picks (gRPC's ring
hash policy, keyed by a request header), so a key's requests, and a fork's
first turn after its parent's, land where that key's prompt cache is warm.
Replicas joining or leaving move only about 1/N of the keys; a replica that
is down sends its keys to the next one on the ring.

Every call has a deadline (`model_timeout`) and the channel pings its peer,
so a model-service that hangs fails the turn instead of holding the thread.
The model-service knows the thread-service by a bearer token (read from a
file, again when it changes) or by its TLS client certificate.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from pathlib import Path

import grpc

from spindle import convert, tls, tracing
from spindle.errors import ErrorCode, ModelError, SpindleError
from spindle.grpc_errors import error_details, model_error_from_rpc
from spindle.model import WINDOW_NOT_HELD, ModelEvent, ModelRequest
from spindle.serving import CHANNEL_OPTIONS, KEEPALIVE_OPTIONS
from spindle.settings import SettingsError
from spindle.v1 import model_service_pb2_grpc

log = logging.getLogger(__name__)

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


@dataclass(frozen=True, slots=True)
class ModelServiceAccess:
    """How to reach the model-service: balancing, deadline and credentials."""

    balancing: str = "ring_hash"
    timeout: float = 600.0
    token_file: str = ""
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""


class _TokenFile:
    """A bearer token kept in a file, read again when the file changes."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self._files = tls.PemFiles([path])
        self._token = self._read()

    def _read(self) -> str:
        try:
            token = self.path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise SettingsError(
                f"model_service_token_file {self.path}: cannot read: {exc}"
            ) from None
        if not token or not token.isprintable():
            raise SettingsError(f"model_service_token_file {self.path}: holds no token")
        return token

    def token(self) -> str:
        if self._files.changed():
            try:
                self._token = self._read()
            except SettingsError as exc:
                log.warning("kept the previous model-service token: %s", exc)
        return self._token


def _window_not_held(exc: grpc.aio.AioRpcError) -> bool:
    if exc.code() != grpc.StatusCode.FAILED_PRECONDITION:
        return False
    return error_details(exc)[0] == WINDOW_NOT_HELD


class ModelServiceClient:
    def __init__(self, target: str, access: ModelServiceAccess = ModelServiceAccess()) -> None:
        self.target = target
        self.access = access
        self._token = _TokenFile(access.token_file) if access.token_file else None
        self._tls_files = tls.PemFiles([access.tls_ca, access.tls_cert, access.tls_key])
        self._channel = self._connect()
        self._stub_now = model_service_pb2_grpc.ModelServiceStub(self._channel)
        self._old_channels: list[grpc.aio.Channel] = []

    def _connect(self) -> grpc.aio.Channel:
        options = [
            *CHANNEL_OPTIONS,
            *KEEPALIVE_OPTIONS,
            ("grpc.service_config", service_config(self.access.balancing)),
        ]
        if not self.access.tls_ca:
            return grpc.aio.insecure_channel(self.target, options=options)
        credentials = tls.channel_credentials(
            self.access.tls_ca, self.access.tls_cert, self.access.tls_key
        )
        return grpc.aio.secure_channel(self.target, credentials, options=options)

    def _stub(self) -> model_service_pb2_grpc.ModelServiceStub:
        """The stub, on a new channel once renewed certificates are on disk."""
        if self.access.tls_ca and self._tls_files.changed():
            try:
                fresh = self._connect()
            except SettingsError as exc:
                log.warning("kept the previous TLS credentials: %s", exc)
            else:
                self._old_channels.append(self._channel)  # calls on it run to their end
                self._channel = fresh
                self._stub_now = model_service_pb2_grpc.ModelServiceStub(fresh)
        return self._stub_now

    async def stream(self, request: ModelRequest) -> AsyncGenerator[list[ModelEvent], None]:
        """The model's events in batches. A request with a base sends only its
        new items; when the model-service does not hold the base (WINDOW_NOT_HELD,
        before any event) the whole history goes again."""
        metadata = [(HASH_HEADER, request.prompt_cache_key)]
        if self._token is not None:
            metadata.append(("authorization", f"Bearer {self._token.token()}"))
        if tracing.tracer is not None:  # the turn's span, as the model call's parent
            tracing.inject_metadata(metadata)
        with_base = request.base is not None
        while True:
            message = await convert.request_to_pb_in_slices(request, with_base=with_base)
            call = self._stub().Generate(message, metadata=metadata, timeout=self.access.timeout)
            try:
                async for response in call:
                    try:
                        batch = convert.events_from_pb(response)
                    except SpindleError as exc:
                        # Not the caller's fault: the model answered something unusable.
                        raise ModelError(
                            f"the model-service sent a malformed event: {exc.message}",
                            code=ErrorCode.UNAVAILABLE,
                        ) from None
                    yield batch
                return
            except grpc.aio.AioRpcError as exc:
                if with_base and _window_not_held(exc):
                    with_base = False
                    continue
                raise model_error_from_rpc(exc, f"the model-service at {self.target}") from None
            finally:
                # Stopping early (an interrupted turn) cancels the model call, and
                # the model-service closes its upstream request in turn.
                call.cancel()

    async def aclose(self) -> None:
        for channel in [*self._old_channels, self._channel]:
            await channel.close()
