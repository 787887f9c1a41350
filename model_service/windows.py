"""The histories of recent windows, so that a request need only carry what is new.

A thread's turns each send its whole history; on a long thread that is most
of a turn's cost, on both sides of the wire. Instead, the thread-service
names the history of the window's previous request (its `WindowBase`: item
count and digest) and sends the items after it; `Windows` keeps each
window's last history and puts it back in front. When it does not hold that
history (a restart, an eviction, another replica) the call fails with
WINDOW_NOT_HELD and the thread-service sends the whole history: losing this
cache costs one full request, never a wrong prompt.

Bounded by the items' bytes (`window_cache_bytes`); least recently used goes first.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from spindle import items, longlived
from spindle.errors import FailedPrecondition
from spindle.lru import WeightedLRU
from spindle.model import WINDOW_NOT_HELD, ModelRequest
from spindle.slices import slices


@dataclass(frozen=True, slots=True)
class _Held:
    history: tuple[items.Item, ...]
    digest: bytes
    size: int


class Windows:
    def __init__(self, max_bytes: int = 256 << 20) -> None:
        self.max_bytes = max_bytes
        self._held: WeightedLRU[str, _Held] = WeightedLRU(max_bytes)

    def __len__(self) -> int:
        return len(self._held)

    @property
    def bytes(self) -> int:
        return self._held.weight

    async def complete(self, request: ModelRequest) -> ModelRequest:
        """The request with its whole history: the held base's items, then
        those it carries. Keeps that history for the window's next request
        when the request names its digest. FailedPrecondition (WINDOW_NOT_HELD)
        when the base is not the history held."""
        # Sizing a whole history of 50,000 items takes about 20 ms: a slice at a
        # time (see `spindle.slices`), before anything held is touched.
        new_size = sum(
            [sum(map(items.size_of, part)) async for part in slices(request.input, 2000)]
        )
        held = self._held.pop(request.window_id) if request.window_id else None
        base = request.base
        if base is None:
            history, size = request.input, new_size
        else:
            if (
                held is None
                or len(held.history) != base.item_count
                or held.digest != base.history_digest
            ):
                raise FailedPrecondition(
                    f"window {request.window_id} is not held here as its base says; "
                    "send its whole history",
                    reason=WINDOW_NOT_HELD,
                )
            history = held.history + request.input
            size = held.size + new_size
        if request.history_digest and request.window_id:
            kept = _Held(history, request.history_digest, size)
            if self._held.put(request.window_id, kept, size):
                longlived.kept(len(request.input))  # the items decoded for this request
        if base is None:
            return request
        return dataclasses.replace(request, input=history)
