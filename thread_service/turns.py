"""Turns of threads: start one (at most one runs per thread), interrupt it,
list a thread's turns, and stop them all at shutdown. One turn's own life
is `thread_service.turn.Turn`."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Sequence

from spindle import items
from spindle.errors import FailedPrecondition
from spindle.model import ModelRequest, ModelStreamer, Tool
from thread_service import pagination
from thread_service.pagination import Position
from thread_service.records import TurnRecord, TurnStatus
from thread_service.store import Store
from thread_service.threads import Threads
from thread_service.turn import Turn, TurnEvent
from thread_service.validation import check_turn_input

CLIENT_CANCELLED = "the client cancelled the call"
DEADLINE_PASSED = "the call's deadline passed"
SHUTTING_DOWN = "the service is shutting down"
INTERRUPTED_BY_CALL = "interrupted by InterruptTurn"


class Turns:
    """The turns this process runs; `owner` names it in the store (see `replica`)."""

    def __init__(
        self, store: Store, threads: Threads, model: ModelStreamer, *, owner: str = ""
    ) -> None:
        self.store = store
        self.threads = threads
        self.model = model
        self.owner = owner
        self._running: dict[str, Turn] = {}
        self._shutdown_reason = ""

    async def run(
        self,
        thread_id: str,
        input_items: Sequence[items.Item],
        tools: Sequence[Tool] = (),
        time_remaining: float | None = None,
    ) -> AsyncIterator[TurnEvent]:
        """The turn's events. `time_remaining` is the caller's deadline, so that a
        turn cut by it is recorded as such rather than as a cancelled call."""
        loop = asyncio.get_running_loop()
        deadline = None if time_remaining is None else loop.time() + time_remaining
        thread = await self.threads.get(thread_id)
        if thread.archived:
            raise FailedPrecondition(f"thread {thread.id} is archived")
        if thread.id in self._running or await self.store.running_turn(thread.id):
            raise FailedPrecondition(f"a turn is already running on thread {thread.id}")
        history = await self.store.read_history(thread.id)
        check_turn_input(input_items, history, tools)
        # Checked again, now that no await stands between here and the claim.
        if thread.id in self._running:
            raise FailedPrecondition(f"a turn is already running on thread {thread.id}")
        request = ModelRequest(
            model=thread.model,
            instructions=thread.instructions,
            input=(*history, *input_items),
            prompt_cache_key=thread.prompt_cache_key,
            thread_id=thread.id,
            window_id=thread.window_id,
            sub_agent_kind=thread.sub_agent_kind,
            tools=tuple(tools),
        )
        record = TurnRecord(
            str(uuid.uuid4()), thread.id, TurnStatus.RUNNING, time.time(), owner=self.owner
        )
        turn = Turn(self.store, self.model, record, request, input_items)
        self._running[thread.id] = turn
        turn.start().add_done_callback(lambda _: self._forget(turn))
        try:
            async for event in turn.events():
                yield event
        finally:
            if not turn.done:
                turn.interrupt(self._cut_reason(deadline))

    def _cut_reason(self, deadline: float | None) -> str:
        """Why a turn whose caller went away was cut short."""
        # gRPC's timer and the loop's clock may differ by a hair.
        if deadline is not None and asyncio.get_running_loop().time() >= deadline - 0.05:
            return DEADLINE_PASSED
        return self._shutdown_reason or CLIENT_CANCELLED

    def _forget(self, turn: Turn) -> None:
        if self._running.get(turn.thread_id) is turn:
            del self._running[turn.thread_id]

    async def interrupt(self, thread_id: str) -> str:
        """Interrupt the turn running on a thread, here or on another replica
        (which notices within moments); its id, or '' when none runs."""
        thread = await self.threads.get(thread_id)
        turn = self._running.get(thread.id)
        if turn is not None:
            turn.interrupt(INTERRUPTED_BY_CALL)
            return turn.id
        if self.store.exclusive:
            return ""
        elsewhere = await self.store.request_interrupt(thread.id, INTERRUPTED_BY_CALL)
        return elsewhere.id if elsewhere else ""

    def interrupt_turn(self, turn_id: str, reason: str) -> None:
        """Interrupt a turn of this process by id (asked by another replica)."""
        for turn in list(self._running.values()):
            if turn.id == turn_id:
                turn.interrupt(reason)

    def has_running(self) -> bool:
        return bool(self._running)

    async def list_turns(
        self, thread_id: str, *, page_size: int = 0, page_token: str = ""
    ) -> tuple[list[TurnRecord], str]:
        thread = await self.threads.get(thread_id)

        async def fetch(position: Position | None, limit: int) -> list[TurnRecord]:
            offset = pagination.position_int(position, "o") if position else 0
            return await self.store.list_turns(thread.id, offset, limit)

        listing = f"turns:{thread.id}"
        return await pagination.page(listing, page_size, page_token, fetch, pagination.next_offset)

    def drain(self, reason: str = SHUTTING_DOWN) -> None:
        """From now on, turns cut short are recorded as cut by the shutdown."""
        self._shutdown_reason = reason

    async def close(self) -> None:
        """Interrupt every running turn and wait until each has recorded its end."""
        self.drain(self._shutdown_reason or SHUTTING_DOWN)
        running = list(self._running.values())
        for turn in running:
            turn.interrupt(self._shutdown_reason)
        await asyncio.gather(*(turn.wait() for turn in running))
