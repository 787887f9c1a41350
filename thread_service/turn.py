"""One turn, from its input to its recorded end.

A turn runs in a task of its own, apart from the RPC that asked for it, so
that however it ends (completed, failed, interrupted by InterruptTurn, by the
caller going away, or by shutdown) the task itself records that end and
appends the completed output before it finishes. The caller reads the turn's
events from `Turn.events()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from spindle import items
from spindle.errors import ErrorCode, ResourceExhausted, SpindleError, Unavailable
from spindle.model import Completed, ItemDone, ModelRequest, ModelStreamer, TextDelta, Usage
from thread_service.records import Entry, TurnError, TurnRecord, TurnStatus
from thread_service.store import Store

log = logging.getLogger(__name__)

T = TypeVar("T")

INTERNAL_FAILURE = "internal error; the server log has details"
END_NOT_SAVED = (
    "the turn ended but the store could not save its end; the service keeps trying, "
    "and the thread takes new turns once it is saved"
)
SAVE_RETRY_MAX_SECONDS = 10.0


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


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a turn ended, as recorded. A turn that did not complete keeps its
    input and none of the model's output: no half answer, no call that nobody
    will answer. `failure` is what the caller's call ends with instead of a
    `TurnCompleted` (a failed model call)."""

    status: TurnStatus
    usage: Usage = field(default_factory=Usage)
    error: TurnError | None = None
    outputs: tuple[items.Item, ...] = ()
    failure: SpindleError | None = None


@dataclass(frozen=True, slots=True)
class _End:
    """The last entry of a turn's event queue."""

    failure: SpindleError | None = None


class Turn:
    """A running turn: its record, its model request, its events, and why it
    was cut short (the first reason given wins)."""

    def __init__(
        self,
        store: Store,
        model: ModelStreamer,
        record: TurnRecord,
        request: ModelRequest,
        input_items: Sequence[items.Item],
        *,
        on_usage: Callable[[Usage], None] = lambda _: None,
    ) -> None:
        self.store = store
        self.model = model
        self.record = record
        self.request = request
        self.input_items = tuple(input_items)
        self.interrupt_reason: str | None = None
        self._on_usage = on_usage
        self._events: asyncio.Queue[TurnEvent | _End] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        # Set while the end is being saved again after a failed write: an
        # interrupt must not stop that, or the thread would stay RUNNING.
        self._saving_end = False

    @property
    def id(self) -> str:
        return self.record.id

    @property
    def thread_id(self) -> str:
        return self.record.thread_id

    def start(self) -> asyncio.Task[None]:
        self._task = asyncio.create_task(self._run())
        return self._task

    @property
    def done(self) -> bool:
        return self._task is not None and self._task.done()

    def interrupt(self, reason: str, *, stop_saving: bool = False) -> None:
        """Cut the turn short; it records itself INTERRUPTED with the first reason.
        `stop_saving` (at shutdown) also stops retrying a failed save of its end."""
        if self.interrupt_reason is None:
            self.interrupt_reason = reason
        if self._saving_end and not stop_saving:
            return
        if self._task is not None and not self._task.done():
            self._task.cancel()

    async def wait(self) -> None:
        """Until the turn has recorded its end."""
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)

    async def events(self) -> AsyncIterator[TurnEvent]:
        """The turn's events; ends after `TurnCompleted`, or raises the failure."""
        while True:
            event = await self._events.get()
            if isinstance(event, _End):
                if event.failure is not None:
                    raise event.failure
                return
            yield event

    async def _run(self) -> None:
        """Record the turn's start, play it and record its end; whatever
        happens, the events end (once)."""
        end = _End()
        try:
            try:
                entries = [Entry.of(item) for item in self.input_items]
                _, cancelled = await _to_the_end(self.store.begin_turn(self.record, entries))
            except SpindleError as exc:  # refused (a turn already runs), or the store is down
                end = _End(exc)
                return
            outcome = await self._play(cancelled)
            end = _End(outcome.failure)
            if not await self._save_end(outcome):
                end = _End(Unavailable(END_NOT_SAVED))
                self._events.put_nowait(end)  # the caller hears now; saving goes on
                await self._save_end_until_done(outcome)
                return
            self._on_usage(outcome.usage)
            if outcome.failure is None:
                calls = tuple(i for i in outcome.outputs if isinstance(i, items.FunctionCall))
                self._events.put_nowait(
                    TurnCompleted(self.id, outcome.status, outcome.usage, calls)
                )
        except Exception as exc:  # a bug, or a store failing in a way it should not
            log.exception("turn %s on thread %s could not be recorded", self.id, self.thread_id)
            error = TurnError(ErrorCode.INTERNAL, f"not recorded: {type(exc).__name__}")
            with contextlib.suppress(Exception):
                await _to_the_end(
                    self.store.finish_turn(self.id, TurnStatus.FAILED, Usage(), error, [])
                )
            end = _End(SpindleError(INTERNAL_FAILURE))
        finally:
            if not self._saving_end:
                self._events.put_nowait(end)

    async def _play(self, cancelled: bool) -> Outcome:
        """Call the model, unless the turn was cut while it started; how it ended."""
        if cancelled:
            outcome = Outcome(TurnStatus.INTERRUPTED)
        else:
            self._events.put_nowait(TurnStarted(self.id))
            outcome = await self._call_model()
        if outcome.status is TurnStatus.INTERRUPTED:
            reason = self.interrupt_reason or "interrupted"
            outcome = Outcome(outcome.status, outcome.usage, TurnError(ErrorCode.CANCELLED, reason))
        return outcome

    async def _save_end(self, outcome: Outcome) -> bool:
        """Record how the turn ended. The write runs to the end even when the
        turn is interrupted meanwhile: a turn is recorded whole, never half.
        False when the store could not take it (full, or unreachable)."""
        outputs = [Entry.of(item) for item in outcome.outputs]
        try:
            await _to_the_end(
                self.store.finish_turn(
                    self.id, outcome.status, outcome.usage, outcome.error, outputs
                )
            )
        except (Unavailable, ResourceExhausted) as exc:
            log.warning("turn %s: its end could not be saved yet: %s", self.id, exc.message)
            return False
        return True

    async def _save_end_until_done(self, outcome: Outcome) -> None:
        """Try again, backing off, until the end is saved (or the service stops),
        so that the thread does not stay RUNNING for good."""
        self._saving_end = True
        delay = 0.25
        while True:
            await asyncio.sleep(delay)
            if await self._save_end(outcome):
                log.info("turn %s: its end is saved now", self.id)
                self._on_usage(outcome.usage)
                return
            delay = min(delay * 2, SAVE_RETRY_MAX_SECONDS)

    async def _call_model(self) -> Outcome:
        outputs: list[items.Item] = []
        usage = Usage()
        try:
            async for event in self.model.stream(self.request):
                if isinstance(event, Completed):
                    usage = event.usage
                    continue
                if isinstance(event, ItemDone):
                    outputs.append(event.item)
                self._events.put_nowait(event)
        except asyncio.CancelledError:
            _uncancel()
            return Outcome(TurnStatus.INTERRUPTED, usage)
        except SpindleError as exc:
            return Outcome(TurnStatus.FAILED, error=TurnError(exc.code, exc.message), failure=exc)
        except Exception as exc:
            log.exception("turn %s on thread %s failed", self.id, self.thread_id)
            error = TurnError(ErrorCode.INTERNAL, f"internal error: {type(exc).__name__}")
            return Outcome(TurnStatus.FAILED, error=error, failure=SpindleError(INTERNAL_FAILURE))
        return Outcome(TurnStatus.COMPLETED, usage, outputs=tuple(outputs))


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
