"""How the API's messages look to a person: tables and short labels."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC

from google.protobuf.timestamp_pb2 import Timestamp
from rich.table import Table
from rich.text import Text

from spindle.cli.errors import status_line
from spindle.v1 import common_pb2 as c
from spindle.v1 import thread_service_pb2 as pb

_STYLES = {
    "active": "green",
    "archived": "yellow",
    "completed": "green",
    "running": "cyan",
    "interrupted": "yellow",
    "failed": "red",
}


def label(name: str, prefix: str) -> str:
    """An enum value's name without its prefix, in lower case: THREAD_ORIGIN_FORK -> fork."""
    short = name.removeprefix(prefix).lower().replace("_", " ")
    return "" if short == "unspecified" else short


def styled(text: str) -> Text:
    return Text(text, style=_STYLES.get(text, ""))


def when(stamp: Timestamp) -> str:
    """A timestamp in local time, to the second; "" when unset."""
    if not stamp.seconds and not stamp.nanos:
        return ""
    return stamp.ToDatetime(tzinfo=UTC).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def origin(value: int) -> str:
    return label(pb.ThreadOrigin.Name(value), "THREAD_ORIGIN_")


def thread_status(value: int) -> str:
    return label(pb.ThreadStatus.Name(value), "THREAD_STATUS_")


def turn_status(value: int) -> str:
    return label(pb.TurnStatus.Name(value), "TURN_STATUS_")


def usage(usage: c.Usage) -> str:
    return (
        f"{usage.input_tokens} input tokens ({usage.cached_input_tokens} cached), "
        f"{usage.output_tokens} output tokens"
    )


def labels(metadata: Iterable[tuple[str, str]]) -> str:
    return ", ".join(f"{key}={value}" for key, value in sorted(metadata))


def thread_details(thread: pb.Thread) -> Table:
    """One thread, a field a row."""
    table = Table(show_header=False, box=None, padding=(0, 2, 0, 0))
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    trust = thread.trust
    rows = [
        ("id", thread.id),
        ("parent", thread.parent_id),
        ("origin", origin(thread.origin)),
        ("session origin", origin(thread.session_origin)),
        ("depth", str(thread.depth)),
        ("status", thread_status(thread.status)),
        ("nickname", thread.agent_nickname),
        ("role", thread.agent_role),
        ("sub-agent kind", thread.sub_agent_kind),
        ("parent spawn call", thread.parent_spawn_call_id),
        ("prompt cache key", thread.prompt_cache_key),
        ("window generation", str(thread.window_generation)),
        ("model", thread.model),
        ("cwd", thread.cwd),
        ("trust", f"{trust.project_path} ({'trusted' if trust.trusted else 'not trusted'})"),
        ("instructions", thread.instructions),
        ("labels", labels(thread.metadata.items())),
        ("created", when(thread.create_time)),
        ("updated", when(thread.update_time)),
    ]
    for name, value in rows:
        if value:
            table.add_row(name, styled(value) if name == "status" else Text(value))
    return table


def threads_table(threads: list[pb.Thread]) -> Table:
    table = Table(box=None, padding=(0, 2, 0, 0), header_style="bold")
    for header in ("ID", "PARENT", "ORIGIN", "DEPTH", "STATUS", "NICKNAME", "MODEL", "CREATED"):
        table.add_column(header, no_wrap=header in ("ID", "PARENT", "CREATED"))
    for thread in threads:
        table.add_row(
            thread.id,
            thread.parent_id,
            origin(thread.origin),
            str(thread.depth),
            styled(thread_status(thread.status)),
            Text(thread.agent_nickname),
            Text(thread.model),
            when(thread.create_time),
        )
    return table


def item_kind(item: c.Item) -> str:
    kind = item.WhichOneof("kind")
    if kind == "message":
        return label(c.Role.Name(item.message.role), "ROLE_")
    return (kind or "").replace("_", " ")


def item_text(item: c.Item) -> str:
    kind = item.WhichOneof("kind")
    if kind == "message":
        return str(item.message.text)
    if kind == "function_call":
        call = item.function_call
        return f"{call.name}({call.arguments}) [{call.call_id}]"
    if kind == "function_call_output":
        output = item.function_call_output
        return f"[{output.call_id}] {output.output}"
    if kind == "reasoning":
        return str(item.reasoning.summary)
    if kind == "agent_message":
        message = item.agent_message
        return f"from {message.sender_thread_id}: {message.text}"
    return ""


def items_table(found: list[c.Item]) -> Table:
    table = Table(box=None, padding=(0, 2, 0, 0), header_style="bold")
    table.add_column("TURN", no_wrap=True)
    table.add_column("KIND", no_wrap=True)
    table.add_column("TEXT", overflow="fold")
    for item in found:
        table.add_row(item.turn_id, item_kind(item), Text(item_text(item)))
    return table


def turns_table(turns: list[pb.Turn]) -> Table:
    table = Table(box=None, padding=(0, 2, 0, 0), header_style="bold")
    for header in ("ID", "STATUS", "INPUT", "CACHED", "OUTPUT", "STARTED", "ERROR"):
        table.add_column(
            header,
            no_wrap=header != "ERROR",
            justify="right" if header in ("INPUT", "CACHED", "OUTPUT") else "left",
        )
    for turn in turns:
        table.add_row(
            turn.id,
            styled(turn_status(turn.status)),
            str(turn.usage.input_tokens),
            str(turn.usage.cached_input_tokens),
            str(turn.usage.output_tokens),
            when(turn.create_time),
            Text(status_line(turn.error)),
        )
    return table
