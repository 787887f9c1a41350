"""Assembling the thread-service from its settings."""

from __future__ import annotations

import grpc

from spindle.serving import Service
from spindle.v1 import thread_service_pb2, thread_service_pb2_grpc
from thread_service.model_client import ModelServiceClient
from thread_service.replica import Replica
from thread_service.servicer import ThreadServicer
from thread_service.settings import ThreadServiceSettings
from thread_service.stores.backend import StoreOptions, open_store
from thread_service.threads import Threads
from thread_service.trust import ProjectTrust
from thread_service.turns import Turns


async def build(settings: ThreadServiceSettings) -> Service:
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
    model = ModelServiceClient(settings.model_service, settings.model_service_balancing)
    threads = Threads(
        store,
        ProjectTrust(settings.config_home),
        default_model=settings.default_model,
        max_spawn_depth=settings.max_spawn_depth,
    )
    turns = Turns(store, threads, model)
    replica = Replica(
        store,
        lease=settings.turn_lease,
        interrupt=turns.interrupt_turn,
        has_turns=turns.has_running,
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
    return Service([name], register, close, turns.drain)
