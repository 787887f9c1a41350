"""What the thread-service tells operators about its turns and its store:
metrics (turns by how they ended, turns running, time to first token, store
transaction latency), each turn's span, and each turn's log context.

The hooks are cheap, because a turn is the hot path: with metrics and
tracing off, a turn costs a few tests and each text delta one; with metrics
on, a turn adds a handful of increments and observations. `TurnWatch` is
one turn's, made with the turn (`thread_service.turn`); `timed` wraps the
store's one way into a transaction (`stores.sql_store`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar, cast

from prometheus_client import Counter, Gauge, Histogram

from spindle import logs, metrics, tracing
from spindle.model import ModelRequest, TextDelta, Usage
from thread_service.events import TurnCompleted, TurnLog
from thread_service.records import TurnRecord, TurnStatus

if TYPE_CHECKING:
    from opentelemetry.trace import Span

log = logging.getLogger("thread_service.turn")

Runner = TypeVar("Runner", bound=Callable[[Any], Awaitable[Any]])

# From a few milliseconds (the embedded provider) to a slow model's first token.
FIRST_TOKEN_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
# From an in-memory read to a transaction that waited for a connection.
STORE_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)  # fmt: skip

TURNS = Counter(
    "spindle_turns",
    "Turns that ended in this process, by how: completed, failed or interrupted",
    ["status"],
)
TURNS_RUNNING = Gauge("spindle_turns_running", "Turns running in this process now")
TIME_TO_FIRST_TOKEN = Histogram(
    "spindle_turn_time_to_first_token_seconds",
    "Time from a turn's start to its first text delta",
    buckets=FIRST_TOKEN_BUCKETS,
)
STORE_DURATION = Histogram(
    "spindle_store_operation_duration_seconds",
    "Time one store operation (one transaction) took, waiting for the database included, "
    "by operation",
    ["operation"],
    buckets=STORE_BUCKETS,
)

# Bound once: every status shows (as 0) from the start, and a turn's end is a lookup.
_ENDED = {status: TURNS.labels(status.value) for status in TurnStatus if status.value != "running"}
_STORE_OPERATIONS: dict[str, Histogram] = {}


class TurnWatch:
    """One turn, as operators see it: counted, timed to its first token, traced
    as a span, and named in the log lines written while it plays."""

    __slots__ = ("_counted", "_request", "_span", "_started", "awaiting_first_token", "record")

    def __init__(self, record: TurnRecord, request: ModelRequest) -> None:
        self.record = record
        self._request = request
        # True until the first text delta, while metrics are served: the one
        # test the turn makes per event.
        self.awaiting_first_token = False
        self._counted = False
        self._started = 0.0
        self._span: Span | None = None

    async def around(self, play: Awaitable[None], events: TurnLog) -> None:
        """Play the turn (`play`, in the turn's own task), observing it from its
        start to its recorded end, which `events` tells."""
        logs.bind_turn(self.record.thread_id, self.record.id)
        if tracing.tracer is not None:
            self._span = tracing.start_span(
                f"chat {self._request.model}", self._attributes(), client=True
            )
            tracing.make_current(self._span)
        self._counted = metrics.on
        if self._counted:
            TURNS_RUNNING.inc()
            self._started = time.perf_counter()
            self.awaiting_first_token = True
        try:
            await play
        finally:
            self._ended(events)

    def first_token(self, event: object) -> None:
        """Called with the turn's events until the first text delta."""
        if isinstance(event, TextDelta):
            self.awaiting_first_token = False
            TIME_TO_FIRST_TOKEN.observe(time.perf_counter() - self._started)

    def _ended(self, events: TurnLog) -> None:
        status, usage = TurnStatus.FAILED, Usage()
        last = events.events[-1].payload if events.events else None
        if isinstance(last, TurnCompleted):
            status, usage = last.status, last.usage
        self.awaiting_first_token = False
        if self._counted:
            TURNS_RUNNING.dec()
            _ENDED[status].inc()
        if self._span is not None:
            self._end_span(status, usage, events)
        log.debug(
            "turn ended status=%s input_tokens=%d cached_tokens=%d output_tokens=%d",
            status.value,
            usage.input_tokens,
            usage.cached_input_tokens,
            usage.output_tokens,
        )

    def _attributes(self) -> dict[str, Any]:
        request = self._request
        attributes = {
            "gen_ai.operation.name": "chat",
            "gen_ai.request.model": request.model,
            "gen_ai.conversation.id": self.record.thread_id,
            "spindle.thread_id": self.record.thread_id,
            "spindle.turn_id": self.record.id,
            "spindle.window_id": request.window_id,
            "spindle.prompt_cache_key": request.prompt_cache_key,
        }
        if request.sub_agent_kind:
            attributes["spindle.sub_agent_kind"] = request.sub_agent_kind
        return attributes

    def _end_span(self, status: TurnStatus, usage: Usage, events: TurnLog) -> None:
        span = self._span
        assert span is not None
        span.set_attribute("spindle.turn.status", status.value)
        span.set_attribute("gen_ai.usage.input_tokens", usage.input_tokens)
        span.set_attribute("gen_ai.usage.cache_read.input_tokens", usage.cached_input_tokens)
        span.set_attribute("gen_ai.usage.output_tokens", usage.output_tokens)
        if status is TurnStatus.FAILED:
            failure = events.failure
            code = failure.code.value if failure is not None else "INTERNAL"
            span.set_attribute("error.type", code)
            tracing.fail(span, code)
        span.end()


def timed(run: Runner) -> Runner:
    """`run` (a store's transaction runner), timing each script by its name
    while metrics are served."""

    async def timed_run(script: Any) -> Any:
        if not metrics.on:
            return await run(script)
        started = time.perf_counter()
        try:
            return await run(script)
        finally:
            _store_histogram(script).observe(time.perf_counter() - started)

    return cast(Runner, timed_run)


def _store_histogram(script: Any) -> Histogram:
    # A script is a generator; its name is the operation's (`operations.py`).
    name = getattr(script, "__name__", metrics.OTHER)
    histogram = _STORE_OPERATIONS.get(name)
    if histogram is None:
        histogram = _STORE_OPERATIONS[name] = STORE_DURATION.labels(name)
    return histogram
