"""The embedded SQLite store (WAL), the thread-service's default.

One connection, used from one worker thread, serializes all access inside a
process. One thread-service process owns a data directory: at start it marks
turns left running as interrupted.
The schema and queries keep to standard SQL where SQLite allows, so that a
PostgreSQL backend can follow them; the PRAGMAs, `BEGIN IMMEDIATE` and
`LIMIT -1` are SQLite's own.

A fork does not copy its parent's items: `segments` rows point at runs of
ancestors' items, filtered by the `inheritable` flag set when an item is
appended. Forking therefore costs the same for 10 items as for 10,000.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from spindle import items
from spindle.errors import ErrorCode
from spindle.model import Usage
from thread_service.inheritance import InheritedThreadState
from thread_service.records import (
    Origin,
    Segment,
    ThreadRecord,
    TrustSource,
    TrustState,
    TurnError,
    TurnRecord,
    TurnStatus,
)

T = TypeVar("T")

SCHEMA_VERSION = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS threads (
    id TEXT PRIMARY KEY,
    parent_id TEXT REFERENCES threads(id),
    origin TEXT NOT NULL,
    session_origin TEXT NOT NULL,
    depth INTEGER NOT NULL,
    agent_nickname TEXT NOT NULL,
    agent_role TEXT NOT NULL,
    sub_agent_kind TEXT NOT NULL,
    parent_spawn_call_id TEXT NOT NULL,
    inherited_prompt_cache_key TEXT,
    window_generation INTEGER NOT NULL,
    cwd TEXT NOT NULL,
    model TEXT NOT NULL,
    instructions TEXT NOT NULL,
    archived INTEGER NOT NULL,
    trust_project_path TEXT,
    trust_trusted INTEGER,
    trust_source TEXT,
    created_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX IF NOT EXISTS threads_by_creation ON threads (created_at, id);
CREATE INDEX IF NOT EXISTS threads_by_parent ON threads (parent_id, created_at, id);
CREATE TABLE IF NOT EXISTS segments (
    thread_id TEXT NOT NULL REFERENCES threads(id),
    position INTEGER NOT NULL,
    source_thread_id TEXT NOT NULL REFERENCES threads(id),
    from_seq INTEGER NOT NULL,
    to_seq INTEGER NOT NULL,
    PRIMARY KEY (thread_id, position)
);
CREATE TABLE IF NOT EXISTS turns (
    id TEXT PRIMARY KEY,
    thread_id TEXT NOT NULL REFERENCES threads(id),
    status TEXT NOT NULL,
    first_seq INTEGER NOT NULL,
    input_tokens INTEGER NOT NULL,
    cached_input_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    error_code TEXT,
    error_message TEXT,
    created_at DOUBLE PRECISION NOT NULL,
    completed_at DOUBLE PRECISION
);
CREATE INDEX IF NOT EXISTS turns_by_thread ON turns (thread_id, first_seq);
CREATE INDEX IF NOT EXISTS turns_by_status ON turns (status);
CREATE TABLE IF NOT EXISTS items (
    thread_id TEXT NOT NULL REFERENCES threads(id),
    seq INTEGER NOT NULL,
    turn_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    inheritable INTEGER NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (thread_id, seq)
);
-- Reading or counting what a fork inherits scans only inheritable items.
CREATE INDEX IF NOT EXISTS items_inheritable ON items (thread_id, inheritable, seq);
"""

THREAD_COLUMNS = (
    "id, parent_id, origin, session_origin, depth, agent_nickname, agent_role, "
    "sub_agent_kind, parent_spawn_call_id, inherited_prompt_cache_key, window_generation, "
    "cwd, model, instructions, archived, trust_project_path, trust_trusted, trust_source, "
    "created_at, updated_at"
)
TURN_COLUMNS = (
    "id, thread_id, status, first_seq, input_tokens, cached_input_tokens, output_tokens, "
    "error_code, error_message, created_at, completed_at"
)


def _thread_row(t: ThreadRecord) -> tuple[Any, ...]:
    trust = t.trust
    return (
        t.id,
        t.parent_id,
        t.origin.value,
        t.session_origin.value,
        t.depth,
        t.agent_nickname,
        t.agent_role,
        t.sub_agent_kind,
        t.parent_spawn_call_id,
        t.inherited.prompt_cache_key,
        t.window_generation,
        t.cwd,
        t.model,
        t.instructions,
        int(t.archived),
        trust.project_path if trust else None,
        int(trust.trusted) if trust else None,
        trust.source.value if trust else None,
        t.created_at,
        t.updated_at,
    )


def _thread_from_row(row: Sequence[Any]) -> ThreadRecord:
    trust = None
    if row[15] is not None:
        trust = TrustState(row[15], bool(row[16]), TrustSource(row[17]))
    return ThreadRecord(
        id=row[0],
        parent_id=row[1],
        origin=Origin(row[2]),
        session_origin=Origin(row[3]),
        depth=row[4],
        agent_nickname=row[5],
        agent_role=row[6],
        sub_agent_kind=row[7],
        parent_spawn_call_id=row[8],
        inherited=InheritedThreadState(prompt_cache_key=row[9]),
        window_generation=row[10],
        cwd=row[11],
        model=row[12],
        instructions=row[13],
        archived=bool(row[14]),
        trust=trust,
        created_at=row[18],
        updated_at=row[19],
    )


def _turn_from_row(row: Sequence[Any]) -> TurnRecord:
    error = TurnError(ErrorCode(row[7]), row[8]) if row[7] else None
    return TurnRecord(
        id=row[0],
        thread_id=row[1],
        status=TurnStatus(row[2]),
        first_seq=row[3],
        usage=Usage(row[4], row[5], row[6]),
        error=error,
        created_at=row[9],
        completed_at=row[10],
    )


class SQLiteStore:
    """`thread_service.store.Store` on one SQLite file in WAL mode."""

    def __init__(self, path: Path, synchronous: str = "FULL") -> None:
        self.path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        self._conn: sqlite3.Connection | None = None
        self._synchronous = synchronous.upper()

    @classmethod
    async def open(cls, data_dir: Path, synchronous: str = "FULL") -> SQLiteStore:
        store = cls(data_dir / "spindle.sqlite3", synchronous)
        await store._run(store._connect)
        return store

    def _connect(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self._synchronous}")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=10000")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise RuntimeError(
                f"{self.path} has schema version {version}; this build knows {SCHEMA_VERSION}"
            )
        conn.executescript(SCHEMA)
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        self._conn = conn

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn` on the store's thread. Once submitted it always runs to the
        end: cancelling the caller must not drop a write still queued."""
        loop = asyncio.get_running_loop()
        return await asyncio.shield(loop.run_in_executor(self._executor, fn, *args))

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("store is closed")
        return self._conn

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    # threads

    async def create_thread(self, thread: ThreadRecord, segments: Sequence[Segment]) -> None:
        def write() -> None:
            with self._transaction() as conn:
                placeholders = ", ".join("?" * len(THREAD_COLUMNS.split(",")))
                conn.execute(
                    f"INSERT INTO threads ({THREAD_COLUMNS}) VALUES ({placeholders})",
                    _thread_row(thread),
                )
                conn.executemany(
                    "INSERT INTO segments (thread_id, position, source_thread_id, from_seq, "
                    "to_seq) VALUES (?, ?, ?, ?, ?)",
                    [
                        (thread.id, i, s.source_thread_id, s.from_seq, s.to_seq)
                        for i, s in enumerate(segments)
                    ],
                )

        await self._run(write)

    async def get_thread(self, thread_id: str) -> ThreadRecord | None:
        def read() -> ThreadRecord | None:
            row = self.conn.execute(
                f"SELECT {THREAD_COLUMNS} FROM threads WHERE id = ?", (thread_id,)
            ).fetchone()
            return _thread_from_row(row) if row else None

        return await self._run(read)

    async def save_thread(self, thread: ThreadRecord) -> None:
        def write() -> None:
            with self._transaction() as conn:
                conn.execute(
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

        await self._run(write)

    async def list_threads(
        self,
        *,
        parent_id: str | None,
        include_archived: bool,
        after: tuple[float, str] | None,
        limit: int,
    ) -> list[ThreadRecord]:
        where: list[str] = []
        args: list[Any] = []
        if parent_id is not None:
            where.append("parent_id = ?")
            args.append(parent_id)
        if not include_archived:
            where.append("archived = 0")
        if after is not None:
            where.append("(created_at > ? OR (created_at = ? AND id > ?))")
            args.extend([after[0], after[0], after[1]])
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        sql = f"SELECT {THREAD_COLUMNS} FROM threads {clause} ORDER BY created_at, id LIMIT ?"

        def read() -> list[ThreadRecord]:
            rows = self.conn.execute(sql, (*args, limit)).fetchall()
            return [_thread_from_row(r) for r in rows]

        return await self._run(read)

    # history

    def _segments(self, thread_id: str) -> list[Segment]:
        rows = self.conn.execute(
            "SELECT source_thread_id, from_seq, to_seq FROM segments WHERE thread_id = ? "
            "ORDER BY position",
            (thread_id,),
        ).fetchall()
        return [Segment(*row) for row in rows]

    async def segments(self, thread_id: str) -> list[Segment]:
        return await self._run(self._segments, thread_id)

    def _own_item_count(self, thread_id: str) -> int:
        row = self.conn.execute(
            "SELECT MAX(seq) FROM items WHERE thread_id = ?", (thread_id,)
        ).fetchone()
        return 0 if row[0] is None else int(row[0]) + 1

    async def own_item_count(self, thread_id: str) -> int:
        return await self._run(self._own_item_count, thread_id)

    def _parts(self, thread_id: str) -> list[tuple[Segment, bool]]:
        """Inherited segments (sanitized) and then the thread's own items."""
        parts = [(s, True) for s in self._segments(thread_id)]
        parts.append((Segment(thread_id, 0, 2**62), False))
        return parts

    async def read_history(
        self, thread_id: str, offset: int = 0, limit: int | None = None
    ) -> list[items.Item]:
        def read() -> list[items.Item]:
            result: list[items.Item] = []
            skip = offset
            for segment, sanitized in self._parts(thread_id):
                where = "thread_id = ? AND seq >= ? AND seq < ?" + (
                    " AND inheritable = 1" if sanitized else ""
                )
                bounds = (segment.source_thread_id, segment.from_seq, segment.to_seq)
                if skip:
                    count = self.conn.execute(
                        f"SELECT COUNT(*) FROM items WHERE {where}", bounds
                    ).fetchone()[0]
                    if count <= skip:
                        skip -= count
                        continue
                wanted = -1 if limit is None else limit - len(result)
                rows = self.conn.execute(
                    f"SELECT body FROM items WHERE {where} ORDER BY seq LIMIT ? OFFSET ?",
                    (*bounds, wanted, skip),
                ).fetchall()
                skip = 0
                result.extend(items.from_json(json.loads(body)) for (body,) in rows)
                if limit is not None and len(result) >= limit:
                    break
            return result

        return await self._run(read)

    async def history_length(self, thread_id: str) -> int:
        def count() -> int:
            total = 0
            for segment, sanitized in self._parts(thread_id):
                total += self.conn.execute(
                    "SELECT COUNT(*) FROM items WHERE thread_id = ? AND seq >= ? AND seq < ?"
                    + (" AND inheritable = 1" if sanitized else ""),
                    (segment.source_thread_id, segment.from_seq, segment.to_seq),
                ).fetchone()[0]
            return total

        return await self._run(count)

    # turns

    async def turn_starts(
        self, thread_id: str, from_seq: int, to_seq: int, limit: int
    ) -> list[int]:
        def read() -> list[int]:
            rows = self.conn.execute(
                "SELECT first_seq FROM turns WHERE thread_id = ? AND first_seq >= ? "
                "AND first_seq < ? ORDER BY first_seq DESC LIMIT ?",
                (thread_id, from_seq, to_seq, limit),
            ).fetchall()
            return [r[0] for r in rows]

        return await self._run(read)

    async def running_turn(self, thread_id: str) -> TurnRecord | None:
        def read() -> TurnRecord | None:
            row = self.conn.execute(
                f"SELECT {TURN_COLUMNS} FROM turns WHERE thread_id = ? AND status = ?",
                (thread_id, TurnStatus.RUNNING.value),
            ).fetchone()
            return _turn_from_row(row) if row else None

        return await self._run(read)

    def _append(
        self, conn: sqlite3.Connection, thread_id: str, turn_id: str, new: Sequence[items.Item]
    ) -> int:
        first = self._own_item_count(thread_id)
        conn.executemany(
            "INSERT INTO items (thread_id, seq, turn_id, kind, inheritable, body) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            [
                (
                    thread_id,
                    first + i,
                    turn_id,
                    items.kind_of(item),
                    int(items.inherited_by_fork(item)),
                    json.dumps(items.to_json(item), ensure_ascii=False),
                )
                for i, item in enumerate(new)
            ],
        )
        conn.execute("UPDATE threads SET updated_at = ? WHERE id = ?", (time.time(), thread_id))
        return first

    async def begin_turn(self, turn: TurnRecord, input_items: Sequence[items.Item]) -> TurnRecord:
        def write() -> TurnRecord:
            with self._transaction() as conn:
                first = self._append(conn, turn.thread_id, turn.id, input_items)
                conn.execute(
                    f"INSERT INTO turns ({TURN_COLUMNS}) VALUES (?, ?, ?, ?, 0, 0, 0, NULL, "
                    "NULL, ?, NULL)",
                    (turn.id, turn.thread_id, TurnStatus.RUNNING.value, first, turn.created_at),
                )
            return TurnRecord(
                turn.id, turn.thread_id, TurnStatus.RUNNING, turn.created_at, first_seq=first
            )

        return await self._run(write)

    async def finish_turn(
        self,
        turn_id: str,
        status: TurnStatus,
        usage: Usage,
        error: TurnError | None,
        output_items: Sequence[items.Item],
    ) -> TurnRecord:
        def write() -> TurnRecord:
            with self._transaction() as conn:
                row = conn.execute(
                    f"SELECT {TURN_COLUMNS} FROM turns WHERE id = ?", (turn_id,)
                ).fetchone()
                turn = _turn_from_row(row)
                self._append(conn, turn.thread_id, turn_id, output_items)
                completed_at = time.time()
                conn.execute(
                    "UPDATE turns SET status = ?, input_tokens = ?, cached_input_tokens = ?, "
                    "output_tokens = ?, error_code = ?, error_message = ?, completed_at = ? "
                    "WHERE id = ?",
                    (
                        status.value,
                        usage.input_tokens,
                        usage.cached_input_tokens,
                        usage.output_tokens,
                        error.code.value if error else None,
                        error.message if error else None,
                        completed_at,
                        turn_id,
                    ),
                )
            return TurnRecord(
                turn.id,
                turn.thread_id,
                status,
                turn.created_at,
                turn.first_seq,
                usage,
                error,
                completed_at,
            )

        return await self._run(write)

    async def list_turns(self, thread_id: str, offset: int, limit: int) -> list[TurnRecord]:
        def read() -> list[TurnRecord]:
            rows = self.conn.execute(
                f"SELECT {TURN_COLUMNS} FROM turns WHERE thread_id = ? ORDER BY first_seq, "
                "created_at LIMIT ? OFFSET ?",
                (thread_id, limit, offset),
            ).fetchall()
            return [_turn_from_row(r) for r in rows]

        return await self._run(read)

    async def interrupt_running_turns(self, reason: str) -> int:
        def write() -> int:
            with self._transaction() as conn:
                cursor = conn.execute(
                    "UPDATE turns SET status = ?, error_code = ?, error_message = ?, "
                    "completed_at = ? WHERE status = ?",
                    (
                        TurnStatus.INTERRUPTED.value,
                        ErrorCode.CANCELLED.value,
                        reason,
                        time.time(),
                        TurnStatus.RUNNING.value,
                    ),
                )
                return cursor.rowcount

        return await self._run(write)

    async def close(self) -> None:
        def close() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        await self._run(close)
        self._executor.shutdown(wait=True)
