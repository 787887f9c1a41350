"""`spindle turns THREAD`: a thread's turns, how each ended and what it used."""

from __future__ import annotations

import click

from spindle.cli.client import Client
from spindle.cli.options import client_command
from spindle.cli.output import Output
from spindle.cli.tables import turns_table
from spindle.v1 import thread_service_pb2 as pb


@click.command()
@click.argument("thread")
@click.option("--limit", type=click.IntRange(min=0), default=0, help="At most this many (0: all).")
@client_command
def turns(client: Client, out: Output, thread: str, limit: int) -> None:
    """List THREAD's turns, oldest first: status, usage (cached tokens too) and error."""
    request = pb.ListTurnsRequest(thread_id=thread)
    found = client.listing(client.threads.ListTurns, request, "turns", limit)
    out.rows(found, turns_table, "no turns")
