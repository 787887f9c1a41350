"""The model-service sends a provider's events as they arrive, those that
arrived together in one message, and never waits for more."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import cast

import pytest

from model_service.arrivals import as_they_arrive
from model_service.router import Router
from model_service.servicer import ModelServicer
from model_service.settings import ModelServiceSettings
from spindle.errors import ModelError
from spindle.model import Completed, ModelEvent, TextDelta
from spindle.v1 import model_service_pb2 as pb
from tests.rpc import user

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


class _Context:
    """What Generate asks of its gRPC context, and nothing else: the one way to
    hold a call at a `yield`, as gRPC does when its caller is gone mid-write."""

    def time_remaining(self) -> float | None:
        return None

    async def send_initial_metadata(self, metadata: object) -> None:
        return None


async def test_a_reply_let_go_at_a_message_closes_its_reading_then_the_provider(
    tmp_path: Path,
) -> None:
    """A caller that leaves while a message of a slow reply is being written
    (a thread-service killed mid-turn): gRPC closes the call's generator where
    it waits, at a `yield`. The reading of the provider's stream must stop
    before that stream is closed (closing a stream that a task is still
    reading fails), and no task may be left to fail later."""
    settings = ModelServiceSettings(config_home=tmp_path)
    router = Router.from_settings(settings, {})
    servicer = ModelServicer(router)
    failures: list[dict[str, object]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _, context: failures.append(context))
    request = pb.GenerateRequest(
        prompt_cache_key="key-1",
        thread_id="thread-1",
        window_id="thread-1:0",
        input=[user(f"/slow 2 {'word ' * 20}")],
    )
    reply = cast(AsyncGenerator[pb.GenerateResponse, None], servicer.Generate(request, _Context()))
    first = await anext(reply)
    assert first.events[0].text_delta.text == "echo"
    await reply.aclose()
    await asyncio.sleep(0.1)
    gc.collect()
    await asyncio.sleep(0.1)
    assert failures == []
    await router.aclose()
