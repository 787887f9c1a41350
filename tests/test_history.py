"""Histories kept between turns, and the window base each model request
names, at the domain level (no server): a turn sends only what is new, and
whatever happens elsewhere, every request carries the thread's true history."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path

import pytest

from spindle import items
from spindle.model import Completed, ItemDone, ModelEvent, ModelRequest, TextDelta, Usage
from thread_service import history as history_module
from thread_service.events import TurnCompleted
from thread_service.history import Histories, History
from thread_service.records import ThreadRecord, TurnStatus
from thread_service.stores.sqlite import SQLiteStore
from thread_service.threads import Threads
from thread_service.trust import ProjectTrust
from thread_service.turns import Turns

pytestmark = pytest.mark.anyio

USER, ASSISTANT = items.Role.USER, items.Role.ASSISTANT


def said(text: str) -> items.Message:
    return items.Message(USER, text)


class RecordingModel:
    """Answers with one final message, or a function call for `/call`, or
    never for `/hang`; keeps the requests."""

    def __init__(self) -> None:
        self.requests: list[ModelRequest] = []

    async def stream(self, request: ModelRequest) -> AsyncGenerator[list[ModelEvent], None]:
        self.requests.append(request)
        last = request.input[-1]
        if isinstance(last, items.Message) and last.text == "/hang":
            yield [TextDelta("...")]
            await asyncio.sleep(60)
        if isinstance(last, items.Message) and last.text == "/call":
            done = ItemDone(items.FunctionCall(f"call_{len(request.input)}", "f", "{}"))
        else:
            done = ItemDone(items.Message(ASSISTANT, "ok", items.Phase.FINAL_ANSWER))
        yield [done, Completed(Usage(1, 0, 1))]

    async def aclose(self) -> None:
        return None


class Replica:
    """A thread-service's Turns on the shared store, with its own history cache."""

    def __init__(self, store: SQLiteStore, threads: Threads, model: RecordingModel) -> None:
        self.turns = Turns(store, threads, model, histories=Histories())

    async def turn(self, thread_id: str, *inputs: items.Item) -> TurnCompleted:
        batches = [b async for b in self.turns.run(thread_id, list(inputs))]
        last = batches[-1][-1].payload
        assert isinstance(last, TurnCompleted)
        return last


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    opened = await SQLiteStore.open(tmp_path / "data" / "spindle.sqlite3", "NORMAL")
    yield opened
    await opened.close()


@pytest.fixture
def threads(store: SQLiteStore, tmp_path: Path) -> Threads:
    return Threads(store, ProjectTrust(tmp_path / "home"), default_model="m", max_spawn_depth=2)


async def root(threads: Threads, tmp_path: Path) -> ThreadRecord:
    return (await threads.start(str(tmp_path))).thread


async def stored(store: SQLiteStore, thread_id: str) -> tuple[items.Item, ...]:
    return tuple(entry.item for entry in await store.read_history(thread_id))


async def test_a_turn_names_the_last_requests_history_as_its_base(
    store: SQLiteStore, threads: Threads, tmp_path: Path
) -> None:
    model = RecordingModel()
    here = Replica(store, threads, model)
    thread = await root(threads, tmp_path)
    await here.turn(thread.id, said("one"))
    await here.turn(thread.id, said("two"))
    first, second = model.requests
    assert first.base is None and first.history_digest
    assert second.base is not None
    assert (second.base.item_count, second.base.history_digest) == (1, first.history_digest)
    assert second.input == (
        *first.input,
        items.Message(ASSISTANT, "ok", items.Phase.FINAL_ANSWER),
        said("two"),
    )
    assert second.history_digest not in (b"", first.history_digest)
    # What it sent is what the store holds.
    assert second.input == (await stored(store, thread.id))[:-1]


async def test_another_replicas_turn_makes_the_next_one_read_the_store(
    store: SQLiteStore, threads: Threads, tmp_path: Path
) -> None:
    model = RecordingModel()
    a, b = Replica(store, threads, model), Replica(store, threads, model)
    thread = await root(threads, tmp_path)
    await a.turn(thread.id, said("on a"))
    await b.turn(thread.id, said("on b"))
    await a.turn(thread.id, said("on a again"))
    last = model.requests[-1]
    assert last.input == (await stored(store, thread.id))[:-1]
    assert last.base is None  # a's idea of the window is stale: it sends all


async def test_a_turn_that_did_not_complete_leaves_no_base(
    store: SQLiteStore, threads: Threads, tmp_path: Path
) -> None:
    model = RecordingModel()
    here = Replica(store, threads, model)
    thread = await root(threads, tmp_path)
    await here.turn(thread.id, said("one"))
    stream = here.turns.run(thread.id, [said("/hang")])
    async for batch in stream:
        if any(isinstance(event.payload, TextDelta) for event in batch):
            break
    await stream.aclose()  # the caller goes away: the turn is interrupted
    running = here.turns._running.get(thread.id)
    if running is not None:
        await running.wait()
    done = await here.turn(thread.id, said("three"))
    assert done.status is TurnStatus.COMPLETED
    last = model.requests[-1]
    assert last.base is None
    assert last.input == (await stored(store, thread.id))[:-1]
    assert last.input[-2:] == (said("/hang"), said("three"))


async def test_open_calls_are_tracked_from_turn_to_turn(
    store: SQLiteStore, threads: Threads, tmp_path: Path
) -> None:
    here = Replica(store, threads, RecordingModel())
    thread = await root(threads, tmp_path)
    done = await here.turn(thread.id, said("/call"))
    (call,) = done.pending_function_calls
    kept = here.turns.histories.get(thread.id, (await threads.get(thread.id)).version)
    assert kept is not None and kept.open_calls == {call.call_id}
    await here.turn(thread.id, items.FunctionCallOutput(call.call_id, "42"))
    kept = here.turns.histories.get(thread.id, (await threads.get(thread.id)).version)
    assert kept is not None and kept.open_calls == frozenset()


def test_the_cache_is_bounded_by_bytes_and_keyed_by_version() -> None:
    histories = Histories(max_bytes=200)
    big = History.read(2, [said("x" * 30), said("y" * 30)])
    histories.put("a", big)
    histories.put("b", big)
    assert histories.get("a", 2) is None  # evicted: least recently used
    assert histories.get("b", 2) is big
    assert histories.get("b", 3) is None  # another version
    histories.put("c", History.read(1, [said("z" * 200)]))  # larger than the cache
    assert histories.get("c", 1) is None and histories.get("b", 2) is big


def test_histories_read_from_the_store_start_lineages_of_their_own() -> None:
    """Two replicas that each read the same history never claim the same
    digest, so neither can be taken for the other's window at the model-service."""
    history = [said("one")]
    assert History.read(1, history).digest != History.read(1, history).digest
    extended = History.read(1, history)
    assert extended.extended([said("two")], 2).digest == extended.extended([said("two")], 2).digest


async def test_a_history_loaded_a_slice_at_a_time_is_the_history_read_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Calls opened in one slice and answered in another, and one left open.
    monkeypatch.setattr(history_module, "LOAD_SLICE", 4)
    history: list[items.Item] = []
    for n in range(7):
        history += [said(f"q{n}"), items.FunctionCall(f"call_{n}", "search", "{}")]
        if n != 3:
            history += [said("meanwhile"), items.FunctionCallOutput(f"call_{n}", "found")]
    loaded, read = await History.load(9, history), History.read(9, history)
    assert (loaded.version, loaded.items, loaded.size) == (9, tuple(history), read.size)
    assert loaded.open_calls == read.open_calls == {"call_3"}
    assert loaded.digest != read.digest  # each starts a lineage of its own
