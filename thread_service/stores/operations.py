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
was appended. A turn knows the seq its items start at and end before. A
deleted thread whose items a fork still reads stays as a tombstone
(`deleted = 1`) until no fork does.
"""

from __future__ import annotations

import json
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from spindle import items
from spindle.errors import (
    Aborted,
    AlreadyExists,
    ErrorCode,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from spindle.model import Usage
from thread_service.inheritance import InheritedThreadState
from thread_service.records import (
    Entry,
    Origin,
    RequestKey,
    StoredItem,
    ThreadRecord,
    TrustSource,
    TrustState,
    TurnError,
    TurnRecord,
    TurnStatus,
)
from thread_service.store import (
    ForkSource,
    HistoryChanged,
    ThreadFilter,
    turn_already_running,
    turn_running,
)

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
# Read, never written by an insert: item_count (the thread's version).
_THREADS = ", ".join((*_THREAD_COLUMNS, "item_count"))
_LIVE = "deleted = 0"


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


def thread_from_row(row: Row, metadata: dict[str, str] | None = None) -> ThreadRecord:
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
        metadata=metadata or {},
        version=int(row["item_count"]),
    )


def _insert_thread(thread: ThreadRecord, spawn_fingerprint: str = "") -> Script[None]:
    values = {**_thread_values(thread), "spawn_fingerprint": spawn_fingerprint}
    marks = ", ".join("?" * len(values))
    columns = ", ".join(values)
    yield Statement(f"INSERT INTO threads ({columns}) VALUES ({marks})", [*values.values()])
    yield from _write_labels(thread.id, thread.metadata)


def _write_labels(thread_id: str, metadata: Mapping[str, str]) -> Script[None]:
    yield Statement("DELETE FROM thread_labels WHERE thread_id = ?", (thread_id,))
    yield batch(
        "INSERT INTO thread_labels (thread_id, key, value) VALUES (?, ?, ?)",
        [(thread_id, key, value) for key, value in sorted(metadata.items())],
    )


def _labels(thread_ids: Sequence[str]) -> Script[dict[str, dict[str, str]]]:
    """The metadata of some threads, by thread id."""
    found: dict[str, dict[str, str]] = {thread_id: {} for thread_id in thread_ids}
    if not thread_ids:
        return found
    marks = ", ".join("?" * len(thread_ids))
    labels = yield rows(
        f"SELECT thread_id, key, value FROM thread_labels WHERE thread_id IN ({marks})",
        *thread_ids,
    )
    for label in labels:
        found[label["thread_id"]][label["key"]] = label["value"]
    return found


def _claim(request: RequestKey | None, now: float, **result: str) -> Script[Row | None]:
    """Record a request id with what it makes; the row of an earlier use of
    the id if there was one (INVALID_ARGUMENT if that was another request)."""
    if request is None:
        return None
    claimed = yield count(
        "INSERT INTO requests (tenant, request_id, method, fingerprint, thread_id, turn_id, "
        "created_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (tenant, request_id) DO NOTHING",
        request.tenant,
        request.request_id,
        request.method,
        request.fingerprint,
        result.get("thread_id"),
        result.get("turn_id"),
        now,
    )
    if claimed:
        return None
    earlier = yield from _earlier_use(request)
    if earlier is None:  # claimed and dropped at once: only a clock jump does that
        raise Aborted("the request id could not be recorded; retry", reason="REQUEST_ID_RACE")
    return earlier


def _earlier_use(request: RequestKey) -> Script[Row | None]:
    """The row of an earlier use of the request id, or None; INVALID_ARGUMENT
    when that was another request."""
    earlier: Row | None = yield one(
        "SELECT method, fingerprint, thread_id, turn_id FROM requests "
        "WHERE tenant = ? AND request_id = ?",
        request.tenant,
        request.request_id,
    )
    if earlier is not None and (earlier["method"], earlier["fingerprint"]) != (
        request.method,
        request.fingerprint,
    ):
        raise InvalidArgument(
            "request_id was already used for another request; a retry must repeat the "
            "request exactly, and a new request needs a new id",
            reason="REQUEST_ID_REUSED",
            field="request_id",
        )
    return earlier


def _earlier_thread(earlier: Row) -> Script[ThreadRecord]:
    thread = yield from get_thread(earlier["thread_id"])
    if thread is None:
        raise NotFound("the thread this request created was deleted", reason="THREAD_NOT_FOUND")
    return thread


def create_thread(
    thread: ThreadRecord, request: RequestKey | None, now: float
) -> Script[ThreadRecord]:
    earlier = yield from _claim(request, now, thread_id=thread.id)
    if earlier is not None:
        return (yield from _earlier_thread(earlier))
    yield from _insert_thread(thread)
    return thread


def create_fork(
    child: ThreadRecord,
    source: ForkSource,
    request: RequestKey | None,
    spawn_fingerprint: str,
    now: float,
) -> Script[ThreadRecord]:
    # Locks the parent's row: forks of one parent, and its appends, take turns.
    parent = yield one(
        f"UPDATE threads SET item_count = item_count WHERE id = ? AND {_LIVE} RETURNING item_count",
        source.parent_id,
    )
    if parent is None:
        raise NotFound(
            f"parent thread {source.parent_id} does not exist", reason="THREAD_NOT_FOUND"
        )
    earlier = yield from _claim(request, now, thread_id=child.id)
    if earlier is not None:
        return (yield from _earlier_thread(earlier))
    if child.parent_spawn_call_id:
        twin = yield one(
            f"SELECT {_THREADS}, spawn_fingerprint FROM threads "
            f"WHERE parent_id = ? AND parent_spawn_call_id = ? AND {_LIVE}",
            source.parent_id,
            child.parent_spawn_call_id,
        )
        if twin is not None:
            if twin["spawn_fingerprint"] != spawn_fingerprint:
                raise AlreadyExists(
                    f"the spawn call {child.parent_spawn_call_id!r} of thread "
                    f"{source.parent_id} already made a child with other settings",
                    reason="SPAWN_CALL_REUSED",
                    metadata={"child_id": twin["id"]},
                )
            labels = yield from _labels([twin["id"]])
            return thread_from_row(twin, labels[twin["id"]])
    end = yield from _fork_end(source, int(parent["item_count"]))
    parts = [*(yield from _segments(source.parent_id)), (source.parent_id, 0, end)]
    if source.last_n_turns is not None:
        parts = yield from _last_turns(parts, source.last_n_turns)
    yield from _insert_thread(child, spawn_fingerprint)
    yield batch(
        "INSERT INTO segments (thread_id, position, source_thread_id, from_seq, to_seq) "
        "VALUES (?, ?, ?, ?, ?)",
        [(child.id, i, *part) for i, part in enumerate(p for p in parts if p[1] < p[2])],
    )
    return child


def _fork_end(source: ForkSource, item_count: int) -> Script[int]:
    """Where the parent's inherited items end: after the named turn, or after
    its last ended turn (a running turn's input is not the fork's)."""
    if source.at_turn_id:
        turn = yield one(
            "SELECT status, end_seq FROM turns WHERE id = ? AND thread_id = ?",
            source.at_turn_id,
            source.parent_id,
        )
        if turn is None:
            raise NotFound(
                f"turn {source.at_turn_id} is not a turn of thread {source.parent_id}",
                reason="TURN_NOT_FOUND",
                field="fork.at_turn_id",
            )
        if turn["end_seq"] is None:
            raise FailedPrecondition(
                f"turn {source.at_turn_id} is still running; fork at an ended turn",
                reason="TURN_RUNNING",
                field="fork.at_turn_id",
            )
        return int(turn["end_seq"])
    running = yield one(
        "SELECT first_seq FROM turns WHERE thread_id = ? AND status = ?",
        source.parent_id,
        TurnStatus.RUNNING.value,
    )
    return item_count if running is None else int(running["first_seq"])


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
    row = yield one(f"SELECT {_THREADS} FROM threads WHERE id = ? AND {_LIVE}", thread_id)
    if row is None:
        return None
    labels = yield from _labels([thread_id])
    return thread_from_row(row, labels[thread_id])


def update_thread(thread: ThreadRecord) -> Script[None]:
    yield Statement(
        "UPDATE threads SET session_origin = ?, inherited_prompt_cache_key = ?, "
        "window_generation = ?, archived = ?, updated_at = ?, agent_nickname = ?, "
        "agent_role = ?, instructions = ? WHERE id = ?",
        (
            thread.session_origin.value,
            thread.inherited.prompt_cache_key,
            thread.window_generation,
            int(thread.archived),
            thread.updated_at,
            thread.agent_nickname,
            thread.agent_role,
            thread.instructions,
            thread.id,
        ),
    )
    yield from _write_labels(thread.id, thread.metadata)


_ORDER_COLUMNS = {"create_time": "created_at", "update_time": "updated_at"}


def list_threads(
    which: ThreadFilter, after: tuple[float, str] | None, limit: int
) -> Script[list[ThreadRecord]]:
    where = ["tenant = ?", _LIVE]
    params: list[Any] = [which.tenant]
    if which.parent_id is not None:
        where.append("parent_id = ?")
        params.append(which.parent_id)
    if which.archived is not None:
        where.append("archived = ?")
        params.append(int(which.archived))
    for key, value in sorted(which.labels.items()):
        where.append("id IN (SELECT thread_id FROM thread_labels WHERE key = ? AND value = ?)")
        params.extend([key, value])
    column = _ORDER_COLUMNS[which.order_by]
    direction, beyond = ("DESC", "<") if which.descending else ("ASC", ">")
    if after is not None:
        where.append(f"({column} {beyond} ? OR ({column} = ? AND id {beyond} ?))")
        params.extend([after[0], after[0], after[1]])
    found = yield rows(
        f"SELECT {_THREADS} FROM threads WHERE {' AND '.join(where)} "
        f"ORDER BY {column} {direction}, id {direction} LIMIT ?",
        *params,
        limit,
    )
    labels = yield from _labels([row["id"] for row in found])
    return [thread_from_row(row, labels[row["id"]]) for row in found]


def delete_thread(thread_id: str) -> Script[None]:
    """Delete a thread and what only it holds. Items a fork still reads stay,
    and so does the thread's row (a tombstone) while forks or children name it."""
    gone = yield count(f"UPDATE threads SET deleted = 1 WHERE id = ? AND {_LIVE}", thread_id)
    if not gone:
        raise NotFound(f"thread {thread_id} does not exist", reason="THREAD_NOT_FOUND")
    # Checked here, in the transaction that deletes, after the thread's row is
    # locked (a turn's start locks it too): a turn that began after the caller
    # looked for one must not lose its record, and its end its turn, meanwhile.
    running = yield one(
        "SELECT id FROM turns WHERE thread_id = ? AND status = ?",
        thread_id,
        TurnStatus.RUNNING.value,
    )
    if running is not None:
        raise turn_running(thread_id, running["id"])
    yield Statement("DELETE FROM thread_labels WHERE thread_id = ?", (thread_id,))
    yield Statement(
        "DELETE FROM turn_events WHERE turn_id IN (SELECT id FROM turns WHERE thread_id = ?)",
        (thread_id,),
    )
    yield Statement("DELETE FROM turns WHERE thread_id = ?", (thread_id,))
    sources = yield rows(
        "SELECT DISTINCT source_thread_id FROM segments WHERE thread_id = ?", thread_id
    )
    yield Statement("DELETE FROM segments WHERE thread_id = ?", (thread_id,))
    pending = [thread_id, *(row["source_thread_id"] for row in sources)]
    while pending:
        yield from _collect(pending.pop())


def _collect(thread_id: str) -> Script[None]:
    """Drop what a deleted thread holds that nothing reads any more: items no
    fork reads, and the row itself once no fork or child names it."""
    row = yield one("SELECT parent_id, deleted FROM threads WHERE id = ?", thread_id)
    if row is None or not row["deleted"]:
        return
    yield Statement(
        "DELETE FROM items WHERE thread_id = ? AND (inheritable = 0 OR NOT EXISTS ("
        "SELECT 1 FROM segments WHERE segments.source_thread_id = items.thread_id "
        "AND items.seq >= segments.from_seq AND items.seq < segments.to_seq))",
        (thread_id,),
    )
    named = yield one(
        "SELECT (SELECT COUNT(*) FROM segments WHERE source_thread_id = ?) + "
        "(SELECT COUNT(*) FROM threads WHERE parent_id = ?) AS n",
        thread_id,
        thread_id,
    )
    if named["n"] == 0:
        yield Statement("DELETE FROM requests WHERE thread_id = ?", (thread_id,))
        yield Statement("DELETE FROM threads WHERE id = ?", (thread_id,))
        if row["parent_id"] is not None:
            yield from _collect(row["parent_id"])


# History


def _segments(thread_id: str) -> Script[list[Run]]:
    found = yield rows(
        "SELECT source_thread_id, from_seq, to_seq FROM segments WHERE thread_id = ? "
        "ORDER BY position",
        thread_id,
    )
    return [(r["source_thread_id"], r["from_seq"], r["to_seq"]) for r in found]


@dataclass(frozen=True, slots=True)
class HistoryRun:
    """A run of a thread's history: `source`'s items with seq from `start` up
    to `end` (None: all it has); of an inherited run, only those a fork
    inherits."""

    source: str
    start: int
    end: int | None
    inherited: bool

    def where(self, start: int | None = None) -> tuple[str, tuple[Any, ...]]:
        """The condition on `items` that selects the run (from seq `start`
        on, when given), and its parameters."""
        condition = "thread_id = ?"
        params: list[Any] = [self.source]
        begin = self.start if start is None else start
        if begin:
            condition += " AND seq >= ?"
            params.append(begin)
        if self.end is not None:
            condition += " AND seq < ?"
            params.append(self.end)
        if self.inherited:
            condition += " AND inheritable = 1"
        return condition, tuple(params)


def _runs(thread_id: str, own_upto: int | None) -> Script[list[HistoryRun]]:
    """The runs of a thread's history, in order: the inherited segments, then
    its own items (those before `own_upto`, when given)."""
    inherited = yield from _segments(thread_id)
    runs = [HistoryRun(source, start, end, True) for source, start, end in inherited]
    return [*runs, HistoryRun(thread_id, 0, own_upto, False)]


# A history item as read: its source thread and its row, not decoded yet.
# Decoding costs far more than reading (see `SqlStore.read_history`).
RawItem = tuple[str, Row]


def decode_items(raw: Sequence[RawItem]) -> list[StoredItem]:
    return [
        StoredItem(
            items.from_json(json.loads(row["body"])),
            f"{source}/{row['seq']}",
            row["turn_id"],
            row["created_at"],
        )
        for source, row in raw
    ]


def read_history(
    thread_id: str, offset: int, limit: int | None, own_upto: int | None = None
) -> Script[list[RawItem]]:
    result: list[RawItem] = []
    skip = offset
    wanted = NO_LIMIT if limit is None else limit
    for run in (yield from _runs(thread_id, own_upto)):
        if len(result) >= wanted:
            break
        where, params = run.where()
        if skip:
            found = yield one(f"SELECT COUNT(*) AS n FROM items WHERE {where}", *params)
            if found["n"] <= skip:
                skip -= found["n"]
                continue
        stored = yield rows(
            f"SELECT seq, turn_id, created_at, body FROM items WHERE {where} "
            "ORDER BY seq LIMIT ? OFFSET ?",
            *params,
            wanted - len(result),
            skip,
        )
        skip = 0
        result.extend((run.source, row) for row in stored)
    return result


def history_runs(thread_id: str, own_upto: int | None) -> Script[list[HistoryRun]]:
    """The runs of a thread's whole history, each with its end: its own items
    are those before `own_upto`, else all it has now. None of these items ever
    changes once written, so the runs can be read apart."""
    if own_upto is None:
        row = yield one("SELECT item_count FROM threads WHERE id = ?", thread_id)
        own_upto = int(row["item_count"]) if row else 0
    return (yield from _runs(thread_id, own_upto))


def read_run(run: HistoryRun, start: int, limit: int) -> Script[tuple[list[RawItem], int]]:
    """At most `limit` items of a run (one `history_runs` gave, so with an
    end), from seq `start` on; and the seq to go on from (the run's end once
    it is read to the end)."""
    assert run.end is not None
    where, params = run.where(start)
    found = yield rows(
        f"SELECT seq, turn_id, created_at, body FROM items WHERE {where} ORDER BY seq LIMIT ?",
        *params,
        limit,
    )
    after = int(found[-1]["seq"]) + 1 if len(found) == limit else run.end
    return [(run.source, row) for row in found], after


def history_length(thread_id: str) -> Script[int]:
    total = 0
    for run in (yield from _runs(thread_id, None)):
        where, params = run.where()
        found = yield one(f"SELECT COUNT(*) AS n FROM items WHERE {where}", *params)
        total += found["n"]
    return total


def _append(
    thread_id: str,
    turn_id: str,
    entries: Sequence[Entry],
    now: float,
    expected_version: int | None = None,
) -> Script[int]:
    """Append entries to a thread's own items; the seq of the first. The update
    of the thread's row comes first, so concurrent appends take turns; with
    `expected_version`, HistoryChanged unless the thread still has that many."""
    row = yield one(
        f"UPDATE threads SET item_count = item_count + ?, updated_at = ? WHERE id = ? AND {_LIVE} "
        "RETURNING item_count",
        len(entries),
        now,
        thread_id,
    )
    if row is None:
        raise NotFound(f"thread {thread_id} does not exist", reason="THREAD_NOT_FOUND")
    first = int(row["item_count"]) - len(entries)
    if expected_version is not None and first != expected_version:
        raise HistoryChanged(thread_id)
    yield batch(
        "INSERT INTO items (thread_id, seq, turn_id, kind, inheritable, body, created_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        [
            (
                thread_id,
                first + i,
                turn_id,
                items.kind_of(entry.item),
                int(entry.inheritable),
                json.dumps(items.to_json(entry.item), ensure_ascii=False),
                now,
            )
            for i, entry in enumerate(entries)
        ],
    )
    return first


# Turns

_TURN_COLUMNS = (
    "id, thread_id, status, owner, input_tokens, cached_input_tokens, output_tokens, "
    "error_code, error_message, error_reason, error_metadata, error_retry_after, "
    "created_at, completed_at"
)


def _text(value: str) -> str:
    """Text for a column: PostgreSQL's text holds no NUL (a provider's error
    message may carry one); what callers send is refused before it gets here."""
    return value.replace("\x00", "\ufffd")


def turn_from_row(row: Row) -> TurnRecord:
    error = None
    if row["error_code"]:
        error = TurnError(
            ErrorCode(row["error_code"]),
            row["error_message"] or "",
            row["error_reason"] or "",
            json.loads(row["error_metadata"]) if row["error_metadata"] else {},
            row["error_retry_after"],
        )
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


def begin_turn(
    turn: TurnRecord,
    entries: Sequence[Entry],
    now: float,
    request: RequestKey | None,
    expected_version: int | None,
) -> Script[tuple[TurnRecord, bool]]:
    """The turn recorded as running with its input appended, and True; or,
    for a repeated request, the turn the first one began, and False."""
    earlier = yield from _claim(request, now, thread_id=turn.thread_id, turn_id=turn.id)
    if earlier is not None:
        first_turn = yield from get_turn(earlier["turn_id"])
        if first_turn is None:
            raise NotFound("the turn this request began is gone", reason="TURN_NOT_FOUND")
        return first_turn, False
    first = yield from _append(turn.thread_id, turn.id, entries, now, expected_version)
    running = yield one(
        "SELECT id FROM turns WHERE thread_id = ? AND status = ?",
        turn.thread_id,
        TurnStatus.RUNNING.value,
    )
    if running is not None:
        raise turn_already_running(turn.thread_id, running["id"])
    try:
        yield Statement(
            "INSERT INTO turns (id, thread_id, status, owner, first_seq, input_tokens, "
            "cached_input_tokens, output_tokens, created_at) VALUES (?, ?, ?, ?, ?, 0, 0, 0, ?)",
            (turn.id, turn.thread_id, TurnStatus.RUNNING.value, turn.owner, first, turn.created_at),
        )
    except Conflict:
        raise turn_already_running(turn.thread_id, "") from None
    return turn, True


def finish_turn(
    turn_id: str,
    status: TurnStatus,
    usage: Usage,
    error: TurnError | None,
    entries: Sequence[Entry],
    events: Sequence[tuple[int, str]],
    now: float,
) -> Script[TurnRecord]:
    changed = yield count(
        "UPDATE turns SET status = ?, input_tokens = ?, cached_input_tokens = ?, "
        "output_tokens = ?, error_code = ?, error_message = ?, error_reason = ?, "
        "error_metadata = ?, error_retry_after = ?, completed_at = ? "
        "WHERE id = ? AND status = ?",
        status.value,
        usage.input_tokens,
        usage.cached_input_tokens,
        usage.output_tokens,
        error.code.value if error else None,
        _text(error.message) if error else None,
        error.reason if error else None,
        json.dumps(error.metadata) if error and error.metadata else None,
        error.retry_after if error else None,
        now,
        turn_id,
        TurnStatus.RUNNING.value,
    )
    turn = yield from get_turn(turn_id)
    if turn is None:
        raise NotFound(f"turn {turn_id} does not exist", reason="TURN_NOT_FOUND")
    if changed:
        first = yield from _append(turn.thread_id, turn_id, entries, now)
        yield Statement(
            "UPDATE turns SET end_seq = ? WHERE id = ?", (first + len(entries), turn_id)
        )
        yield from append_events(turn_id, events)
    return turn


def append_events(turn_id: str, events: Sequence[tuple[int, str]]) -> Script[None]:
    """Keep a turn's events. An event kept already stays as it is: a write
    that failed as far as its caller knows may have been saved all the same,
    and its events then come again (with the turn's end)."""
    yield batch(
        "INSERT INTO turn_events (turn_id, seq, body) VALUES (?, ?, ?) "
        "ON CONFLICT (turn_id, seq) DO NOTHING",
        [(turn_id, seq, body) for seq, body in events],
    )


def read_events(turn_id: str, after: int) -> Script[list[tuple[int, str]]]:
    found = yield rows(
        "SELECT seq, body FROM turn_events WHERE turn_id = ? AND seq > ? ORDER BY seq",
        turn_id,
        after,
    )
    return [(int(row["seq"]), row["body"]) for row in found]


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


def request_interrupt(turn_id: str, reason: str) -> Script[bool]:
    changed = yield count(
        "UPDATE turns SET interrupt_reason = COALESCE(interrupt_reason, ?) "
        "WHERE id = ? AND status = ?",
        reason,
        turn_id,
        TurnStatus.RUNNING.value,
    )
    return bool(changed)


def find_request(request: RequestKey) -> Script[tuple[str, str] | None]:
    """(thread id, turn id) an earlier use of the request id made, or None;
    INVALID_ARGUMENT when that was another request."""
    earlier = yield from _earlier_use(request)
    if earlier is None:
        return None
    return earlier["thread_id"] or "", earlier["turn_id"] or ""


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
        "UPDATE turns SET status = ?, error_code = ?, error_message = ?, completed_at = ?, "
        "end_seq = (SELECT item_count FROM threads WHERE threads.id = turns.thread_id) "
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


def forget_requests(before: float) -> Script[int]:
    """Drop request ids recorded before `before`: retries that late act anew."""
    dropped = yield count("DELETE FROM requests WHERE created_at < ?", before)
    return int(dropped)
