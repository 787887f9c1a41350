"""The PostgreSQL store, for several thread-service replicas on one database.

psycopg 3 with an async connection pool. Every script runs in one
transaction on a pooled connection (READ COMMITTED: each append locks its
thread's row first, and a partial unique index allows one running turn per
thread). A database that cannot be reached fails the call with UNAVAILABLE;
the pool reconnects when it is back. Migrations run under an advisory lock,
so replicas starting together apply each one once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from spindle.errors import ResourceExhausted, StartupError, Unavailable
from thread_service.stores import schema
from thread_service.stores.operations import Conflict, Script, Statement, T, advance
from thread_service.stores.sql_store import SqlStore

# Any constant: the key of the advisory lock that serializes migrations.
_MIGRATION_LOCK = 0x5350494E444C45

Connection = psycopg.AsyncConnection[dict[str, Any]]


class PostgresStore(SqlStore):
    """`thread_service.store.Store` on PostgreSQL, shared by replicas."""

    exclusive = False

    def __init__(
        self, pool: AsyncConnectionPool[Connection], where: str, clock: Callable[[], float]
    ) -> None:
        super().__init__(clock)
        self._pool = pool
        self.where = where

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
    ) -> PostgresStore:
        where = describe(url)
        pool: AsyncConnectionPool[Connection] = AsyncConnectionPool(
            url,
            min_size=min_size,
            max_size=max_size,
            timeout=pool_timeout,
            open=False,
            kwargs={"autocommit": True, "row_factory": dict_row},
            check=AsyncConnectionPool.check_connection,
            name="spindle",
        )
        try:
            await pool.open(wait=True, timeout=pool_timeout)
        except (PoolTimeout, psycopg.Error) as exc:
            await pool.close()
            raise StartupError(f"cannot reach the database {where}: {_reason(exc)}") from None
        store = cls(pool, where, clock)
        try:
            await store._migrate(migrate_to)
        except BaseException:
            await pool.close()
            raise
        return store

    async def _run(self, script: Script[T]) -> T:
        """Run a script in one transaction. Once started it runs to the end:
        cancelling the caller must not leave a write half done or undone."""
        return await asyncio.shield(self._transaction(script))

    async def _transaction(self, script: Script[T]) -> T:
        try:
            async with self._pool.connection() as conn, conn.transaction():
                result = await _drive(conn, script)
        except psycopg.errors.InsufficientResources as exc:  # disk full, out of memory
            self.healthy = False
            raise ResourceExhausted(
                f"the database {self.where} is out of resources: {_reason(exc)}"
            ) from None
        except (PoolTimeout, psycopg.OperationalError) as exc:
            self.healthy = False
            raise Unavailable(f"the database {self.where} is unavailable: {_reason(exc)}") from None
        self.healthy = True
        return result

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


async def _drive(conn: Connection, script: Script[T]) -> T:
    """Run each statement the script yields and send back its result."""
    step = advance(script)
    while isinstance(step, Statement):
        try:
            step = advance(script, await _execute(conn, step))
        except psycopg.errors.UniqueViolation as exc:
            step = advance(script, conflict=Conflict(str(exc)))
    value: T = step.value
    return value


async def _execute(conn: Connection, statement: Statement) -> Any:
    sql = _sql(statement.sql)
    async with conn.cursor() as cursor:
        if statement.batch is not None:
            if statement.batch:
                await cursor.executemany(sql, statement.batch)
            return None
        await cursor.execute(sql, statement.params)
        if statement.result == "one":
            return await cursor.fetchone()
        if statement.result == "all":
            return await cursor.fetchall()
        if statement.result == "count":
            return cursor.rowcount
        return None


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
