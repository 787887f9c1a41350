"""Sending a provider's events as they arrive, those that arrived together in
one message.

A provider yields a batch per read of its upstream, but an HTTP client hands
over one chunk at a time, and a server that writes each event in a chunk of
its own makes every event a read and every read a gRPC message: the cost of
a call grows with its events. Here the provider's stream is read by a task of
its own while the call writes: whatever arrived meanwhile goes out in the next
message, text joined. Nothing waits for more: an event that arrives alone
goes out alone, at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable

from spindle.model import ModelEvent, joined

_Arrival = list[ModelEvent] | BaseException | None  # None: the stream ended


async def as_they_arrive(
    batches: AsyncIterator[list[ModelEvent]],
    while_waiting: Callable[[], Awaitable[None]] | None = None,
) -> AsyncGenerator[list[ModelEvent], None]:
    """The events of `batches`, each batch all that arrived since the last.
    `while_waiting` runs once if nothing has arrived when the call is ready to
    send (an upstream still thinking): the response headers can go out then."""
    arrived: asyncio.Queue[_Arrival] = asyncio.Queue()

    async def read() -> None:
        try:
            async for batch in batches:
                arrived.put_nowait(batch)
        except Exception as exc:
            arrived.put_nowait(exc)
        else:
            arrived.put_nowait(None)

    reader = asyncio.create_task(read())
    try:
        await asyncio.sleep(0)  # the reader's first step: an answer ready at once is there now
        if while_waiting is not None and arrived.empty():
            await while_waiting()
        while True:
            ready = [await arrived.get()]
            while not arrived.empty():
                ready.append(arrived.get_nowait())
            events: list[ModelEvent] = []
            for item in ready:
                if isinstance(item, list):
                    events.extend(item)
                    continue
                if events:
                    yield joined(events)
                if item is not None:
                    raise item
                return
            yield joined(events)
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
