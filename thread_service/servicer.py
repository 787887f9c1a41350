"""The gRPC face of the thread-service: translate messages, nothing more.

Domain errors become statuses in `spindle.grpc_errors`; warnings of a
thread start go back in the response and as `spindle-warning-bin` metadata.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from spindle import convert
from spindle.edge import caller
from spindle.errors import InvalidArgument
from spindle.grpc_errors import rpc
from spindle.model import ItemDone, TextDelta
from spindle.v1 import common_pb2
from spindle.v1 import thread_service_pb2 as pb
from spindle.v1 import thread_service_pb2_grpc as pb_grpc
from thread_service.records import Origin, ThreadRecord, TrustSource, TurnRecord, TurnStatus
from thread_service.threads import ForkMode, ForkOptions, Threads
from thread_service.turn import TurnCompleted, TurnStarted
from thread_service.turns import Turns

# Binary metadata (`-bin`): gRPC libraries of every language base64-decode
# it for the caller, so the value is the warning's UTF-8 text, any path in it.
WARNING_METADATA_KEY = "spindle-warning-bin"
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


def _timestamp(seconds: float | None) -> Timestamp | None:
    if seconds is None:
        return None
    stamp = Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


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
        message.error.CopyFrom(convert.error_to_pb(turn.error.code, turn.error.message))
    return message


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
            caller=caller(),
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
        fork = None
        if request.HasField("fork"):
            if request.fork.mode not in _FORK_MODES:
                raise InvalidArgument(f"fork.mode {request.fork.mode} is not a fork mode")
            fork = ForkOptions(
                request.fork.parent_spawn_call_id,
                _FORK_MODES[request.fork.mode],
                request.fork.last_n_turns,
            )
        thread = await self.threads.spawn(
            request.parent_id,
            fork=fork,
            agent_nickname=request.agent_nickname,
            agent_role=request.agent_role,
            sub_agent_kind=request.sub_agent_kind,
            model=request.model,
            instructions=request.instructions,
            caller=caller(),
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
        threads, token = await self.threads.list_threads(
            parent_id=request.parent_id,
            include_archived=request.include_archived,
            page_size=request.page_size,
            page_token=request.page_token,
            caller=caller(),
        )
        return pb.ListThreadsResponse(
            threads=[thread_to_pb(t) for t in threads], next_page_token=token
        )

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
        return pb.ListThreadItemsResponse(
            items=[convert.item_to_pb(i) for i in found], next_page_token=token
        )

    @rpc
    async def ArchiveThread(
        self, request: pb.ArchiveThreadRequest, context: grpc.aio.ServicerContext
    ) -> pb.ArchiveThreadResponse:
        thread = await self.threads.archive(request.thread_id, caller())
        return pb.ArchiveThreadResponse(thread=thread_to_pb(thread))

    @rpc
    async def RunTurn(
        self, request: pb.RunTurnRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.RunTurnResponse]:
        input_items = [convert.item_from_pb(i) for i in request.input]
        tools = [convert.tool_from_pb(t) for t in request.tools]
        turn_events = self.turns.run(
            request.thread_id, input_items, tools, context.time_remaining(), caller()
        )
        async for event in turn_events:
            if isinstance(event, TurnStarted):
                yield pb.RunTurnResponse(turn_started=pb.TurnStarted(turn_id=event.turn_id))
            elif isinstance(event, TextDelta):
                yield pb.RunTurnResponse(text_delta=common_pb2.TextDelta(text=event.text))
            elif isinstance(event, ItemDone):
                yield pb.RunTurnResponse(
                    item_done=common_pb2.ItemDone(item=convert.item_to_pb(event.item))
                )
            elif isinstance(event, TurnCompleted):
                yield pb.RunTurnResponse(
                    turn_completed=pb.TurnCompleted(
                        turn_id=event.turn_id,
                        status=_TURN_STATUSES[event.status],
                        usage=convert.usage_to_pb(event.usage),
                        pending_function_calls=[
                            convert.item_to_pb(c).function_call
                            for c in event.pending_function_calls
                        ],
                    )
                )

    @rpc
    async def InterruptTurn(
        self, request: pb.InterruptTurnRequest, context: grpc.aio.ServicerContext
    ) -> pb.InterruptTurnResponse:
        turn_id = await self.turns.interrupt(request.thread_id, caller())
        return pb.InterruptTurnResponse(turn_id=turn_id)

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
