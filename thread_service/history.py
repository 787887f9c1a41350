"""Threads' histories as of their last turn, kept between turns.

A turn checks its input against its thread's history (open function calls,
the size limit) and sends that history to the model. Reading and converting
it from the store every turn costs in proportion to its length, so a long
thread's turns would grow ever slower. Instead the thread-service keeps each
live thread's history after a turn, with what it derived from it, and the
next turn uses it while the thread's version (how many items it appended)
still matches: any append elsewhere (another replica's turn) changes the
version, and that turn reads the store again. Losing an entry (a restart, an
eviction) costs one read; nothing here is the only copy of anything.

It also remembers what the model-service was sent for the thread's window
(`WindowBase`), so the next request sends only what is new.

Bounded by the items' bytes (`history_cache_bytes`); least recently used first.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from spindle.items import FunctionCall, FunctionCallOutput, Item, size_of
from spindle.lru import WeightedLRU
from spindle.model import WindowBase, history_digest
from spindle.slices import slices


@dataclass(frozen=True, slots=True)
class History:
    """A thread's effective history at its `version`, and what follows from it."""

    version: int
    items: tuple[Item, ...]
    size: int  # bytes, as the history limit counts them
    open_calls: frozenset[str]  # function calls without an output yet
    # Names this exact history (see `spindle.model.history_digest`). A history
    # read from the store starts a lineage of its own, with a random digest.
    digest: bytes
    # What the model-service holds of `window_id`: the last request's history.
    window_id: str = ""
    sent: WindowBase | None = None

    @classmethod
    def read(cls, version: int, history: Sequence[Item]) -> History:
        """A history as read from the store."""
        return _EMPTY.extended(history, version, digest=os.urandom(16))

    @classmethod
    async def load(cls, version: int, history: Sequence[Item]) -> History:
        """`read`, a slice of the items at a time (see `spindle.slices`):
        sizing 50,000 items takes about 20 ms."""
        calls: set[str] = set()
        size = 0
        async for part in slices(history, LOAD_SLICE):
            size += _account(part, calls)
        return History(version, tuple(history), size, frozenset(calls), os.urandom(16))

    def extended(
        self,
        new: Sequence[Item],
        version: int,
        *,
        digest: bytes | None = None,
        whole: tuple[Item, ...] | None = None,
    ) -> History:
        """This history with `new` items appended, at `version`. `whole`: the
        items with `new` appended, when the caller has them already."""
        calls = set(self.open_calls)
        size = _account(new, calls)
        return History(
            version,
            self.items + tuple(new) if whole is None else whole,
            self.size + size,
            frozenset(calls),
            history_digest(new, self.digest) if digest is None else digest,
            self.window_id,
            self.sent,
        )

    def with_sent(self, window_id: str, sent: WindowBase | None) -> History:
        return History(
            self.version, self.items, self.size, self.open_calls, self.digest, window_id, sent
        )


_EMPTY = History(0, (), 0, frozenset(), b"")
# Items `History.load` sizes at a time: about 1 ms.
LOAD_SLICE = 2000


def _account(new: Sequence[Item], calls: set[str]) -> int:
    """The bytes of `new`; the function calls it opens added to `calls`, those
    it answers taken out."""
    for item in new:
        if isinstance(item, FunctionCall):
            calls.add(item.call_id)
        elif isinstance(item, FunctionCallOutput):
            calls.discard(item.call_id)
    return sum(size_of(item) for item in new)


class Histories:
    """The cache: thread id to `History`."""

    def __init__(self, max_bytes: int = 256 << 20) -> None:
        self.max_bytes = max_bytes
        self._kept: WeightedLRU[str, History] = WeightedLRU(max_bytes)

    def __len__(self) -> int:
        return len(self._kept)

    def get(self, thread_id: str, version: int) -> History | None:
        """The thread's history at `version`, if kept."""
        kept = self._kept.get(thread_id)
        if kept is None or kept.version != version:
            return None
        return kept

    def put(self, thread_id: str, history: History) -> None:
        self._kept.put(thread_id, history, history.size)

    def drop(self, thread_id: str) -> None:
        self._kept.pop(thread_id)
