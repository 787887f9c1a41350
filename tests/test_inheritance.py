"""The inheritance rules of start, spawn, fork and resume, at the domain level
(no server): keys, history, identity, and the errors."""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from spindle import items
from spindle.errors import FailedPrecondition, InvalidArgument, NotFound
from spindle.model import Completed, ItemDone, ModelEvent, ModelRequest, Usage
from thread_service.events import TurnCompleted
from thread_service.records import Entry, Origin, ThreadRecord, TurnRecord, TurnStatus
from thread_service.stores.sqlite import SQLiteStore
from thread_service.threads import ForkMode, ForkOptions, Threads
from thread_service.trust import ProjectTrust
from thread_service.turns import Turns

pytestmark = pytest.mark.anyio

USER = items.Role.USER
ASSISTANT = items.Role.ASSISTANT


class RecordingModel:
    """Answers every request with one final message, and keeps the requests."""

    def __init__(self) -> None:
        self.requests: list[ModelRequest] = []

    async def stream(self, request: ModelRequest) -> AsyncGenerator[list[ModelEvent], None]:
        self.requests.append(request)
        yield [ItemDone(items.Message(ASSISTANT, "ok", items.Phase.FINAL_ANSWER))]
        yield [Completed(Usage(1, 0, 1))]

    async def aclose(self) -> None:
        return None


class Env:
    def __init__(self, store: SQLiteStore, tmp: Path, max_depth: int = 4) -> None:
        self.store = store
        self.threads = Threads(
            store, ProjectTrust(tmp / "home"), default_model="m", max_spawn_depth=max_depth
        )
        self.model = RecordingModel()
        self.turns = Turns(store, self.threads, self.model)
        self.cwd = str(tmp)

    async def root(self) -> ThreadRecord:
        return (await self.threads.start(self.cwd, instructions="be kind")).thread

    async def turn(self, thread: ThreadRecord, text: str) -> TurnCompleted:
        batches = [b async for b in self.turns.run(thread.id, [items.Message(USER, text)])]
        last = batches[-1][-1].payload
        assert isinstance(last, TurnCompleted)
        return last

    async def history(self, thread: ThreadRecord) -> list[items.Item]:
        return [stored.item for stored in await self.store.read_history(thread.id)]


@asynccontextmanager
async def open_env(tmp_path: Path, max_depth: int = 4) -> AsyncIterator[Env]:
    """An Env on the store in tmp_path, closed on leaving."""
    store = await SQLiteStore.open(tmp_path / "data" / "spindle.sqlite3", "NORMAL")
    try:
        yield Env(store, tmp_path, max_depth)
    finally:
        await store.close()


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    async with open_env(tmp_path) as opened:
        yield opened


FORK = ForkOptions(parent_spawn_call_id="call_1")


async def test_start_and_spawn_use_their_own_id_as_key(env: Env) -> None:
    root = await env.root()
    assert root.prompt_cache_key == root.id
    assert root.origin is Origin.START and root.depth == 0
    child = await env.threads.spawn(root.id, agent_nickname="Ada", sub_agent_kind="explorer")
    assert child.id != root.id
    assert child.prompt_cache_key == child.id
    assert child.origin is Origin.SPAWN and child.depth == 1
    assert child.parent_id == root.id
    await env.turn(root, "hello")
    assert await env.history(child) == []


async def test_fork_inherits_the_parents_effective_key_down_the_chain(env: Env) -> None:
    root = await env.root()
    fork = await env.threads.spawn(root.id, fork=FORK)
    fork_of_fork = await env.threads.spawn(fork.id, fork=ForkOptions("call_2"))
    assert fork.prompt_cache_key == root.id
    assert fork_of_fork.prompt_cache_key == root.id
    assert len({root.id, fork.id, fork_of_fork.id}) == 3
    assert fork.origin is Origin.FORK and fork.parent_spawn_call_id == "call_1"
    assert fork_of_fork.depth == 2


async def test_every_model_request_carries_key_thread_window_and_kind(env: Env) -> None:
    root = await env.root()
    await env.turn(root, "hi")
    fork = await env.threads.spawn(root.id, fork=FORK, sub_agent_kind="review")
    await env.turn(fork, "check")
    parent_request, fork_request = env.model.requests
    assert parent_request.prompt_cache_key == root.id
    assert parent_request.thread_id == root.id
    assert parent_request.window_id == f"{root.id}:0"
    assert parent_request.sub_agent_kind == ""
    assert fork_request.prompt_cache_key == root.id
    assert fork_request.thread_id == fork.id
    assert fork_request.window_id == f"{fork.id}:0"
    assert fork_request.sub_agent_kind == "review"


async def _record_turn(env: Env, thread: ThreadRecord, turn_items: list[items.Item]) -> None:
    turn_id = f"turn-{len(turn_items)}-{id(turn_items)}"
    turn = TurnRecord(turn_id, thread.id, TurnStatus.RUNNING, 0.0)
    await env.store.begin_turn(turn, [Entry.of(i) for i in turn_items[:1]])
    outputs = [Entry.of(i) for i in turn_items[1:]]
    await env.store.finish_turn(turn.id, TurnStatus.COMPLETED, Usage(), None, outputs)


async def test_a_fork_copies_the_sanitized_history_in_order(env: Env) -> None:
    kept_user = items.Message(USER, "question")
    kept_system = items.Message(items.Role.SYSTEM, "system note")
    kept_developer = items.Message(items.Role.DEVELOPER, "developer note")
    kept_answer = items.Message(ASSISTANT, "final", items.Phase.FINAL_ANSWER)
    kept_unphased = items.Message(ASSISTANT, "also final")
    dropped: list[items.Item] = [
        items.Reasoning("thinking", "opaque"),
        items.Message(ASSISTANT, "working on it", items.Phase.COMMENTARY),
        items.FunctionCall("call_9", "search", "{}"),
        items.FunctionCallOutput("call_9", "result"),
        items.AgentMessage("a", "b", "psst"),
    ]

    root = await env.root()
    await _record_turn(
        env,
        root,
        [
            kept_user,
            dropped[0],
            dropped[1],
            kept_system,
            dropped[2],
            dropped[3],
            kept_developer,
            dropped[4],
            kept_answer,
            kept_unphased,
        ],
    )
    fork = await env.threads.spawn(root.id, fork=FORK)
    assert await env.history(fork) == [
        kept_user,
        kept_system,
        kept_developer,
        kept_answer,
        kept_unphased,
    ]
    # The parent keeps everything.
    assert len(await env.history(root)) == 10
    assert await env.store.history_length(fork.id) == 5


async def test_a_fork_shares_the_parents_items_instead_of_copying(env: Env, tmp_path: Path) -> None:
    root = await env.root()
    for i in range(5):
        await env.turn(root, f"message {i}")
    before = _count_item_rows(tmp_path)
    fork = await env.threads.spawn(root.id, fork=FORK)
    assert _count_item_rows(tmp_path) == before
    assert len(await env.history(fork)) == 10


def _count_item_rows(tmp_path: Path) -> int:
    with sqlite3.connect(tmp_path / "data" / "spindle.sqlite3") as conn:
        return int(conn.execute("SELECT COUNT(*) FROM items").fetchone()[0])


async def test_a_fork_sees_the_turn_the_parent_just_completed(env: Env) -> None:
    root = await env.root()
    await env.turn(root, "first")
    await env.turn(root, "just now")
    fork = await env.threads.spawn(root.id, fork=FORK)
    texts = [i.text for i in await env.history(fork) if isinstance(i, items.Message)]
    assert texts == ["first", "ok", "just now", "ok"]
    # Later parent turns do not leak into the fork.
    await env.turn(root, "after the fork")
    assert len(await env.history(fork)) == 4


async def test_a_last_n_turns_fork_keeps_only_those_turns(env: Env) -> None:
    root = await env.root()
    for i in range(4):
        await env.turn(root, f"turn {i}")
    middle = await env.threads.spawn(root.id, fork=FORK)
    await env.turn(middle, "middle's own")
    options = ForkOptions("call_2", ForkMode.LAST_N_TURNS, 2)
    fork = await env.threads.spawn(root.id, fork=options)
    texts = [i.text for i in await env.history(fork) if isinstance(i, items.Message)]
    assert texts == ["turn 2", "ok", "turn 3", "ok"]
    # Across an inherited segment: middle has 4 inherited turns + 1 own.
    deep = await env.threads.spawn(middle.id, fork=ForkOptions("c", ForkMode.LAST_N_TURNS, 3))
    texts = [i.text for i in await env.history(deep) if isinstance(i, items.Message)]
    assert texts == ["turn 2", "ok", "turn 3", "ok", "middle's own", "ok"]
    assert deep.prompt_cache_key == root.id


async def test_resume_uses_its_own_id_never_a_live_parents(env: Env) -> None:
    root = await env.root()
    await env.turn(root, "hi")
    child = await env.threads.spawn(root.id, fork=FORK, agent_nickname="Bo", agent_role="explorer")
    assert child.prompt_cache_key == root.id
    resumed, length = await env.threads.resume(child.id)
    assert resumed.id == child.id
    assert resumed.prompt_cache_key == child.id != root.prompt_cache_key
    assert resumed.session_origin is Origin.RESUME and resumed.origin is Origin.FORK
    assert (resumed.agent_nickname, resumed.agent_role) == ("Bo", "explorer")
    assert length == 2
    await env.turn(resumed, "again")
    assert env.model.requests[-1].prompt_cache_key == child.id


async def test_resume_after_a_restart_restores_persisted_state(tmp_path: Path) -> None:
    async with open_env(tmp_path) as env:
        root = await env.root()
        await env.turn(root, "hi")
        child = await env.threads.spawn(root.id, fork=FORK, agent_nickname="Cy", agent_role="r")
        await env.store.update_thread(dataclasses.replace(child, window_generation=3))
        root_id, child_id = root.id, child.id

    async with open_env(tmp_path) as env:
        # A new process: nothing in memory. A fork still reads the parent's key.
        late_fork = await env.threads.spawn(child_id, fork=ForkOptions("call_x"))
        assert late_fork.prompt_cache_key == root_id
        resumed, length = await env.threads.resume(child_id)
        assert resumed.prompt_cache_key == child_id
        assert resumed.window_generation == 3
        assert (resumed.agent_nickname, resumed.agent_role) == ("Cy", "r")
        assert length == 2
        await env.turn(resumed, "after restart")
        assert env.model.requests[-1].window_id == f"{child_id}:3"
        assert env.model.requests[-1].prompt_cache_key == child_id
        # The full history went to the model.
        assert len(env.model.requests[-1].input) == 3


async def test_fork_errors(env: Env) -> None:
    root = await env.root()
    with pytest.raises(FailedPrecondition, match="parent_spawn_call_id"):
        await env.threads.spawn(root.id, fork=ForkOptions(""))
    missing = "00000000-0000-4000-8000-000000000000"
    with pytest.raises(NotFound, match=missing):
        await env.threads.spawn(missing, fork=FORK)
    with pytest.raises(InvalidArgument, match="not a thread id"):
        await env.threads.spawn("nope", fork=FORK)
    with pytest.raises(InvalidArgument, match="last_n_turns"):
        await env.threads.spawn(root.id, fork=ForkOptions("c", ForkMode.LAST_N_TURNS, 0))


async def test_spawn_depth_is_limited(tmp_path: Path) -> None:
    async with open_env(tmp_path, max_depth=2) as env:
        thread = await env.root()
        for _ in range(2):
            thread = await env.threads.spawn(thread.id)
        assert thread.depth == 2
        with pytest.raises(FailedPrecondition, match="depth limit"):
            await env.threads.spawn(thread.id, fork=FORK)
