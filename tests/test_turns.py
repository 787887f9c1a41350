"""Turn bookkeeping under failure, at the domain level: whatever goes wrong,
the caller's stream ends and the thread can take its next turn."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path

import pytest

from spindle import items
from spindle.errors import FailedPrecondition, SpindleError
from spindle.model import Completed, ItemDone, ModelEvent, ModelRequest, TextDelta
from thread_service.events import TurnCompleted, TurnEvent, TurnStarted
from thread_service.records import Entry, TurnRecord, TurnStatus
from thread_service.stores.sqlite import SQLiteStore
from thread_service.threads import Threads
from thread_service.trust import ProjectTrust
from thread_service.turns import Turns

pytestmark = pytest.mark.anyio

HELLO = [items.Message(items.Role.USER, "hello")]


class SlowModel:
    async def stream(self, request: ModelRequest) -> AsyncGenerator[list[ModelEvent], None]:
        yield [TextDelta("thinking")]
        await asyncio.sleep(30)
        yield [Completed()]

    async def aclose(self) -> None:
        return None


async def setup(tmp_path: Path) -> tuple[SQLiteStore, Threads, Turns, str]:
    store = await SQLiteStore.open(tmp_path / "data" / "spindle.sqlite3", "NORMAL")
    threads = Threads(store, ProjectTrust(tmp_path / "home"), default_model="m", max_spawn_depth=2)
    thread = (await threads.start(str(tmp_path))).thread
    return store, threads, Turns(store, threads, SlowModel()), thread.id


async def started(stream: AsyncIterator[list[TurnEvent]]) -> str:
    """The turn's id, from the first batch of its events."""
    first = (await anext(stream))[0].payload
    assert isinstance(first, TurnStarted)
    return first.turn_id


async def test_a_store_failure_ends_the_stream_and_frees_the_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, _, turns, thread_id = await setup(tmp_path)
    real_finish = store.finish_turn
    failures = [OSError("disk I/O error")]

    async def flaky_finish(*args: object, **kwargs: object) -> object:
        if failures:
            raise failures.pop()
        return await real_finish(*args, **kwargs)  # type: ignore[arg-type]

    # A failing disk cannot be had on demand here: the one fake.
    monkeypatch.setattr(store, "finish_turn", flaky_finish)
    stream = turns.run(thread_id, HELLO)
    turn_id = await started(stream)
    await turns.interrupt(thread_id, turn_id)
    with pytest.raises(SpindleError, match="internal error"):
        async with asyncio.timeout(5):
            async for _ in stream:
                pass
    (turn,) = await store.list_turns(thread_id, 0, 10)
    assert turn.status is TurnStatus.FAILED
    assert turn.error is not None and "OSError" in turn.error.message
    assert await store.running_turn(thread_id) is None
    await store.close()


async def test_repeated_interrupts_still_record_one_interrupted_turn(tmp_path: Path) -> None:
    store, _, turns, thread_id = await setup(tmp_path)
    stream = turns.run(thread_id, HELLO)
    turn_id = await started(stream)
    for _ in range(3):
        with contextlib.suppress(FailedPrecondition):  # once it ended: "not running"
            await turns.interrupt(thread_id, turn_id)
        await asyncio.sleep(0)
    async with asyncio.timeout(5):
        rest = [event for batch in [b async for b in stream] for event in batch]
    last = rest[-1].payload
    assert isinstance(last, TurnCompleted)
    assert last.status is TurnStatus.INTERRUPTED
    (turn,) = await store.list_turns(thread_id, 0, 10)
    assert turn.status is TurnStatus.INTERRUPTED
    # Nothing of the model's output is kept, only the input.
    history = await store.read_history(thread_id)
    assert [stored.item for stored in history] == HELLO
    await store.close()


async def test_interrupt_ends_a_running_turn_that_no_task_runs(tmp_path: Path) -> None:
    """A turn the store holds as running, owned by this process, with no task
    running it (its task is gone): InterruptTurn ends it, so the thread is free."""
    store, _, turns, thread_id = await setup(tmp_path)
    orphan = TurnRecord("turn-without-a-task", thread_id, TurnStatus.RUNNING, 1.0, turns.owner)
    await store.begin_turn(orphan, [Entry.of(HELLO[0])])
    assert await turns.interrupt(thread_id, orphan.id) == orphan.id
    ended = await store.get_turn(orphan.id)
    assert ended is not None and ended.status is TurnStatus.INTERRUPTED
    assert ended.error is not None and "no task was running" in ended.error.message
    with pytest.raises(FailedPrecondition, match="ended interrupted"):
        await turns.interrupt(thread_id, orphan.id)
    assert await store.running_turn(thread_id) is None
    await store.close()


class GatedModel:
    """Answers once `go` is set."""

    def __init__(self) -> None:
        self.go = asyncio.Event()

    async def stream(self, request: ModelRequest) -> AsyncGenerator[list[ModelEvent], None]:
        yield [TextDelta("thinking")]
        await self.go.wait()
        done = ItemDone(items.Message(items.Role.ASSISTANT, "late", items.Phase.FINAL_ANSWER))
        yield [done, Completed()]

    async def aclose(self) -> None:
        return None


async def test_a_turn_ended_elsewhere_meanwhile_is_never_reported_completed(
    tmp_path: Path,
) -> None:
    """Another replica ended the turn while this one was stalled (its lease ran
    out). When the model then completes, nothing of it is kept, and the caller
    hears the stored end, not a COMPLETED the store does not hold."""
    store, threads, _, thread_id = await setup(tmp_path)
    model = GatedModel()
    turns = Turns(store, threads, model, owner="stalled")
    stream = turns.run(thread_id, HELLO)
    turn_id = await started(stream)
    assert await store.end_orphaned_turns("its replica stopped", lease=0, alive="another") == 1
    model.go.set()
    rest = [event.payload async for batch in stream for event in batch]
    last = rest[-1]
    assert isinstance(last, TurnCompleted) and last.turn_id == turn_id
    assert last.status is TurnStatus.INTERRUPTED
    assert last.error is not None and last.error.message == "its replica stopped"
    kept = [entry.item for entry in await store.read_history(thread_id)]
    assert kept == HELLO  # the late answer was not kept
    # And the thread takes its next turn, which sends the true history.
    model.go.clear()
    model.go.set()
    again = [b async for b in turns.run(thread_id, HELLO)]
    final = again[-1][-1].payload
    assert isinstance(final, TurnCompleted) and final.status is TurnStatus.COMPLETED
    await store.close()
