"""The thread-service's records: threads, their trust, history segments, turns.

Plain values that the domain, the store and the gRPC edge share.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from spindle.errors import ErrorCode
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

    @property
    def prompt_cache_key(self) -> str:
        """The key every model request of this thread carries."""
        return self.inherited.prompt_cache_key or self.id

    @property
    def window_id(self) -> str:
        return f"{self.id}:{self.window_generation}"


@dataclass(frozen=True, slots=True)
class Segment:
    """A run of another thread's items that a fork inherits, without copying.

    Items `from_seq <= seq < to_seq` of `source_thread_id`, keeping only those
    a fork may inherit (see `spindle.items.inherited_by_fork`).
    """

    source_thread_id: str
    from_seq: int
    to_seq: int


class TurnStatus(enum.StrEnum):
    RUNNING = "running"
    COMPLETED = "completed"
    INTERRUPTED = "interrupted"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class TurnError:
    code: ErrorCode
    message: str


@dataclass(frozen=True, slots=True)
class TurnRecord:
    id: str
    thread_id: str
    status: TurnStatus
    created_at: float
    first_seq: int = 0
    usage: Usage = field(default_factory=Usage)
    error: TurnError | None = None
    completed_at: float | None = None
