"""The storage interface of the thread-service.

SQLite (`thread_service.sqlite_store`) is the embedded default; the
PostgreSQL backend for many replicas is to implement the same protocol. Every method that
writes is one transaction, so a crash leaves either all of a step or none.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from spindle.items import Item
from spindle.model import Usage
from thread_service.records import Segment, ThreadRecord, TurnError, TurnRecord, TurnStatus


class Store(Protocol):
    async def create_thread(self, thread: ThreadRecord, segments: Sequence[Segment]) -> None:
        """Insert a thread and the inherited segments of its history."""

    async def get_thread(self, thread_id: str) -> ThreadRecord | None: ...

    async def save_thread(self, thread: ThreadRecord) -> None:
        """Update a thread's mutable fields (session origin, inherited state,
        window generation, archived, update time)."""

    async def list_threads(
        self,
        *,
        parent_id: str | None,
        include_archived: bool,
        after: tuple[float, str] | None,
        limit: int,
    ) -> list[ThreadRecord]:
        """Threads ordered by (created_at, id), strictly after `after`."""

    async def segments(self, thread_id: str) -> list[Segment]:
        """The inherited segments of a thread's history, oldest first."""

    async def own_item_count(self, thread_id: str) -> int:
        """How many items the thread itself appended (its next seq)."""

    async def read_history(
        self, thread_id: str, offset: int = 0, limit: int | None = None
    ) -> list[Item]:
        """The effective history (sanitized inherited segments, then own items),
        from item number `offset` on, at most `limit` items (None: all)."""

    async def history_length(self, thread_id: str) -> int: ...

    async def turn_starts(
        self, thread_id: str, from_seq: int, to_seq: int, limit: int
    ) -> list[int]:
        """first_seq of the latest `limit` turns starting in [from_seq, to_seq),
        newest first."""

    async def running_turn(self, thread_id: str) -> TurnRecord | None: ...

    async def begin_turn(self, turn: TurnRecord, input_items: Sequence[Item]) -> TurnRecord:
        """Record a running turn and append its input, in one transaction."""

    async def finish_turn(
        self,
        turn_id: str,
        status: TurnStatus,
        usage: Usage,
        error: TurnError | None,
        output_items: Sequence[Item],
    ) -> TurnRecord:
        """Append a turn's output and record how it ended, in one transaction."""

    async def list_turns(self, thread_id: str, offset: int, limit: int) -> list[TurnRecord]: ...

    async def interrupt_running_turns(self, reason: str) -> int:
        """Mark turns left running by a previous process as interrupted."""

    async def close(self) -> None: ...
