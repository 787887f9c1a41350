"""The storage interface of the thread-service, in the domain's words.

Every method is one transaction, so a crash leaves either all of a step or
none. Two backends implement it (`thread_service.stores`): SQLite, the
embedded default owned by one process, and PostgreSQL, shared by replicas.
What must be exclusive across replicas (one running turn per thread,
interrupts, who runs a turn, a request id's one result) lives here, in the
database, not in a process.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from spindle.errors import Aborted, FailedPrecondition
from spindle.model import Usage
from thread_service.records import (
    Entry,
    RequestKey,
    StoredItem,
    ThreadRecord,
    TurnError,
    TurnRecord,
    TurnStatus,
)


@dataclass(frozen=True, slots=True)
class ForkSource:
    """What a fork inherits of its parent's history: all of it up to its last
    ended turn (or up to and including `at_turn_id`), or only the last
    `last_n_turns` turns of that. The store records which items, never copies
    them, so a fork costs the same for 10 items as for 10,000; what a fork
    may inherit of them was decided when they were appended (`Entry`)."""

    parent_id: str
    last_n_turns: int | None = None
    at_turn_id: str = ""


@dataclass(frozen=True, slots=True)
class ThreadFilter:
    """Which threads a listing shows (always those of one tenant), in which order."""

    tenant: str = ""
    parent_id: str | None = None
    archived: bool | None = False  # None: both
    labels: dict[str, str] = field(default_factory=dict)
    order_by: Literal["create_time", "update_time"] = "create_time"
    descending: bool = False


class HistoryChanged(Aborted):
    """A turn meant to follow the history it read, but the history grew since."""

    def __init__(self, thread_id: str) -> None:
        super().__init__(
            f"the history of thread {thread_id} changed while the turn started",
            reason="HISTORY_CHANGED",
        )


def thread_archived(thread_id: str, role: str = "thread") -> FailedPrecondition:
    """What a call that needs a live thread hears of an archived one."""
    return FailedPrecondition(f"{role} {thread_id} is archived", reason="THREAD_ARCHIVED")


def turn_already_running(thread_id: str, turn_id: str) -> FailedPrecondition:
    """A turn asked for while another runs on the thread, on any replica;
    `turn_id` names it when known."""
    return FailedPrecondition(
        f"a turn is already running on thread {thread_id}",
        reason="TURN_ALREADY_RUNNING",
        metadata={"turn_id": turn_id} if turn_id else {},
        retry_after=1.0,
    )


def turn_running(thread_id: str, turn_id: str) -> FailedPrecondition:
    """A thread archived or deleted while a turn runs on it."""
    return FailedPrecondition(
        f"a turn is running on thread {thread_id}; interrupt it first, or set interrupt_running",
        reason="TURN_RUNNING",
        metadata={"turn_id": turn_id},
    )


class Store(Protocol):
    """Threads, their histories and their turns."""

    @property
    def exclusive(self) -> bool:
        """True when one process owns the store (SQLite): no other replica runs turns."""

    @property
    def healthy(self) -> bool:
        """False while the store cannot take writes (full disk, database gone)."""

    async def create_thread(
        self, thread: ThreadRecord, request: RequestKey | None = None
    ) -> ThreadRecord:
        """A root thread or a fresh sub-agent: its history starts empty. For a
        request id already used by the same request, the thread it made."""

    async def create_fork(
        self,
        child: ThreadRecord,
        source: ForkSource,
        request: RequestKey | None = None,
        spawn_fingerprint: str = "",
    ) -> ThreadRecord:
        """A fork: `child` starts with the part of its parent's history that
        `source` names, sanitized. One child per spawn call of a parent: a
        repeat with the same `spawn_fingerprint` gets the first child,
        another is ALREADY_EXISTS. NotFound when the parent is gone."""

    async def get_thread(self, thread_id: str) -> ThreadRecord | None: ...

    async def update_thread(self, thread: ThreadRecord) -> None:
        """Save what may change: session origin, inherited state, window
        generation, archived, nickname, role, instructions, metadata, update time."""

    async def delete_thread(self, thread_id: str) -> None:
        """Delete a thread and what only it holds (items its forks read stay)."""

    async def list_threads(
        self, which: ThreadFilter, after: tuple[float, str] | None, limit: int
    ) -> list[ThreadRecord]:
        """Threads ordered by (order time, id), strictly after `after`."""

    async def read_history(
        self,
        thread_id: str,
        offset: int = 0,
        limit: int | None = None,
        *,
        version: int | None = None,
    ) -> list[StoredItem]:
        """The effective history (the inherited part, sanitized, then the
        thread's own items, only its first `version` with `version`), from
        item number `offset` on, at most `limit`."""

    async def history_length(self, thread_id: str) -> int: ...

    async def begin_turn(
        self,
        turn: TurnRecord,
        input_items: Sequence[Entry],
        *,
        request: RequestKey | None = None,
        version: int | None = None,
    ) -> tuple[TurnRecord, bool]:
        """Record a running turn, owned by `turn.owner`, and append its input;
        (turn, True). FailedPrecondition when the thread already has a running
        turn; HistoryChanged when `version` is not the thread's any more. For a
        request id already used by the same request: (that turn, False)."""

    async def finish_turn(
        self,
        turn_id: str,
        status: TurnStatus,
        usage: Usage,
        error: TurnError | None,
        output_items: Sequence[Entry],
        events: Sequence[tuple[int, str]] = (),
    ) -> TurnRecord:
        """Append a running turn's output and its remaining events, and record
        how it ended. A turn that is no longer running (another replica found
        its owner dead and ended it) stays as it was, and nothing is appended."""

    async def append_events(self, turn_id: str, events: Sequence[tuple[int, str]]) -> None:
        """Keep (sequence, encoded event) of a running turn, for followers elsewhere."""

    async def read_events(self, turn_id: str, after: int = 0) -> list[tuple[int, str]]:
        """A turn's kept events after sequence `after`, in order."""

    async def get_turn(self, turn_id: str) -> TurnRecord | None: ...

    async def running_turn(self, thread_id: str) -> TurnRecord | None: ...

    async def list_turns(self, thread_id: str, offset: int, limit: int) -> list[TurnRecord]:
        """A thread's turns, oldest first."""

    async def request_interrupt(self, turn_id: str, reason: str) -> bool:
        """Ask the owner of a running turn to interrupt it; False when it is not
        running. The first reason asked stays."""

    async def find_request(self, request: RequestKey) -> tuple[str, str] | None:
        """(thread id, turn id) an earlier use of a request id made, or None;
        INVALID_ARGUMENT when that was another request."""

    async def interrupts_requested(self, owner: str) -> list[tuple[str, str]]:
        """(turn id, reason) of `owner`'s running turns that were asked to stop."""

    async def heartbeat(self, owner: str) -> None:
        """`owner` is alive: its running turns' lease starts again."""

    async def end_orphaned_turns(self, reason: str, *, lease: float, alive: str) -> int:
        """Mark running turns interrupted whose owner's last heartbeat is older
        than `lease` seconds (except `alive`, this process); with an exclusive
        store, every running turn not owned by `alive`. How many."""

    async def forget_requests(self, older_than: float) -> int:
        """Drop request ids recorded more than `older_than` seconds ago."""

    async def close(self) -> None: ...
