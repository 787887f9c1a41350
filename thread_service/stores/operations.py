"""The store's operations, written once for both backends.

Each operation is a transaction script: a generator that yields statements
and receives their results, so the logic and SQL live here once while a
backend only runs a script inside one transaction (`sqlite.py`,
`postgres.py`). Statements use `?` placeholders and the SQL that SQLite and
PostgreSQL share; columns are read by name.

How history is kept: a thread's own items are numbered by `seq` from 0
(`threads.item_count` is the next one, so an append locks the thread's row).
A fork does not copy its parent's items: `segments` rows point at runs of
ancestors' items, read through the `inheritable` flag each item got when it
was appended.
"""

from __future__ import annotations

import json
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from spindle import items
from spindle.errors import ErrorCode, FailedPrecondition, NotFound
from spindle.model import Usage
from thread_service.inheritance import InheritedThreadState
from thread_service.records import (
    Entry,
    Origin,
    ThreadRecord,
    TrustSource,
    TrustState,
    TurnError,
    TurnRecord,
    TurnStatus,
)
from thread_service.store import ForkSource, ThreadFilter

T = TypeVar("T")
Row = Mapping[str, Any]
Run = tuple[str, int, int]  # (thread id, from seq, to seq): a run of a thread's own items
# More rows than any listing holds; PostgreSQL and SQLite both take it as LIMIT.
NO_LIMIT = 2**62


@dataclass(frozen=True, slots=True)
class Statement:
    """One statement and what the script wants back: nothing, one row (or
    None), all rows, or the count of rows changed. `batch` runs it once per
    parameter tuple."""

    sql: str
    params: Sequence[Any] = ()
    result: Literal["none", "one", "all", "count"] = "none"
    batch: Sequence[Sequence[Any]] | None = None


class Conflict(Exception):
    """A uniqueness rule refused the statement; the backend throws it into the
    script at the statement's `yield`."""


Script = Generator[Statement, Any, T]


@dataclass(frozen=True, slots=True)
class Finished:
    """A script's end, with what it returned."""

    value: Any


def advance(
    script: Script[Any], result: Any = None, conflict: Conflict | None = None
) -> Statement | Finished:
    """Give a script its last statement's result (or throw it the conflict that
    statement met); its next statement, or how it finished. Both backends
    drive scripts with this: `advance(script)` starts one."""
    try:
        return script.throw(conflict) if conflict is not None else script.send(result)
    except StopIteration as stop:
        return Finished(stop.value)


def one(sql: str, *params: Any) -> Statement:
    return Statement(sql, params, "one")


def rows(sql: str, *params: Any) -> Statement:
    return Statement(sql, params, "all")


def count(sql: str, *params: Any) -> Statement:
    return Statement(sql, params, "count")


def batch(sql: str, params: Sequence[Sequence[Any]]) -> Statement:
    return Statement(sql, (), "none", params)


# Threads

_THREAD_COLUMNS = (
    "id",
    "parent_id",
    "origin",
    "session_origin",
    "depth",
    "agent_nickname",
    "agent_role",
    "sub_agent_kind",
    "parent_spawn_call_id",
    "inherited_prompt_cache_key",
    "window_generation",
    "cwd",
    "model",
    "instructions",
    "archived",
    "trust_project_path",
    "trust_trusted",
    "trust_source",
    "created_at",
    "updated_at",
    "tenant",
)
_THREADS = ", ".join(_THREAD_COLUMNS)


def _thread_values(thread: ThreadRecord) -> dict[str, Any]:
    trust = thread.trust
    return {
        "id": thread.id,
        "parent_id": thread.parent_id,
        "origin": thread.origin.value,
        "session_origin": thread.session_origin.value,
        "depth": thread.depth,
        "agent_nickname": thread.agent_nickname,
        "agent_role": thread.agent_role,
        "sub_agent_kind": thread.sub_agent_kind,
        "parent_spawn_call_id": thread.parent_spawn_call_id,
        "inherited_prompt_cache_key": thread.inherited.prompt_cache_key,
        "window_generation": thread.window_generation,
        "cwd": thread.cwd,
        "model": thread.model,
        "instructions": thread.instructions,
        "archived": int(thread.archived),
        "trust_project_path": trust.project_path if trust else None,
        "trust_trusted": int(trust.trusted) if trust else None,
        "trust_source": trust.source.value if trust else None,
        "created_at": thread.created_at,
        "updated_at": thread.updated_at,
        "tenant": thread.tenant,
    }


def thread_from_row(row: Row) -> ThreadRecord:
    trust = None
    if row["trust_project_path"] is not None:
        trust = TrustState(
            row["trust_project_path"], bool(row["trust_trusted"]), TrustSource(row["trust_source"])
        )
    return ThreadRecord(
        id=row["id"],
        parent_id=row["parent_id"],
        origin=Origin(row["origin"]),
        session_origin=Origin(row["session_origin"]),
        depth=row["depth"],
        agent_nickname=row["agent_nickname"],
        agent_role=row["agent_role"],
        sub_agent_kind=row["sub_agent_kind"],
        parent_spawn_call_id=row["parent_spawn_call_id"],
        inherited=InheritedThreadState(prompt_cache_key=row["inherited_prompt_cache_key"]),
        window_generation=row["window_generation"],
        cwd=row["cwd"],
        model=row["model"],
        instructions=row["instructions"],
        archived=bool(row["archived"]),
        trust=trust,
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        tenant=row["tenant"],
    )


def _insert_thread(thread: ThreadRecord) -> Script[None]:
    values = _thread_values(thread)
    marks = ", ".join("?" * len(values))
    yield Statement(
        f"INSERT INTO threads ({', '.join(values)}) VALUES ({marks})", [*values.values()]
    )


def create_thread(thread: ThreadRecord) -> Script[None]:
    yield from _insert_thread(thread)


def create_fork(child: ThreadRecord, source: ForkSource) -> Script[None]:
    parent = yield one("SELECT item_count FROM threads WHERE id = ?", source.parent_id)
    if parent is None:
        raise NotFound(f"parent thread {source.parent_id} does not exist")
    parts = [*(yield from _segments(source.parent_id))]
    parts.append((source.parent_id, 0, parent["item_count"]))
    if source.last_n_turns is not None:
        parts = yield from _last_turns(parts, source.last_n_turns)
    yield from _insert_thread(child)
    yield batch(
        "INSERT INTO segments (thread_id, position, source_thread_id, from_seq, to_seq) "
        "VALUES (?, ?, ?, ?, ?)",
        [(child.id, i, *part) for i, part in enumerate(p for p in parts if p[1] < p[2])],
    )


def _last_turns(parts: list[Run], wanted: int) -> Script[list[Run]]:
    """The end of `parts` that holds the last `wanted` turns, walking back."""
    kept: list[Run] = []
    for source, from_seq, to_seq in reversed(parts):
        starts = yield rows(
            "SELECT first_seq FROM turns WHERE thread_id = ? AND first_seq >= ? "
            "AND first_seq < ? ORDER BY first_seq DESC LIMIT ?",
            source,
            from_seq,
            to_seq,
            wanted,
        )
        if len(starts) >= wanted:
            kept.append((source, starts[wanted - 1]["first_seq"], to_seq))
            break
        kept.append((source, from_seq, to_seq))
        wanted -= len(starts)
    kept.reverse()
    return kept


def get_thread(thread_id: str) -> Script[ThreadRecord | None]:
    row = yield one(f"SELECT {_THREADS} FROM threads WHERE id = ?", thread_id)
    return thread_from_row(row) if row else None


def update_thread(thread: ThreadRecord) -> Script[None]:
    yield Statement(
        "UPDATE threads SET session_origin = ?, inherited_prompt_cache_key = ?, "
        "window_generation = ?, archived = ?, updated_at = ? WHERE id = ?",
        (
            thread.session_origin.value,
            thread.inherited.prompt_cache_key,
            thread.window_generation,
            int(thread.archived),
            thread.updated_at,
            thread.id,
        ),
    )


def list_threads(
    which: ThreadFilter, after: tuple[float, str] | None, limit: int
) -> Script[list[ThreadRecord]]:
    where = ["tenant = ?"]
    params: list[Any] = [which.tenant]
    if which.parent_id is not None:
        where.append("parent_id = ?")
        params.append(which.parent_id)
    if not which.include_archived:
        where.append("archived = 0")
    if after is not None:
        where.append("(created_at > ? OR (created_at = ? AND id > ?))")
        params.extend([after[0], after[0], after[1]])
    found = yield rows(
        f"SELECT {_THREADS} FROM threads WHERE {' AND '.join(where)} "
        "ORDER BY created_at, id LIMIT ?",
        *params,
        limit,
    )
    return [thread_from_row(row) for row in found]


# History


def _segments(thread_id: str) -> Script[list[Run]]:
    found = yield rows(
        "SELECT source_thread_id, from_seq, to_seq FROM segments WHERE thread_id = ? "
        "ORDER BY position",
        thread_id,
    )
    return [(r["source_thread_id"], r["from_seq"], r["to_seq"]) for r in found]


def _history_parts(thread_id: str) -> Script[list[tuple[str, tuple[Any, ...]]]]:
    """The runs of a thread's history, as (condition on items, parameters): the
    inherited segments, read through `inheritable`, then its own items."""
    inherited = yield from _segments(thread_id)
    parts: list[tuple[str, tuple[Any, ...]]] = [
        ("thread_id = ? AND seq >= ? AND seq < ? AND inheritable = 1", s) for s in inherited
    ]
    parts.append(("thread_id = ?", (thread_id,)))
    return parts


def read_history(thread_id: str, offset: int, limit: int | None) -> Script[list[items.Item]]:
    result: list[items.Item] = []
    skip = offset
    wanted = NO_LIMIT if limit is None else limit
    for where, params in (yield from _history_parts(thread_id)):
        if len(result) >= wanted:
            break
        if skip:
            found = yield one(f"SELECT COUNT(*) AS n FROM items WHERE {where}", *params)
            if found["n"] <= skip:
                skip -= found["n"]
                continue
        bodies = yield rows(
            f"SELECT body FROM items WHERE {where} ORDER BY seq LIMIT ? OFFSET ?",
            *params,
            wanted - len(result),
            skip,
        )
        skip = 0
        result.extend(items.from_json(json.loads(row["body"])) for row in bodies)
    return result


def history_length(thread_id: str) -> Script[int]:
    total = 0
    for where, params in (yield from _history_parts(thread_id)):
        found = yield one(f"SELECT COUNT(*) AS n FROM items WHERE {where}", *params)
        total += found["n"]
    return total


def _append(thread_id: str, turn_id: str, entries: Sequence[Entry], now: float) -> Script[int]:
    """Append entries to a thread's own items; the seq of the first. The update
    of the thread's row comes first, so concurrent appends take turns."""
    row = yield one(
        "UPDATE threads SET item_count = item_count + ?, updated_at = ? WHERE id = ? "
        "RETURNING item_count",
        len(entries),
        now,
        thread_id,
    )
    if row is None:
        raise NotFound(f"thread {thread_id} does not exist")
    first = int(row["item_count"]) - len(entries)
    yield batch(
        "INSERT INTO items (thread_id, seq, turn_id, kind, inheritable, body) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        [
            (
                thread_id,
                first + i,
                turn_id,
                items.kind_of(entry.item),
                int(entry.inheritable),
                json.dumps(items.to_json(entry.item), ensure_ascii=False),
            )
            for i, entry in enumerate(entries)
        ],
    )
    return first


# Turns

_TURN_COLUMNS = (
    "id, thread_id, status, owner, input_tokens, cached_input_tokens, output_tokens, "
    "error_code, error_message, created_at, completed_at"
)


def turn_from_row(row: Row) -> TurnRecord:
    error = None
    if row["error_code"]:
        error = TurnError(ErrorCode(row["error_code"]), row["error_message"] or "")
    return TurnRecord(
        id=row["id"],
        thread_id=row["thread_id"],
        status=TurnStatus(row["status"]),
        owner=row["owner"],
        usage=Usage(row["input_tokens"], row["cached_input_tokens"], row["output_tokens"]),
        error=error,
        created_at=row["created_at"],
        completed_at=row["completed_at"],
    )


def begin_turn(turn: TurnRecord, entries: Sequence[Entry], now: float) -> Script[None]:
    first = yield from _append(turn.thread_id, turn.id, entries, now)
    try:
        yield Statement(
            "INSERT INTO turns (id, thread_id, status, owner, first_seq, input_tokens, "
            "cached_input_tokens, output_tokens, created_at) VALUES (?, ?, ?, ?, ?, 0, 0, 0, ?)",
            (turn.id, turn.thread_id, TurnStatus.RUNNING.value, turn.owner, first, turn.created_at),
        )
    except Conflict:
        raise FailedPrecondition(f"a turn is already running on thread {turn.thread_id}") from None


def finish_turn(
    turn_id: str,
    status: TurnStatus,
    usage: Usage,
    error: TurnError | None,
    entries: Sequence[Entry],
    now: float,
) -> Script[TurnRecord]:
    changed = yield count(
        "UPDATE turns SET status = ?, input_tokens = ?, cached_input_tokens = ?, "
        "output_tokens = ?, error_code = ?, error_message = ?, completed_at = ? "
        "WHERE id = ? AND status = ?",
        status.value,
        usage.input_tokens,
        usage.cached_input_tokens,
        usage.output_tokens,
        error.code.value if error else None,
        error.message if error else None,
        now,
        turn_id,
        TurnStatus.RUNNING.value,
    )
    turn = yield from get_turn(turn_id)
    if turn is None:
        raise NotFound(f"turn {turn_id} does not exist")
    if changed:
        yield from _append(turn.thread_id, turn_id, entries, now)
    return turn


def get_turn(turn_id: str) -> Script[TurnRecord | None]:
    row = yield one(f"SELECT {_TURN_COLUMNS} FROM turns WHERE id = ?", turn_id)
    return turn_from_row(row) if row else None


def running_turn(thread_id: str) -> Script[TurnRecord | None]:
    row = yield one(
        f"SELECT {_TURN_COLUMNS} FROM turns WHERE thread_id = ? AND status = ?",
        thread_id,
        TurnStatus.RUNNING.value,
    )
    return turn_from_row(row) if row else None


def list_turns(thread_id: str, offset: int, limit: int) -> Script[list[TurnRecord]]:
    found = yield rows(
        f"SELECT {_TURN_COLUMNS} FROM turns WHERE thread_id = ? "
        "ORDER BY first_seq, created_at LIMIT ? OFFSET ?",
        thread_id,
        limit,
        offset,
    )
    return [turn_from_row(row) for row in found]


# Replicas: leases and interrupts


def request_interrupt(thread_id: str, reason: str) -> Script[TurnRecord | None]:
    yield Statement(
        "UPDATE turns SET interrupt_reason = COALESCE(interrupt_reason, ?) "
        "WHERE thread_id = ? AND status = ?",
        (reason, thread_id, TurnStatus.RUNNING.value),
    )
    return (yield from running_turn(thread_id))


def interrupts_requested(owner: str) -> Script[list[tuple[str, str]]]:
    found = yield rows(
        "SELECT id, interrupt_reason FROM turns WHERE owner = ? AND status = ? "
        "AND interrupt_reason IS NOT NULL",
        owner,
        TurnStatus.RUNNING.value,
    )
    return [(row["id"], row["interrupt_reason"]) for row in found]


def heartbeat(owner: str, now: float) -> Script[None]:
    yield Statement(
        "INSERT INTO replicas (id, heartbeat_at) VALUES (?, ?) "
        "ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at",
        (owner, now),
    )


def end_orphaned_turns(
    reason: str, now: float, *, lease: float, alive: str, exclusive: bool
) -> Script[int]:
    """Interrupt running turns whose owner is gone (see `Store.end_orphaned_turns`)."""
    ended = yield count(
        "UPDATE turns SET status = ?, error_code = ?, error_message = ?, completed_at = ? "
        "WHERE status = ? AND owner <> ? AND (? = 1 OR owner NOT IN "
        "(SELECT id FROM replicas WHERE heartbeat_at >= ?))",
        TurnStatus.INTERRUPTED.value,
        ErrorCode.CANCELLED.value,
        reason,
        now,
        TurnStatus.RUNNING.value,
        alive,
        int(exclusive),
        now - lease,
    )
    # Replicas silent for a day are gone for good; their rows only cost space.
    yield Statement("DELETE FROM replicas WHERE heartbeat_at < ?", (now - 86400,))
    return int(ended)
