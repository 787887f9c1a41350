"""`spindle threads ...`: one command per thread RPC of the public API, each
a request built from its options and the answer printed."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from typing import Any

import click

from spindle.cli.client import Client
from spindle.cli.options import Command, client_command
from spindle.cli.output import Output
from spindle.cli.tables import items_table, thread_details, threads_table
from spindle.v1 import thread_service_pb2 as pb

_STATUS = {
    "active": pb.THREAD_STATUS_ACTIVE,
    "archived": pb.THREAD_STATUS_ARCHIVED,
    "all": pb.THREAD_STATUS_UNSPECIFIED,
}


def parse_labels(
    _: click.Context, param: click.Parameter, values: tuple[str, ...]
) -> dict[str, str]:
    """KEY=VALUE pairs, checked for their form here and for their limits by the service."""
    labels = {}
    for value in values:
        key, sep, text = value.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{value!r} is not KEY=VALUE", param=param)
        labels[key] = text
    return labels


def _label_option(help_text: str) -> Callable[[Command], Command]:
    return click.option(
        "--label",
        "labels",
        multiple=True,
        metavar="KEY=VALUE",
        callback=parse_labels,
        help=help_text,
    )


def _new_thread_options(command: Command) -> Command:
    """What a started or spawned thread may be given."""
    options: list[Callable[[Command], Command]] = [
        click.option("--nickname", default="", help="A short name for the agent."),
        click.option("--role", default="", help="What the agent does."),
        click.option("--model", default="", help="The model its turns call."),
        click.option("--instructions", default="", help="Instructions for every model call."),
        _label_option("A label of the thread (repeatable)."),
        click.option(
            "--request-id",
            default="",
            metavar="UUID",
            help="Makes a retry safe: a repeat with the same id acts once.",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _spawn_options(command: Command) -> Command:
    return click.option(
        "--kind",
        default="",
        help="The sub-agent kind its model calls carry (default: thread_spawn).",
    )(_new_thread_options(command))


def _show_thread(out: Output, response: Any) -> None:
    out.show(response, lambda r: thread_details(r.thread))


@click.group()
def threads() -> None:
    """Start, list, read, spawn, fork, resume and archive threads."""


@threads.command()
@click.option(
    "--cwd",
    default=".",
    show_default=True,
    help="The thread's working directory, as the service sees it (made absolute here).",
)
@_new_thread_options
@client_command
def start(client: Client, out: Output, cwd: str, **fields: Any) -> None:
    """Start a root thread (and trust its project)."""
    request = pb.StartThreadRequest(
        cwd=os.path.abspath(cwd),
        model=fields["model"],
        instructions=fields["instructions"],
        agent_nickname=fields["nickname"],
        agent_role=fields["role"],
        request_id=fields["request_id"],
        metadata=fields["labels"],
    )
    response = client.call(client.threads.StartThread, request)
    for warning in response.warnings:
        out.warn(warning)
    _show_thread(out, response)


def _spawn_request(parent: str, fields: dict[str, Any]) -> pb.SpawnThreadRequest:
    return pb.SpawnThreadRequest(
        parent_id=parent,
        agent_nickname=fields["nickname"],
        agent_role=fields["role"],
        sub_agent_kind=fields["kind"],
        model=fields["model"],
        instructions=fields["instructions"],
        request_id=fields["request_id"],
        metadata=fields["labels"],
    )


@threads.command()
@click.argument("parent")
@_spawn_options
@client_command
def spawn(client: Client, out: Output, parent: str, **fields: Any) -> None:
    """Spawn a fresh sub-agent thread under PARENT: empty history, its own prompt cache key."""
    response = client.call(client.threads.SpawnThread, _spawn_request(parent, fields))
    _show_thread(out, response)


@threads.command()
@click.argument("parent")
@click.option(
    "--last-n",
    type=click.IntRange(min=1),
    default=None,
    metavar="N",
    help="Inherit only the parent's last N turns (default: its whole history).",
)
@click.option(
    "--at-turn",
    default="",
    metavar="TURN_ID",
    help="Fork at this ended turn of the parent (default: its last ended turn).",
)
@click.option(
    "--spawn-call-id",
    default="",
    metavar="ID",
    help="The parent's spawn call asking for the fork; the same id again returns "
    "the same child (default: a new id each time).",
)
@_spawn_options
@client_command
def fork(
    client: Client,
    out: Output,
    parent: str,
    last_n: int | None,
    at_turn: str,
    spawn_call_id: str,
    **fields: Any,
) -> None:
    """Fork PARENT: a sub-agent that inherits its history and its prompt cache key."""
    request = _spawn_request(parent, fields)
    request.fork.CopyFrom(
        pb.ForkOptions(
            parent_spawn_call_id=spawn_call_id or f"call_cli_{uuid.uuid4().hex}",
            mode=pb.FORK_MODE_LAST_N_TURNS if last_n else pb.FORK_MODE_FULL_HISTORY,
            last_n_turns=last_n or 0,
            at_turn_id=at_turn,
        )
    )
    response = client.call(client.threads.SpawnThread, request)
    _show_thread(out, response)


@threads.command("list")
@click.option("--parent", default="", metavar="THREAD_ID", help="Only children of this thread.")
@click.option(
    "--status",
    type=click.Choice(list(_STATUS)),
    default="active",
    show_default=True,
    help="Which threads, by status.",
)
@_label_option("Only threads with this label (repeatable: all of them).")
@click.option(
    "--order-by",
    type=click.Choice(["create_time", "update_time"]),
    default="create_time",
    show_default=True,
)
@click.option("--desc", is_flag=True, help="Newest first.")
@click.option("--limit", type=click.IntRange(min=0), default=0, help="At most this many (0: all).")
@client_command
def list_threads(
    client: Client,
    out: Output,
    parent: str,
    status: str,
    labels: dict[str, str],
    order_by: str,
    desc: bool,
    limit: int,
) -> None:
    """List your threads, page after page."""
    request = pb.ListThreadsRequest(
        parent_id=parent,
        status=_STATUS[status],
        include_archived=status == "all",
        metadata=labels,
        order_by=f"{order_by} desc" if desc else order_by,
    )
    found = client.listing(client.threads.ListThreads, request, "threads", limit)
    out.rows(found, threads_table, "no threads")


@threads.command()
@click.argument("thread")
@client_command
def show(client: Client, out: Output, thread: str) -> None:
    """Show one thread."""
    response = client.call(client.threads.GetThread, pb.GetThreadRequest(thread_id=thread))
    _show_thread(out, response)


@threads.command()
@click.argument("thread")
@client_command
def resume(client: Client, out: Output, thread: str) -> None:
    """Open a new session of THREAD with its stored history; from now on its
    prompt cache key is its own id."""
    response = client.call(client.threads.ResumeThread, pb.ResumeThreadRequest(thread_id=thread))
    _show_thread(out, response)
    if not out.as_json:
        out.note(f"history: {response.history_length} items")


@threads.command()
@click.argument("thread")
@click.option(
    "--interrupt-running", is_flag=True, help="Interrupt a running turn first (else refused)."
)
@client_command
def archive(client: Client, out: Output, thread: str, interrupt_running: bool) -> None:
    """Archive THREAD: it stays readable, but takes no turns, resumes or children."""
    request = pb.ArchiveThreadRequest(thread_id=thread, interrupt_running=interrupt_running)
    _show_thread(out, client.call(client.threads.ArchiveThread, request))


@threads.command()
@click.argument("thread")
@client_command
def unarchive(client: Client, out: Output, thread: str) -> None:
    """Make an archived THREAD active again."""
    request = pb.UnarchiveThreadRequest(thread_id=thread)
    _show_thread(out, client.call(client.threads.UnarchiveThread, request))


@threads.command()
@click.argument("thread")
@click.option("--limit", type=click.IntRange(min=0), default=0, help="At most this many (0: all).")
@client_command
def items(client: Client, out: Output, thread: str, limit: int) -> None:
    """List THREAD's history, oldest first, inherited items included."""
    request = pb.ListThreadItemsRequest(thread_id=thread)
    found = client.listing(client.threads.ListThreadItems, request, "items", limit)
    out.rows(found, items_table, "no items")
