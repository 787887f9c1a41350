"""The model-service sends a provider's events as they arrive, those that
arrived together in one message, and never waits for more."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

import pytest

from model_service.arrivals import as_they_arrive
from spindle.errors import ModelError
from spindle.model import Completed, ModelEvent, TextDelta

pytestmark = pytest.mark.anyio


async def all_at_once() -> AsyncGenerator[list[ModelEvent], None]:
    """Three reads that were all there already (one chunk each)."""
    yield [TextDelta("a")]
    yield [TextDelta("b")]
    yield [TextDelta("c"), Completed()]


async def test_what_arrived_together_goes_in_one_batch_text_joined() -> None:
    sent = [batch async for batch in as_they_arrive(all_at_once())]
    assert sent == [[TextDelta("abc"), Completed()]]


async def test_what_arrives_apart_goes_at_once_and_alone() -> None:
    produced: list[str] = []

    async def paced() -> AsyncGenerator[list[ModelEvent], None]:
        for text in ("a", "b"):
            produced.append(text)
            yield [TextDelta(text)]
            await asyncio.sleep(0.05)
        yield [Completed()]

    seen: list[tuple[list[ModelEvent], list[str]]] = []
    async for batch in as_they_arrive(paced()):
        seen.append((batch, list(produced)))
    # Each delta was sent before the next one was even produced.
    assert seen == [
        ([TextDelta("a")], ["a"]),
        ([TextDelta("b")], ["a", "b"]),
        ([Completed()], ["a", "b"]),
    ]


async def test_events_before_a_failure_go_out_then_the_failure() -> None:
    async def failing() -> AsyncGenerator[list[ModelEvent], None]:
        yield [TextDelta("partial")]
        raise ModelError("upstream went away")

    sent: list[list[ModelEvent]] = []
    with pytest.raises(ModelError, match="went away"):
        async for batch in as_they_arrive(failing()):
            sent.append(batch)
    assert sent == [[TextDelta("partial")]]


async def test_the_wait_hook_runs_only_when_nothing_is_ready() -> None:
    waited: list[str] = []

    async def note() -> None:
        waited.append("headers")

    async def thinking() -> AsyncGenerator[list[ModelEvent], None]:
        await asyncio.sleep(0.01)
        yield [Completed()]

    assert [b async for b in as_they_arrive(all_at_once(), note)] != []
    assert waited == []
    assert [b async for b in as_they_arrive(thinking(), note)] == [[Completed()]]
    assert waited == ["headers"]


async def test_a_caller_that_leaves_stops_the_provider() -> None:
    closed = asyncio.Event()

    async def endless() -> AsyncGenerator[list[ModelEvent], None]:
        try:
            while True:
                yield [TextDelta(".")]
                await asyncio.sleep(0.01)
        finally:
            closed.set()

    stream = as_they_arrive(endless())
    assert await anext(stream) == [TextDelta(".")]
    await stream.aclose()
    await asyncio.wait_for(closed.wait(), 1)
