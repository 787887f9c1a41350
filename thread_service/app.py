"""Assembling the thread-service from its settings."""

from __future__ import annotations

import logging

import grpc

from spindle.serving import Service
from spindle.v1 import thread_service_pb2, thread_service_pb2_grpc
from thread_service.model_client import ModelServiceClient
from thread_service.servicer import ThreadServicer
from thread_service.settings import ThreadServiceSettings
from thread_service.sqlite_store import SQLiteStore
from thread_service.threads import Threads
from thread_service.trust import ProjectTrust
from thread_service.turns import Turns

log = logging.getLogger(__name__)


async def build(settings: ThreadServiceSettings) -> Service:
    store = await SQLiteStore.open(settings.data_dir, settings.sqlite_synchronous)
    stale = await store.interrupt_running_turns("the service stopped while the turn ran")
    if stale:
        log.warning("marked %d turn(s) left running by a previous process as interrupted", stale)
    model = ModelServiceClient(settings.model_service)
    threads = Threads(
        store,
        ProjectTrust(settings.config_home),
        default_model=settings.default_model,
        max_spawn_depth=settings.max_spawn_depth,
    )
    turns = Turns(store, threads, model)
    servicer = ThreadServicer(threads, turns)

    def register(server: grpc.aio.Server) -> None:
        thread_service_pb2_grpc.add_ThreadServiceServicer_to_server(servicer, server)

    async def close() -> None:
        await turns.close()
        await model.aclose()
        await store.close()

    name = thread_service_pb2.DESCRIPTOR.services_by_name["ThreadService"].full_name
    return Service([name], register, close, turns.drain)
