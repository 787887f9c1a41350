"""Running turns: append the input, call the model, stream, record the end.

Each turn runs in a task of its own, apart from the RPC that asked for it,
so that however the turn ends (completed, failed, interrupted by
InterruptTurn, by the client going away, or by shutdown) the task itself
records that end and appends the completed output before it finishes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

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

T = TypeVar("T")


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
        history, _ = await self.store.read_history(thread.id, None, None)
        _check_input(input_items, history, tools)
        # Checked again, now that no await stands between here and the claim.
        if thread.id in self._running:
            raise FailedPrecondition(f"a turn is already running on thread {thread.id}")
        queue: asyncio.Queue[object] = asyncio.Queue()
        turn = TurnRecord(str(uuid.uuid4()), thread.id, TurnStatus.RUNNING, time.time())
        task = asyncio.create_task(
            self._drive(thread, turn, [*history, *input_items], input_items, tools, queue)
        )
        running = _Running(turn, task)
        running.interrupted_by = self._shutdown_reason or running.interrupted_by
        self._running[thread.id] = running
        task.add_done_callback(lambda _: self._forget(thread.id, task))
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
                # gRPC's timer and the loop's clock may differ by a hair.
                if deadline is not None and loop.time() >= deadline - 0.05:
                    running.interrupted_by = "the call's deadline passed"
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
        """Play the turn; whatever happens, the stream gets its last event and ends."""
        try:
            queue.put_nowait(await self._play(thread, turn, prompt, input_items, tools, queue))
        except SpindleError as exc:
            queue.put_nowait(exc)
        except Exception as exc:  # the store failed: say so, and free the thread
            log.exception("turn %s on thread %s could not be recorded", turn.id, thread.id)
            with contextlib.suppress(Exception):
                error = TurnError(ErrorCode.INTERNAL, f"not recorded: {type(exc).__name__}")
                await _to_the_end(
                    self.store.finish_turn(turn.id, TurnStatus.FAILED, Usage(), error, [])
                )
            queue.put_nowait(SpindleError("internal error; the server log has details"))
        finally:
            queue.put_nowait(_END)

    async def _play(
        self,
        thread: ThreadRecord,
        turn: TurnRecord,
        prompt: list[items.Item],
        input_items: Sequence[items.Item],
        tools: Sequence[Tool],
        queue: asyncio.Queue[object],
    ) -> TurnCompleted | SpindleError:
        """Append the input, call the model, record the end. Store writes run to
        the end even when the turn is interrupted meanwhile: a turn is recorded
        whole, never half."""
        _, interrupted = await _to_the_end(self.store.begin_turn(turn, input_items))
        outputs: list[items.Item] = []
        usage = Usage()
        status, error, failure = TurnStatus.COMPLETED, None, None
        if interrupted:
            status = TurnStatus.INTERRUPTED
        else:
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
                _uncancel()
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
        if status is not TurnStatus.COMPLETED:
            # A turn that did not complete keeps its input and none of the
            # model's output: no half answer, no call that nobody will answer.
            outputs = []
        await _to_the_end(self.store.finish_turn(turn.id, status, usage, error, outputs))
        if failure is not None:
            return failure
        calls = tuple(i for i in outputs if isinstance(i, items.FunctionCall))
        return TurnCompleted(turn.id, status, usage, calls)

    def _forget(self, thread_id: str, task: asyncio.Task[None]) -> None:
        running = self._running.get(thread_id)
        if running is not None and running.task is task:
            del self._running[thread_id]

    async def interrupt(self, thread_id: str, reason: str = "interrupted by InterruptTurn") -> str:
        """Interrupt the turn running on a thread here; '' when none is."""
        thread = await self.threads.get(thread_id)
        running = self._running.get(thread.id)
        if running is None:
            return ""
        if not running.task.cancelling():
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
        offset = pagination.position_int(position, "o")
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


async def _to_the_end(awaitable: Awaitable[T]) -> tuple[T, bool]:
    """Await to the end even if the task is cancelled meanwhile (any number of
    times); also say whether it was."""
    future = asyncio.ensure_future(awaitable)
    cancelled = False
    while True:
        try:
            return await asyncio.shield(future), cancelled
        except asyncio.CancelledError:
            if future.cancelled():
                raise
            _uncancel()
            cancelled = True


def _uncancel() -> None:
    """Take back a cancellation that was handled, so later awaits run normally."""
    task = asyncio.current_task()
    if task is not None:
        while task.cancelling():
            task.uncancel()


_TOOL_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _check_tool(tool: Tool) -> None:
    """What every provider accepts: checked before the turn is recorded, so a
    bad declaration is the caller's error, not a failed turn."""
    if not _TOOL_NAME.fullmatch(tool.name):
        raise InvalidArgument(
            f"tools: name {tool.name!r} must be 1 to 64 letters, digits, '_' or '-'"
        )
    if tool.parameters_json:
        try:
            schema = json.loads(tool.parameters_json)
        except ValueError:
            raise InvalidArgument(f"tools: {tool.name}: parameters_json is not JSON") from None
        if not isinstance(schema, dict):
            raise InvalidArgument(f"tools: {tool.name}: parameters_json must be a JSON object")


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
    for tool in tools:
        _check_tool(tool)
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
