"""Running turns: append the input, call the model, stream, record the end.

Each turn runs in a task of its own, apart from the RPC that asked for it,
so that however the turn ends (completed, failed, interrupted by
InterruptTurn, by the client going away, or by shutdown) the task itself
records that end and appends the completed output before it finishes.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from spindle import items
from spindle.errors import ErrorCode, FailedPrecondition, InvalidArgument, SpindleError
from spindle.model import (
    Completed,
    ItemDone,
    ModelRequest,
    ModelStreamer,
    TextDelta,
    Tool,
    Usage,
)
from thread_service import pagination
from thread_service.records import ThreadRecord, TurnError, TurnRecord, TurnStatus
from thread_service.store import Store
from thread_service.threads import Threads

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TurnStarted:
    turn_id: str


@dataclass(frozen=True, slots=True)
class TurnCompleted:
    turn_id: str
    status: TurnStatus
    usage: Usage = field(default_factory=Usage)
    pending_function_calls: tuple[items.FunctionCall, ...] = ()


TurnEvent = TurnStarted | TextDelta | ItemDone | TurnCompleted

_END = object()


@dataclass
class _Running:
    turn: TurnRecord
    task: asyncio.Task[None]
    interrupted_by: str = "the client cancelled the call"


class Turns:
    def __init__(self, store: Store, threads: Threads, model: ModelStreamer) -> None:
        self.store = store
        self.threads = threads
        self.model = model
        self._running: dict[str, _Running] = {}
        self._shutdown_reason = ""

    async def run(
        self, thread_id: str, input_items: Sequence[items.Item], tools: Sequence[Tool] = ()
    ) -> AsyncIterator[TurnEvent]:
        thread = await self.threads.get(thread_id)
        if thread.archived:
            raise FailedPrecondition(f"thread {thread.id} is archived")
        if thread.id in self._running or await self.store.running_turn(thread.id):
            raise FailedPrecondition(f"a turn is already running on thread {thread.id}")
        history, _ = await self.store.read_history(thread.id, None, None)
        _check_input(input_items, history, tools)
        # Claimed before the first await that could let a second call in.
        if thread.id in self._running:
            raise FailedPrecondition(f"a turn is already running on thread {thread.id}")
        queue: asyncio.Queue[object] = asyncio.Queue()
        turn = TurnRecord(str(uuid.uuid4()), thread.id, TurnStatus.RUNNING, time.time())
        task = asyncio.create_task(
            self._drive(thread, turn, [*history, *input_items], input_items, tools, queue)
        )
        self._running[thread.id] = _Running(turn, task)
        if self._shutdown_reason:
            self._running[thread.id].interrupted_by = self._shutdown_reason
        task.add_done_callback(lambda _: self._running.pop(thread.id, None))
        try:
            while True:
                event = await queue.get()
                if event is _END:
                    return
                if isinstance(event, BaseException):
                    raise event
                yield event  # type: ignore[misc]
        finally:
            if not task.done():
                task.cancel()

    async def _drive(
        self,
        thread: ThreadRecord,
        turn: TurnRecord,
        prompt: list[items.Item],
        input_items: Sequence[items.Item],
        tools: Sequence[Tool],
        queue: asyncio.Queue[object],
    ) -> None:
        outputs: list[items.Item] = []
        usage = Usage()
        status, error, failure = TurnStatus.COMPLETED, None, None
        # The input is appended even if an interruption arrives meanwhile:
        # a turn is recorded whole, never half.
        begin = asyncio.ensure_future(self.store.begin_turn(turn, input_items))
        try:
            await asyncio.shield(begin)
        except asyncio.CancelledError:
            await begin
            status = TurnStatus.INTERRUPTED
        except SpindleError as exc:
            queue.put_nowait(exc)
            queue.put_nowait(_END)
            return
        if status is TurnStatus.COMPLETED:
            queue.put_nowait(TurnStarted(turn.id))
            try:
                request = ModelRequest(
                    model=thread.model,
                    instructions=thread.instructions,
                    input=tuple(prompt),
                    prompt_cache_key=thread.prompt_cache_key,
                    thread_id=thread.id,
                    window_id=thread.window_id,
                    sub_agent_kind=thread.sub_agent_kind,
                    tools=tuple(tools),
                )
                async for event in self.model.stream(request):
                    if isinstance(event, Completed):
                        usage = event.usage
                        continue
                    if isinstance(event, ItemDone):
                        outputs.append(event.item)
                    queue.put_nowait(event)
            except asyncio.CancelledError:
                status = TurnStatus.INTERRUPTED
            except SpindleError as exc:
                status, error, failure = TurnStatus.FAILED, TurnError(exc.code, exc.message), exc
            except Exception as exc:
                log.exception("turn %s on thread %s failed", turn.id, thread.id)
                status = TurnStatus.FAILED
                error = TurnError(ErrorCode.INTERNAL, f"internal error: {type(exc).__name__}")
                failure = SpindleError("internal error; the server log has details")
        if status is TurnStatus.INTERRUPTED:
            running = self._running.get(thread.id)
            reason = running.interrupted_by if running else "interrupted"
            error = TurnError(ErrorCode.CANCELLED, reason)
        await self.store.finish_turn(turn.id, status, usage, error, outputs)
        if failure is not None:
            queue.put_nowait(failure)
        else:
            calls = tuple(i for i in outputs if isinstance(i, items.FunctionCall))
            queue.put_nowait(TurnCompleted(turn.id, status, usage, calls))
        queue.put_nowait(_END)

    async def interrupt(self, thread_id: str, reason: str = "interrupted by InterruptTurn") -> str:
        """Interrupt the turn running on a thread here; '' when none is."""
        thread = await self.threads.get(thread_id)
        running = self._running.get(thread.id)
        if running is None:
            return ""
        running.interrupted_by = reason
        running.task.cancel()
        return running.turn.id

    async def list_turns(
        self, thread_id: str, *, page_size: int = 0, page_token: str = ""
    ) -> tuple[list[TurnRecord], str]:
        thread = await self.threads.get(thread_id)
        listing = f"turns:{thread.id}"
        size = pagination.page_size(page_size)
        position = pagination.decode(listing, page_token) or {"o": 0}
        offset = position.get("o")
        if not isinstance(offset, int) or offset < 0:
            raise InvalidArgument("page_token is malformed")
        turns = await self.store.list_turns(thread.id, offset, size + 1)
        if len(turns) <= size:
            return turns, ""
        return turns[:size], pagination.encode(listing, {"o": offset + size})

    def drain(self, reason: str = "the service is shutting down") -> None:
        """From now on, turns cut short are recorded as cut by the shutdown."""
        self._shutdown_reason = reason
        for running in self._running.values():
            running.interrupted_by = reason

    async def close(self) -> None:
        """Interrupt every running turn and wait until each has recorded its end."""
        self.drain(self._shutdown_reason or "the service is shutting down")
        tasks = []
        for running in list(self._running.values()):
            if not running.task.cancelling():
                running.task.cancel()
            tasks.append(running.task)
        await asyncio.gather(*tasks, return_exceptions=True)


_INPUT_ROLES = (items.Role.USER, items.Role.DEVELOPER, items.Role.SYSTEM)


def _check_input(
    input_items: Sequence[items.Item], history: Sequence[items.Item], tools: Sequence[Tool]
) -> None:
    """A turn's input: messages from the user side, and outputs of open calls."""
    if not input_items:
        raise InvalidArgument("input must hold at least one item")
    names = [t.name for t in tools]
    if len(set(names)) != len(names):
        raise InvalidArgument("tools: names must be unique")
    open_calls = {i.call_id for i in history if isinstance(i, items.FunctionCall)}
    open_calls -= {i.call_id for i in history if isinstance(i, items.FunctionCallOutput)}
    for index, item in enumerate(input_items):
        where = f"input[{index}]"
        if isinstance(item, items.Message):
            if item.role not in _INPUT_ROLES:
                raise InvalidArgument(
                    f"{where}: a turn's messages come from user, developer "
                    "or system, not the assistant"
                )
        elif isinstance(item, items.FunctionCallOutput):
            if item.call_id not in open_calls:
                raise InvalidArgument(
                    f"{where}: call_id {item.call_id!r} names no open function call of this thread"
                )
            open_calls.discard(item.call_id)
        else:
            raise InvalidArgument(
                f"{where}: a turn's input holds messages and function call outputs only"
            )
