"""The gRPC face of the thread-service: translate messages, nothing more.

Domain errors become statuses in `spindle.grpc_errors`; warnings of a
thread start go back in the response and as `spindle-warning-bin` metadata.
A request id's fingerprint is the request's deterministic serialization
without the id, so a retry must repeat the request exactly.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc
from google.protobuf.message import Message as ProtoMessage
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import status_pb2

from spindle import convert
from spindle.edge import caller
from spindle.errors import FailedPrecondition, InvalidArgument
from spindle.grpc_errors import rich_status, rpc
from spindle.model import ItemDone, TextDelta
from spindle.slices import slices
from spindle.v1 import common_pb2
from spindle.v1 import thread_service_pb2 as pb
from spindle.v1 import thread_service_pb2_grpc as pb_grpc
from thread_service import events
from thread_service.events import TurnCompleted, TurnEvent, TurnStarted
from thread_service.records import (
    Origin,
    RequestKey,
    StoredItem,
    ThreadRecord,
    TrustSource,
    TurnError,
    TurnRecord,
    TurnStatus,
)
from thread_service.threads import ForkMode, ForkOptions, Threads
from thread_service.turns import Busy, Disconnect, Turns
from thread_service.validation import parse_thread_id

# Items of a page converted at a time (see `spindle.slices`): about 1 ms.
ITEMS_SLICE = 300

# Binary metadata (`-bin`): gRPC libraries of every language base64-decode
# it for the caller, so the value is the warning's UTF-8 text, any path in it.
WARNING_METADATA_KEY = "spindle-warning-bin"
# How often DeleteThread with interrupt_running interrupts turns that keep beginning.
DELETE_ATTEMPTS = 3
# Clients refuse headers past 8 KiB by default; the whole text is in the
# response's `warnings` anyway.
WARNING_METADATA_MAX_BYTES = 2048


def _metadata_value(warning: str) -> bytes:
    data = warning.encode("utf-8")
    if len(data) <= WARNING_METADATA_MAX_BYTES:
        return data
    cut = data[: WARNING_METADATA_MAX_BYTES - 3].decode("utf-8", "ignore")
    return (cut + "…").encode("utf-8")


_ORIGINS = {
    Origin.START: pb.THREAD_ORIGIN_START,
    Origin.SPAWN: pb.THREAD_ORIGIN_SPAWN,
    Origin.FORK: pb.THREAD_ORIGIN_FORK,
    Origin.RESUME: pb.THREAD_ORIGIN_RESUME,
}
_TRUST_SOURCES = {
    TrustSource.PERSISTED: pb.TRUST_SOURCE_PERSISTED,
    TrustSource.IN_MEMORY: pb.TRUST_SOURCE_IN_MEMORY,
}
_TURN_STATUSES = {
    TurnStatus.RUNNING: pb.TURN_STATUS_RUNNING,
    TurnStatus.COMPLETED: pb.TURN_STATUS_COMPLETED,
    TurnStatus.INTERRUPTED: pb.TURN_STATUS_INTERRUPTED,
    TurnStatus.FAILED: pb.TURN_STATUS_FAILED,
}
_FORK_MODES = {
    pb.FORK_MODE_UNSPECIFIED: ForkMode.FULL_HISTORY,
    pb.FORK_MODE_FULL_HISTORY: ForkMode.FULL_HISTORY,
    pb.FORK_MODE_LAST_N_TURNS: ForkMode.LAST_N_TURNS,
}
_DISCONNECT = {
    pb.DISCONNECT_POLICY_UNSPECIFIED: Disconnect.CANCEL,
    pb.DISCONNECT_POLICY_CANCEL: Disconnect.CANCEL,
    pb.DISCONNECT_POLICY_CONTINUE: Disconnect.CONTINUE,
}
_BUSY = {
    pb.BUSY_POLICY_UNSPECIFIED: Busy.REJECT,
    pb.BUSY_POLICY_REJECT: Busy.REJECT,
    pb.BUSY_POLICY_INTERRUPT: Busy.INTERRUPT,
    pb.BUSY_POLICY_ENQUEUE: Busy.ENQUEUE,
}
_STATUS_FILTER = {
    pb.THREAD_STATUS_ACTIVE: False,
    pb.THREAD_STATUS_ARCHIVED: True,
}


def _timestamp(seconds: float | None) -> Timestamp | None:
    if seconds is None:
        return None
    stamp = Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def _enum(value: int, table: dict[Any, Any], field: str) -> Any:
    if value not in table:
        raise InvalidArgument(f"{field} {value} is not one of its values", field=field)
    return table[value]


def thread_to_pb(thread: ThreadRecord) -> pb.Thread:
    message = pb.Thread(
        id=thread.id,
        parent_id=thread.parent_id or "",
        origin=_ORIGINS[thread.origin],
        session_origin=_ORIGINS[thread.session_origin],
        depth=thread.depth,
        agent_nickname=thread.agent_nickname,
        agent_role=thread.agent_role,
        sub_agent_kind=thread.sub_agent_kind,
        prompt_cache_key=thread.prompt_cache_key,
        window_generation=thread.window_generation,
        cwd=thread.cwd,
        model=thread.model,
        instructions=thread.instructions,
        status=pb.THREAD_STATUS_ARCHIVED if thread.archived else pb.THREAD_STATUS_ACTIVE,
        parent_spawn_call_id=thread.parent_spawn_call_id,
        create_time=_timestamp(thread.created_at),
        update_time=_timestamp(thread.updated_at),
        metadata=thread.metadata,
    )
    if thread.trust is not None:
        message.trust.CopyFrom(
            pb.ProjectTrust(
                project_path=thread.trust.project_path,
                trusted=thread.trust.trusted,
                source=_TRUST_SOURCES[thread.trust.source],
            )
        )
    return message


def error_to_pb(error: TurnError) -> status_pb2.Status:
    """A turn's error as the google.rpc.Status its caller saw."""
    return rich_status(events.failure_of(error))


def turn_to_pb(turn: TurnRecord) -> pb.Turn:
    message = pb.Turn(
        id=turn.id,
        thread_id=turn.thread_id,
        status=_TURN_STATUSES[turn.status],
        usage=convert.usage_to_pb(turn.usage),
        create_time=_timestamp(turn.created_at),
        complete_time=_timestamp(turn.completed_at),
    )
    if turn.error is not None:
        message.error.CopyFrom(error_to_pb(turn.error))
    return message


def stored_item_to_pb(stored: StoredItem) -> common_pb2.Item:
    message = convert.item_to_pb(stored.item)
    message.id = stored.id
    message.turn_id = stored.turn_id
    message.create_time.FromNanoseconds(int(stored.created_at * 1e9))
    return message


def event_to_pb(event: TurnEvent) -> pb.TurnEvent:
    payload = event.payload
    if isinstance(payload, TurnStarted):
        return pb.TurnEvent(
            sequence=event.sequence, turn_started=pb.TurnStarted(turn_id=payload.turn_id)
        )
    if isinstance(payload, TextDelta):
        return pb.TurnEvent(
            sequence=event.sequence, text_delta=common_pb2.TextDelta(text=payload.text)
        )
    if isinstance(payload, ItemDone):
        return pb.TurnEvent(
            sequence=event.sequence,
            item_done=common_pb2.ItemDone(item=convert.item_to_pb(payload.item)),
        )
    return pb.TurnEvent(sequence=event.sequence, turn_completed=_completed_to_pb(payload))


def _completed_to_pb(completed: TurnCompleted) -> pb.TurnCompleted:
    message = pb.TurnCompleted(
        turn_id=completed.turn_id,
        status=_TURN_STATUSES[completed.status],
        usage=convert.usage_to_pb(completed.usage),
        pending_function_calls=[
            convert.item_to_pb(call).function_call for call in completed.pending_function_calls
        ],
    )
    if completed.error is not None:
        message.error.CopyFrom(error_to_pb(completed.error))
    return message


def request_key(request: ProtoMessage, method: str, request_id: str) -> RequestKey | None:
    """The request id of a call, with the fingerprint a retry must match."""
    if not request_id:
        return None
    parse_thread_id(request_id, "request_id", "a request id")
    return RequestKey(caller().tenant, request_id.lower(), method, fingerprint(request))


def fingerprint(request: ProtoMessage) -> str:
    """What a retry of `request` must repeat: all of it but its `request_id`."""
    copy = type(request)()
    copy.CopyFrom(request)
    copy.ClearField("request_id")
    return hashlib.sha256(copy.SerializeToString(deterministic=True)).hexdigest()


def _fork_options(options: pb.ForkOptions) -> ForkOptions:
    return ForkOptions(
        options.parent_spawn_call_id,
        _enum(options.mode, _FORK_MODES, "fork.mode"),
        options.last_n_turns,
        options.at_turn_id,
    )


async def _stream(
    batches: AsyncIterator[Sequence[TurnEvent]], response: type[Any]
) -> AsyncIterator[Any]:
    async for batch in batches:
        yield response(events=[event_to_pb(event) for event in batch])


class ThreadServicer(pb_grpc.ThreadServiceServicer):  # type: ignore[misc]
    def __init__(self, threads: Threads, turns: Turns) -> None:
        self.threads = threads
        self.turns = turns

    @rpc
    async def StartThread(
        self, request: pb.StartThreadRequest, context: grpc.aio.ServicerContext
    ) -> pb.StartThreadResponse:
        result = await self.threads.start(
            request.cwd,
            model=request.model,
            instructions=request.instructions,
            agent_nickname=request.agent_nickname,
            agent_role=request.agent_role,
            metadata=dict(request.metadata),
            caller=caller(),
            request=request_key(request, "StartThread", request.request_id),
        )
        if result.warnings:
            await context.send_initial_metadata(
                [(WARNING_METADATA_KEY, _metadata_value(w)) for w in result.warnings]
            )
        return pb.StartThreadResponse(
            thread=thread_to_pb(result.thread), warnings=list(result.warnings)
        )

    @rpc
    async def SpawnThread(
        self, request: pb.SpawnThreadRequest, context: grpc.aio.ServicerContext
    ) -> pb.SpawnThreadResponse:
        fork = _fork_options(request.fork) if request.HasField("fork") else None
        key = request_key(request, "SpawnThread", request.request_id)
        thread = await self.threads.spawn(
            request.parent_id,
            fork=fork,
            agent_nickname=request.agent_nickname,
            agent_role=request.agent_role,
            sub_agent_kind=request.sub_agent_kind,
            model=request.model,
            instructions=request.instructions,
            metadata=dict(request.metadata),
            caller=caller(),
            request=key,
            spawn_fingerprint=key.fingerprint if key else fingerprint(request),
        )
        return pb.SpawnThreadResponse(thread=thread_to_pb(thread))

    @rpc
    async def ResumeThread(
        self, request: pb.ResumeThreadRequest, context: grpc.aio.ServicerContext
    ) -> pb.ResumeThreadResponse:
        thread, length = await self.threads.resume(request.thread_id, caller())
        return pb.ResumeThreadResponse(thread=thread_to_pb(thread), history_length=length)

    @rpc
    async def GetThread(
        self, request: pb.GetThreadRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetThreadResponse:
        thread = await self.threads.get(request.thread_id, caller())
        return pb.GetThreadResponse(thread=thread_to_pb(thread))

    @rpc
    async def ListThreads(
        self, request: pb.ListThreadsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListThreadsResponse:
        archived: bool | None = None if request.include_archived else False
        if request.status != pb.THREAD_STATUS_UNSPECIFIED:
            archived = _enum(request.status, _STATUS_FILTER, "status")
        threads, token = await self.threads.list_threads(
            parent_id=request.parent_id,
            archived=archived,
            labels=dict(request.metadata),
            order_by=request.order_by,
            page_size=request.page_size,
            page_token=request.page_token,
            caller=caller(),
        )
        return pb.ListThreadsResponse(
            threads=[thread_to_pb(t) for t in threads], next_page_token=token
        )

    @rpc
    async def UpdateThread(
        self, request: pb.UpdateThreadRequest, context: grpc.aio.ServicerContext
    ) -> pb.UpdateThreadResponse:
        paths = list(request.update_mask.paths)
        changes = {
            path: dict(request.thread.metadata)
            if path == "metadata"
            else getattr(request.thread, path, None)
            for path in paths
        }
        thread = await self.threads.update(request.thread.id, changes, caller())
        return pb.UpdateThreadResponse(thread=thread_to_pb(thread))

    @rpc
    async def ListThreadItems(
        self, request: pb.ListThreadItemsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListThreadItemsResponse:
        found, token = await self.threads.history(
            request.thread_id,
            page_size=request.page_size,
            page_token=request.page_token,
            caller=caller(),
        )
        response = pb.ListThreadItemsResponse(next_page_token=token)
        async for part in slices(found, ITEMS_SLICE):  # 1,000 items take about 3 ms
            response.items.extend(stored_item_to_pb(s) for s in part)
        return response

    @rpc
    async def ArchiveThread(
        self, request: pb.ArchiveThreadRequest, context: grpc.aio.ServicerContext
    ) -> pb.ArchiveThreadResponse:
        await self._settle_running(request.thread_id, request.interrupt_running)
        thread = await self.threads.set_archived(request.thread_id, True, caller())
        return pb.ArchiveThreadResponse(thread=thread_to_pb(thread))

    @rpc
    async def UnarchiveThread(
        self, request: pb.UnarchiveThreadRequest, context: grpc.aio.ServicerContext
    ) -> pb.UnarchiveThreadResponse:
        thread = await self.threads.set_archived(request.thread_id, False, caller())
        return pb.UnarchiveThreadResponse(thread=thread_to_pb(thread))

    @rpc
    async def DeleteThread(
        self, request: pb.DeleteThreadRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteThreadResponse:
        # The store refuses to delete a thread while a turn runs on it, since
        # one may begin after the look for one; with interrupt_running, that
        # turn is interrupted in turn.
        for attempt in range(DELETE_ATTEMPTS):
            await self._settle_running(request.thread_id, request.interrupt_running)
            try:
                await self.threads.delete(request.thread_id, caller())
            except FailedPrecondition as exc:
                last = attempt == DELETE_ATTEMPTS - 1
                if exc.reason != "TURN_RUNNING" or not request.interrupt_running or last:
                    raise
            else:
                break
        return pb.DeleteThreadResponse()

    async def _settle_running(self, thread_id: str, interrupt: bool) -> None:
        """A thread with a running turn is archived or deleted only once that
        turn is interrupted, and only when the request says so."""
        thread = await self.threads.get(thread_id, caller())
        await self.turns.settle(thread, interrupt)

    @rpc
    async def RunTurn(
        self, request: pb.RunTurnRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.RunTurnResponse]:
        input_items = [convert.item_from_pb(i) for i in request.input]
        tools = [convert.tool_from_pb(t) for t in request.tools]
        batches = self.turns.run(
            request.thread_id,
            input_items,
            tools,
            caller=caller(),
            time_remaining=context.time_remaining(),
            request=request_key(request, "RunTurn", request.request_id),
            on_disconnect=_enum(request.on_disconnect, _DISCONNECT, "on_disconnect"),
            when_busy=_enum(request.when_busy, _BUSY, "when_busy"),
        )
        async for response in _stream(batches, pb.RunTurnResponse):
            yield response

    @rpc
    async def WatchTurn(
        self, request: pb.WatchTurnRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.WatchTurnResponse]:
        turn_id = parse_thread_id(request.turn_id, "turn_id", "a turn id")
        batches = self.turns.watch(request.thread_id, turn_id, request.after_sequence, caller())
        async for response in _stream(batches, pb.WatchTurnResponse):
            yield response

    @rpc
    async def InterruptTurn(
        self, request: pb.InterruptTurnRequest, context: grpc.aio.ServicerContext
    ) -> pb.InterruptTurnResponse:
        turn_id = parse_thread_id(request.turn_id, "turn_id", "a turn id")
        interrupted = await self.turns.interrupt(request.thread_id, turn_id, caller())
        return pb.InterruptTurnResponse(turn_id=interrupted)

    @rpc
    async def ListTurns(
        self, request: pb.ListTurnsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListTurnsResponse:
        turns, token = await self.turns.list_turns(
            request.thread_id,
            page_size=request.page_size,
            page_token=request.page_token,
            caller=caller(),
        )
        return pb.ListTurnsResponse(turns=[turn_to_pb(t) for t in turns], next_page_token=token)
