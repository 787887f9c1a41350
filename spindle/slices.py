"""Long work on the event loop, a slice at a time, so that it stalls nobody.

A service's calls share one event loop. Work proportional to a history's
length (decoding 50,000 stored items, sizing them, converting them to
protobuf) takes tens to hundreds of ms of CPU; done in one piece, every
other call of the process waits that long, however small. Handing it to a
thread does not help: it holds the GIL while it runs Python, and the loop
then waits for the GIL after each of its own system calls.

So such work goes through `slices`: about a millisecond of it at a time,
and between two slices the loop turns `TURNS` times. A call takes one step
each time the loop turns (each await of it that is ready by then runs), so
a small call advances `TURNS` steps per slice of long work rather than
waiting for a slice before each step (a short turn runs some 60 callbacks
in the thread-service). On an idle loop a turn costs about 2 us, so the
long work itself goes on at nearly full speed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import TypeVar

T = TypeVar("T")

# How often the loop turns between two slices of long work: beyond 16, a
# short turn under load (bench.fairness) got no faster.
TURNS = 16


async def pause() -> None:
    """Let the event loop turn `TURNS` times: what is ready runs meanwhile."""
    for _ in range(TURNS):
        await asyncio.sleep(0)


async def slices(values: Sequence[T], size: int) -> AsyncIterator[Sequence[T]]:
    """`values`, `size` at a time, with a `pause` between two slices (none
    before the first: short work goes on at once)."""
    for start in range(0, len(values), size):
        if start:
            await pause()
        yield values[start : start + size]
