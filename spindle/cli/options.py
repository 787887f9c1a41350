"""The options every client command takes: where the thread-service is, the
credentials to call it with, and `--json`. Each has an environment variable,
so a shell can set them once."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import click
from click.core import ParameterSource

from spindle.cli.client import DEFAULT_TARGET, Client, Connection, read_token
from spindle.cli.output import Output

Command = Callable[..., Any]

_OPTIONS: list[Callable[[Command], Command]] = [
    click.option(
        "--json",
        "as_json",
        is_flag=True,
        help="Print JSON (the API's messages, proto field names) instead of tables: "
        "one object per line for lists and streams.",
    ),
    click.option(
        "--target",
        envvar="SPINDLE_TARGET",
        default=DEFAULT_TARGET,
        show_default=True,
        metavar="HOST:PORT",
        help="The thread-service (any gRPC target). Env: SPINDLE_TARGET.",
    ),
    click.option(
        "--token",
        envvar="SPINDLE_TOKEN",
        default="",
        metavar="TOKEN",
        help="Bearer token to send. Env: SPINDLE_TOKEN.",
    ),
    click.option(
        "--token-file",
        envvar="SPINDLE_TOKEN_FILE",
        default="",
        metavar="PATH",
        help="File holding the bearer token (kept out of process listings). "
        "Env: SPINDLE_TOKEN_FILE.",
    ),
    click.option(
        "--tls",
        is_flag=True,
        envvar="SPINDLE_TLS",
        help="Use TLS, trusting the system's CAs (implied by the options below). Env: SPINDLE_TLS.",
    ),
    click.option(
        "--tls-ca",
        envvar="SPINDLE_TLS_CA",
        default="",
        metavar="PEM",
        help="CA certificate to trust for the service's certificate. Env: SPINDLE_TLS_CA.",
    ),
    click.option(
        "--client-cert",
        envvar="SPINDLE_CLIENT_CERT",
        default="",
        metavar="PEM",
        help="Client certificate, for mutual TLS. Env: SPINDLE_CLIENT_CERT.",
    ),
    click.option(
        "--client-key",
        envvar="SPINDLE_CLIENT_KEY",
        default="",
        metavar="PEM",
        help="The client certificate's key. Env: SPINDLE_CLIENT_KEY.",
    ),
]


def client_command(command: Command) -> Command:
    """Adds the shared options to a command, which receives instead an open
    `client` (closed when it returns) and `out`, the chosen output."""

    @functools.wraps(command)
    def wrapper(
        *args: Any,
        as_json: bool,
        target: str,
        token: str,
        token_file: str,
        tls: bool,
        tls_ca: str,
        client_cert: str,
        client_key: str,
        **kwargs: Any,
    ) -> Any:
        connection = Connection(
            target=target,
            token=_token(token, token_file),
            tls=tls,
            tls_ca=tls_ca,
            client_cert=client_cert,
            client_key=client_key,
        )
        with Client(connection) as client:
            return command(*args, client=client, out=Output(as_json), **kwargs)

    decorated: Command = wrapper
    for option in reversed(_OPTIONS):
        decorated = option(decorated)
    return decorated


def _token(token: str, token_file: str) -> str:
    """The token to send: a command-line option wins over an environment
    variable; both token options from the same place are a usage error."""
    if not (token and token_file):
        return token or (read_token(token_file) if token_file else "")
    context = click.get_current_context()
    source = context.get_parameter_source("token")
    file_source = context.get_parameter_source("token_file")
    if source == file_source:
        raise click.UsageError("give --token or --token-file, not both")
    return token if source == ParameterSource.COMMANDLINE else read_token(token_file)
