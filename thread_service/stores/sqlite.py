"""The embedded SQLite store (WAL), the thread-service's default.

One connection, used from one worker thread, runs every transaction of the
process; a lock file keeps a second process off the same database, so this
store is `exclusive`: turns still marked running at start belong to a
process that is gone. A second, read-only connection serves reads of a row
by key on the event loop's thread: a WAL reader never waits for the writer,
and the read costs less than the hop to the worker thread would.

Faults: a full disk fails a write with RESOURCE_EXHAUSTED and an I/O error
with UNAVAILABLE, and the store reports itself unhealthy until a write
succeeds again. A database file removed or replaced under a running service
is noticed before the next transaction (the store stops serving rather than
write to a file nobody will read), and a write-ahead log without its
database refuses the start.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ParamSpec

from spindle.errors import ResourceExhausted, SpindleError, StartupError, Unavailable
from thread_service.stores import schema
from thread_service.stores.operations import Conflict, Script, Statement, T, advance
from thread_service.stores.sql_store import SqlStore

log = logging.getLogger(__name__)
P = ParamSpec("P")

# Most scripts one transaction takes when many are waiting.
GROUP_COMMIT_MAX = 64

_Queued = tuple[Script[Any], "asyncio.Future[Any]"]
_Outcome = tuple["asyncio.Future[Any]", Any, BaseException | None]


def _settle(outcomes: list[_Outcome]) -> None:
    """On the event loop: hand each caller its script's result or error."""
    for future, result, error in outcomes:
        if future.done():
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)


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
        # Scripts waiting for the store's thread, which takes them in batches.
        self._queue: list[_Queued] = []
        self._queue_lock = threading.Lock()
        self._draining = False
        self._conn: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._lock_fd: int | None = None
        self._closed = False
        self._inode = 0
        self._lost = ""  # why the database file can no longer be used

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
        except (OSError, sqlite3.Error) as exc:
            await store.close()
            raise StartupError(f"cannot open the database {path}: {_reason(exc)}") from None
        except BaseException:
            await store.close()
            raise
        return store

    def _connect(self, migrate_to: int) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock_fd = _lock(self.path.with_name(self.path.name + ".lock"))
        if not self.path.exists():
            if self.path.with_name(self.path.name + "-wal").exists():
                raise StartupError(
                    f"{self.path} is missing but its write-ahead log is there: the database "
                    "was removed or moved; restore it (with its -wal file) or move the log away"
                )
            # Private from the start: the history is the users'.
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
        self._inode = os.stat(self.path).st_ino
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self._synchronous}")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=10000")
        self._conn = conn
        _migrate(conn, self.path, migrate_to)
        reader = sqlite3.connect(
            f"{self.path.resolve().as_uri()}?mode=ro",
            uri=True,
            isolation_level=None,
            check_same_thread=False,
        )
        reader.row_factory = sqlite3.Row
        reader.execute("PRAGMA busy_timeout=1000")
        self._reader = reader

    async def _run(self, script: Script[T]) -> T:
        """Run a script in a transaction on the store's thread. Once submitted
        it runs to the end: cancelling the caller must not drop a queued write.
        Scripts queued meanwhile share one transaction (group commit), each in
        a savepoint of its own: one sync to disk and one wake-up of the event
        loop for all of them, and one script's error undoes only that script."""
        if self._closed:
            raise RuntimeError("store is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        with self._queue_lock:
            self._queue.append((script, future))
            start = not self._draining
            self._draining = True
        if start:
            self._executor.submit(self._drain, loop)
        result: T = await asyncio.shield(future)
        return result

    def _drain(self, loop: asyncio.AbstractEventLoop) -> None:
        """On the store's thread: run what is queued, a batch at a time."""
        while True:
            with self._queue_lock:
                batch = self._queue[:GROUP_COMMIT_MAX]
                del self._queue[:GROUP_COMMIT_MAX]
                if not batch:
                    self._draining = False
                    return
            outcomes = self._transaction(batch)
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(_settle, outcomes)

    async def _lookup(self, make: Callable[P, Script[T]], *args: P.args, **kwargs: P.kwargs) -> T:
        if self._reader is None:
            raise RuntimeError("store is closed")
        self._check_file()
        try:
            return _drive(self._reader, make(*args, **kwargs))
        except sqlite3.OperationalError as exc:
            raise _fault(exc, self.path) from None

    def _transaction(self, batch: list[_Queued]) -> list[_Outcome]:
        """Run a batch of scripts in one transaction: (future, result, error) each."""
        outcomes: list[_Outcome] = []
        try:
            if self._conn is None:
                raise RuntimeError("store is closed")
            self._check_file()
            conn = self._conn
            try:
                conn.execute("BEGIN IMMEDIATE")
                for script, future in batch:
                    conn.execute("SAVEPOINT script")
                    try:
                        outcomes.append((future, _drive(conn, script), None))
                    except sqlite3.OperationalError:
                        raise
                    except Exception as exc:  # the script's own refusal: undo it alone
                        conn.execute("ROLLBACK TO script")
                        outcomes.append((future, None, exc))
                    conn.execute("RELEASE script")
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.OperationalError as exc:
            self.healthy = False
            fault = _fault(exc, self.path)
            return [(future, None, fault) for _, future in batch]
        except Exception as exc:  # the file is lost, or the store closed
            return [(future, None, exc) for _, future in batch]
        self.healthy = True
        return outcomes

    def _check_file(self) -> None:
        """Refuse to go on when the database file is not the one opened."""
        if not self._lost:
            try:
                if os.stat(self.path).st_ino != self._inode:
                    self._lost = "was replaced"
            except FileNotFoundError:
                self._lost = "was removed"
            except OSError as exc:
                raise Unavailable(f"cannot check the database file: {_reason(exc)}") from None
        if self._lost:
            self.healthy = False
            raise Unavailable(
                f"the database file {self.path} {self._lost} while the service ran; it stopped "
                "writing: restore the file, then restart the service"
            )

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True

        def close() -> None:
            if self._conn is not None and self._lost:
                # Closing would checkpoint the log into the removed file and
                # delete the log: the last copy of those writes. Keep it.
                log.error("kept the write-ahead log of %s: the database file is gone", self.path)
            elif self._conn is not None:
                self._conn.close()
            self._conn = None
            if self._reader is not None:
                self._reader.close()
                self._reader = None
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None

        await asyncio.get_running_loop().run_in_executor(self._executor, close)
        self._executor.shutdown(wait=True)


def _fault(exc: sqlite3.OperationalError, path: Path) -> SpindleError:
    """What a failed transaction means to a caller; the detail goes to the log."""
    name = getattr(exc, "sqlite_errorname", "")
    if name == "SQLITE_FULL":
        return ResourceExhausted(f"the disk holding {path.parent} is full; nothing was saved")
    log.warning("database %s: %s", path, exc)
    return Unavailable("the database cannot be written now; nothing was saved")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


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
