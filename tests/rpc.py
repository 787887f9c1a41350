"""Calling the services in tests, and checking what they answer: short forms
for a user message, a thread start, a fork request and a turn, and the
assertions that many tests share (a call's status, a failed turn's record)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from spindle.v1 import common_pb2 as c
from spindle.v1 import model_service_pb2 as mpb
from spindle.v1 import thread_service_pb2 as pb
from spindle.v1 import thread_service_pb2_grpc as pb_grpc


def user(text: str) -> c.Item:
    return c.Item(message=c.Message(role=c.ROLE_USER, text=text))


def start(stub: pb_grpc.ThreadServiceStub, cwd: Path, **kwargs: Any) -> pb.Thread:
    response: pb.StartThreadResponse = stub.StartThread(
        pb.StartThreadRequest(cwd=str(cwd), **kwargs)
    )
    return response.thread


def fork(parent_id: str, call_id: str = "call_1", **kwargs: object) -> pb.SpawnThreadRequest:
    """A SpawnThread request that forks `parent_id` for the spawn call `call_id`."""
    return pb.SpawnThreadRequest(
        parent_id=parent_id,
        fork=pb.ForkOptions(parent_spawn_call_id=call_id),
        **kwargs,  # type: ignore[arg-type]
    )


def turn(
    stub: pb_grpc.ThreadServiceStub,
    thread_id: str,
    *input_items: c.Item,
    tools: list[c.Tool] | None = None,
    **fields: Any,
) -> list[pb.TurnEvent]:
    """Run a turn; its events in order (however they were batched)."""
    request = pb.RunTurnRequest(thread_id=thread_id, input=input_items, tools=tools, **fields)
    return events_of(stub.RunTurn(request))


def events_of(responses: Iterable[pb.RunTurnResponse | pb.WatchTurnResponse]) -> list[pb.TurnEvent]:
    """The events of a turn's stream, in order, checking their sequence numbers."""
    found = [event for response in responses for event in response.events]
    numbers = [event.sequence for event in found]
    assert numbers == list(range(numbers[0], numbers[0] + len(found))) if found else True
    return found


def model_events(responses: Iterable[mpb.GenerateResponse]) -> list[mpb.GenerateEvent]:
    """The events of a Generate stream, flattened out of their messages."""
    return [event for response in responses for event in response.events]


@contextmanager
def raises_status(
    code: grpc.StatusCode, *fragments: str
) -> Iterator[pytest.ExceptionInfo[grpc.RpcError]]:
    """Expect the block to fail with `code` and a message holding every fragment."""
    with pytest.raises(grpc.RpcError) as info:
        yield info
    assert info.value.code() == code, info.value.details()
    for fragment in fragments:
        assert fragment in info.value.details()


def only_turn(stub: pb_grpc.ThreadServiceStub, thread_id: str) -> pb.Turn:
    """The thread's one recorded turn; fails if it has none or several."""
    response: pb.ListTurnsResponse = stub.ListTurns(pb.ListTurnsRequest(thread_id=thread_id))
    (recorded,) = response.turns
    return recorded


def assert_kept_only_input(
    stub: pb_grpc.ThreadServiceStub,
    thread_id: str,
    text: str,
    *,
    status: pb.TurnStatus | None = None,
    error_code: grpc.StatusCode | None = None,
) -> None:
    """After a turn that did not complete, the history holds only its input
    `text`; with `status` or `error_code`, the one turn recorded has them."""
    if status is not None or error_code is not None:
        recorded = only_turn(stub, thread_id)
        if status is not None:
            assert recorded.status == status
        if error_code is not None:
            assert recorded.error.code == error_code.value[0]
    items = stub.ListThreadItems(pb.ListThreadItemsRequest(thread_id=thread_id)).items
    assert [i.message.text for i in items] == [text]


def error_details(error: grpc.RpcError) -> tuple[str, dict[str, str], float | None, list[str]]:
    """What a failed call carries for a program: the ErrorInfo reason and
    metadata, the RetryInfo delay, and the fields BadRequest names."""
    status = rpc_status.from_call(error)
    reason, metadata, retry, fields = "", {}, None, []
    for detail in status.details if status is not None else ():
        info, delay, bad = (
            error_details_pb2.ErrorInfo(),
            error_details_pb2.RetryInfo(),
            error_details_pb2.BadRequest(),
        )
        if detail.Unpack(info):
            assert info.domain == "spindle.v1"
            reason, metadata = info.reason, dict(info.metadata)
        elif detail.Unpack(delay):
            retry = delay.retry_delay.ToNanoseconds() / 1e9
        elif detail.Unpack(bad):
            fields = [violation.field for violation in bad.field_violations]
    return reason, metadata, retry, fields
