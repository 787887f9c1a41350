"""The thread-service's records: threads, their trust, turns, history entries.

Plain values that the domain, the store and the gRPC edge share.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from spindle.errors import ErrorCode, SpindleError
from spindle.items import Item, inherited_by_fork
from spindle.model import Usage
from thread_service.inheritance import InheritedThreadState


class Origin(enum.StrEnum):
    """How a thread, or its current session, came to be."""

    START = "start"
    SPAWN = "spawn"
    FORK = "fork"
    RESUME = "resume"


class TrustSource(enum.Enum):
    """Where the trust of a started thread's project lives."""

    PERSISTED = "persisted"
    IN_MEMORY = "in_memory"


@dataclass(frozen=True, slots=True)
class TrustState:
    """A thread's project (the trust target), and whether and where it is trusted."""

    project_path: str
    trusted: bool
    source: TrustSource


@dataclass(frozen=True, slots=True)
class ThreadRecord:
    id: str
    origin: Origin
    session_origin: Origin
    cwd: str
    model: str
    instructions: str
    created_at: float
    updated_at: float
    parent_id: str | None = None
    depth: int = 0
    agent_nickname: str = ""
    agent_role: str = ""
    sub_agent_kind: str = ""
    parent_spawn_call_id: str = ""
    window_generation: int = 0
    archived: bool = False
    trust: TrustState | None = None
    inherited: InheritedThreadState = field(default_factory=InheritedThreadState)
    tenant: str = ""
    # String labels (see `validation.check_metadata` for their limits).
    metadata: dict[str, str] = field(default_factory=dict)
    # How many items the thread itself has appended: its history's version.
    version: int = 0

    @property
    def prompt_cache_key(self) -> str:
        """The key every model request of this thread carries."""
        return self.inherited.prompt_cache_key or self.id

    @property
    def window_id(self) -> str:
        return f"{self.id}:{self.window_generation}"


class TurnStatus(enum.StrEnum):
    RUNNING = "running"
    COMPLETED = "completed"
    INTERRUPTED = "interrupted"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class TurnError:
    """Why a turn did not complete: the status and details its caller saw."""

    code: ErrorCode
    message: str
    reason: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    retry_after: float | None = None

    @classmethod
    def of(cls, error: SpindleError) -> TurnError:
        return cls(error.code, error.message, error.reason, error.metadata, error.retry_after)


@dataclass(frozen=True, slots=True)
class TurnRecord:
    """A turn as stored. `owner` is the thread-service process (replica) that
    runs it while it is RUNNING; its lease tells others whether it still lives."""

    id: str
    thread_id: str
    status: TurnStatus
    created_at: float
    owner: str = ""
    usage: Usage = field(default_factory=Usage)
    error: TurnError | None = None
    completed_at: float | None = None


@dataclass(frozen=True, slots=True)
class Entry:
    """An item to append to a thread's history, with whether a fork inherits it
    (the fork rule, `spindle.items.inherited_by_fork`, decided above the store)."""

    item: Item
    inheritable: bool

    @classmethod
    def of(cls, item: Item) -> Entry:
        return cls(item, inherited_by_fork(item))


@dataclass(frozen=True, slots=True)
class StoredItem:
    """An item of a history as stored: its id (stable; an inherited item keeps
    the id it has in its source thread), the turn that appended it, when."""

    item: Item
    id: str
    turn_id: str
    created_at: float


@dataclass(frozen=True, slots=True)
class RequestKey:
    """A caller's request id, to make a retried call act once: the same id
    with the same request (equal `fingerprint`) finds the first call's result."""

    tenant: str
    request_id: str
    method: str
    fingerprint: str
