"""Running a `grpc.aio` server the way both services need it.

Health checking and reflection are registered for every service, and every
other call passes the service's `Edge` (decoding, authentication, rate).
TLS, when configured, serves certificates reloaded as they change. Health
follows the service's own `healthy()` (the thread-service reports NOT_SERVING
while its store cannot write). SIGTERM and SIGINT flip health to NOT_SERVING,
stop taking calls, give in-flight calls `grace` seconds, then run the
service's own shutdown (which finishes and records interrupted turns) before
the process exits. A process also sets up its logging (`spindle.logs`), its
tracing (`spindle.tracing`) and, when `metrics_listen` is set, the metrics
endpoint (`spindle.metrics`), and flushes its last spans as it exits.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from spindle import logs, metrics, reflection, settings, tls, tracing
from spindle.edge import Edge
from spindle.errors import StartupError
from spindle.settings import ServiceSettings

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 64 * 1024 * 1024

SERVER_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.so_reuseport", 0),
    # Clients may ping every 10 s to see that the connection lives.
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
]
CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
]
# A channel between the services pings every 20 s and gives up on a peer
# silent for 10 s more, so a frozen process fails calls instead of holding them.
KEEPALIVE_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]
HEALTH_POLL_SECONDS = 0.5
# After the grace period and the wind-up, how long calls get to send their end.
WIND_UP_SECONDS = 2.0


class Service:
    """What a service hands to `serve`: how to register, and how to close."""

    def __init__(
        self,
        names: Sequence[str],
        register: Callable[[grpc.aio.Server], None],
        close: Callable[[], Awaitable[None]],
        drain: Callable[[], None] = lambda: None,
        *,
        edge: Edge | None = None,
        options: Sequence[tuple[str, Any]] = (),
        healthy: Callable[[], bool] | None = None,
        wind_up: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.names = list(names)
        self.register = register
        self.close = close
        # Called as shutdown begins, before in-flight calls are cut.
        self.drain = drain
        self.edge = edge
        # Server options of this service, over SERVER_OPTIONS.
        self.options = list(options)
        # What health checking follows, polled; None: always serving.
        self.healthy = healthy
        # Run when the grace period ends, before calls are cut: the
        # thread-service ends its turns there, so their streams say how.
        self.wind_up = wind_up


class RunningServer:
    """A started server; `stop()` runs the graceful shutdown."""

    def __init__(
        self, server: grpc.aio.Server, health_servicer: health.aio.HealthServicer, service: Service
    ) -> None:
        self.server = server
        self.health = health_servicer
        self.service = service
        self.port = 0
        self._watch: asyncio.Task[None] | None = None

    async def _follow_health(self, healthy: Callable[[], bool]) -> None:
        """Report what the service says of itself, as it changes."""
        serving = True
        while True:
            await asyncio.sleep(HEALTH_POLL_SECONDS)
            now = healthy()
            if now != serving:
                serving = now
                status = health_pb2.HealthCheckResponse.SERVING
                if not now:
                    status = health_pb2.HealthCheckResponse.NOT_SERVING
                for name in ["", *self.service.names]:
                    await self.health.set(name, status)

    async def stop(self, grace: float) -> None:
        if self._watch is not None:
            self._watch.cancel()
            await asyncio.gather(self._watch, return_exceptions=True)
        await self.health.enter_graceful_shutdown()
        self.service.drain()
        if self.service.wind_up is None:
            await self.server.stop(grace)
        else:
            # New calls are refused at once; in-flight ones get `grace`, then
            # the service winds up what runs (its calls end by themselves),
            # and a last moment passes before anything left is cut.
            stopping = asyncio.ensure_future(self.server.stop(grace + WIND_UP_SECONDS))
            done, _ = await asyncio.wait({stopping}, timeout=grace)
            if not done:
                await self.service.wind_up()
            await stopping
        await self.service.close()


async def start(
    service: Service, listen: str, credentials: grpc.ServerCredentials | None = None
) -> RunningServer:
    server = grpc.aio.server(
        # gRPC takes the first value of an option given twice: the service's win.
        options=[*service.options, *SERVER_OPTIONS],
        interceptors=[service.edge] if service.edge is not None else None,
    )
    service.register(server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable([*service.names, health.SERVICE_NAME], server)
    running = RunningServer(server, health_servicer, service)
    try:
        if credentials is None:
            running.port = server.add_insecure_port(listen)
        else:
            running.port = server.add_secure_port(listen, credentials)
    except RuntimeError as exc:
        raise StartupError(f"cannot listen on {listen}: {exc}") from None
    await server.start()
    for name in ["", *service.names]:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    if service.healthy is not None:
        running._watch = asyncio.create_task(running._follow_health(service.healthy))
    return running


def credentials_of(config: ServiceSettings) -> grpc.ServerCredentials | None:
    """The server's TLS credentials from its settings; None for plaintext."""
    if not config.tls_cert:
        return None
    return tls.server_credentials(config.tls_cert, config.tls_key, config.tls_client_ca)


async def run_until_signal(service: Service, config: ServiceSettings, label: str) -> None:
    """Serve until SIGTERM or SIGINT, then shut down gracefully. The signals
    are caught before anything is served, so one that arrives as the service
    starts still stops it gracefully."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        # A signal the parent ignored stays ignored (POSIX custom): that is
        # how scripts/serve keeps Ctrl-C to itself and stops the services in order.
        if signal.getsignal(signum) is not signal.SIG_IGN:
            loop.add_signal_handler(signum, stop.set)
    metrics_server = None
    if config.metrics_listen:
        metrics_server = metrics.serve(config.metrics_listen)
        metrics_host = config.metrics_listen.rpartition(":")[0]
        metrics_port = metrics_server.server_port
        log.info("%s metrics on http://%s:%d/metrics", label, metrics_host, metrics_port)
    running = await start(service, config.listen, credentials_of(config))
    host = config.listen.rpartition(":")[0]
    log.info("%s listening on %s:%d", label, host, running.port)
    if not config.tls_cert and not settings.is_loopback(host):
        log.warning(
            "%s serves %s without TLS: tokens and data cross the network in clear", label, host
        )
    await stop.wait()
    log.info("%s stopping: in-flight calls get %.1f s", label, config.shutdown_grace)
    await running.stop(config.shutdown_grace)
    if metrics_server is not None:
        metrics.stop(metrics_server)
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
    """A service process: settings, logging, serving until a signal. Exit codes:
    1 for unusable settings, 2 for a failure to start (a busy port, a data
    folder in use or unusable, a database out of reach), each told in one line."""
    try:
        config = settings.load(
            settings_class,
            sys.argv[1:] if argv is None else argv,
            prog=f"python -m {label.replace('-', '_')}",
            description=description,
        )
        tracing.setup(config.tracing, label)
    except settings.SettingsError as exc:
        sys.exit(f"{label}: {exc}")
    logs.configure(config.log_level, config.log_format, config.log_stream)

    async def run() -> None:
        service = await build(config)
        await run_until_signal(service, config, label)

    try:
        asyncio.run(run())
    except (StartupError, settings.SettingsError) as exc:
        log.error("%s", exc)
        sys.exit(2)
    finally:
        tracing.shutdown()
