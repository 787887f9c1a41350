"""Running a `grpc.aio` server the way both services need it.

Health checking and reflection are registered for every service; SIGTERM and
SIGINT flip health to NOT_SERVING, stop taking calls, give in-flight calls
`grace` seconds, then run the service's own shutdown (which finishes and
records interrupted turns) before the process exits.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from spindle import settings
from spindle.errors import StartupError
from spindle.settings import ServiceSettings

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 64 * 1024 * 1024

SERVER_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.so_reuseport", 0),
]
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
]


class Service:
    """What a service hands to `serve`: how to register, and how to close."""

    def __init__(
        self,
        names: Sequence[str],
        register: Callable[[grpc.aio.Server], None],
        close: Callable[[], Awaitable[None]],
        drain: Callable[[], None] = lambda: None,
    ) -> None:
        self.names = list(names)
        self.register = register
        self.close = close
        # Called as shutdown begins, before in-flight calls are cut.
        self.drain = drain


class RunningServer:
    """A started server; `stop()` runs the graceful shutdown."""

    def __init__(
        self, server: grpc.aio.Server, health_servicer: health.aio.HealthServicer, service: Service
    ) -> None:
        self.server = server
        self.health = health_servicer
        self.service = service
        self.port = 0

    async def stop(self, grace: float) -> None:
        await self.health.enter_graceful_shutdown()
        self.service.drain()
        await self.server.stop(grace)
        await self.service.close()


async def start(service: Service, listen: str) -> RunningServer:
    server = grpc.aio.server(options=SERVER_OPTIONS)
    service.register(server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [*service.names, health.SERVICE_NAME, reflection.SERVICE_NAME], server
    )
    running = RunningServer(server, health_servicer, service)
    try:
        running.port = server.add_insecure_port(listen)
    except RuntimeError as exc:
        raise StartupError(f"cannot listen on {listen}: {exc}") from None
    await server.start()
    for name in ["", *service.names]:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return running


async def run_until_signal(service: Service, listen: str, grace: float, label: str) -> None:
    """Serve until SIGTERM or SIGINT, then shut down gracefully."""
    running = await start(service, listen)
    host = listen.rpartition(":")[0]
    log.info("%s listening on %s:%d", label, host, running.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        # A signal the parent ignored stays ignored (POSIX custom): that is
        # how scripts/serve keeps Ctrl-C to itself and stops the services in order.
        if signal.getsignal(signum) is not signal.SIG_IGN:
            loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    log.info("%s stopping: in-flight calls get %.1f s", label, grace)
    await running.stop(grace)
    log.info("%s stopped", label)


S = TypeVar("S", bound=ServiceSettings)


def main(
    settings_class: type[S],
    build: Callable[[S], Awaitable[Service]],
    *,
    label: str,
    description: str,
    argv: Sequence[str] | None = None,
) -> None:
    """A service process: settings, logging, serving until a signal, exit codes
    (1 for unusable settings, 2 for a failure to start such as a busy port)."""
    try:
        config = settings.load(
            settings_class,
            sys.argv[1:] if argv is None else argv,
            prog=f"python -m {label.replace('-', '_')}",
            description=description,
        )
    except settings.SettingsError as exc:
        sys.exit(f"{label}: {exc}")
    logging.basicConfig(
        level=config.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )

    async def run() -> None:
        service = await build(config)
        await run_until_signal(service, config.listen, config.shutdown_grace, label)

    try:
        asyncio.run(run())
    except StartupError as exc:
        log.error("%s", exc)
        sys.exit(2)
