"""The PostgreSQL store, for several thread-service replicas on one database.

psycopg 3 with an async connection pool. Every script that writes runs in one
transaction on a pooled connection (READ COMMITTED: each append locks its
thread's row first, and a partial unique index allows one running turn per
thread). A database that cannot be reached fails the call with UNAVAILABLE;
the pool reconnects when it is back. Migrations run under an advisory lock,
so replicas starting together apply each one once.

Round trips are what a call waits for, so each script takes as few as its
statements allow:

- A script that only reads runs without BEGIN and COMMIT (at READ COMMITTED
  each statement sees what was committed when it began, in a transaction or
  not).
- A script that writes runs in pipeline mode, and waits only for the
  results it uses: BEGIN's answer comes back with its first statement's, the
  answer to a statement whose result the script does not use with the next
  one's, the last ones with COMMIT's. A uniqueness conflict met by such a
  statement runs the script again, one round trip per statement, so that the
  conflict reaches the script at the statement that met it, as
  `operations.Conflict` promises.
- A connection taken from the pool is checked without a round trip: one that
  the server closed, or that has anything to read while idle, is dropped.
- The server ends a transaction that waits `idle_timeout` seconds for its
  next statement after answering one (a replica that stopped in the middle
  of one must not hold its row locks for good; statements sent ahead without
  waiting do not start that clock, PostgreSQL 17's `transaction_timeout`
  would); the script then runs again on another connection, once, and the
  call fails UNAVAILABLE if it cannot.
"""

from __future__ import annotations

import asyncio
import contextlib
import select
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.pq import TransactionStatus
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from spindle.errors import ResourceExhausted, StartupError, Unavailable
from thread_service.stores import schema
from thread_service.stores.operations import Conflict, Finished, Script, Statement, T, advance
from thread_service.stores.sql_store import P, SqlStore

# Any constant: the key of the advisory lock that serializes migrations.
_MIGRATION_LOCK = 0x5350494E444C45

# Seconds the server lets a transaction wait for its next statement before it
# ends the session. The scripts wait for nothing but the database, so only a
# replica that stopped (or was starved of CPU for that long) reaches it; it is
# below the default turn lease (6 s), so a stopped replica's row locks go
# before the other replicas come to end its turns.
IDLE_IN_TRANSACTION_TIMEOUT = 5.0

Connection = psycopg.AsyncConnection[dict[str, Any]]
Pipeline = psycopg.AsyncPipeline


class _Again(Exception):
    """A statement sent without waiting for its result met a uniqueness
    conflict: the transaction is rolled back, and the script runs again, one
    round trip per statement."""


class _Lost(Exception):
    """The session ended before the transaction could commit: nothing it did
    stays, and the script may run again on another connection."""


@dataclass
class _Wait:
    """Seconds a call may still wait for connections."""

    left: float


class PostgresStore(SqlStore):
    """`thread_service.store.Store` on PostgreSQL, shared by replicas."""

    exclusive = False

    def __init__(
        self,
        pool: AsyncConnectionPool[Connection],
        where: str,
        clock: Callable[[], float],
        timeout: float = 5.0,
    ) -> None:
        super().__init__(clock)
        self._pool = pool
        self.where = where
        self._timeout = timeout  # seconds a call may wait for connections, a retry's included

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        min_size: int = 1,
        max_size: int = 10,
        pool_timeout: float = 5.0,
        clock: Callable[[], float] = time.time,
        migrate_to: int = schema.VERSION,
        idle_timeout: float = IDLE_IN_TRANSACTION_TIMEOUT,
    ) -> PostgresStore:
        where = describe(url)

        async def configure(conn: Connection) -> None:
            await conn.execute(
                "SELECT set_config('idle_in_transaction_session_timeout', %s, false)",
                (f"{max(1, round(idle_timeout * 1000))}ms",),
            )

        pool: AsyncConnectionPool[Connection] = AsyncConnectionPool(
            url,
            min_size=min_size,
            max_size=max_size,
            timeout=pool_timeout,
            open=False,
            kwargs={"autocommit": True, "row_factory": dict_row},
            configure=configure,
            check=_still_open,
            name="spindle",
        )
        try:
            await pool.open(wait=True, timeout=pool_timeout)
        except (PoolTimeout, psycopg.Error) as exc:
            await pool.close()
            raise StartupError(f"cannot reach the database {where}: {_reason(exc)}") from None
        store = cls(pool, where, clock, pool_timeout)
        try:
            await store._migrate(migrate_to)
        except BaseException:
            await pool.close()
            raise
        return store

    async def _run(self, script: Script[T]) -> T:
        """Run a script in one transaction. Once started it runs to the end:
        cancelling the caller must not leave a write half done or undone. This
        script cannot be made again, so every statement waits for its result
        and a transaction that could not commit is not run again."""
        return await asyncio.shield(self._call(lambda: script, writes=True, again=False))

    async def _read(self, make: Callable[P, Script[T]], *args: P.args, **kwargs: P.kwargs) -> T:
        return await asyncio.shield(
            self._call(lambda: make(*args, **kwargs), writes=False, again=True)
        )

    async def _write(self, make: Callable[P, Script[T]], *args: P.args, **kwargs: P.kwargs) -> T:
        return await asyncio.shield(
            self._call(lambda: make(*args, **kwargs), writes=True, again=True)
        )

    async def _call(self, make: Callable[[], Script[T]], *, writes: bool, again: bool) -> T:
        """Run the script `make` makes; again (when it can be made again) after
        a conflict met by a statement sent ahead, or once after its session
        ended before it could commit. Waiting for connections, all runs
        together wait at most the pool's timeout."""
        wait = _Wait(self._timeout)
        ahead = writes and again  # send statements whose result is not used ahead
        retried = False
        while True:
            try:
                result = await self._attempt(make(), writes=writes, ahead=ahead, wait=wait)
            except _Again:
                ahead = False
                continue
            except _Lost as lost:
                if again and not retried and wait.left > 0:
                    retried = True
                    continue
                self.healthy = False
                raise Unavailable(f"the database {self.where} is unavailable: {lost}") from None
            except psycopg.errors.InsufficientResources as exc:  # disk full, out of memory
                self.healthy = False
                raise ResourceExhausted(
                    f"the database {self.where} is out of resources: {_reason(exc)}"
                ) from None
            except (PoolTimeout, psycopg.OperationalError) as exc:
                self.healthy = False
                raise Unavailable(
                    f"the database {self.where} is unavailable: {_reason(exc)}"
                ) from None
            self.healthy = True
            return result

    async def _attempt(self, script: Script[T], *, writes: bool, ahead: bool, wait: _Wait) -> T:
        """One run of a script on one connection (waiting for it at most what
        is left of `wait`): its statements one by one without a transaction
        when it only reads, else in one transaction in pipeline mode."""
        if wait.left <= 0:
            raise PoolTimeout("no time left to wait for a connection")
        asked = time.monotonic()
        async with self._pool.connection(timeout=wait.left) as conn:
            wait.left -= time.monotonic() - asked
            committing = False
            try:
                if not writes:
                    return await _drive(conn, script, None, ahead=False)
                async with conn.pipeline() as pipeline:
                    # BEGIN and COMMIT go out without waiting: the first sync
                    # brings BEGIN's result back, leaving the pipeline COMMIT's.
                    await conn.execute("BEGIN", prepare=False)
                    try:
                        result = await _drive(conn, script, pipeline, ahead=ahead)
                    except BaseException:
                        with contextlib.suppress(psycopg.Error):
                            await conn.execute("ROLLBACK", prepare=False)
                        raise
                    committing = True
                    await conn.execute("COMMIT", prepare=False)
                return result
            except psycopg.errors.UniqueViolation:
                if committing and ahead:  # met by a statement sent ahead of COMMIT
                    raise _Again from None
                raise
            except psycopg.Error as exc:
                if _idled(exc) or (conn.closed and not committing):
                    # The server ended the session (for idling, or it went
                    # away) before COMMIT: nothing of the transaction stays.
                    await conn.close()
                    raise _Lost(_reason(exc)) from None
                raise
            finally:
                await _roll_back(conn)

    async def _migrate(self, target: int) -> None:
        async with self._pool.connection() as conn:
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS spindle_schema (version INTEGER NOT NULL)"
            )
            while True:
                async with conn.transaction():
                    await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
                    row = await (
                        await conn.execute("SELECT version FROM spindle_schema")
                    ).fetchone()
                    version = row["version"] if row else 0
                    if version > schema.VERSION:
                        raise StartupError(
                            f"the database {self.where} has schema version {version}; "
                            f"this build knows up to {schema.VERSION}"
                        )
                    if version >= target:
                        return
                    for statement in schema.statements(schema.MIGRATIONS[version]):
                        await conn.execute(statement)
                    if row is None:
                        await conn.execute("INSERT INTO spindle_schema VALUES (1)")
                    else:
                        await conn.execute("UPDATE spindle_schema SET version = %s", (version + 1,))

    async def close(self) -> None:
        await self._pool.close()


_PLACEHOLDERS: dict[str, str] = {}


def _sql(text: str) -> str:
    """The statement with psycopg's placeholders (the scripts write `?`)."""
    converted = _PLACEHOLDERS.get(text)
    if converted is None:
        converted = _PLACEHOLDERS[text] = text.replace("%", "%%").replace("?", "%s")
    return converted


async def _drive(conn: Connection, script: Script[T], pipeline: Pipeline | None, ahead: bool) -> T:
    """Run each statement the script yields and send back its result. In
    pipeline mode a statement goes out with the next one whose result is
    waited for (`ahead`: also those whose result the script does not use);
    the last ones go out with COMMIT."""
    sent_ahead = False  # statements sent ahead whose results have not come back
    step = advance(script)
    while isinstance(step, Statement):
        cursor = conn.cursor()
        try:
            queued = await _send(cursor, step)
            waits = pipeline is None or (queued and not (ahead and step.result == "none"))
            if waits:
                if pipeline is not None:
                    await pipeline.sync()
                result = await _result(cursor, step) if queued else None
        except psycopg.errors.UniqueViolation as exc:
            if sent_ahead:  # maybe met by a statement sent ahead: run the script again
                raise _Again from None
            step = advance(script, conflict=Conflict(str(exc)))
            continue
        if waits:
            sent_ahead = False
            step = advance(script, result)
        else:
            sent_ahead = sent_ahead or queued
            step = advance(script)
    assert isinstance(step, Finished)
    value: T = step.value
    return value


async def _send(cursor: psycopg.AsyncCursor[dict[str, Any]], statement: Statement) -> bool:
    """Execute a statement (in pipeline mode: queue it); False when there was
    nothing to execute (an empty batch)."""
    sql = _sql(statement.sql)
    if statement.batch is not None:
        if not statement.batch:
            return False
        await cursor.executemany(sql, statement.batch)
        return True
    await cursor.execute(sql, statement.params)
    return True


async def _result(cursor: psycopg.AsyncCursor[dict[str, Any]], statement: Statement) -> Any:
    if statement.batch is not None:
        return None
    if statement.result == "one":
        return await cursor.fetchone()
    if statement.result == "all":
        return await cursor.fetchall()
    if statement.result == "count":
        return cursor.rowcount
    return None


async def _still_open(conn: Connection) -> None:
    """The pool's check of a connection it hands out, without a round trip:
    an idle connection has nothing to read, so one that has (the server
    closed it, or is about to: a restart, a terminated backend) is closed and
    refused, and the pool hands out another."""
    if conn.closed:
        raise psycopg.OperationalError("the connection is closed")
    poller = select.poll()
    poller.register(conn.pgconn.socket, select.POLLIN)
    if poller.poll(0):
        await conn.close()
        raise psycopg.OperationalError("the server closed the connection or has spoken unasked")


async def _roll_back(conn: Connection) -> None:
    """End a transaction left open by a failure (a statement sent ahead that
    failed leaves it open: the COMMIT behind it was skipped), so that the
    connection goes back to the pool idle, or closed if it cannot."""
    if conn.closed:
        return
    if conn.pgconn.transaction_status in (TransactionStatus.INTRANS, TransactionStatus.INERROR):
        try:
            await conn.execute("ROLLBACK")
        except psycopg.Error:
            await conn.close()


def _idled(exc: psycopg.Error) -> bool:
    """The server ended the session because its transaction idled too long."""
    return isinstance(exc, psycopg.errors.IdleInTransactionSessionTimeout)


def describe(url: str) -> str:
    """Where a database is, for messages: host, port and name, never a password."""
    try:
        info = conninfo_to_dict(url)
    except psycopg.Error:
        return "(unparseable URL)"
    host = info.get("host") or "localhost"
    port = f":{info['port']}" if info.get("port") else ""
    return f"{host}{port}/{info.get('dbname') or ''}"


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:300]
