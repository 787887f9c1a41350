"""One turn, from its recorded start to its recorded end.

A turn runs in a task of its own, apart from the RPC that asked for it, so
that however it ends (completed, failed, interrupted by InterruptTurn, by the
caller going away, its deadline, or by shutdown) the task itself records
that end and appends the completed output before it finishes. Its events go
to a `TurnLog` that any number of callers follow (RunTurn, WatchTurn); they
are kept with the turn when it ends, and every `FLUSH_SECONDS` while it runs
so that followers on other replicas see them too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from spindle import items
from spindle.errors import ErrorCode, ResourceExhausted, SpindleError, Unavailable
from spindle.model import Completed, ItemDone, ModelRequest, ModelStreamer, Usage
from thread_service import events, telemetry
from thread_service.events import TurnCompleted, TurnEvent, TurnLog, TurnStarted
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
# How often a running turn's new events are kept for followers elsewhere.
FLUSH_SECONDS = 0.25


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
class Interruption:
    """Why a turn was cut short: the first reason given wins."""

    reason: str
    code: ErrorCode = ErrorCode.CANCELLED


class Turn:
    """A running turn: its record, its model request, its events, and why it
    was cut short."""

    def __init__(
        self,
        store: Store,
        model: ModelStreamer,
        record: TurnRecord,
        request: ModelRequest,
        *,
        on_end: Callable[[Outcome], None] = lambda _: None,
    ) -> None:
        self.store = store
        self.model = model
        self.record = record
        self.request = request
        self.log = TurnLog()
        self.watch = telemetry.TurnWatch(record, request)  # metrics, span, log context
        self.interruption: Interruption | None = None
        # Called once the end is saved, before followers see TurnCompleted.
        self._on_end = on_end
        self._task: asyncio.Task[None] | None = None
        self._flushed = 0
        self._flushing = True
        self._flusher: asyncio.Task[None] | None = None
        # Set when another replica had ended the turn before this one saved its end.
        self.superseded = False
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
        """Play the turn (its start is recorded already) in a task of its own."""
        self._task = asyncio.create_task(self.watch.around(self._run(), self.log))
        return self._task

    @property
    def done(self) -> bool:
        return self._task is not None and self._task.done()

    def interrupt(
        self, reason: str, code: ErrorCode = ErrorCode.CANCELLED, *, stop_saving: bool = False
    ) -> None:
        """Cut the turn short; it records itself INTERRUPTED with the first reason.
        `stop_saving` (at shutdown) also stops retrying a failed save of its end."""
        if self.interruption is None:
            self.interruption = Interruption(reason, code)
        if self._saving_end and not stop_saving:
            return
        if self._task is not None and not self._task.done():
            self._task.cancel()

    async def wait(self) -> None:
        """Until the turn has recorded its end."""
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        """Play the turn and record its end; whatever happens, the log ends (once)."""
        failure: SpindleError | None = None
        # Most turns end sooner: only one that runs on starts keeping its events.
        timer = asyncio.get_running_loop().call_later(FLUSH_SECONDS, self._start_flushing)
        try:
            outcome = await self._play()
            timer.cancel()
            if self._flusher is not None:
                await _to_the_end(self._stop_flushing(self._flusher))
            failure = outcome.failure
            saved = await self._save_end(outcome)
            if self.superseded:
                failure = None  # the stream ends with the stored end instead
            if not saved:
                failure = Unavailable(END_NOT_SAVED)
                self.log.end(failure)  # the caller hears now; saving goes on
                await self._save_end_until_done(outcome)
                return
        except Exception as exc:  # a bug, or a store failing in a way it should not
            log.exception("turn %s on thread %s could not be recorded", self.id, self.thread_id)
            error = TurnError(ErrorCode.INTERNAL, f"not recorded: {type(exc).__name__}")
            with contextlib.suppress(Exception):
                await _to_the_end(
                    self.store.finish_turn(self.id, TurnStatus.FAILED, Usage(), error, [])
                )
            failure = SpindleError(INTERNAL_FAILURE)
        finally:
            timer.cancel()
            self._flushing = False
            if self._flusher is not None:
                self._flusher.cancel()
            self.log.end(failure)

    async def _play(self) -> Outcome:
        """Call the model; how the turn ended."""
        self.log.append(TurnStarted(self.id))
        outcome = await self._call_model()
        if outcome.status is TurnStatus.INTERRUPTED:
            cut = self.interruption or Interruption("interrupted")
            outcome = Outcome(outcome.status, outcome.usage, TurnError(cut.code, cut.reason))
        return outcome

    def _ending(self, outcome: Outcome) -> TurnCompleted | None:
        """The turn's last event; None for a failed turn, whose stream ends
        with the failure's status instead."""
        if outcome.failure is not None:
            return None
        calls = tuple(i for i in outcome.outputs if isinstance(i, items.FunctionCall))
        return TurnCompleted(self.id, outcome.status, outcome.usage, calls, outcome.error)

    async def _call_model(self) -> Outcome:
        outputs: list[items.Item] = []
        usage = Usage()
        try:
            async for batch in self.model.stream(self.request):
                shown: list[events.Payload] = []
                for event in batch:
                    if isinstance(event, Completed):
                        usage = event.usage
                        continue
                    if isinstance(event, ItemDone):
                        outputs.append(event.item)
                    if self.watch.awaiting_first_token:
                        self.watch.first_token(event)
                    shown.append(event)
                if shown:
                    self.log.extend(shown)
        except asyncio.CancelledError:
            _uncancel()
            return Outcome(TurnStatus.INTERRUPTED, usage)
        except SpindleError as exc:
            return Outcome(TurnStatus.FAILED, error=TurnError.of(exc), failure=exc)
        except Exception as exc:
            log.exception("turn %s on thread %s failed", self.id, self.thread_id)
            error = TurnError(ErrorCode.INTERNAL, f"internal error: {type(exc).__name__}")
            return Outcome(TurnStatus.FAILED, error=error, failure=SpindleError(INTERNAL_FAILURE))
        return Outcome(TurnStatus.COMPLETED, usage, outputs=tuple(outputs))

    def _start_flushing(self) -> None:
        if self._flushing and self._flusher is None:
            self._flusher = asyncio.create_task(self._flush_while_running())

    async def _flush_while_running(self) -> None:
        """Keep the events so far, now and then, for followers on other replicas.
        Events count as kept only once their write succeeded: a write that
        failed is tried again, and what is still not kept goes with the end."""
        warned = False
        while self._flushing:
            pending = self.log.events[self._flushed :]
            if pending:
                try:
                    await _to_the_end(
                        self.store.append_events(
                            self.id, [(event.sequence, events.encode(event)) for event in pending]
                        )
                    )
                except SpindleError as exc:
                    if not warned:
                        log.warning(
                            "turn %s: its events could not be kept yet: %s", self.id, exc.message
                        )
                        warned = True
                else:
                    self._flushed += len(pending)
            await asyncio.sleep(FLUSH_SECONDS)

    async def _stop_flushing(self, flusher: asyncio.Task[None]) -> None:
        """Stop keeping events now and then; a write under way finishes first,
        so the end's write keeps exactly the events not kept yet."""
        self._flushing = False
        flusher.cancel()
        await asyncio.gather(flusher, return_exceptions=True)

    async def _save_end(self, outcome: Outcome) -> bool:
        """Record how the turn ended, with its last events. The write runs to
        the end even when the turn is interrupted meanwhile: a turn is recorded
        whole, never half. Only once it is saved do followers see the turn's
        TurnCompleted: a client that saw COMPLETED never loses the turn, even
        to a kill -9 a moment later. False when the store could not take it."""
        outputs = [Entry.of(item) for item in outcome.outputs]
        pending = self.log.events[self._flushed :]
        ending = self._ending(outcome)
        if ending is not None:
            pending = [*pending, TurnEvent(len(self.log.events) + 1, ending)]
        try:
            saved, _ = await _to_the_end(
                self.store.finish_turn(
                    self.id,
                    outcome.status,
                    outcome.usage,
                    outcome.error,
                    outputs,
                    [(event.sequence, events.encode(event)) for event in pending],
                )
            )
        except (Unavailable, ResourceExhausted) as exc:
            log.warning("turn %s: its end could not be saved yet: %s", self.id, exc.message)
            return False
        self._flushed += len(pending)
        if saved.status is not outcome.status or (saved.error is None) != (outcome.error is None):
            # Another replica ended the turn first (this one's lease ran out while
            # it was stalled): nothing of this end was kept, so the caller hears
            # what the store holds, never a COMPLETED that was not saved.
            log.warning(
                "turn %s was ended elsewhere (%s) before its end was saved here",
                self.id,
                saved.status.value,
            )
            self._on_end(Outcome(saved.status, saved.usage, saved.error))
            self.log.append(TurnCompleted.of(saved))
            self.superseded = True
            return True
        self._on_end(outcome)
        if ending is not None:
            self.log.append(ending)
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
                return
            delay = min(delay * 2, SAVE_RETRY_MAX_SECONDS)


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
