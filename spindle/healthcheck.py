"""`python -m spindle.healthcheck [HOST:PORT] [SERVICE]`: a container health
probe that needs nothing but the image (no downloaded probe binary).

It asks the `grpc.health.v1.Health` service and exits 0 only when the answer
is SERVING; otherwise it prints one line saying why and exits 1 (Docker reads
any other non-zero code as reserved). SERVICE is a fully qualified service
name; empty (the default) means the server as a whole.

Without HOST:PORT it probes the service this container runs: the first of
SPINDLE_THREAD_LISTEN and SPINDLE_MODEL_LISTEN that accepts a connection, so
one HEALTHCHECK line in the Dockerfile fits both services.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

TIMEOUT_SECONDS = 3.0
LISTEN_VARIABLES = ("SPINDLE_THREAD_LISTEN", "SPINDLE_MODEL_LISTEN")
DEFAULT_LISTEN = ("127.0.0.1:50051", "127.0.0.1:50052")
USAGE = "usage: python -m spindle.healthcheck [HOST:PORT] [SERVICE]"


class Unreachable(Exception):
    """Nothing answered at the address."""


def local_address(listen: str) -> str:
    """Where to reach a server listening on `listen` from the same host: a
    wildcard host (0.0.0.0, [::], empty) means loopback."""
    host, _, port = listen.rpartition(":")
    if host in ("", "0.0.0.0", "*"):
        host = "127.0.0.1"
    elif host in ("[::]", "::"):
        host = "[::1]"
    return f"{host}:{port}"


def check(address: str, service: str = "", timeout: float = TIMEOUT_SECONDS) -> str:
    """The status name the server reports for `service`, e.g. "SERVING"."""
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as exc:
            code: grpc.StatusCode = exc.code()
            if code is grpc.StatusCode.UNAVAILABLE:
                raise Unreachable(f"{address}: unreachable ({exc.details()})") from None
            if code is grpc.StatusCode.DEADLINE_EXCEEDED:
                raise Unreachable(f"{address}: no answer within {timeout:g} s") from None
            if code is grpc.StatusCode.NOT_FOUND:
                return "SERVICE_UNKNOWN"
            return f"{code.name} ({exc.details()})"
    name: str = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    return name


def probe(addresses: Sequence[str], service: str = "", timeout: float = TIMEOUT_SECONDS) -> str:
    """ "" when the first reachable address reports SERVING, else one line why."""
    reasons = []
    for address in addresses:
        try:
            status = check(address, service, timeout)
        except Unreachable as exc:
            reasons.append(str(exc))
            continue
        if status == "SERVING":
            return ""
        label = f"{address} {service}" if service else address
        return f"{label}: {status}"
    return "; ".join(reasons) or "no address to probe"


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    environ = os.environ if environ is None else environ
    if len(args) > 2 or any(a.startswith("-") for a in args):
        print(USAGE, file=sys.stderr)
        return 1
    if args:
        addresses = [local_address(args[0])]
    else:
        addresses = [
            local_address(environ.get(name, default))
            for name, default in zip(LISTEN_VARIABLES, DEFAULT_LISTEN, strict=True)
        ]
    service = args[1] if len(args) == 2 else ""
    reason = probe(addresses, service)
    if reason:
        print(reason)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
