"""Bounded inputs, checked before anything is stored, and bounded answers:
every bad or oversized request gets a clear status and a short message, and
no reply outgrows what a default gRPC client receives."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from grpc_status import rpc_status

from spindle.v1 import common_pb2 as c
from spindle.v1 import thread_service_pb2 as pb
from tests.harness import LoopThread, Stack, start_stack
from tests.rpc import raises_status, start, turn, user

HUGE = "x" * 20_000
# Clients refuse a reply above 4 MiB by default; errors must stay far below.
MESSAGE_LIMIT = 1_000


def assert_short(info: pytest.ExceptionInfo[grpc.RpcError]) -> None:
    details = info.value.details() or ""
    assert len(details) <= MESSAGE_LIMIT
    assert HUGE not in details


def test_huge_values_are_refused_without_being_echoed(stack: Stack, tmp_path: Path) -> None:
    stub = stack.threads
    root = start(stub, tmp_path)
    long_cwd = str(tmp_path / HUGE[:200]) + "/" + HUGE
    calls: list[tuple[Callable[[], object], str]] = [
        (lambda: stub.GetThread(pb.GetThreadRequest(thread_id=HUGE)), "thread_id"),
        (lambda: stub.StartThread(pb.StartThreadRequest(cwd=long_cwd)), "cwd"),
        (lambda: stub.SpawnThread(pb.SpawnThreadRequest(parent_id=HUGE)), "parent_id"),
        (
            lambda: turn(stub, root.id, user("/call ls"), tools=[c.Tool(name=HUGE)]),
            "tools",
        ),
        (
            lambda: turn(
                stub,
                root.id,
                c.Item(function_call_output=c.FunctionCallOutput(call_id=HUGE, output="o")),
            ),
            "call_id",
        ),
        (lambda: stub.ListThreads(pb.ListThreadsRequest(page_token=HUGE)), "page_token"),
        (lambda: stub.StartThread(pb.StartThreadRequest(cwd=str(tmp_path), model=HUGE)), "model"),
        (
            lambda: stub.StartThread(pb.StartThreadRequest(cwd=str(tmp_path), agent_nickname=HUGE)),
            "agent_nickname",
        ),
    ]
    for call, field in calls:
        with raises_status(grpc.StatusCode.INVALID_ARGUMENT, field) as info:
            call()
        assert_short(info)
    # The thread took no input from any of it.
    assert list(stub.ListThreadItems(pb.ListThreadItemsRequest(thread_id=root.id)).items) == []


def test_a_newline_in_a_model_name_cannot_forge_a_log_line(stack: Stack, tmp_path: Path) -> None:
    with raises_status(grpc.StatusCode.INVALID_ARGUMENT, "model must be"):
        stack.threads.StartThread(
            pb.StartThreadRequest(cwd=str(tmp_path), model="m\n2026 INFO forged: yes")
        )


def test_deep_or_large_tool_schemas_are_invalid_arguments(stack: Stack, tmp_path: Path) -> None:
    stub = stack.threads
    root = start(stub, tmp_path)
    deep = '{"a":' * 50_000 + "1" + "}" * 50_000
    inner: object = 1
    for _ in range(40):
        inner = [inner]
    nested = json.dumps({"type": "object", "properties": {"x": inner}})
    for schema, fragment in [
        (deep, "parameters_json"),
        (nested, "nests deeper"),
        ('{"a": "' + "y" * 70_000 + '"}', "over"),
    ]:
        with raises_status(grpc.StatusCode.INVALID_ARGUMENT, fragment):
            turn(stub, root.id, user("hi"), tools=[c.Tool(name="t", parameters_json=schema)])
    assert list(stub.ListTurns(pb.ListTurnsRequest(thread_id=root.id)).turns) == []


@pytest.fixture
def small(loop_thread: LoopThread, tmp_path: Path) -> Iterator[Stack]:
    """A thread-service with small limits, to reach them quickly."""
    running = start_stack(
        loop_thread,
        tmp_path,
        max_item_bytes=10_000,
        max_turn_bytes=15_000,
        max_history_bytes=40_000,
        max_instructions_bytes=2_000,
    )
    yield running
    running.stop()


def test_sizes_are_checked_before_anything_is_stored(small: Stack, tmp_path: Path) -> None:
    stub = small.threads
    root = start(stub, tmp_path)
    with raises_status(grpc.StatusCode.INVALID_ARGUMENT, "max_item_bytes", "input[0]"):
        turn(stub, root.id, user("a" * 10_500))
    with raises_status(grpc.StatusCode.INVALID_ARGUMENT, "max_turn_bytes"):
        turn(stub, root.id, user("a" * 8_000), user("b" * 8_000))
    with raises_status(grpc.StatusCode.INVALID_ARGUMENT, "instructions", "2000"):
        start(stub, tmp_path, instructions="i" * 2_001)
    assert list(stub.ListTurns(pb.ListTurnsRequest(thread_id=root.id)).turns) == []

    # Turns that fit, until the next one would outgrow one model request.
    for n in range(4):
        assert turn(stub, root.id, user(f"{n}" * 9_000))[-1].turn_completed.status == (
            pb.TURN_STATUS_COMPLETED
        )
    with raises_status(grpc.StatusCode.FAILED_PRECONDITION, "max_history_bytes", "40000") as info:
        turn(stub, root.id, user("z" * 9_000))
    status = rpc_status.from_call(info.value)
    assert status is not None and status.details  # ErrorInfo HISTORY_TOO_LARGE, limits
    # Refused up front: no fifth turn, no stored copy of the refused input.
    assert len(stub.ListTurns(pb.ListTurnsRequest(thread_id=root.id)).turns) == 4
    items = stub.ListThreadItems(pb.ListThreadItemsRequest(thread_id=root.id)).items
    assert len(items) == 8 and all("z" not in i.message.text for i in items)
    # A fork of its last turn goes on.
    child = stub.SpawnThread(
        pb.SpawnThreadRequest(
            parent_id=root.id,
            fork=pb.ForkOptions(
                parent_spawn_call_id="c", mode=pb.FORK_MODE_LAST_N_TURNS, last_n_turns=1
            ),
        )
    ).thread
    assert turn(stub, child.id, user("z" * 9_000))[-1].turn_completed.status == (
        pb.TURN_STATUS_COMPLETED
    )


def test_listings_fit_what_a_default_client_receives(
    loop_thread: LoopThread, tmp_path: Path
) -> None:
    running = start_stack(
        loop_thread,
        tmp_path,
        max_instructions_bytes=1 << 20,
        max_item_bytes=1 << 20,
        max_turn_bytes=2 << 20,
        max_history_bytes=32 << 20,
    )
    try:
        stub = running.threads  # a client with gRPC's default 4 MiB receive limit
        big = "i" * ((1 << 20) - 100)
        threads = [start(stub, tmp_path, instructions=big) for _ in range(8)]
        for _ in range(8):
            turn(stub, threads[0].id, user(big[:500_000]))
        seen: list[str] = []
        token = ""
        while True:
            page = stub.ListThreads(pb.ListThreadsRequest(page_size=1000, page_token=token))
            assert 0 < page.ByteSize() < 4 << 20
            seen.extend(t.id for t in page.threads)
            token = page.next_page_token
            if not token:
                break
        assert seen == [t.id for t in threads]
        items: list[c.Item] = []
        token = ""
        while True:
            history = stub.ListThreadItems(
                pb.ListThreadItemsRequest(thread_id=threads[0].id, page_size=1000, page_token=token)
            )
            assert 0 < history.ByteSize() < 4 << 20
            items.extend(history.items)
            token = history.next_page_token
            if not token:
                break
        assert len(items) == 16
    finally:
        running.stop()


def test_an_undecodable_payload_is_an_invalid_argument_logged_once(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    channel = grpc.insecure_channel(f"127.0.0.1:{stack.thread_port}")
    call = channel.unary_unary("/spindle.v1.ThreadService/GetThread")
    for _ in range(50):
        with raises_status(grpc.StatusCode.INVALID_ARGUMENT, "not a valid request message"):
            call(b"\xff\xff\xff\xff garbage")
    stream = channel.unary_stream("/spindle.v1.ThreadService/RunTurn")
    with raises_status(grpc.StatusCode.INVALID_ARGUMENT, "not a valid request message"):
        list(stream(b"\x0a\xff\xff\xff\x0f"))
    channel.close()
    lines = [r for r in caplog.records if "undecodable" in r.getMessage()]
    assert len(lines) == 1
    assert not [r for r in caplog.records if r.exc_info]


def test_a_cwd_leading_to_a_non_utf8_path_is_invalid(stack: Stack, tmp_path: Path) -> None:
    odd = os.fsencode(str(tmp_path)) + b"/bad-\xff-name"
    os.mkdir(odd)
    (tmp_path / "link").symlink_to(os.fsdecode(odd))
    with raises_status(grpc.StatusCode.INVALID_ARGUMENT, "not UTF-8"):
        stack.threads.StartThread(pb.StartThreadRequest(cwd=str(tmp_path / "link")))
