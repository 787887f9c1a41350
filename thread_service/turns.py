"""Turns of threads: run one (at most one runs per thread; another can wait
or interrupt it), follow one again, interrupt one by id, list a thread's
turns, and stop them all at shutdown. One turn's own life is
`thread_service.turn.Turn`; its events are `thread_service.events`."""

from __future__ import annotations

import asyncio
import enum
import functools
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass

from spindle import items, longlived
from spindle.errors import Aborted, ErrorCode, FailedPrecondition, InvalidArgument, NotFound
from spindle.model import ModelRequest, ModelStreamer, Tool, Usage, WindowBase, history_digest
from spindle.ratelimit import RateLimit
from thread_service import events, pagination
from thread_service.access import LOCAL, Principal, model_cache_key
from thread_service.events import TurnCompleted, TurnEvent
from thread_service.history import Histories, History
from thread_service.pagination import Position
from thread_service.records import (
    Entry,
    RequestKey,
    ThreadRecord,
    TurnError,
    TurnRecord,
    TurnStatus,
)
from thread_service.store import (
    HistoryChanged,
    Store,
    thread_archived,
    turn_already_running,
    turn_running,
)
from thread_service.threads import Threads
from thread_service.turn import Outcome, Turn, _to_the_end
from thread_service.validation import check_turn_input, check_turn_size

CLIENT_CANCELLED = "the client cancelled the call"
DEADLINE_PASSED = "the call's deadline passed"
SHUTTING_DOWN = "the service is shutting down"
INTERRUPTED_BY_CALL = "interrupted by InterruptTurn"
INTERRUPTED_FOR_INPUT = "interrupted for new input (when_busy INTERRUPT)"
NOT_RUNNING_HERE = "interrupted by InterruptTurn; no task was running the turn"
# How often a caller waiting on another replica's turn looks again.
POLL_SECONDS = 0.05


class Disconnect(enum.Enum):
    """What happens to a turn when its caller goes away first."""

    CANCEL = "cancel"
    CONTINUE = "continue"


class Busy(enum.Enum):
    """What a new turn does when another runs on the thread."""

    REJECT = "reject"
    INTERRUPT = "interrupt"
    ENQUEUE = "enqueue"


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
        histories: Histories | None = None,
    ) -> None:
        self.store = store
        self.threads = threads
        self.model = model
        self.owner = owner
        self.limits = limits
        # Model tokens per principal and minute, charged when a turn ends.
        self.tokens = tokens
        # Threads' histories as of their last turn here (see `history`).
        self.histories = histories if histories is not None else Histories()
        self._running: dict[str, Turn] = {}
        self._shutdown_reason = ""

    async def run(
        self,
        thread_id: str,
        input_items: Sequence[items.Item],
        tools: Sequence[Tool] = (),
        *,
        caller: Principal = LOCAL,
        time_remaining: float | None = None,
        request: RequestKey | None = None,
        on_disconnect: Disconnect = Disconnect.CANCEL,
        when_busy: Busy = Busy.REJECT,
    ) -> AsyncGenerator[list[TurnEvent], None]:
        """The turn's events, in batches of those ready together. A repeated
        request id follows the first call's turn instead. `time_remaining` is
        the caller's deadline, so that a turn cut by it is recorded as such."""
        loop = asyncio.get_running_loop()
        deadline = None if time_remaining is None else loop.time() + time_remaining
        thread = await self.threads.get(thread_id, caller)
        if request is not None:
            earlier = await self.store.find_request(request)
            if earlier is not None:
                async for batch in self.watch(thread.id, earlier[1], 0, caller):
                    yield batch
                return
        if thread.archived:
            raise thread_archived(thread.id)
        if self.tokens is not None:
            self.tokens.check(caller.name)
        turn, first_call = await self._begin(
            thread, input_items, tools, caller, request, when_busy, deadline
        )
        if not first_call:
            async for batch in self.watch(thread.id, turn.id, 0, caller):
                yield batch
            return
        assert isinstance(turn, Turn)
        try:
            async for batch in turn.log.follow():
                yield batch
        finally:
            if not turn.done and on_disconnect is Disconnect.CANCEL:
                turn.interrupt(*self._cut_reason(deadline))

    async def _begin(
        self,
        thread: ThreadRecord,
        input_items: Sequence[items.Item],
        tools: Sequence[Tool],
        caller: Principal,
        request: RequestKey | None,
        when_busy: Busy,
        deadline: float | None,
    ) -> tuple[Turn | TurnRecord, bool]:
        """Record the turn's start and set it running; with a repeated request
        id, the first call's turn and False. Waits, or interrupts, for a turn
        already running as `when_busy` says. Only a turn running here is looked
        for first: one elsewhere makes the store refuse the start."""
        interrupted = ""
        current = thread
        running: Turn | TurnRecord | None = self._running.get(thread.id)
        while True:
            if running is not None:
                if when_busy is Busy.REJECT:
                    raise turn_already_running(current.id, running.id)
                if when_busy is Busy.INTERRUPT and interrupted != running.id:
                    await self._interrupt_running(running, INTERRUPTED_FOR_INPUT)
                    interrupted = running.id
                await self._until_ended(running.id)
                current = await self.threads.get(thread.id, caller)
                running = await self._running_on(current.id)
                continue
            history = await self._history(current)
            check_turn_input(input_items, history.open_calls, tools)
            check_turn_size(
                input_items,
                tools,
                history.size,
                max_item=self.limits.max_item,
                max_turn=self.limits.max_turn,
                max_history=self.limits.max_history,
            )
            record = TurnRecord(
                str(uuid.uuid4()), current.id, TurnStatus.RUNNING, time.time(), owner=self.owner
            )
            entries = [Entry.of(item) for item in input_items]
            try:
                (begun, first_call), cancelled = await _to_the_end(
                    self.store.begin_turn(record, entries, request=request, version=current.version)
                )
            except HistoryChanged:
                # Another replica's turn ended meanwhile: read again.
                current = await self.threads.get(thread.id, caller)
                continue
            except FailedPrecondition as exc:
                if exc.reason != "TURN_ALREADY_RUNNING" or when_busy is Busy.REJECT:
                    raise
                running = await self._running_on(current.id)
                continue
            if not first_call:
                return begun, False
            model_request = self._model_request(current, history, input_items, tools)
            ended = functools.partial(
                self._ended, begun.id, caller, history, model_request, input_items
            )
            turn = Turn(self.store, self.model, begun, model_request, on_end=ended)
            self._running[current.id] = turn
            turn.start().add_done_callback(functools.partial(self._forget, turn))
            if cancelled:  # the caller left while the start was being recorded
                turn.interrupt(*self._cut_reason(deadline))
                raise asyncio.CancelledError
            return turn, True

    async def _history(self, thread: ThreadRecord) -> History:
        """The thread's history at its version: kept from its last turn here,
        or read from the store."""
        kept = self.histories.get(thread.id, thread.version)
        if kept is not None:
            return kept
        stored = await self.store.read_history(thread.id, version=thread.version)
        history = await History.load(thread.version, [entry.item for entry in stored])
        longlived.kept(len(history.items))  # to be kept in `histories` from now on
        return history

    def _model_request(
        self,
        thread: ThreadRecord,
        history: History,
        input_items: Sequence[items.Item],
        tools: Sequence[Tool],
    ) -> ModelRequest:
        return ModelRequest(
            model=thread.model,
            instructions=thread.instructions,
            input=history.items + tuple(input_items),
            prompt_cache_key=model_cache_key(thread.tenant, thread.prompt_cache_key),
            thread_id=thread.id,
            window_id=thread.window_id,
            sub_agent_kind=thread.sub_agent_kind,
            tools=tuple(tools),
            history_digest=history_digest(input_items, history.digest),
            base=history.sent if history.window_id == thread.window_id else None,
        )

    def _ended(
        self,
        turn_id: str,
        caller: Principal,
        history: History,
        request: ModelRequest,
        input_items: Sequence[items.Item],
        outcome: Outcome,
    ) -> None:
        """A turn's end is saved: the thread takes its next turn from now on
        (before the turn's task is done), its tokens are charged, and its
        history is kept for that next turn (with what the model-service now
        holds, when the model call completed)."""
        running = self._running.get(request.thread_id)
        if running is not None and running.id == turn_id:
            del self._running[request.thread_id]
        if self.tokens is not None:
            usage = outcome.usage
            self.tokens.charge(caller.name, usage.input_tokens + usage.output_tokens)
        version = history.version + len(input_items)
        asked = history.extended(
            input_items, version, digest=request.history_digest, whole=request.input
        )
        if outcome.status is TurnStatus.COMPLETED:
            sent = WindowBase(len(request.input), request.history_digest)
            asked = asked.with_sent(request.window_id, sent)
        else:
            asked = asked.with_sent("", None)  # whether it got there is unknown
        outputs = outcome.outputs
        self.histories.put(request.thread_id, asked.extended(outputs, version + len(outputs)))

    async def _running_on(self, thread_id: str) -> Turn | TurnRecord | None:
        local = self._running.get(thread_id)
        if local is not None:
            return local
        return await self.store.running_turn(thread_id)

    async def _until_ended(self, turn_id: str) -> None:
        """Until the turn is no longer running, here or anywhere."""
        local = self._local(turn_id)
        if local is not None:
            await local.wait()
            return
        while True:
            turn = await self.store.get_turn(turn_id)
            if turn is None or turn.status is not TurnStatus.RUNNING:
                return
            await asyncio.sleep(POLL_SECONDS)

    def _local(self, turn_id: str) -> Turn | None:
        return next((t for t in self._running.values() if t.id == turn_id), None)

    def _cut_reason(self, deadline: float | None) -> tuple[str, ErrorCode]:
        """Why a turn whose caller went away was cut short."""
        # gRPC's timer and the loop's clock may differ by a hair.
        if deadline is not None and asyncio.get_running_loop().time() >= deadline - 0.05:
            return DEADLINE_PASSED, ErrorCode.DEADLINE_EXCEEDED
        return self._shutdown_reason or CLIENT_CANCELLED, ErrorCode.CANCELLED

    def _forget(self, turn: Turn, _: object = None) -> None:
        if self._running.get(turn.thread_id) is turn:
            del self._running[turn.thread_id]

    async def watch(
        self, thread_id: str, turn_id: str, after: int = 0, caller: Principal = LOCAL
    ) -> AsyncIterator[list[TurnEvent]]:
        """A turn's events after sequence `after`: those kept, then the live
        ones; from a turn running on another replica, as it keeps them."""
        thread = await self.threads.get(thread_id, caller)
        local = self._local(turn_id)
        if local is not None and local.thread_id == thread.id:
            async for batch in local.log.follow(after):
                yield batch
            return
        turn = await self._stored_turn(thread, turn_id)
        seen, completed = after, False
        while True:
            kept = await self.store.read_events(turn_id, seen)
            batch = [events.decode(sequence, body) for sequence, body in kept]
            if batch:
                seen = batch[-1].sequence
                completed = isinstance(batch[-1].payload, TurnCompleted)
                yield batch
            if turn.status is not TurnStatus.RUNNING:
                break
            await asyncio.sleep(POLL_SECONDS)
            turn = await self.store.get_turn(turn_id) or turn
        if turn.status is TurnStatus.FAILED and turn.error is not None:
            raise events.failure_of(turn.error)
        if not completed and seen:  # the caller may have had the last event already
            last = await self.store.read_events(turn_id, seen - 1)
            completed = bool(last) and isinstance(events.decode(*last[-1]).payload, TurnCompleted)
        if not completed:  # ended without its last event kept (its replica died)
            yield [TurnEvent(seen + 1, TurnCompleted.of(turn))]

    async def _stored_turn(self, thread: ThreadRecord, turn_id: str) -> TurnRecord:
        """The thread's turn `turn_id` as stored; NOT_FOUND if it has none."""
        turn = await self.store.get_turn(turn_id)
        if turn is None or turn.thread_id != thread.id:
            raise NotFound(
                f"turn {turn_id} of thread {thread.id} does not exist", reason="TURN_NOT_FOUND"
            )
        return turn

    async def interrupt(self, thread_id: str, turn_id: str, caller: Principal = LOCAL) -> str:
        """Interrupt the named turn, here or on another replica (which notices
        within moments). Never another turn: a turn that is not running is
        FAILED_PRECONDITION (it ended) or ABORTED (another runs now)."""
        thread = await self.threads.get(thread_id, caller)
        if not turn_id:
            raise InvalidArgument("turn_id is required", field="turn_id")
        local = self._local(turn_id)
        if local is not None and local.thread_id == thread.id:
            local.interrupt(INTERRUPTED_BY_CALL)
            return turn_id
        turn = await self._stored_turn(thread, turn_id)
        if turn.status is not TurnStatus.RUNNING:
            other = await self._running_on(thread.id)
            if other is not None:
                raise Aborted(
                    f"turn {turn_id} ended ({turn.status.value}); turn {other.id} runs now",
                    reason="ANOTHER_TURN_RUNNING",
                    metadata={"running_turn_id": other.id},
                )
            raise FailedPrecondition(
                f"turn {turn_id} is not running: it ended {turn.status.value}",
                reason="TURN_NOT_RUNNING",
                metadata={"status": turn.status.value},
            )
        await self._interrupt_running(turn, INTERRUPTED_BY_CALL)
        return turn_id

    async def _interrupt_running(self, turn: Turn | TurnRecord, reason: str) -> None:
        """Interrupt a running turn: here, in the store (a turn that no task
        runs, so its thread is never stuck), or by asking its replica."""
        if isinstance(turn, Turn):
            turn.interrupt(reason)
            return
        local = self._local(turn.id)
        if local is not None:
            local.interrupt(reason)
        elif self.store.exclusive or turn.owner == self.owner:
            error = TurnError(ErrorCode.CANCELLED, NOT_RUNNING_HERE)
            await self.store.finish_turn(turn.id, TurnStatus.INTERRUPTED, Usage(), error, [])
        else:
            await self.store.request_interrupt(turn.id, reason)

    def interrupt_turn(self, turn_id: str, reason: str) -> None:
        """Interrupt a turn of this process by id (asked by another replica)."""
        local = self._local(turn_id)
        if local is not None:
            local.interrupt(reason)

    async def settle(self, thread: ThreadRecord, interrupt: bool) -> None:
        """Before a thread is archived or deleted: no turn runs on it (one that
        does is interrupted when `interrupt`, and waited for, else
        FAILED_PRECONDITION)."""
        running = await self._running_on(thread.id)
        if running is None:
            return
        if not interrupt:
            raise turn_running(thread.id, running.id)
        await self._interrupt_running(running, INTERRUPTED_BY_CALL)
        await self._until_ended(running.id)

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

    async def interrupt_all(self) -> None:
        """Interrupt every turn running here and wait until each has recorded
        its end, so that their callers' streams end with it."""
        self.drain(self._shutdown_reason or SHUTTING_DOWN)
        running = list(self._running.values())
        for turn in running:
            turn.interrupt(self._shutdown_reason, stop_saving=True)
        await asyncio.gather(*(turn.wait() for turn in running))

    async def close(self) -> None:
        await self.interrupt_all()
