"""Assembling the model-service from its settings."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import grpc

from model_service.router import Router
from model_service.servicer import ModelServicer
from model_service.settings import ModelServiceSettings
from model_service.windows import Windows
from spindle.auth import Authenticator, Principals
from spindle.edge import Edge
from spindle.serving import Service
from spindle.v1 import model_service_pb2, model_service_pb2_grpc


async def build(
    settings: ModelServiceSettings, environ: Mapping[str, str] | None = None
) -> Service:
    principals = Principals(Path(settings.auth_file)) if settings.auth_file else None
    router = Router.from_settings(settings, environ)
    servicer = ModelServicer(router, Windows(settings.window_cache_bytes))

    def register(server: grpc.aio.Server) -> None:
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(servicer, server)

    name = model_service_pb2.DESCRIPTOR.services_by_name["ModelService"].full_name
    return Service([name], register, router.aclose, edge=Edge(Authenticator(principals)))
