"""The storage interface of the thread-service, in the domain's words.

Every method is one transaction, so a crash leaves either all of a step or
none. Two backends implement it (`thread_service.stores`): SQLite, the
embedded default owned by one process, and PostgreSQL, shared by replicas.
What must be exclusive across replicas (one running turn per thread,
interrupts, who runs a turn) lives here, in the database, not in a process.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from spindle.items import Item
from spindle.model import Usage
from thread_service.records import Entry, ThreadRecord, TurnError, TurnRecord, TurnStatus


@dataclass(frozen=True, slots=True)
class ForkSource:
    """What a fork inherits of its parent's history: all of it, or only its
    last `last_n_turns` turns. The store records which items, never copies
    them, so a fork costs the same for 10 items as for 10,000; what a fork
    may inherit of them was decided when they were appended (`Entry`)."""

    parent_id: str
    last_n_turns: int | None = None


@dataclass(frozen=True, slots=True)
class ThreadFilter:
    """Which threads a listing shows: always those of one tenant."""

    tenant: str = ""
    parent_id: str | None = None
    include_archived: bool = False


class Store(Protocol):
    """Threads, their histories and their turns."""

    @property
    def exclusive(self) -> bool:
        """True when one process owns the store (SQLite): no other replica runs turns."""

    @property
    def healthy(self) -> bool:
        """False while the store cannot take writes (full disk, database gone)."""

    async def create_thread(self, thread: ThreadRecord) -> None:
        """A root thread or a fresh sub-agent: its history starts empty."""

    async def create_fork(self, child: ThreadRecord, source: ForkSource) -> None:
        """A fork: `child` starts with the part of its parent's history that
        `source` names, sanitized. NotFound when the parent is gone."""

    async def get_thread(self, thread_id: str) -> ThreadRecord | None: ...

    async def update_thread(self, thread: ThreadRecord) -> None:
        """Save what may change: session origin, inherited state, window
        generation, archived, update time."""

    async def list_threads(
        self, which: ThreadFilter, after: tuple[float, str] | None, limit: int
    ) -> list[ThreadRecord]:
        """Threads ordered by (created_at, id), strictly after `after`."""

    async def read_history(
        self, thread_id: str, offset: int = 0, limit: int | None = None
    ) -> list[Item]:
        """The effective history (the inherited part, sanitized, then the
        thread's own items), from item number `offset` on, at most `limit`."""

    async def history_length(self, thread_id: str) -> int: ...

    async def begin_turn(self, turn: TurnRecord, input_items: Sequence[Entry]) -> None:
        """Record a running turn, owned by `turn.owner`, and append its input.
        FailedPrecondition when the thread already has a running turn."""

    async def finish_turn(
        self,
        turn_id: str,
        status: TurnStatus,
        usage: Usage,
        error: TurnError | None,
        output_items: Sequence[Entry],
    ) -> TurnRecord:
        """Append a running turn's output and record how it ended. A turn that
        is no longer running (another replica found its owner dead and ended
        it) stays as it was, and nothing is appended."""

    async def get_turn(self, turn_id: str) -> TurnRecord | None: ...

    async def running_turn(self, thread_id: str) -> TurnRecord | None: ...

    async def list_turns(self, thread_id: str, offset: int, limit: int) -> list[TurnRecord]:
        """A thread's turns, oldest first."""

    async def request_interrupt(self, thread_id: str, reason: str) -> TurnRecord | None:
        """Ask the owner of the thread's running turn to interrupt it; that
        turn, or None when none runs. The first reason asked stays."""

    async def interrupts_requested(self, owner: str) -> list[tuple[str, str]]:
        """(turn id, reason) of `owner`'s running turns that were asked to stop."""

    async def heartbeat(self, owner: str) -> None:
        """`owner` is alive: its running turns' lease starts again."""

    async def end_orphaned_turns(self, reason: str, *, lease: float, alive: str) -> int:
        """Mark running turns interrupted whose owner's last heartbeat is older
        than `lease` seconds (except `alive`, this process); with an exclusive
        store, every running turn not owned by `alive`. How many."""

    async def close(self) -> None: ...
