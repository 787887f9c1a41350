"""Prometheus metrics: the endpoint each service serves, and the RPC metrics
both record at their gRPC edge.

Off by default (`metrics_listen` empty): then `on` stays False and every
hook returns after testing it, so metrics cost nothing unless served. On,
`serve` starts prometheus-client's own HTTP server in a thread beside the
gRPC server; it answers `GET /metrics` with the text exposition of the
process's default registry (these metrics, and the client's `process_*` and
`python_*` ones). What it exposes is listed in the README's "Metrics"
section: counts, durations, and the names of methods, status codes,
configured providers and models, never a thread id, a message or a secret.

Labels are bounded: a method is one the server registered, a code one of
gRPC's, and caller-controlled values (model names) are reduced to what the
configuration names (`bounded`).
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from wsgiref.simple_server import WSGIServer

import grpc
from prometheus_client import Counter, Histogram, disable_created_metrics, start_http_server

from spindle.errors import StartupError

log = logging.getLogger(__name__)

# Latencies from a millisecond to the length of a long model call.
LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
)  # fmt: skip
OTHER = "other"

on = False

RPC_REQUESTS = Counter(
    "spindle_rpc_requests",
    "gRPC calls served, by service, method and the status code they ended with",
    ["service", "method", "code"],
)
RPC_DURATION = Histogram(
    "spindle_rpc_duration_seconds",
    "Time from a call's arrival to its end (a stream's last message), by service and method",
    ["service", "method"],
    buckets=LATENCY_BUCKETS,
)


def serve(listen: str) -> WSGIServer:
    """Serve the metrics on `listen` (HOST:PORT, port 0 picks one) from now on."""
    global on
    # The `_created` series would double every series for a timestamp nobody graphs.
    disable_created_metrics()  # type: ignore[no-untyped-call]
    host, _, port = listen.rpartition(":")
    try:
        server, _thread = start_http_server(int(port), host.strip("[]"))
    except OSError as exc:
        raise StartupError(f"cannot serve metrics on {listen}: {exc.strerror or exc}") from None
    on = True
    return server


def stop(server: WSGIServer) -> None:
    global on
    on = False
    server.shutdown()
    server.server_close()


def bounded(value: str, known: Collection[str]) -> str:
    """`value` as a label: itself when `known` names it, else "other"."""
    return value if value in known else OTHER


class RpcMetrics:
    """The RPC metrics of one method, their children bound once: a call then
    costs a dictionary lookup, an increment and an observation."""

    __slots__ = ("_codes", "_duration", "method", "service")

    def __init__(self, full_method: str) -> None:
        self.service, _, self.method = full_method.lstrip("/").rpartition("/")
        self._duration = RPC_DURATION.labels(self.service, self.method)
        self._codes: dict[grpc.StatusCode, Counter] = {}

    def observe(self, code: grpc.StatusCode, seconds: float) -> None:
        counter = self._codes.get(code)
        if counter is None:
            counter = self._codes[code] = RPC_REQUESTS.labels(self.service, self.method, code.name)
        counter.inc()
        self._duration.observe(seconds)
