"""The `spindle` command tree, and the one place where failures become
messages and exit codes."""

from __future__ import annotations

from typing import Any

import click
import grpc

from spindle.cli.chat import chat
from spindle.cli.errors import ExitCode, describe_call, exit_code_of
from spindle.cli.threads import threads
from spindle.cli.turns import turns
from spindle.cli.up import up


class SpindleGroup(click.Group):
    """Turns a failed call into its one-line error and exit code, and Ctrl-C
    into exit status 130, whichever command they happen in."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except grpc.RpcError as exc:
            click.echo(f"spindle: {describe_call(exc)}", err=True)
            raise click.exceptions.Exit(exit_code_of(exc.code())) from None
        except KeyboardInterrupt:
            click.echo(err=True)  # past the terminal's ^C
            raise click.exceptions.Exit(ExitCode.INTERRUPTED) from None


@click.group(cls=SpindleGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="spindle")
def cli() -> None:
    """Spindle's command line: threads and turns through the public gRPC API
    (SPINDLE_TARGET, default 127.0.0.1:50051), and `spindle up` to run the
    services. Exit codes: 0 ok, 1 other server error, 2 usage, 3 not found,
    4 unauthenticated or permission denied, 5 unavailable, 130 interrupted."""


cli.add_command(threads)
cli.add_command(turns)
cli.add_command(chat)
cli.add_command(up)


def main() -> None:
    cli(prog_name="spindle")
