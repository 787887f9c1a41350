"""The PostgreSQL store's own mechanics, on a fresh database per test (see
tests/postgres.py): how many round trips each call of a turn takes, a
conflict met by a statement sent ahead, a connection the server closed while
it idled in the pool, and a transaction the server ended for idling.

Round trips are counted by a TCP proxy in front of the server (one pooled
connection, one call at a time): each is a wait of the caller for the server,
and under CPU contention a wait for a PostgreSQL backend to be scheduled, so
their number is what a turn's latency is made of (bench/README.md, "the
3-replica stall")."""

from __future__ import annotations

import asyncio
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

import psycopg
import pytest

from spindle import items
from spindle.errors import Unavailable
from spindle.model import Usage
from tests.proxy import TcpProxy
from thread_service.records import Entry, Origin, ThreadRecord, TurnRecord, TurnStatus
from thread_service.stores.operations import Conflict, Script, Statement, one
from thread_service.stores.postgres import PostgresStore

pytestmark = pytest.mark.anyio

T = TypeVar("T")
THREAD = "10000000-0000-4000-8000-000000000001"


@pytest.fixture
async def proxy(postgres_url: str) -> AsyncIterator[TcpProxy]:
    url = urllib.parse.urlsplit(postgres_url)
    with TcpProxy(url.hostname or "127.0.0.1", url.port or 5432) as running:
        yield running


def through(postgres_url: str, proxy: TcpProxy) -> str:
    url = urllib.parse.urlsplit(postgres_url)
    return url._replace(netloc=f"{url.username}@127.0.0.1:{proxy.port}").geturl()


async def open_store(url: str, **kwargs: Any) -> PostgresStore:
    """A store of one pooled connection, so that calls take turns on it."""
    return await PostgresStore.open(url, min_size=1, max_size=1, **kwargs)


def a_thread() -> ThreadRecord:
    return ThreadRecord(
        id=THREAD,
        origin=Origin.START,
        session_origin=Origin.START,
        cwd="/work/project",
        model="spindle-echo",
        instructions="",
        created_at=100.0,
        updated_at=100.0,
    )


def a_turn(number: int) -> TurnRecord:
    return TurnRecord(
        f"30000000-0000-4000-8000-{number:012d}", THREAD, TurnStatus.RUNNING, 200.0, "replica-a"
    )


def said(text: str) -> Entry:
    return Entry.of(items.Message(items.Role.USER, text))


def answered(text: str) -> Entry:
    return Entry.of(items.Message(items.Role.ASSISTANT, text, items.Phase.FINAL_ANSWER))


async def trips(proxy: TcpProxy, call: Awaitable[T]) -> tuple[T, int]:
    before = proxy.round_trips
    result = await call
    return result, proxy.round_trips - before


async def test_a_turns_store_calls_take_one_round_trip_per_result_they_wait_for(
    postgres_url: str, proxy: TcpProxy
) -> None:
    """What a turn asks of the store, in the order the service asks it. Reads
    take one round trip per statement (no BEGIN, no COMMIT, no check of the
    pooled connection); a write takes one per statement whose result its script
    uses, BEGIN going out with the first and the rest with COMMIT."""
    store = await open_store(through(postgres_url, proxy))
    try:
        await store.create_thread(a_thread())
        for number in (1, 2):  # the second turn runs on prepared statements
            thread, gets = await trips(proxy, store.get_thread(THREAD))
            assert thread is not None and gets == 2  # the thread, its labels
            _, running = await trips(proxy, store.running_turn(THREAD))
            assert running == 1
            _, reads = await trips(proxy, store.read_history(THREAD, version=thread.version))
            # The segments it inherits, then its own items, if it has any yet
            # (a slice of HISTORY_SLICE at a time; here, one).
            assert reads == (2 if thread.version else 1)
            begun, begins = await trips(
                proxy,
                store.begin_turn(a_turn(number), [said(f"q{number}")], version=thread.version),
            )
            assert begun[1] is True
            # BEGIN + the thread's row; its items + the running turn, if any;
            # the turn's row + COMMIT.
            assert begins == 3
            _, polls = await trips(proxy, store.interrupts_requested("replica-a"))
            assert polls == 1
            ended, finishes = await trips(
                proxy,
                store.finish_turn(
                    a_turn(number).id,
                    TurnStatus.COMPLETED,
                    Usage(3, 0, 2),
                    None,
                    [answered(f"a{number}")],
                    [(1, "{}"), (2, "{}")],
                ),
            )
            assert ended.status is TurnStatus.COMPLETED
            # BEGIN + the turn's row; the turn; the thread's row; its items,
            # end and events + COMMIT.
            assert finishes == 4
            _, beats = await trips(proxy, store.heartbeat("replica-a"))
            assert beats == 1
        stored = await store.read_history(THREAD)
        assert [s.item for s in stored] == [
            said("q1").item,
            answered("a1").item,
            said("q2").item,
            answered("a2").item,
        ]
    finally:
        await store.close()


async def test_a_conflict_met_by_a_statement_sent_ahead_reaches_the_script_at_that_statement(
    postgres_url: str,
) -> None:
    """A statement whose result the script does not use goes out without
    waiting; if it meets a uniqueness conflict, the transaction is rolled back
    and the script runs again, one round trip per statement, so that the
    conflict is thrown at the statement that met it (as begin_turn expects)
    and nothing of either run stays."""
    store = await open_store(postgres_url)
    made = 0

    def second_running_turn() -> Script[str]:
        nonlocal made
        made += 1
        yield Statement("UPDATE threads SET agent_role = 'second' WHERE id = ?", (THREAD,))
        try:
            yield Statement(
                "INSERT INTO turns (id, thread_id, status, owner, first_seq, input_tokens, "
                "cached_input_tokens, output_tokens, created_at) "
                "VALUES (?, ?, ?, 'replica-b', 0, 0, 0, 0, 300.0)",
                (a_turn(2).id, THREAD, TurnStatus.RUNNING.value),
            )
        except Conflict:
            return "conflict"
        return "inserted"

    try:
        await store.create_thread(a_thread())
        await store.begin_turn(a_turn(1), [said("q1")])
        assert await store._write(second_running_turn) == "conflict"
        assert made == 2  # sent ahead, then again one statement at a time
        thread = await store.get_thread(THREAD)
        assert thread is not None and thread.agent_role == ""
        running = await store.running_turn(THREAD)
        assert running is not None and running.id == a_turn(1).id
        assert await store.get_turn(a_turn(2).id) is None
        # Without a conflict the statements sent ahead commit, on the first run.
        await store.finish_turn(a_turn(1).id, TurnStatus.COMPLETED, Usage(), None, [])
        assert await store._write(second_running_turn) == "inserted"
        assert made == 3
        thread = await store.get_thread(THREAD)
        assert thread is not None and thread.agent_role == "second"
    finally:
        await store.close()


async def test_a_connection_the_server_closed_in_the_pool_is_not_handed_out(
    postgres_url: str,
) -> None:
    store = await open_store(postgres_url)
    try:
        await store.create_thread(a_thread())
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            pids = [
                row[0]
                for row in admin.execute(
                    "SELECT pid FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            ]
            assert len(pids) == 1
            admin.execute("SELECT pg_terminate_backend(%s, 5000)", (pids[0],))
        await asyncio.sleep(0.1)  # the server's goodbye reaches the pooled connection
        thread = await store.get_thread(THREAD)  # on a new connection, without an error
        assert thread is not None and thread.id == THREAD
        assert store.healthy
    finally:
        await store.close()


async def test_a_transaction_the_server_ended_for_idling_runs_again_once(
    postgres_url: str,
) -> None:
    """A transaction that waits too long for its next statement (here its
    replica stops for longer than the server allows) is ended by the server:
    none of it stays, and the script runs again on another connection; if that
    idles too, the call fails UNAVAILABLE and still nothing stays."""
    # The retry does not count the stall against the time a call may wait
    # for connections (pool_timeout): the stall is longer than that here.
    store = await open_store(postgres_url, idle_timeout=0.2, pool_timeout=0.5)
    stalls = {"left": 1}

    def count_a_beat() -> Script[float]:
        row = yield one(
            "UPDATE replicas SET heartbeat_at = heartbeat_at + 1 WHERE id = 'r' "
            "RETURNING heartbeat_at"
        )
        if stalls["left"]:
            stalls["left"] -= 1
            time.sleep(0.6)  # the whole replica stops, in the middle of the transaction
        yield Statement(
            "UPDATE threads SET updated_at = ? WHERE id = ?", (row["heartbeat_at"], THREAD)
        )
        return float(row["heartbeat_at"])

    async def beats() -> float:
        def read() -> Script[float]:
            row = yield one("SELECT heartbeat_at FROM replicas WHERE id = 'r'")
            return float(row["heartbeat_at"])

        return await store._read(read)

    try:
        await store.create_thread(a_thread())
        await store.heartbeat("r")
        start = await beats()
        assert await store._write(count_a_beat) == start + 1  # stalled once, ran again
        assert await beats() == start + 1  # the first run's update did not stay
        thread = await store.get_thread(THREAD)
        assert thread is not None and thread.updated_at == start + 1

        stalls["left"] = 2  # the run again stalls too
        with pytest.raises(Unavailable, match="is unavailable"):
            await store._write(count_a_beat)
        assert not store.healthy
        assert await beats() == start + 1
        assert await store._write(count_a_beat) == start + 2  # and the store goes on
        assert store.healthy
    finally:
        await store.close()
