"""Turns of threads: start one (at most one runs per thread), interrupt it,
list a thread's turns, and stop them all at shutdown. One turn's own life
is `thread_service.turn.Turn`."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

from spindle import items
from spindle.errors import ErrorCode, FailedPrecondition
from spindle.model import ModelRequest, ModelStreamer, Tool, Usage
from spindle.ratelimit import RateLimit
from thread_service import pagination
from thread_service.access import LOCAL, Principal, model_cache_key
from thread_service.pagination import Position
from thread_service.records import TurnError, TurnRecord, TurnStatus
from thread_service.store import Store
from thread_service.threads import Threads
from thread_service.turn import Turn, TurnEvent
from thread_service.validation import check_turn_input, check_turn_size

CLIENT_CANCELLED = "the client cancelled the call"
DEADLINE_PASSED = "the call's deadline passed"
SHUTTING_DOWN = "the service is shutting down"
INTERRUPTED_BY_CALL = "interrupted by InterruptTurn"


NOT_RUNNING_HERE = "interrupted by InterruptTurn; no task was running the turn"


@dataclass(frozen=True, slots=True)
class TurnLimits:
    """Sizes a turn's input may have, in bytes (see the settings)."""

    max_item: int = 1 << 20
    max_turn: int = 2 << 20
    max_history: int = 16 << 20


class Turns:
    """The turns this process runs; `owner` names it in the store (see `replica`)."""

    def __init__(
        self,
        store: Store,
        threads: Threads,
        model: ModelStreamer,
        *,
        owner: str = "",
        limits: TurnLimits = TurnLimits(),
        tokens: RateLimit | None = None,
    ) -> None:
        self.store = store
        self.threads = threads
        self.model = model
        self.owner = owner
        self.limits = limits
        # Model tokens per principal and minute, charged when a turn ends.
        self.tokens = tokens
        self._running: dict[str, Turn] = {}
        self._shutdown_reason = ""

    async def run(
        self,
        thread_id: str,
        input_items: Sequence[items.Item],
        tools: Sequence[Tool] = (),
        time_remaining: float | None = None,
        caller: Principal = LOCAL,
    ) -> AsyncIterator[TurnEvent]:
        """The turn's events. `time_remaining` is the caller's deadline, so that a
        turn cut by it is recorded as such rather than as a cancelled call."""
        loop = asyncio.get_running_loop()
        deadline = None if time_remaining is None else loop.time() + time_remaining
        thread = await self.threads.get(thread_id, caller)
        if thread.archived:
            raise FailedPrecondition(f"thread {thread.id} is archived")
        if self.tokens is not None:
            self.tokens.check(caller.name)
        if thread.id in self._running or await self.store.running_turn(thread.id):
            raise FailedPrecondition(f"a turn is already running on thread {thread.id}")
        history = await self.store.read_history(thread.id)
        check_turn_input(input_items, history, tools)
        check_turn_size(
            input_items,
            tools,
            sum(items.size_of(item) for item in history),
            max_item=self.limits.max_item,
            max_turn=self.limits.max_turn,
            max_history=self.limits.max_history,
        )
        # Checked again, now that no await stands between here and the claim.
        if thread.id in self._running:
            raise FailedPrecondition(f"a turn is already running on thread {thread.id}")
        request = ModelRequest(
            model=thread.model,
            instructions=thread.instructions,
            input=(*history, *input_items),
            prompt_cache_key=model_cache_key(thread.tenant, thread.prompt_cache_key),
            thread_id=thread.id,
            window_id=thread.window_id,
            sub_agent_kind=thread.sub_agent_kind,
            tools=tuple(tools),
        )
        record = TurnRecord(
            str(uuid.uuid4()), thread.id, TurnStatus.RUNNING, time.time(), owner=self.owner
        )
        turn = Turn(
            self.store, self.model, record, request, input_items, on_usage=self._charger(caller)
        )
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

    def _charger(self, caller: Principal) -> Callable[[Usage], None]:
        def charge(usage: Usage) -> None:
            if self.tokens is not None:
                self.tokens.charge(caller.name, usage.input_tokens + usage.output_tokens)

        return charge

    def _forget(self, turn: Turn) -> None:
        if self._running.get(turn.thread_id) is turn:
            del self._running[turn.thread_id]

    async def interrupt(self, thread_id: str, caller: Principal = LOCAL) -> str:
        """Interrupt the turn running on a thread, here or on another replica
        (which notices within moments); its id, or '' when none runs. A turn
        the store says is running but that no task here runs (its end could
        not be saved, say) is ended at once, so the thread never stays stuck."""
        thread = await self.threads.get(thread_id, caller)
        turn = self._running.get(thread.id)
        if turn is not None:
            turn.interrupt(INTERRUPTED_BY_CALL)
            return turn.id
        stored = await self.store.running_turn(thread.id)
        if stored is None:
            return ""
        if self.store.exclusive or stored.owner == self.owner:
            error = TurnError(ErrorCode.CANCELLED, NOT_RUNNING_HERE)
            await self.store.finish_turn(stored.id, TurnStatus.INTERRUPTED, Usage(), error, [])
            return stored.id
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
        self, thread_id: str, *, page_size: int = 0, page_token: str = "", caller: Principal = LOCAL
    ) -> tuple[list[TurnRecord], str]:
        thread = await self.threads.get(thread_id, caller)

        async def fetch(position: Position | None, limit: int) -> list[TurnRecord]:
            offset = pagination.position_int(position, "o") if position else 0
            return await self.store.list_turns(thread.id, offset, limit)

        listing = f"turns:{thread.tenant}:{thread.id}"
        return await pagination.page(listing, page_size, page_token, fetch, pagination.next_offset)

    def drain(self, reason: str = SHUTTING_DOWN) -> None:
        """From now on, turns cut short are recorded as cut by the shutdown."""
        self._shutdown_reason = reason

    async def close(self) -> None:
        """Interrupt every running turn and wait until each has recorded its end."""
        self.drain(self._shutdown_reason or SHUTTING_DOWN)
        running = list(self._running.values())
        for turn in running:
            turn.interrupt(self._shutdown_reason, stop_saving=True)
        await asyncio.gather(*(turn.wait() for turn in running))
