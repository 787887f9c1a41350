"""The v1 API for clients on unreliable networks, through a real server:
safe retries, turns that outlive a connection, errors a program can act on,
forks at a turn, item ids, thread metadata and the thread lifecycle."""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import field_mask_pb2
from grpc_reflection.v1alpha import reflection_pb2

from spindle.v1 import common_pb2 as c
from spindle.v1 import thread_service_pb2 as pb
from spindle.v1 import thread_service_pb2_grpc as pb_grpc
from tests.harness import LoopThread, Stack, start_stack, wait_until
from tests.rpc import error_details, events_of, fork, raises_status, start, turn, user


def texts(stub: pb_grpc.ThreadServiceStub, thread_id: str) -> list[str]:
    found = stub.ListThreadItems(pb.ListThreadItemsRequest(thread_id=thread_id)).items
    return [item.message.text for item in found]


def slow(text: str = "a b c d", seconds: float = 30) -> c.Item:
    return user(f"/slow {seconds} {text}")


# Reflection


def test_reflection_answers_as_v1_and_as_v1alpha(stack: Stack) -> None:
    channel = grpc.insecure_channel(f"127.0.0.1:{stack.thread_port}")
    for package in ("grpc.reflection.v1", "grpc.reflection.v1alpha"):
        call = channel.stream_stream(
            f"/{package}.ServerReflection/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        (listed,) = call(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        names = {s.name for s in listed.list_services_response.service}
        assert {"spindle.v1.ThreadService", "grpc.reflection.v1.ServerReflection"} <= names
        (described,) = call(
            iter(
                [reflection_pb2.ServerReflectionRequest(file_containing_symbol="spindle.v1.Thread")]
            )
        )
        assert described.file_descriptor_response.file_descriptor_proto
    channel.close()


# Safe retries


def test_a_repeated_start_returns_the_first_thread_across_a_restart(
    loop_thread: LoopThread, tmp_path: Path
) -> None:
    request_id = str(uuid.uuid4())
    request = pb.StartThreadRequest(cwd=str(tmp_path), request_id=request_id, metadata={"a": "1"})
    running = start_stack(loop_thread, tmp_path)
    first = running.threads.StartThread(request).thread
    assert running.threads.StartThread(request).thread == first
    running.stop()
    running = start_stack(loop_thread, tmp_path)
    try:
        stub = running.threads
        assert stub.StartThread(request).thread == first
        other = pb.StartThreadRequest(cwd=str(tmp_path), request_id=request_id, model="other")
        with raises_status(grpc.StatusCode.INVALID_ARGUMENT, "request_id") as info:
            stub.StartThread(other)
        assert error_details(info.value)[0] == "REQUEST_ID_REUSED"
        assert [t.id for t in stub.ListThreads(pb.ListThreadsRequest()).threads] == [first.id]
        with raises_status(grpc.StatusCode.INVALID_ARGUMENT, "request_id"):
            stub.StartThread(pb.StartThreadRequest(cwd=str(tmp_path), request_id="not-a-uuid"))
    finally:
        running.stop()


def test_one_spawn_call_makes_one_child(stack: Stack, tmp_path: Path) -> None:
    stub = stack.threads
    root = start(stub, tmp_path)
    first = stub.SpawnThread(fork(root.id, "call_9", agent_nickname="Ada")).thread
    again = stub.SpawnThread(fork(root.id, "call_9", agent_nickname="Ada")).thread
    assert again == first
    with raises_status(grpc.StatusCode.ALREADY_EXISTS, "call_9") as info:
        stub.SpawnThread(fork(root.id, "call_9", agent_nickname="Bea"))
    reason, metadata, _, _ = error_details(info.value)
    assert (reason, metadata["child_id"]) == ("SPAWN_CALL_REUSED", first.id)
    listed = stub.ListThreads(pb.ListThreadsRequest(parent_id=root.id)).threads
    assert [t.id for t in listed] == [first.id]


def test_a_repeated_run_turn_adds_nothing_and_replays_or_follows_the_turn(
    stack: Stack, tmp_path: Path
) -> None:
    stub = stack.threads
    root = start(stub, tmp_path)
    request = pb.RunTurnRequest(
        thread_id=root.id, input=[user("hello")], request_id=str(uuid.uuid4())
    )
    first = events_of(stub.RunTurn(request))
    again = events_of(stub.RunTurn(request))
    assert again == first  # the recorded events, numbered alike
    assert texts(stub, root.id) == ["hello", "echo: hello"]
    assert len(stub.ListTurns(pb.ListTurnsRequest(thread_id=root.id)).turns) == 1

    # A retry while the turn still runs follows it from its first event.
    running = pb.RunTurnRequest(
        thread_id=root.id, input=[slow("x y z", 1.5)], request_id=str(uuid.uuid4())
    )
    stream = stub.RunTurn(running)
    head = next(stream).events
    retried = events_of(stub.RunTurn(running))
    assert retried[0] == head[0]
    assert retried == events_of([pb.RunTurnResponse(events=head), *stream])
    assert retried[-1].turn_completed.status == pb.TURN_STATUS_COMPLETED
    assert texts(stub, root.id)[-2:] == ["/slow 1.5 x y z", "echo: x y z"]
    with raises_status(grpc.StatusCode.INVALID_ARGUMENT, "request_id"):
        other = pb.RunTurnRequest(
            thread_id=root.id, input=[user("else")], request_id=running.request_id
        )
        events_of(stub.RunTurn(other))


# Turns that outlive a connection


def test_watch_turn_resumes_after_any_event_without_loss_or_repeats(
    stack: Stack, tmp_path: Path
) -> None:
    stub = stack.threads
    root = start(stub, tmp_path)
    whole = turn(stub, root.id, user("one two three four five"))
    turn_id = whole[0].turn_started.turn_id
    for after in range(len(whole) + 1):
        rest = events_of(
            stub.WatchTurn(
                pb.WatchTurnRequest(thread_id=root.id, turn_id=turn_id, after_sequence=after)
            )
        )
        assert rest == whole[after:]
    with raises_status(grpc.StatusCode.NOT_FOUND, "does not exist"):
        list(stub.WatchTurn(pb.WatchTurnRequest(thread_id=root.id, turn_id=str(uuid.uuid4()))))


def test_a_dropped_connection_continues_with_watch_turn(stack: Stack, tmp_path: Path) -> None:
    stub = stack.threads
    root = start(stub, tmp_path)
    stream = stub.RunTurn(
        pb.RunTurnRequest(
            thread_id=root.id,
            input=[slow("a b c d e f g h", 1.5)],
            on_disconnect=pb.DISCONNECT_POLICY_CONTINUE,
        )
    )
    seen = list(next(stream).events)
    while len(seen) < 3:
        seen.extend(next(stream).events)
    stream.cancel()  # the connection drops
    turn_id = seen[0].turn_started.turn_id
    rest = events_of(
        stub.WatchTurn(
            pb.WatchTurnRequest(
                thread_id=root.id, turn_id=turn_id, after_sequence=seen[-1].sequence
            )
        )
    )
    whole = seen + rest
    assert [e.sequence for e in whole] == list(range(1, len(whole) + 1))
    assert whole[-1].turn_completed.status == pb.TURN_STATUS_COMPLETED
    text = "".join(e.text_delta.text for e in whole if e.HasField("text_delta"))
    assert text == "echo: a b c d e f g h"


def test_cancel_is_the_default_disconnect_policy(stack: Stack, tmp_path: Path) -> None:
    stub = stack.threads
    root = start(stub, tmp_path)
    stream = stub.RunTurn(pb.RunTurnRequest(thread_id=root.id, input=[slow()]))
    turn_id = next(stream).events[0].turn_started.turn_id
    stream.cancel()
    ended = events_of(stub.WatchTurn(pb.WatchTurnRequest(thread_id=root.id, turn_id=turn_id)))
    assert ended[-1].turn_completed.status == pb.TURN_STATUS_INTERRUPTED
    assert ended[-1].turn_completed.error.message == "the client cancelled the call"


@pytest.mark.parametrize("policy", [pb.BUSY_POLICY_UNSPECIFIED, pb.BUSY_POLICY_REJECT])
def test_a_busy_thread_rejects_new_input_with_a_retry_delay(
    stack: Stack, tmp_path: Path, policy: pb.BusyPolicy
) -> None:
    stub = stack.threads
    root = start(stub, tmp_path)
    stream = stub.RunTurn(pb.RunTurnRequest(thread_id=root.id, input=[slow()]))
    turn_id = next(stream).events[0].turn_started.turn_id
    with raises_status(grpc.StatusCode.FAILED_PRECONDITION, "already running") as info:
        turn(stub, root.id, user("b"), when_busy=policy)
    reason, metadata, retry, _ = error_details(info.value)
    assert (reason, metadata["turn_id"]) == ("TURN_ALREADY_RUNNING", turn_id)
    assert retry is not None and retry > 0
    stream.cancel()


def test_busy_policies_interrupt_or_enqueue(stack: Stack, tmp_path: Path) -> None:
    stub = stack.threads
    root = start(stub, tmp_path)
    stream = stub.RunTurn(pb.RunTurnRequest(thread_id=root.id, input=[slow()]))
    next(stream)
    after = turn(stub, root.id, user("now"), when_busy=pb.BUSY_POLICY_INTERRUPT)
    assert after[-1].turn_completed.status == pb.TURN_STATUS_COMPLETED
    assert events_of(stream)[-1].turn_completed.status == pb.TURN_STATUS_INTERRUPTED

    stream = stub.RunTurn(pb.RunTurnRequest(thread_id=root.id, input=[slow("x", 1)]))
    next(stream)
    started = time.monotonic()
    queued = turn(stub, root.id, user("later"), when_busy=pb.BUSY_POLICY_ENQUEUE)
    assert queued[-1].turn_completed.status == pb.TURN_STATUS_COMPLETED
    assert events_of(stream)[-1].turn_completed.status == pb.TURN_STATUS_COMPLETED
    assert time.monotonic() - started > 0.5  # it waited for the running turn
    assert texts(stub, root.id)[-4:] == ["/slow 1 x", "echo: x", "later", "echo: later"]


def test_interrupt_turn_names_its_turn_and_never_hits_another(stack: Stack, tmp_path: Path) -> None:
    stub = stack.threads
    root = start(stub, tmp_path)
    done = turn(stub, root.id, user("first"))[0].turn_started.turn_id
    request = pb.InterruptTurnRequest(thread_id=root.id, turn_id=done)
    with raises_status(grpc.StatusCode.FAILED_PRECONDITION, "ended completed") as info:
        stub.InterruptTurn(request)
    assert error_details(info.value)[0] == "TURN_NOT_RUNNING"
    stream = stub.RunTurn(pb.RunTurnRequest(thread_id=root.id, input=[slow()]))
    running = next(stream).events[0].turn_started.turn_id
    with raises_status(grpc.StatusCode.ABORTED, running) as info:
        stub.InterruptTurn(request)
    reason, metadata, _, _ = error_details(info.value)
    assert (reason, metadata["running_turn_id"]) == ("ANOTHER_TURN_RUNNING", running)
    with raises_status(grpc.StatusCode.NOT_FOUND, "does not exist"):
        stub.InterruptTurn(pb.InterruptTurnRequest(thread_id=root.id, turn_id=str(uuid.uuid4())))
    stub.InterruptTurn(pb.InterruptTurnRequest(thread_id=root.id, turn_id=running))
    assert events_of(stream)[-1].turn_completed.status == pb.TURN_STATUS_INTERRUPTED


# Errors a program can act on


def test_errors_carry_reasons_fields_and_metadata(stack: Stack, tmp_path: Path) -> None:
    stub = stack.threads
    root = start(stub, tmp_path)
    with raises_status(grpc.StatusCode.FAILED_PRECONDITION) as info:
        stub.SpawnThread(pb.SpawnThreadRequest(parent_id=root.id, fork=pb.ForkOptions()))
    reason, _, _, fields = error_details(info.value)
    assert (reason, fields) == ("FORK_NEEDS_SPAWN_CALL_ID", ["fork.parent_spawn_call_id"])
    with raises_status(grpc.StatusCode.INVALID_ARGUMENT) as info:
        turn(stub, root.id, c.Item(function_call_output=c.FunctionCallOutput(call_id="nope")))
    reason, _, _, fields = error_details(info.value)
    assert reason == "UNKNOWN_FUNCTION_CALL"
    assert fields == ["input[0].function_call_output.call_id"]
    with raises_status(grpc.StatusCode.INVALID_ARGUMENT, "phase") as info:
        turn(
            stub,
            root.id,
            c.Item(message=c.Message(role=c.ROLE_USER, text="x", phase=c.MESSAGE_PHASE_COMMENTARY)),
        )
    assert error_details(info.value)[3] == ["input[0].message.phase"]
    with raises_status(grpc.StatusCode.INVALID_ARGUMENT, "last_n_turns"):
        stub.SpawnThread(
            pb.SpawnThreadRequest(
                parent_id=root.id, fork=pb.ForkOptions(parent_spawn_call_id="c", last_n_turns=2)
            )
        )
    depth = stub.SpawnThread(pb.SpawnThreadRequest(parent_id=root.id)).thread
    for _ in range(3):
        depth = stub.SpawnThread(pb.SpawnThreadRequest(parent_id=depth.id)).thread
    with raises_status(grpc.StatusCode.FAILED_PRECONDITION, "depth") as info:
        stub.SpawnThread(pb.SpawnThreadRequest(parent_id=depth.id))
    assert error_details(info.value)[:2] == ("SPAWN_DEPTH_EXCEEDED", {"depth": "5", "limit": "4"})
    stub.ArchiveThread(pb.ArchiveThreadRequest(thread_id=root.id))
    with raises_status(grpc.StatusCode.FAILED_PRECONDITION, "archived") as info:
        turn(stub, root.id, user("x"))
    assert error_details(info.value)[0] == "THREAD_ARCHIVED"
    with raises_status(grpc.StatusCode.NOT_FOUND) as info:
        stub.GetThread(pb.GetThreadRequest(thread_id=str(uuid.uuid4())))
    assert error_details(info.value)[0] == "THREAD_NOT_FOUND"


def test_a_failed_turn_records_the_status_its_caller_saw(stack: Stack, tmp_path: Path) -> None:
    stub = stack.threads
    root = start(stub, tmp_path)
    with raises_status(grpc.StatusCode.UNAVAILABLE, "upstream down"):
        turn(stub, root.id, user("/fail UNAVAILABLE upstream down"))
    (recorded,) = stub.ListTurns(pb.ListTurnsRequest(thread_id=root.id)).turns
    assert recorded.error.code == grpc.StatusCode.UNAVAILABLE.value[0]
    assert recorded.error.message == "upstream down"
    turn_id = recorded.id
    with raises_status(grpc.StatusCode.UNAVAILABLE, "upstream down"):
        events_of(stub.WatchTurn(pb.WatchTurnRequest(thread_id=root.id, turn_id=turn_id)))


# History and threads


def test_a_fork_at_a_turn_inherits_up_to_it_and_never_a_running_turn(
    stack: Stack, tmp_path: Path
) -> None:
    stub = stack.threads
    root = start(stub, tmp_path)
    turn_ids = [turn(stub, root.id, user(f"q{n}"))[0].turn_started.turn_id for n in range(3)]
    at_second = stub.SpawnThread(
        pb.SpawnThreadRequest(
            parent_id=root.id,
            fork=pb.ForkOptions(parent_spawn_call_id="c1", at_turn_id=turn_ids[1]),
        )
    ).thread
    assert texts(stub, at_second.id) == ["q0", "echo: q0", "q1", "echo: q1"]
    last_of_second = stub.SpawnThread(
        pb.SpawnThreadRequest(
            parent_id=root.id,
            fork=pb.ForkOptions(
                parent_spawn_call_id="c2",
                at_turn_id=turn_ids[1],
                mode=pb.FORK_MODE_LAST_N_TURNS,
                last_n_turns=1,
            ),
        )
    ).thread
    assert texts(stub, last_of_second.id) == ["q1", "echo: q1"]

    stream = stub.RunTurn(pb.RunTurnRequest(thread_id=root.id, input=[slow()]))
    running = next(stream).events[0].turn_started.turn_id
    during = stub.SpawnThread(fork(root.id, "c3")).thread
    assert texts(stub, during.id) == texts(stub, root.id)[:-1]  # not the running input
    with raises_status(grpc.StatusCode.FAILED_PRECONDITION, "still running"):
        stub.SpawnThread(
            pb.SpawnThreadRequest(
                parent_id=root.id,
                fork=pb.ForkOptions(parent_spawn_call_id="c4", at_turn_id=running),
            )
        )
    with raises_status(grpc.StatusCode.NOT_FOUND, "is not a turn of"):
        stub.SpawnThread(
            pb.SpawnThreadRequest(
                parent_id=root.id,
                fork=pb.ForkOptions(parent_spawn_call_id="c5", at_turn_id=str(uuid.uuid4())),
            )
        )
    stream.cancel()


def test_items_carry_ids_turns_and_times(stack: Stack, tmp_path: Path) -> None:
    stub = stack.threads
    before = time.time()
    root = start(stub, tmp_path)
    turn_id = turn(stub, root.id, user("hi"))[0].turn_started.turn_id
    items = list(stub.ListThreadItems(pb.ListThreadItemsRequest(thread_id=root.id)).items)
    assert [i.turn_id for i in items] == [turn_id, turn_id]
    assert len({i.id for i in items}) == 2 and all(i.id for i in items)
    assert all(before - 1 < i.create_time.ToNanoseconds() / 1e9 < time.time() + 1 for i in items)
    child = stub.SpawnThread(fork(root.id)).thread
    inherited = stub.ListThreadItems(pb.ListThreadItemsRequest(thread_id=child.id)).items
    assert [i.id for i in inherited] == [i.id for i in items]  # the source's ids


def test_metadata_update_and_listing_filters(stack: Stack, tmp_path: Path) -> None:
    stub = stack.threads
    a = start(stub, tmp_path, metadata={"team": "red", "env": "dev"})
    b = start(stub, tmp_path, metadata={"team": "blue"})
    c_ = start(stub, tmp_path, metadata={"team": "red"})
    assert dict(a.metadata) == {"team": "red", "env": "dev"}

    def listed(**kwargs: object) -> list[str]:
        found = stub.ListThreads(pb.ListThreadsRequest(**kwargs)).threads  # type: ignore[arg-type]
        return [t.id for t in found]

    assert listed(metadata={"team": "red"}) == [a.id, c_.id]
    assert listed(metadata={"team": "red", "env": "dev"}) == [a.id]
    assert listed(order_by="create_time desc") == [c_.id, b.id, a.id]
    updated = stub.UpdateThread(
        pb.UpdateThreadRequest(
            thread=pb.Thread(
                id=a.id, agent_nickname="Ada", metadata={"team": "green"}, instructions="be brief"
            ),
            update_mask=field_mask_pb2.FieldMask(
                paths=["agent_nickname", "metadata", "instructions"]
            ),
        )
    ).thread
    assert (updated.agent_nickname, dict(updated.metadata), updated.instructions) == (
        "Ada",
        {"team": "green"},
        "be brief",
    )
    assert stub.GetThread(pb.GetThreadRequest(thread_id=a.id)).thread == updated
    assert listed(order_by="update_time desc")[0] == a.id
    page = stub.ListThreads(pb.ListThreadsRequest(order_by="update_time desc", page_size=2))
    rest = stub.ListThreads(
        pb.ListThreadsRequest(
            order_by="update_time desc", page_size=2, page_token=page.next_page_token
        )
    )
    assert len({t.id for t in [*page.threads, *rest.threads]}) == 3
    with raises_status(grpc.StatusCode.INVALID_ARGUMENT, "does not belong"):
        stub.ListThreads(pb.ListThreadsRequest(page_token=page.next_page_token))
    for mask, fragment in [(["model"], "cannot be changed"), ([], "names no field")]:
        with raises_status(grpc.StatusCode.INVALID_ARGUMENT, fragment):
            stub.UpdateThread(
                pb.UpdateThreadRequest(
                    thread=pb.Thread(id=a.id), update_mask=field_mask_pb2.FieldMask(paths=mask)
                )
            )
    for bad in ({f"k{n}": "v" for n in range(17)}, {"bad key": "v"}, {"k": "v" * 513}):
        with raises_status(grpc.StatusCode.INVALID_ARGUMENT, "metadata"):
            start(stub, tmp_path, metadata=bad)
    with raises_status(grpc.StatusCode.INVALID_ARGUMENT, "order_by"):
        stub.ListThreads(pb.ListThreadsRequest(order_by="name"))


def test_archive_unarchive_and_status_filters(stack: Stack, tmp_path: Path) -> None:
    stub = stack.threads
    a, b = start(stub, tmp_path), start(stub, tmp_path)
    stub.ArchiveThread(pb.ArchiveThreadRequest(thread_id=a.id))

    def listed(**kwargs: object) -> list[str]:
        found = stub.ListThreads(pb.ListThreadsRequest(**kwargs)).threads  # type: ignore[arg-type]
        return [t.id for t in found]

    assert listed() == [b.id]
    assert listed(status=pb.THREAD_STATUS_ARCHIVED) == [a.id]
    assert listed(include_archived=True) == [a.id, b.id]
    back = stub.UnarchiveThread(pb.UnarchiveThreadRequest(thread_id=a.id)).thread
    assert back.status == pb.THREAD_STATUS_ACTIVE
    assert turn(stub, a.id, user("again"))[-1].turn_completed.status == pb.TURN_STATUS_COMPLETED


def test_a_running_turn_is_settled_before_archive_or_delete(stack: Stack, tmp_path: Path) -> None:
    stub = stack.threads
    root = start(stub, tmp_path)
    stream = stub.RunTurn(pb.RunTurnRequest(thread_id=root.id, input=[slow()]))
    next(stream)
    calls: list[Callable[[], object]] = [
        lambda: stub.ArchiveThread(pb.ArchiveThreadRequest(thread_id=root.id)),
        lambda: stub.DeleteThread(pb.DeleteThreadRequest(thread_id=root.id)),
    ]
    for call in calls:
        with raises_status(grpc.StatusCode.FAILED_PRECONDITION, "interrupt_running") as info:
            call()
        assert error_details(info.value)[0] == "TURN_RUNNING"
    archived = stub.ArchiveThread(
        pb.ArchiveThreadRequest(thread_id=root.id, interrupt_running=True)
    ).thread
    assert archived.status == pb.THREAD_STATUS_ARCHIVED
    assert events_of(stream)[-1].turn_completed.status == pb.TURN_STATUS_INTERRUPTED


def test_delete_keeps_what_forks_share_and_frees_the_rest(stack: Stack, tmp_path: Path) -> None:
    stub = stack.threads
    root = start(stub, tmp_path)
    for n in range(3):
        turn(stub, root.id, user(f"q{n}"))
    child = stub.SpawnThread(fork(root.id)).thread
    turn(stub, child.id, user("own"))
    stub.DeleteThread(pb.DeleteThreadRequest(thread_id=root.id))
    with raises_status(grpc.StatusCode.NOT_FOUND):
        stub.GetThread(pb.GetThreadRequest(thread_id=root.id))
    assert texts(stub, child.id) == [
        *("q0", "echo: q0", "q1", "echo: q1", "q2", "echo: q2", "own", "echo: own")
    ]
    assert [t.id for t in stub.ListThreads(pb.ListThreadsRequest()).threads] == [child.id]
    database = stack.thread_settings.data_dir / "spindle.sqlite3"

    def rows() -> tuple[int, int]:
        with sqlite3.connect(database) as conn:
            items = conn.execute("SELECT COUNT(*) FROM items").fetchone()[0]
            threads = conn.execute("SELECT COUNT(*) FROM threads").fetchone()[0]
            return items, threads

    assert rows() == (6 + 2, 2)  # the root's six shared items stay, as a tombstone
    stub.DeleteThread(pb.DeleteThreadRequest(thread_id=child.id))
    assert rows() == (0, 0)
    with raises_status(grpc.StatusCode.NOT_FOUND):
        stub.DeleteThread(pb.DeleteThreadRequest(thread_id=child.id))


@pytest.fixture
def two_threads_stack(loop_thread: LoopThread, tmp_path: Path) -> Iterator[Stack]:
    running = start_stack(loop_thread, tmp_path)
    yield running
    running.stop()


def test_watch_follows_a_turn_started_by_another_client(
    two_threads_stack: Stack, tmp_path: Path
) -> None:
    stub = two_threads_stack.threads
    root = start(stub, tmp_path)
    seen: list[pb.TurnEvent] = []
    stream = stub.RunTurn(pb.RunTurnRequest(thread_id=root.id, input=[slow("p q r", 1)]))
    turn_id = next(stream).events[0].turn_started.turn_id
    watcher = threading.Thread(
        target=lambda: seen.extend(
            events_of(stub.WatchTurn(pb.WatchTurnRequest(thread_id=root.id, turn_id=turn_id)))
        )
    )
    watcher.start()
    wait_until(lambda: bool(seen) or not watcher.is_alive(), timeout=10)
    watcher.join(10)
    assert seen[0].turn_started.turn_id == turn_id
    assert seen[-1].turn_completed.status == pb.TURN_STATUS_COMPLETED
    assert [e.sequence for e in seen] == list(range(1, len(seen) + 1))
    events_of(stream)
