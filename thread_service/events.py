"""A turn's events: what they are, their order, and how they are kept.

Every event of a turn has a sequence number (1, 2, 3... with no gaps), so a
caller whose connection dropped can follow the turn again from where it was
(`WatchTurn`). The events are stored with their turn as JSON (`encode`,
`decode`). A `TurnLog` holds the events of a running turn for any number of
followers, each of which takes everything that is ready at once, so events
produced together travel together.
"""

from __future__ import annotations

import asyncio
import enum
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from spindle import items
from spindle.errors import ErrorCode, SpindleError
from spindle.model import ItemDone, TextDelta, Usage
from thread_service.records import TurnError, TurnRecord, TurnStatus


@dataclass(frozen=True, slots=True)
class TurnStarted:
    turn_id: str


@dataclass(frozen=True, slots=True)
class TurnCompleted:
    turn_id: str
    status: TurnStatus
    usage: Usage = field(default_factory=Usage)
    pending_function_calls: tuple[items.FunctionCall, ...] = ()
    error: TurnError | None = None

    @classmethod
    def of(cls, turn: TurnRecord) -> TurnCompleted:
        """A turn's end as its record holds it (the calls it left open are
        not kept there)."""
        return cls(turn.id, turn.status, turn.usage, (), turn.error)


Payload = TurnStarted | TextDelta | ItemDone | TurnCompleted


@dataclass(frozen=True, slots=True)
class TurnEvent:
    sequence: int
    payload: Payload


def encode(event: TurnEvent) -> str:
    payload = event.payload
    data: dict[str, Any]
    if isinstance(payload, TurnStarted):
        data = {"kind": "turn_started", "turn_id": payload.turn_id}
    elif isinstance(payload, TextDelta):
        data = {"kind": "text_delta", "text": payload.text}
    elif isinstance(payload, ItemDone):
        data = {"kind": "item_done", "item": items.to_json(payload.item)}
    else:
        data = {
            "kind": "turn_completed",
            "turn_id": payload.turn_id,
            "status": payload.status.value,
            "usage": [
                payload.usage.input_tokens,
                payload.usage.cached_input_tokens,
                payload.usage.output_tokens,
            ],
            "calls": [items.to_json(call) for call in payload.pending_function_calls],
            "error": _error_json(payload.error),
        }
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


def decode(sequence: int, text: str) -> TurnEvent:
    data = json.loads(text)
    kind = data["kind"]
    payload: Payload
    if kind == "turn_started":
        payload = TurnStarted(data["turn_id"])
    elif kind == "text_delta":
        payload = TextDelta(data["text"])
    elif kind == "item_done":
        payload = ItemDone(items.from_json(data["item"]))
    else:
        calls = tuple(items.from_json(call) for call in data["calls"])
        payload = TurnCompleted(
            data["turn_id"],
            TurnStatus(data["status"]),
            Usage(*data["usage"]),
            tuple(call for call in calls if isinstance(call, items.FunctionCall)),
            _error_from_json(data["error"]),
        )
    return TurnEvent(sequence, payload)


def _error_json(error: TurnError | None) -> dict[str, Any] | None:
    if error is None:
        return None
    return {
        "code": error.code.value,
        "message": error.message,
        "reason": error.reason,
        "metadata": error.metadata,
        "retry_after": error.retry_after,
    }


def _error_from_json(data: dict[str, Any] | None) -> TurnError | None:
    if data is None:
        return None
    return TurnError(
        ErrorCode(data["code"]),
        data["message"],
        data.get("reason", ""),
        dict(data.get("metadata") or {}),
        data.get("retry_after"),
    )


class _State(enum.Enum):
    OPEN = "open"
    ENDED = "ended"


class TurnLog:
    """The events of one running turn, in order, and how its stream ends."""

    def __init__(self) -> None:
        self.events: list[TurnEvent] = []
        self.failure: SpindleError | None = None
        self._state = _State.OPEN
        self._changed = asyncio.Event()

    @property
    def ended(self) -> bool:
        return self._state is _State.ENDED

    def append(self, payload: Payload) -> TurnEvent:
        event = TurnEvent(len(self.events) + 1, payload)
        self.events.append(event)
        self._notify()
        return event

    def extend(self, payloads: list[Payload]) -> None:
        """Events that came together: followers take them together."""
        for payload in payloads:
            self.events.append(TurnEvent(len(self.events) + 1, payload))
        self._notify()

    def end(self, failure: SpindleError | None = None) -> None:
        """No more events; followers' streams end (with `failure`, if set)."""
        if self._state is _State.OPEN:
            self.failure = failure
            self._state = _State.ENDED
            self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def follow(self, after: int = 0) -> AsyncIterator[list[TurnEvent]]:
        """The events after sequence `after`: every batch that is ready, until
        the end; then the failure, if the turn's stream ends with one."""
        seen = after
        while True:
            if seen < len(self.events):
                batch = self.events[seen:]
                seen = len(self.events)
                yield batch
                continue
            if self.ended:
                if self.failure is not None:
                    raise self.failure
                return
            await self._changed.wait()


def failure_of(error: TurnError) -> SpindleError:
    """The error a stream ends with for a turn that failed."""
    return SpindleError(
        error.message,
        code=error.code,
        reason=error.reason,
        metadata=error.metadata,
        retry_after=error.retry_after,
    )
