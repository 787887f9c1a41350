"""The store, through its domain interface, on both backends: SQLite (a file
per test) and PostgreSQL (a fresh database per test; see tests/postgres.py).
Also the schema migrations, from a database the first release wrote."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from spindle import items
from spindle.errors import ErrorCode, FailedPrecondition, InvalidArgument, NotFound, StartupError
from spindle.model import Usage
from thread_service.inheritance import InheritedThreadState
from thread_service.records import (
    Entry,
    Origin,
    RequestKey,
    ThreadRecord,
    TrustSource,
    TrustState,
    TurnError,
    TurnRecord,
    TurnStatus,
)
from thread_service.store import ForkSource, ThreadFilter
from thread_service.stores import operations as ops
from thread_service.stores import schema, sql_store
from thread_service.stores.operations import Script, Statement
from thread_service.stores.postgres import PostgresStore
from thread_service.stores.sql_store import SqlStore
from thread_service.stores.sqlite import SQLiteStore

pytestmark = pytest.mark.anyio

USER, ASSISTANT = items.Role.USER, items.Role.ASSISTANT


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


Opener = Callable[..., Awaitable[SqlStore]]


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where the store lives: a SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite://{tmp_path / 'spindle.sqlite3'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
async def opener(backend: str) -> AsyncIterator[Opener]:
    """Opens stores on the backend (several may share it), closing them after."""
    opened: list[SqlStore] = []

    async def open_store(clock: Callable[[], float] | None = None, **kwargs: int) -> SqlStore:
        clock = clock or Clock()
        store: SqlStore
        if backend.startswith("sqlite://"):
            store = await SQLiteStore.open(
                Path(backend[len("sqlite://") :]), "NORMAL", clock, **kwargs
            )
        else:
            store = await PostgresStore.open(backend, clock=clock, **kwargs)
        opened.append(store)
        return store

    yield open_store
    for store in reversed(opened):
        await store.close()


@pytest.fixture
async def store(opener: Opener) -> SqlStore:
    return await opener()


def thread(**changes: object) -> ThreadRecord:
    base = ThreadRecord(
        id="10000000-0000-4000-8000-000000000001",
        origin=Origin.START,
        session_origin=Origin.START,
        cwd="/work/project",
        model="spindle-echo",
        instructions="be kind",
        created_at=100.0,
        updated_at=100.0,
        agent_nickname="Ada",
        agent_role="lead",
        trust=TrustState("/work", True, TrustSource.IN_MEMORY),
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def child_of(parent: ThreadRecord, number: int, **changes: object) -> ThreadRecord:
    return thread(
        id=f"20000000-0000-4000-8000-{number:012d}",
        parent_id=parent.id,
        origin=Origin.FORK,
        session_origin=Origin.FORK,
        depth=parent.depth + 1,
        created_at=100.0 + number,
        inherited=InheritedThreadState(parent.prompt_cache_key),
        **changes,
    )


def turn_record(thread_id: str, number: int, owner: str = "replica-a") -> TurnRecord:
    return TurnRecord(
        f"30000000-0000-4000-8000-{number:012d}", thread_id, TurnStatus.RUNNING, 200.0, owner
    )


def said(text: str) -> items.Message:
    return items.Message(USER, text)


def answer(text: str) -> items.Message:
    return items.Message(ASSISTANT, text, items.Phase.FINAL_ANSWER)


async def play(
    store: SqlStore, thread_id: str, number: int, *outputs: items.Item, text: str = ""
) -> TurnRecord:
    """A whole completed turn: the user's text, then the given outputs."""
    turn = turn_record(thread_id, number)
    await store.begin_turn(turn, [Entry.of(said(text or f"question {number}"))])
    return await store.finish_turn(
        turn.id, TurnStatus.COMPLETED, Usage(10, 4, 2), None, [Entry.of(i) for i in outputs]
    )


async def history(
    store: SqlStore, thread_id: str, offset: int = 0, limit: int | None = None
) -> list[items.Item]:
    """A thread's history, its items alone (ids and times are tested apart)."""
    return [stored.item for stored in await store.read_history(thread_id, offset, limit)]


async def count_items(store: SqlStore) -> int:
    def script() -> Script[int]:
        row = yield Statement("SELECT COUNT(*) AS n FROM items", (), "one")
        return int(row["n"])

    return await store._run(script())


# Threads


async def test_a_thread_reads_back_as_written(store: SqlStore) -> None:
    root = thread()
    await store.create_thread(root)
    assert await store.get_thread(root.id) == root
    assert await store.get_thread("10000000-0000-4000-8000-00000000ffff") is None


async def test_update_thread_saves_what_may_change(store: SqlStore) -> None:
    root = thread()
    await store.create_thread(root)
    changed = dataclasses.replace(
        root,
        session_origin=Origin.RESUME,
        window_generation=3,
        archived=True,
        updated_at=150.0,
        inherited=InheritedThreadState(),
    )
    await store.update_thread(changed)
    assert await store.get_thread(root.id) == changed


async def test_list_threads_filters_and_pages_by_creation(store: SqlStore) -> None:
    root = thread()
    await store.create_thread(root)
    children = [child_of(root, n) for n in range(1, 5)]
    for child in children:
        await store.create_thread(child)
    await store.update_thread(dataclasses.replace(children[1], archived=True))

    everything = await store.list_threads(ThreadFilter(archived=None), None, 10)
    assert [t.id for t in everything] == [root.id, *(c.id for c in children)]
    active = await store.list_threads(ThreadFilter(parent_id=root.id), None, 10)
    assert [t.id for t in active] == [children[0].id, children[2].id, children[3].id]
    after = (children[0].created_at, children[0].id)
    page = await store.list_threads(ThreadFilter(parent_id=root.id), after, 1)
    assert [t.id for t in page] == [children[2].id]


# Turns and history


async def test_a_turn_appends_its_input_then_its_output(store: SqlStore) -> None:
    clock = Clock(500.0)
    store.clock = clock
    root = thread()
    await store.create_thread(root)
    turn = turn_record(root.id, 1)
    await store.begin_turn(turn, [Entry.of(said("hi"))])
    assert await store.running_turn(root.id) == turn
    assert await history(store, root.id) == [said("hi")]
    clock.now = 501.0
    reasoning = items.Reasoning("thinking", "opaque")
    done = await store.finish_turn(
        turn.id,
        TurnStatus.COMPLETED,
        Usage(12, 8, 3),
        None,
        [Entry.of(reasoning), Entry.of(answer("hello"))],
    )
    assert done == dataclasses.replace(
        turn, status=TurnStatus.COMPLETED, usage=Usage(12, 8, 3), completed_at=501.0
    )
    assert await store.get_turn(turn.id) == done
    assert await store.running_turn(root.id) is None
    assert await history(store, root.id) == [said("hi"), reasoning, answer("hello")]
    assert await store.history_length(root.id) == 3
    saved = await store.get_thread(root.id)
    assert saved is not None and saved.updated_at == 501.0  # the injected clock, not time.time


async def test_history_reads_from_an_offset(store: SqlStore) -> None:
    root = thread()
    await store.create_thread(root)
    for n in range(1, 6):
        await play(store, root.id, n, answer(f"a{n}"))
    fork = child_of(root, 1)
    await store.create_fork(fork, ForkSource(root.id))
    await play(store, fork.id, 9, answer("own"))
    whole = await history(store, fork.id)
    assert len(whole) == 12
    for offset in range(0, 13):
        for limit in (1, 3, 20):
            assert await history(store, fork.id, offset, limit) == whole[offset:][:limit]


async def test_a_whole_history_read_a_slice_at_a_time_is_the_history_read_at_once(
    store: SqlStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Slices of 3 items, so that every run below takes several and some end
    # on a run's edge or on items a fork skips.
    monkeypatch.setattr(sql_store, "HISTORY_SLICE", 3)
    root = thread()
    await store.create_thread(root)
    for n in range(1, 8):
        work: list[items.Item] = []
        if n % 2:  # items a fork does not inherit, between those it does
            work = [items.FunctionCall(f"call_{n}", "search", "{}")]
            work.append(items.FunctionCallOutput(f"call_{n}", "found"))
        await play(store, root.id, n, *work, answer(f"root {n}"))
    fork = child_of(root, 1)
    await store.create_fork(fork, ForkSource(root.id))
    for n in range(10, 14):
        await play(store, fork.id, n, answer(f"fork {n}"))
    fork_of_fork = child_of(fork, 2)
    await store.create_fork(fork_of_fork, ForkSource(fork.id))
    await play(store, fork_of_fork.id, 20, answer("own"))
    for thread_id, length in [(root.id, 22), (fork.id, 22), (fork_of_fork.id, 24)]:
        at_once = await store.read_history(thread_id, 0, 1000)  # one transaction
        assert len(at_once) == length
        assert await store.read_history(thread_id) == at_once
        version = (await store.get_thread(thread_id)).version  # type: ignore[union-attr]
        assert await store.read_history(thread_id, version=version) == at_once
        # One own item fewer: the inherited items come first, so the last one goes.
        assert await store.read_history(thread_id, version=version - 1) == at_once[:-1]
    texts = [i.text for i in await history(store, fork_of_fork.id) if isinstance(i, items.Message)]
    assert texts[:4] == ["question 1", "root 1", "question 2", "root 2"]
    assert texts[-2:] == ["question 20", "own"]
    # A thread that does not exist has no history.
    assert await store.read_history("10000000-0000-4000-8000-00000000ffff") == []


async def test_one_running_turn_per_thread_and_nothing_appended_for_the_refused(
    store: SqlStore,
) -> None:
    root = thread()
    await store.create_thread(root)
    await store.begin_turn(turn_record(root.id, 1), [Entry.of(said("first"))])
    with pytest.raises(FailedPrecondition, match="already running"):
        await store.begin_turn(turn_record(root.id, 2), [Entry.of(said("second"))])
    assert await history(store, root.id) == [said("first")]
    assert [t.id for t in await store.list_turns(root.id, 0, 10)] == [turn_record(root.id, 1).id]


async def test_writes_at_once_each_stand_or_fall_alone(store: SqlStore) -> None:
    """Many writes at once (SQLite commits them in groups): each refused one
    leaves nothing behind, and the others are all kept."""
    roots = [thread(id=f"40000000-0000-4000-8000-{n:012d}") for n in range(30)]
    await asyncio.gather(*(store.create_thread(root) for root in roots))
    # Every third thread is asked for two turns at once: one runs, one is refused.
    asks = [(n, n, f"on {n}") for n in range(30)] + [(n, 100 + n, "again") for n in range(0, 30, 3)]
    results = await asyncio.gather(
        *(
            store.begin_turn(turn_record(roots[n].id, number), [Entry.of(said(text))])
            for n, number, text in asks
        ),
        return_exceptions=True,
    )
    began: dict[int, list[str]] = {}
    for (n, _, text), result in zip(asks, results, strict=True):
        if isinstance(result, tuple):
            began.setdefault(n, []).append(text)
        else:
            assert isinstance(result, FailedPrecondition), result
    assert sorted(began) == list(range(30))
    for n, root in enumerate(roots):
        (text,) = began[n]
        assert await history(store, root.id) == [said(text)]
    assert await count_items(store) == 30


async def test_a_thread_is_not_deleted_while_a_turn_runs_on_it(store: SqlStore) -> None:
    """DeleteThread looks for a running turn before it deletes; a turn that
    began in between must keep its record (the long fuzz run found its end
    failing NOT_FOUND, an INTERNAL for its caller): the delete itself refuses."""
    root = thread()
    await store.create_thread(root)
    running = turn_record(root.id, 1)
    await store.begin_turn(running, [Entry.of(said("first"))])
    with pytest.raises(FailedPrecondition, match="a turn is running") as refused:
        await store.delete_thread(root.id)
    assert refused.value.reason == "TURN_RUNNING"
    assert refused.value.metadata == {"turn_id": running.id}
    assert [t.id for t in await store.list_turns(root.id, 0, 10)] == [running.id]
    ended = await store.finish_turn(
        running.id, TurnStatus.COMPLETED, Usage(), None, [Entry.of(answer("done"))]
    )
    assert ended.status is TurnStatus.COMPLETED
    await store.delete_thread(root.id)
    assert await store.get_thread(root.id) is None


async def test_events_kept_again_stay_as_first_kept(store: SqlStore) -> None:
    """A write of a turn's events whose caller saw it fail may have been saved
    all the same; its events then come again, with the turn's end."""
    root = thread()
    await store.create_thread(root)
    running = turn_record(root.id, 1)
    await store.begin_turn(running, [Entry.of(said("first"))])
    await store.append_events(running.id, [(1, "one"), (2, "two")])
    await store.append_events(running.id, [(2, "two"), (3, "three")])
    await store.finish_turn(
        running.id, TurnStatus.COMPLETED, Usage(), None, [], [(3, "three"), (4, "four")]
    )
    assert await store.read_events(running.id) == [
        (1, "one"),
        (2, "two"),
        (3, "three"),
        (4, "four"),
    ]


async def test_failed_and_interrupted_turns_keep_their_error(store: SqlStore) -> None:
    root = thread()
    await store.create_thread(root)
    turn = turn_record(root.id, 1)
    await store.begin_turn(turn, [Entry.of(said("q"))])
    error = TurnError(ErrorCode.UNAVAILABLE, "provider down")
    await store.finish_turn(turn.id, TurnStatus.FAILED, Usage(), error, [])
    (listed,) = await store.list_turns(root.id, 0, 10)
    assert (listed.status, listed.error) == (TurnStatus.FAILED, error)


# Forks


async def test_a_fork_inherits_the_sanitized_history_without_copying(store: SqlStore) -> None:
    root = thread()
    await store.create_thread(root)
    dropped: list[items.Item] = [
        items.Reasoning("thinking", "opaque"),
        items.Message(ASSISTANT, "working", items.Phase.COMMENTARY),
        items.FunctionCall("call_1", "search", "{}"),
        items.FunctionCallOutput("call_1", "found"),
        items.AgentMessage(root.id, "x", "note"),
    ]
    await play(store, root.id, 1, *dropped, answer("done"), text="start")
    before = await count_items(store)
    fork = child_of(root, 1)
    await store.create_fork(fork, ForkSource(root.id))
    assert await store.get_thread(fork.id) == fork
    assert await history(store, fork.id) == [said("start"), answer("done")]
    assert await count_items(store) == before  # recorded, not copied
    fork_of_fork = child_of(fork, 2)
    await play(store, fork.id, 2, answer("fork answer"), text="fork question")
    await store.create_fork(fork_of_fork, ForkSource(fork.id))
    assert await history(store, fork_of_fork.id) == [
        said("start"),
        answer("done"),
        said("fork question"),
        answer("fork answer"),
    ]
    # The parent's later turns are not the fork's.
    await play(store, root.id, 3, answer("later"))
    assert await store.history_length(fork.id) == 4


async def test_a_last_n_turns_fork_walks_back_through_ancestors(store: SqlStore) -> None:
    root = thread()
    await store.create_thread(root)
    for n in (1, 2, 3):
        await play(store, root.id, n, answer(f"root {n}"))
    middle = child_of(root, 1)
    await store.create_fork(middle, ForkSource(root.id))
    await play(store, middle.id, 4, answer("middle 4"))
    for wanted, expected in [
        (1, ["question 4", "middle 4"]),
        (2, ["question 3", "root 3", "question 4", "middle 4"]),
        (
            9,
            [
                *("question 1", "root 1", "question 2", "root 2", "question 3", "root 3"),
                *("question 4", "middle 4"),
            ],
        ),
    ]:
        child = child_of(middle, 10 + wanted)
        await store.create_fork(child, ForkSource(middle.id, last_n_turns=wanted))
        texts = [i.text for i in await history(store, child.id) if isinstance(i, items.Message)]
        assert texts == expected, wanted


async def test_a_fork_of_a_missing_parent_is_not_found(store: SqlStore) -> None:
    orphan = child_of(thread(), 1)
    with pytest.raises(NotFound):
        await store.create_fork(orphan, ForkSource(orphan.parent_id or ""))
    assert await store.get_thread(orphan.id) is None


# Replicas: interrupts and leases


async def test_an_interrupt_asked_of_a_turn_reaches_its_owner(store: SqlStore) -> None:
    root = thread()
    await store.create_thread(root)
    assert await store.request_interrupt("30000000-0000-4000-8000-000000000001", "x") is False
    turn = turn_record(root.id, 1, owner="replica-b")
    await store.begin_turn(turn, [Entry.of(said("q"))])
    assert await store.interrupts_requested("replica-b") == []
    assert await store.request_interrupt(turn.id, "interrupted by InterruptTurn") is True
    await store.request_interrupt(turn.id, "a second reason")
    assert await store.interrupts_requested("replica-b") == [
        (turn.id, "interrupted by InterruptTurn")
    ]
    assert await store.interrupts_requested("replica-a") == []


async def test_turns_of_a_replica_whose_lease_ran_out_are_ended(opener: Opener) -> None:
    clock = Clock(1_000.0)
    store = await opener(clock)
    root, other = thread(), thread(id="10000000-0000-4000-8000-000000000002")
    for t in (root, other):
        await store.create_thread(t)
    await store.heartbeat("replica-a")
    await store.heartbeat("replica-b")
    mine = turn_record(root.id, 1, owner="replica-a")
    theirs = turn_record(other.id, 2, owner="replica-b")
    await store.begin_turn(mine, [Entry.of(said("a"))])
    await store.begin_turn(theirs, [Entry.of(said("b"))])

    clock.now = 1_004.0
    await store.heartbeat("replica-a")  # a lives on; b has gone quiet
    exclusive = store.exclusive
    ended = await store.end_orphaned_turns("owner gone", lease=6.0, alive="replica-a")
    # An exclusive store (SQLite) knows no other process runs turns.
    assert ended == (1 if exclusive else 0)
    ended_at = clock.now if exclusive else 1_007.0
    clock.now = 1_007.0
    ended += await store.end_orphaned_turns("owner gone", lease=6.0, alive="replica-a")
    assert ended == 1
    gone = await store.get_turn(theirs.id)
    assert gone is not None and gone.status is TurnStatus.INTERRUPTED
    assert gone.error == TurnError(ErrorCode.CANCELLED, "owner gone")
    assert gone.completed_at == ended_at
    still = await store.get_turn(mine.id)
    assert still is not None and still.status is TurnStatus.RUNNING
    # The late owner's finish changes nothing and appends nothing.
    late = await store.finish_turn(theirs.id, TurnStatus.COMPLETED, Usage(), None, [])
    assert late == gone
    assert await history(store, other.id) == [said("b")]


async def test_concurrent_turns_on_one_thread_from_two_postgres_stores_run_one(
    postgres_url: str,
) -> None:
    first = await PostgresStore.open(postgres_url)
    second = await PostgresStore.open(postgres_url)
    root = thread()
    await first.create_thread(root)
    results = await asyncio.gather(
        *(
            store.begin_turn(turn_record(root.id, n), [Entry.of(said(f"q{n}"))])
            for n, store in [(1, first), (2, second), (3, first), (4, second)]
        ),
        return_exceptions=True,
    )
    began = [r for r in results if isinstance(r, tuple)]
    assert len(began) == 1 and began[0][1] is True
    assert all(isinstance(r, FailedPrecondition) for r in results if not isinstance(r, tuple))
    assert len(await history(first, root.id)) == 1
    await first.close()
    await second.close()


# Migrations


async def test_migrations_from_every_version_keep_the_data(opener: Opener) -> None:
    """Rows the first schema held, carried through each migration in turn."""
    first = await opener(migrate_to=1)
    root = thread()
    values = {k: v for k, v in ops._thread_values(root).items() if k != "tenant"}

    def first_release_rows() -> Script[None]:
        marks = ", ".join("?" * len(values))
        yield Statement(
            f"INSERT INTO threads ({', '.join(values)}) VALUES ({marks})", [*values.values()]
        )
        yield Statement(
            "INSERT INTO items (thread_id, seq, turn_id, kind, inheritable, body) "
            "VALUES (?, 0, 't', 'message', 1, ?)",
            (root.id, '{"type": "message", "role": "user", "text": "kept"}'),
        )
        yield Statement(
            "INSERT INTO turns (id, thread_id, status, first_seq, input_tokens, "
            "cached_input_tokens, output_tokens, created_at) "
            "VALUES ('t', ?, 'completed', 0, 1, 0, 1, 1.0)",
            (root.id,),
        )

    await first._run(first_release_rows())
    await first.close()
    for version in range(2, schema.VERSION):
        await (await opener(migrate_to=version)).close()
    store = await opener()
    assert await store.get_thread(root.id) == dataclasses.replace(root, version=1)
    assert await history(store, root.id) == [said("kept")]
    await play(store, root.id, 2, answer("after"))
    assert await store.history_length(root.id) == 3
    (old, new) = await store.list_turns(root.id, 0, 10)
    assert (old.id, old.usage, new.status) == ("t", Usage(1, 0, 1), TurnStatus.COMPLETED)


async def test_a_database_newer_than_the_build_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "spindle.sqlite3"
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version={schema.VERSION + 1}")
    with pytest.raises(StartupError, match="schema version"):
        await SQLiteStore.open(path)


ROOT_V1 = "ff521e75-6ff4-4b3c-ae9d-51399555437d"
FORK_V1 = "3ab9f7f7-8319-44b6-b048-4124187a9795"
LAST_V1 = "37d32822-8510-429a-9e5c-791fe27112ac"
CRASHED_V1 = "00000000-0000-4000-8000-00000000c4a5"


async def test_a_sqlite_database_of_the_first_release_opens_whole(tmp_path: Path) -> None:
    path = tmp_path / "spindle.sqlite3"
    with sqlite3.connect(path) as conn:
        conn.executescript((Path(__file__).parent / "data" / "spindle-v1.sql").read_text())
    store = await SQLiteStore.open(path)
    try:
        root = await store.get_thread(ROOT_V1)
        assert root is not None and root.instructions == "be brief"
        texts = [i.text for i in await history(store, FORK_V1) if isinstance(i, items.Message)]
        assert texts == [
            *("one", "echo: one", "two", "echo: two", "three", "echo: three"),
            *("four", "echo: four"),
        ]
        last = await store.get_thread(LAST_V1)
        assert last is not None and last.archived
        assert len(await history(store, LAST_V1)) == 2
        assert await store.history_length(ROOT_V1) == 10
        # The turn a crash left running is ended at start-up, then the thread goes on.
        assert await store.end_orphaned_turns("crashed", lease=6.0, alive="new") == 1
        crashed = await store.get_turn(CRASHED_V1)
        assert crashed is not None and crashed.status is TurnStatus.INTERRUPTED
        await play(store, ROOT_V1, 7, answer("six"), text="six")
        assert (await history(store, ROOT_V1, 9))[0] == said("five")
        assert await store.history_length(ROOT_V1) == 12
    finally:
        await store.close()


async def test_a_second_process_cannot_open_the_same_sqlite_database(tmp_path: Path) -> None:
    path = tmp_path / "new-data" / "spindle.sqlite3"
    store = await SQLiteStore.open(path)
    try:
        with pytest.raises(StartupError, match=r"in use by process \d+"):
            await SQLiteStore.open(path)
        assert oct(path.stat().st_mode & 0o777) == oct(0o600)
        assert oct(path.parent.stat().st_mode & 0o777) == oct(0o700)
    finally:
        await store.close()


async def test_request_ids_act_once_until_forgotten(opener: Opener) -> None:
    clock = Clock(1_000.0)
    store = await opener(clock)
    key = RequestKey("", "40000000-0000-4000-8000-000000000001", "StartThread", "fingerprint-a")
    first = thread()
    assert await store.create_thread(first, key) == first
    second = thread(id="10000000-0000-4000-8000-000000000002")
    assert await store.create_thread(second, key) == first  # the retry acts once
    with pytest.raises(InvalidArgument, match="request_id"):
        await store.create_thread(second, dataclasses.replace(key, fingerprint="fingerprint-b"))
    clock.now = 1_000.0 + 86_401
    assert await store.forget_requests(86_400) == 1
    assert await store.create_thread(second, key) == second  # too late to be a retry
