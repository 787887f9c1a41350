"""Thread lifecycle: start, spawn (fresh or fork), resume, read, archive.

Plain Python over a `Store`; the gRPC servicer only translates. The rules of
what a child inherits live in `thread_service.inheritance`, who may see and
do what in `thread_service.access`: every method takes the `caller`, and a
thread of another tenant is NOT_FOUND.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import json
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from spindle.errors import FailedPrecondition, InvalidArgument, NotFound
from spindle.items import size_of
from spindle.model import check_model
from thread_service import inheritance, pagination
from thread_service.access import LOCAL, Principal, trust_roots
from thread_service.pagination import Position
from thread_service.records import Origin, RequestKey, StoredItem, ThreadRecord
from thread_service.store import ForkSource, Store, ThreadFilter, thread_archived
from thread_service.trust import Marked, ProjectTrust
from thread_service.validation import (
    check_cwd,
    check_label,
    check_metadata,
    check_sub_agent_kind,
    check_text_size,
    parse_order_by,
    parse_thread_id,
)

# What a sub-agent is when its creator names no kind; model requests of
# sub-agents always say which kind of sub-agent is calling.
DEFAULT_SUB_AGENT_KIND = "thread_spawn"


class ForkMode(enum.StrEnum):
    FULL_HISTORY = "full_history"
    LAST_N_TURNS = "last_n_turns"


@dataclass(frozen=True, slots=True)
class ForkOptions:
    parent_spawn_call_id: str
    mode: ForkMode = ForkMode.FULL_HISTORY
    last_n_turns: int = 0
    at_turn_id: str = ""


# What UpdateThread may change.
UPDATABLE = frozenset({"agent_nickname", "agent_role", "metadata", "instructions"})


@dataclass(frozen=True, slots=True)
class StartResult:
    thread: ThreadRecord
    warnings: tuple[str, ...] = ()


class Threads:
    def __init__(
        self,
        store: Store,
        trust: ProjectTrust,
        *,
        default_model: str,
        max_spawn_depth: int,
        max_instructions_bytes: int = 64 << 10,
        trust_roots: tuple[Path, ...] = (),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.trust = trust
        self.default_model = default_model
        self.max_spawn_depth = max_spawn_depth
        self.max_instructions_bytes = max_instructions_bytes
        self.trust_roots = trust_roots
        self.clock = clock

    async def get(
        self, thread_id: str, caller: Principal = LOCAL, *, field: str = "thread_id"
    ) -> ThreadRecord:
        """The thread, if it exists and is the caller's tenant's; else NotFound."""
        thread_id = parse_thread_id(thread_id, field)
        thread = await self.store.get_thread(thread_id)
        if thread is None or thread.tenant != caller.tenant:
            what = "parent thread" if field == "parent_id" else "thread"
            raise NotFound(
                f"{what} {thread_id} does not exist", reason="THREAD_NOT_FOUND", field=field
            )
        return thread

    def _check_settings(
        self,
        model: str,
        instructions: str,
        nickname: str,
        role: str,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        if model:
            check_model(model)
        check_text_size(instructions, self.max_instructions_bytes, "instructions")
        check_label(nickname, "agent_nickname")
        check_label(role, "agent_role")
        check_metadata(metadata or {})

    async def start(
        self,
        cwd: str,
        *,
        model: str = "",
        instructions: str = "",
        agent_nickname: str = "",
        agent_role: str = "",
        metadata: Mapping[str, str] | None = None,
        caller: Principal = LOCAL,
        request: RequestKey | None = None,
    ) -> StartResult:
        """Start a root thread; trust its project, best effort (see `trust`).
        With a request id the same request already used, its first thread."""
        self._check_settings(model, instructions, agent_nickname, agent_role, metadata)
        roots = trust_roots(caller, self.trust_roots)
        marked = await asyncio.to_thread(self._mark_trusted, cwd, roots)
        now = self.clock()
        thread = ThreadRecord(
            id=str(uuid.uuid4()),
            origin=Origin.START,
            session_origin=Origin.START,
            cwd=cwd,
            model=model or self.default_model,
            instructions=instructions,
            agent_nickname=agent_nickname,
            agent_role=agent_role,
            trust=marked.state,
            created_at=now,
            updated_at=now,
            tenant=caller.tenant,
            metadata=dict(metadata or {}),
        )
        made = await self.store.create_thread(thread, request)
        warnings = (marked.warning,) if marked.warning and made is thread else ()
        return StartResult(made, warnings)

    def _mark_trusted(self, cwd: str, roots: tuple[Path, ...] | None) -> Marked:
        """Check `cwd` and trust its project; blocking file work, run in a thread."""
        return self.trust.mark_trusted(check_cwd(cwd, roots))

    async def spawn(
        self,
        parent_id: str,
        *,
        fork: ForkOptions | None = None,
        agent_nickname: str = "",
        agent_role: str = "",
        sub_agent_kind: str = "",
        model: str = "",
        instructions: str = "",
        metadata: Mapping[str, str] | None = None,
        caller: Principal = LOCAL,
        request: RequestKey | None = None,
        spawn_fingerprint: str = "",
    ) -> ThreadRecord:
        """Create a sub-agent thread: fresh (own key, empty history) or a fork
        (the parent's effective key, the parent's history sanitized). A fork
        for a spawn call that already made one returns that child."""
        parent_id = parse_thread_id(parent_id, "parent_id")
        check_sub_agent_kind(sub_agent_kind)
        self._check_settings(model, instructions, agent_nickname, agent_role, metadata)
        if fork is not None:
            _check_fork(fork)
        parent = await self.get(parent_id, caller, field="parent_id")
        if parent.archived:
            raise thread_archived(parent_id, "parent thread")
        depth = parent.depth + 1
        if depth > self.max_spawn_depth:
            raise FailedPrecondition(
                f"spawn depth limit reached: a child of {parent_id} would be at depth {depth}, "
                f"and the limit is {self.max_spawn_depth}",
                reason="SPAWN_DEPTH_EXCEEDED",
                metadata={"depth": str(depth), "limit": str(self.max_spawn_depth)},
            )
        # Read from the store, so a parent that is not loaded anywhere still
        # passes on its effective key.
        inherited = inheritance.for_fork(parent.prompt_cache_key) if fork else inheritance.EMPTY
        now = self.clock()
        child = ThreadRecord(
            id=str(uuid.uuid4()),
            parent_id=parent.id,
            origin=Origin.FORK if fork else Origin.SPAWN,
            session_origin=Origin.FORK if fork else Origin.SPAWN,
            depth=depth,
            cwd=parent.cwd,
            model=model or parent.model,
            instructions=instructions or parent.instructions,
            agent_nickname=agent_nickname,
            agent_role=agent_role,
            sub_agent_kind=sub_agent_kind or DEFAULT_SUB_AGENT_KIND,
            parent_spawn_call_id=fork.parent_spawn_call_id if fork else "",
            trust=parent.trust,
            inherited=inherited,
            created_at=now,
            updated_at=now,
            tenant=parent.tenant,
            metadata=dict(metadata or {}),
        )
        if fork is None:
            return await self.store.create_thread(child, request)
        last_n = fork.last_n_turns if fork.mode is ForkMode.LAST_N_TURNS else None
        source = ForkSource(parent.id, last_n, fork.at_turn_id)
        return await self.store.create_fork(child, source, request, spawn_fingerprint)

    async def resume(self, thread_id: str, caller: Principal = LOCAL) -> tuple[ThreadRecord, int]:
        """Open a new session of a persisted thread: its history, nickname, role
        and window generation as stored; its own id as prompt cache key."""
        thread = await self.get(thread_id, caller)
        if thread.archived:
            raise thread_archived(thread.id)
        thread = dataclasses.replace(
            thread,
            session_origin=Origin.RESUME,
            inherited=inheritance.EMPTY,
            updated_at=self.clock(),
        )
        await self.store.update_thread(thread)
        return thread, await self.store.history_length(thread.id)

    async def set_archived(
        self, thread_id: str, archived: bool, caller: Principal = LOCAL
    ) -> ThreadRecord:
        """Archive or unarchive a thread (a running turn is the caller's to
        settle first, see `Turns`)."""
        thread = await self.get(thread_id, caller)
        if thread.archived != archived:
            thread = dataclasses.replace(thread, archived=archived, updated_at=self.clock())
            await self.store.update_thread(thread)
        return thread

    async def update(
        self, thread_id: str, changes: Mapping[str, object], caller: Principal = LOCAL
    ) -> ThreadRecord:
        """Change what may change of a thread: `changes` maps the field mask's
        paths (a subset of UPDATABLE) to their new values."""
        unknown = sorted(set(changes) - UPDATABLE)
        if unknown:
            raise InvalidArgument(
                f"update_mask: {', '.join(unknown)} cannot be changed; "
                f"only {', '.join(sorted(UPDATABLE))}",
                field="update_mask",
            )
        if not changes:
            raise InvalidArgument("update_mask names no field", field="update_mask")
        thread = await self.get(thread_id, caller)
        updated = dataclasses.replace(thread, **changes, updated_at=self.clock())  # type: ignore[arg-type]
        self._check_settings(
            "", updated.instructions, updated.agent_nickname, updated.agent_role, updated.metadata
        )
        await self.store.update_thread(updated)
        return updated

    async def delete(self, thread_id: str, caller: Principal = LOCAL) -> None:
        thread = await self.get(thread_id, caller)
        await self.store.delete_thread(thread.id)

    async def list_threads(
        self,
        *,
        parent_id: str = "",
        archived: bool | None = False,
        labels: Mapping[str, str] | None = None,
        order_by: str = "",
        page_size: int = 0,
        page_token: str = "",
        caller: Principal = LOCAL,
    ) -> tuple[list[ThreadRecord], str]:
        """The caller's threads; `archived` None means both kinds."""
        parent = (await self.get(parent_id, caller, field="parent_id")).id if parent_id else None
        check_metadata(labels or {}, field="metadata")
        order, descending = parse_order_by(order_by)
        which = ThreadFilter(caller.tenant, parent, archived, dict(labels or {}), order, descending)

        async def fetch(position: Position | None, limit: int) -> list[ThreadRecord]:
            after = None
            if position is not None:
                after = (
                    pagination.position_float(position, "c"),
                    pagination.position_str(position, "i"),
                )
            return await self.store.list_threads(which, after, limit)

        def next_position(_: Position | None, found: Sequence[ThreadRecord]) -> Position:
            last = found[-1]
            return {
                "c": last.updated_at if order == "update_time" else last.created_at,
                "i": last.id,
            }

        listing = json.dumps(
            [
                "threads",
                caller.tenant,
                parent or "",
                archived,
                sorted((labels or {}).items()),
                order,
                descending,
            ]
        )
        return await pagination.page(
            listing, page_size, page_token, fetch, next_position, size_of=thread_size
        )

    async def history(
        self, thread_id: str, *, page_size: int = 0, page_token: str = "", caller: Principal = LOCAL
    ) -> tuple[list[StoredItem], str]:
        thread = await self.get(thread_id, caller)

        async def fetch(position: Position | None, limit: int) -> list[StoredItem]:
            offset = pagination.position_int(position, "o") if position else 0
            return await self.store.read_history(thread.id, offset, limit)

        listing = f"items:{thread.tenant}:{thread.id}"
        return await pagination.page(
            listing,
            page_size,
            page_token,
            fetch,
            pagination.next_offset,
            size_of=lambda stored: size_of(stored.item),
        )


def thread_size(thread: ThreadRecord) -> int:
    """About how many bytes a thread takes in a listing."""
    texts = (
        thread.instructions,
        thread.cwd,
        thread.agent_nickname,
        thread.agent_role,
        thread.parent_spawn_call_id,
        *thread.metadata.keys(),
        *thread.metadata.values(),
    )
    return 512 + sum(len(text.encode("utf-8", "replace")) for text in texts)


def _check_fork(fork: ForkOptions) -> None:
    if not fork.parent_spawn_call_id:
        raise FailedPrecondition(
            "a fork needs parent_spawn_call_id: the parent's spawn call that asks for it",
            reason="FORK_NEEDS_SPAWN_CALL_ID",
            field="fork.parent_spawn_call_id",
        )
    check_label(fork.parent_spawn_call_id, "fork.parent_spawn_call_id")
    if fork.mode is ForkMode.LAST_N_TURNS and fork.last_n_turns < 1:
        raise InvalidArgument(
            "fork.last_n_turns must be at least 1 in last-N-turns mode",
            field="fork.last_n_turns",
        )
    if fork.mode is not ForkMode.LAST_N_TURNS and fork.last_n_turns:
        raise InvalidArgument(
            "fork.last_n_turns is for FORK_MODE_LAST_N_TURNS; a full-history fork keeps all",
            field="fork.last_n_turns",
        )
    if fork.at_turn_id:
        parse_thread_id(fork.at_turn_id, "fork.at_turn_id", "a turn id")
