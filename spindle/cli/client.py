"""The connection to the thread-service: channel, TLS, the bearer token every
call carries, and the stub of the public API."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click
import grpc

from spindle import tls
from spindle.settings import SettingsError
from spindle.v1 import thread_service_pb2_grpc as pb_grpc

DEFAULT_TARGET = "127.0.0.1:50051"
# A unary call that takes longer than this is a service in trouble; turns
# stream without a deadline, for as long as the model takes.
CALL_TIMEOUT_SECONDS = 30.0

R = TypeVar("R")


@dataclass(frozen=True)
class Connection:
    """Where the thread-service is and how to prove who we are to it."""

    target: str = DEFAULT_TARGET
    token: str = ""
    tls: bool = False
    tls_ca: str = ""
    client_cert: str = ""
    client_key: str = ""

    @property
    def uses_tls(self) -> bool:
        return self.tls or bool(self.tls_ca or self.client_cert or self.client_key)


def read_token(path: str) -> str:
    """The token in a file (surrounding whitespace dropped); a usage error if unreadable."""
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise click.BadParameter(f"cannot read {path}: {exc}", param_hint="--token-file") from None
    if not token:
        raise click.BadParameter(f"{path} is empty", param_hint="--token-file")
    return token


class Client:
    """A channel to the thread-service and its stub; closes the channel on exit."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.metadata: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {connection.token}"),) if connection.token else ()
        )
        self.channel = _open_channel(connection)
        self.threads = pb_grpc.ThreadServiceStub(self.channel)

    def call(self, method: Callable[..., R], request: Any) -> R:
        """A unary call of the stub, with our credentials and a deadline."""
        return method(request, metadata=self.metadata, timeout=CALL_TIMEOUT_SECONDS)

    def stream(self, method: Callable[..., R], request: Any) -> R:
        """A streaming call of the stub, with our credentials and no deadline."""
        return method(request, metadata=self.metadata)

    def listing(
        self, method: Callable[..., Any], request: Any, field: str, limit: int = 0
    ) -> Iterator[Any]:
        """Every element of a paged listing, page after page (at most `limit`; 0: all)."""
        count = 0
        while True:
            page = self.call(method, request)
            for element in getattr(page, field):
                yield element
                count += 1
                if count == limit:
                    return
            if not page.next_page_token:
                return
            request.page_token = page.next_page_token

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _open_channel(connection: Connection) -> grpc.Channel:
    if not connection.uses_tls:
        return grpc.insecure_channel(connection.target)
    if bool(connection.client_cert) != bool(connection.client_key):
        raise click.UsageError("--client-cert and --client-key go together")
    try:
        credentials = tls.channel_credentials(
            connection.tls_ca, connection.client_cert, connection.client_key
        )
    except SettingsError as exc:
        raise click.UsageError(str(exc)) from None
    return grpc.secure_channel(connection.target, credentials)
