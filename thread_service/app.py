"""Assembling the thread-service from its settings."""

from __future__ import annotations

from pathlib import Path

import grpc

from spindle.auth import Authenticator, Principals
from spindle.edge import Edge
from spindle.ratelimit import RateLimit
from spindle.serving import Service
from spindle.v1 import thread_service_pb2, thread_service_pb2_grpc
from thread_service.history import Histories
from thread_service.model_client import ModelServiceAccess, ModelServiceClient
from thread_service.replica import Replica
from thread_service.servicer import ThreadServicer
from thread_service.settings import ThreadServiceSettings
from thread_service.stores.backend import StoreOptions, open_store
from thread_service.threads import Threads
from thread_service.trust import ProjectTrust
from thread_service.turns import TurnLimits, Turns

# The public port takes a turn's input with room for its framing, and sends
# nothing larger than the 4 MiB every gRPC client receives by default.
RECEIVE_MARGIN_BYTES = 64 << 10
SEND_LIMIT_BYTES = 4 << 20


async def build(settings: ThreadServiceSettings) -> Service:
    principals = Principals(Path(settings.auth_file)) if settings.auth_file else None
    store = await open_store(
        settings.store,
        StoreOptions(
            data_dir=settings.data_dir,
            sqlite_synchronous=settings.sqlite_synchronous,
            pool_min=settings.store_pool_min,
            pool_max=settings.store_pool_max,
            timeout=settings.store_timeout,
        ),
    )
    model = ModelServiceClient(
        settings.model_service,
        ModelServiceAccess(
            balancing=settings.model_service_balancing,
            timeout=settings.model_timeout,
            token_file=settings.model_service_token_file,
            tls_ca=settings.model_service_tls_ca,
            tls_cert=settings.model_service_tls_cert,
            tls_key=settings.model_service_tls_key,
        ),
    )
    threads = Threads(
        store,
        ProjectTrust(settings.config_home, max_projects=settings.max_trusted_projects),
        default_model=settings.default_model,
        max_spawn_depth=settings.max_spawn_depth,
        max_instructions_bytes=settings.max_instructions_bytes,
        trust_roots=settings.trust_root_paths(),
    )
    turns = Turns(
        store,
        threads,
        model,
        limits=TurnLimits(
            settings.max_item_bytes, settings.max_turn_bytes, settings.max_history_bytes
        ),
        tokens=RateLimit(settings.rate_limit_tokens, "model tokens"),
        histories=Histories(settings.history_cache_bytes),
    )
    replica = Replica(
        store,
        lease=settings.turn_lease,
        interrupt=turns.interrupt_turn,
        has_turns=turns.has_running,
        request_ttl=settings.request_id_ttl,
    )
    turns.owner = replica.id
    await replica.start()
    servicer = ThreadServicer(threads, turns)

    def register(server: grpc.aio.Server) -> None:
        thread_service_pb2_grpc.add_ThreadServiceServicer_to_server(servicer, server)

    async def close() -> None:
        await turns.close()
        await replica.stop()
        await model.aclose()
        await store.close()

    name = thread_service_pb2.DESCRIPTOR.services_by_name["ThreadService"].full_name
    return Service(
        [name],
        register,
        close,
        turns.drain,
        edge=Edge(Authenticator(principals), RateLimit(settings.rate_limit_requests, "calls")),
        options=[
            ("grpc.max_receive_message_length", settings.max_turn_bytes + RECEIVE_MARGIN_BYTES),
            ("grpc.max_send_message_length", SEND_LIMIT_BYTES),
        ],
        healthy=lambda: store.healthy,
        wind_up=turns.interrupt_all,
    )
