"""The embedded SQLite store (WAL), the thread-service's default.

One connection, used from one worker thread, runs every transaction of the
process; a lock file keeps a second process off the same database, so this
store is `exclusive`: turns still marked running at start belong to a
process that is gone.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from spindle.errors import StartupError
from thread_service.stores import schema
from thread_service.stores.operations import Conflict, Script, Statement, T, advance
from thread_service.stores.sql_store import SqlStore


class SQLiteStore(SqlStore):
    """`thread_service.store.Store` on one SQLite file in WAL mode."""

    exclusive = True

    def __init__(
        self, path: Path, synchronous: str = "FULL", clock: Callable[[], float] = time.time
    ) -> None:
        super().__init__(clock)
        self.path = path
        self._synchronous = synchronous.upper()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        self._conn: sqlite3.Connection | None = None
        self._lock_fd: int | None = None
        self._closed = False

    @classmethod
    async def open(
        cls,
        path: Path,
        synchronous: str = "FULL",
        clock: Callable[[], float] = time.time,
        *,
        migrate_to: int = schema.VERSION,
    ) -> SQLiteStore:
        store = cls(path, synchronous, clock)
        try:
            await asyncio.get_running_loop().run_in_executor(
                store._executor, store._connect, migrate_to
            )
        except BaseException:
            await store.close()
            raise
        return store

    def _connect(self, migrate_to: int) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock_fd = _lock(self.path.with_name(self.path.name + ".lock"))
        if not self.path.exists():  # private from the start: the history is the users'
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self._synchronous}")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=10000")
        self._conn = conn
        _migrate(conn, self.path, migrate_to)

    async def _run(self, script: Script[T]) -> T:
        """Run a script in one transaction on the store's thread. Once submitted
        it runs to the end: cancelling the caller must not drop a queued write."""
        loop = asyncio.get_running_loop()
        return await asyncio.shield(loop.run_in_executor(self._executor, self._transaction, script))

    def _transaction(self, script: Script[T]) -> T:
        if self._conn is None:
            raise RuntimeError("store is closed")
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = _drive(conn, script)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return result

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True

        def close() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None

        await asyncio.get_running_loop().run_in_executor(self._executor, close)
        self._executor.shutdown(wait=True)


def _drive(conn: sqlite3.Connection, script: Script[T]) -> T:
    """Run each statement the script yields and send back its result."""
    step = advance(script)
    while isinstance(step, Statement):
        try:
            step = advance(script, _execute(conn, step))
        except sqlite3.IntegrityError as exc:
            if "UNIQUE" not in str(exc):
                raise
            step = advance(script, conflict=Conflict(str(exc)))
    value: T = step.value
    return value


def _execute(conn: sqlite3.Connection, statement: Statement) -> Any:
    if statement.batch is not None:
        conn.executemany(statement.sql, statement.batch)
        return None
    cursor = conn.execute(statement.sql, statement.params)
    if statement.result == "one":
        found = cursor.fetchall()
        return found[0] if found else None
    if statement.result == "all":
        return cursor.fetchall()
    if statement.result == "count":
        return cursor.rowcount
    return None


def _migrate(conn: sqlite3.Connection, path: Path, target: int) -> None:
    """Apply the migrations the database lacks (`user_version` counts them)."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > schema.VERSION:
        raise StartupError(
            f"{path} has schema version {version}; this build knows up to {schema.VERSION}"
        )
    for number in range(version + 1, target + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in schema.statements(schema.MIGRATIONS[number - 1]):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version={number}")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")


def _lock(path: Path) -> int:
    """Hold an exclusive lock on `path` for the life of the process, or say who has it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "another process"
        os.close(fd)
        raise StartupError(
            f"{path.parent} is in use by process {holder}: one thread-service owns a SQLite "
            "database (run replicas on PostgreSQL)"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd
